// Gemma's post-norm and residual add, folded into the matvec after them (MatvecFusion.postNorm;
// composed with matvec_fusion.wgsl in place of matvec_input.wgsl). The rows the product (and its fused
// pre-norm) take are the residual stream
//   x = base + a / sqrt(mean(a^2) + POST_EPS) * post_weight,
// a the sublayer's output (the input binding), base the stream before the sublayer (the residual
// binding: a projection after a post-norm adds no residual of its own) and post_weight at binding 8
// (norm_bias: the pre-norm is an RMSNorm, which has no shift). x depends on the 1 / rms of a whole row,
// so each workgroup takes its rows' in a pass of its own before the products. With WRITE_STREAM the
// workgroup of the first outputs also stores x to `stream` as it loads it (every column once): the
// stream the next sublayer adds to, without a norm kernel of its own. base and stream rows are laid
// out as the input's (a_offset, a_stride).

override POST_EPS: f32 = 0.0;       // added to the mean square of a (unitless)
override WRITE_STREAM: bool = false; // this projection's first workgroup writes x to stream

@group(0) @binding(9) var<storage, read_write> stream: array<f32>; // (M, a_stride) from a_offset

var<private> post_scale: array<f32, MAX_M>; // 1 / rms of each input row
var<private> writes_stream: bool;

// 1 / rms of the workgroup's input rows, and whether it writes the stream. Call from uniform control
// flow: it contains barriers.
fn post_norm_statistics(lid: u32, row0: u32) {
  writes_stream = WRITE_STREAM && row0 == 0u;
  for (var m = 0u; m < params.m; m++) {
    var squares = 0.0;
    for (var c = lid; c < params.k; c += WG) {
      let v = a_at(m, c);
      squares += v * v;
    }
    post_scale[m] = 1.0 / sqrt(workgroup_sum(squares, lid) / f32(params.k) + POST_EPS);
  }
}

// x[m, k..k+3] from the loaded a[m, k..k+3]; zero past K.
fn stream4(m: u32, k: u32, loaded: vec4<f32>) -> vec4<f32> {
  let at = params.a_offset + m * params.a_stride + k;
  var x = vec4<f32>(0.0);
  for (var i = 0u; i < 4u; i++) {
    if (k + i < params.k) {
      x[i] = residual[at + i] + loaded[i] * post_scale[m] * norm_bias[k + i];
      if (writes_stream) { stream[at + i] = x[i]; }
    }
  }
  return x;
}

// The q8 activation step of the matvec's q8 tier (kernels/matvec.ts, activations 'q8'): quantise each
// activation row to int8 once per step, in blocks of 32 columns with one f32 scale each, as ggml's
// quantize_row_q8_0 does (d = amax / 127, q = round(x / d)), so that the matvec (matvec_sums_q8.wgsl)
// reads one byte per activation and multiplies with dot4I8Packed. With NORM the row is normalised
// first, exactly as matvec_fusion.wgsl (and norm.wgsl) would, so a fused norm folds in here, once per
// step, instead of once per matvec workgroup.
// Compose as: matvec_q8_requires.wgsl, this file. Legend: M activation rows, K input features
// (K % 32 == 0 for every weight dtype the q8 tier serves), B = K / 32 blocks per row.
// Grid: (ceil(B / WG), M); one thread per block of 32 columns.
//! include grid.wgsl
//! include reduce.wgsl
//! include matmul_projection.wgsl

const NORM_NONE: u32 = 0u;
const NORM_RMS: u32 = 1u;    // x / sqrt(mean(x^2) + eps) * norm_weight
const NORM_LAYER: u32 = 2u;  // (x - mean) / sqrt(var + eps) * norm_weight + norm_bias

override WG: u32 = 64;        // threads per workgroup, a power of two
override NORM: u32 = 0u;      // NORM_*: normalise each row before quantising it
override NORM_EPS: f32 = 0.0; // added to the mean square / variance (unitless)

@group(0) @binding(7) var<storage, read> norm_weight: array<f32>;         // (K); a placeholder without NORM
@group(0) @binding(8) var<storage, read> norm_bias: array<f32>;           // (K); a placeholder unless NORM_LAYER
@group(0) @binding(9) var<storage, read_write> a_quants: array<u32>;      // (M, K / 4): int8 x4, column k at byte k % 4
@group(0) @binding(10) var<storage, read_write> a_scales: array<f32>;     // (M, B): block scales d

fn a_at(row: u32, c: u32) -> f32 {
  return a[params.a_offset + row * params.a_stride + c];
}

// (pivot, mean of x - pivot, 1 / sqrt(var + eps)) of row m, as matvec_fusion.wgsl's norm_statistics:
// every workgroup of the row computes them (the row is read a few times; it is K floats).
fn row_statistics(m: u32, lid: u32) -> vec3<f32> {
  let n = f32(params.k);
  if (NORM == NORM_RMS) {
    var squares = 0.0;
    for (var c = lid; c < params.k; c += WG) {
      let v = a_at(m, c);
      squares += v * v;
    }
    let total = workgroup_sum(lid, squares);
    return vec3<f32>(0.0, 0.0, 1.0 / sqrt(total / n + NORM_EPS));
  }
  let pivot = a_at(m, 0u);
  var deviations = 0.0;
  for (var c = lid; c < params.k; c += WG) { deviations += a_at(m, c) - pivot; }
  let mean = workgroup_sum(lid, deviations) / n;
  var squares = 0.0;
  for (var c = lid; c < params.k; c += WG) {
    let d = (a_at(m, c) - pivot) - mean;
    squares += d * d;
  }
  return vec3<f32>(pivot, mean, 1.0 / sqrt(workgroup_sum(lid, squares) / n + NORM_EPS));
}

@compute @workgroup_size(WG)
fn quantise_q8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let m = wid.y;
  let blocks = params.k / 32u;
  let b = wid.x * WG + lid;
  var s = vec3<f32>(0.0, 0.0, 1.0);
  if (NORM != NORM_NONE) { s = row_statistics(m, lid); } // uniform: NORM and m are
  if (b >= blocks) { return; }
  var x: array<f32, 32>;
  var amax = 0.0;
  for (var i = 0u; i < 32u; i++) {
    let c = b * 32u + i;
    var v = a_at(m, c);
    if (NORM != NORM_NONE) {
      // matvec_fusion.wgsl's `normalised`, one column at a time (pivot and mean are 0 for RMSNorm).
      var shift = 0.0;
      if (NORM == NORM_LAYER) { shift = norm_bias[c]; }
      v = ((v - s.x) - s.y) * s.z * norm_weight[c] + shift;
    }
    x[i] = v;
    amax = max(amax, abs(v));
  }
  let d = amax / 127.0;
  let inverse = select(0.0, 127.0 / amax, amax > 0.0);
  for (var w = 0u; w < 8u; w++) {
    let q = vec4<i32>(round(vec4<f32>(x[4u * w], x[4u * w + 1u], x[4u * w + 2u], x[4u * w + 3u]) * inverse));
    a_quants[(m * blocks + b) * 8u + w] = pack4xI8(q);
  }
  a_scales[m * blocks + b] = d;
}

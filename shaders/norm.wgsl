// RMSNorm and LayerNorm over each row of x (M, C): one workgroup per row, WG invocations stride
// the row.
//
// rms_norm:   out = x / sqrt(mean(x^2) + eps) * weight
// rms_norm_add: out = residual + x / sqrt(mean(x^2) + eps) * weight (Gemma's post-attention and
//             post-MLP norms, which normalise a sublayer's output before the residual add)
// rms_norm_add_norm: rms_norm_add, then next_out = out / sqrt(mean(out^2) + eps) * next_weight: the
//             next sublayer's pre-norm of the new residual stream, in the same pass (one dispatch, and
//             one read of the row, fewer than the two norms apart)
// layer_norm: out = (x - mean) / sqrt(var + eps) * weight + bias, var = mean((x - mean)^2), computed
//             in two passes (mean first, then squared deviations), both relative to the row's first
//             element, so a mean far from zero costs no precision.
//! include grid.wgsl
//! include reduce.wgsl

struct Params {
  rows: u32,           // M: rows
  cols: u32,           // C: elements per row
  x_offset: u32,       // first element of x (elements)
  weight_offset: u32,  // first element of weight (elements)
  bias_offset: u32,    // first element of bias (elements); rms_norm ignores it
  out_offset: u32,     // first element of out (elements)
  eps: f32,            // added to the mean square / variance (unitless)
  residual_offset: u32, // first element of residual (elements); rms_norm_add(_norm) only
}

override WG: u32 = 256;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;         // (M, C)
@group(0) @binding(2) var<storage, read> weight: array<f32>;    // (C)
@group(0) @binding(3) var<storage, read> bias: array<f32>;      // (C); rms_norm leaves it unbound
@group(0) @binding(4) var<storage, read_write> out: array<f32>; // (M, C); must not alias x
@group(0) @binding(5) var<storage, read> residual: array<f32>;  // (M, C); rms_norm_add(_norm) only, must not alias out
@group(0) @binding(6) var<storage, read> next_weight: array<f32>;         // (C) from 0; rms_norm_add_norm only
@group(0) @binding(7) var<storage, read_write> next_out: array<f32>;      // (M, C) from out_offset; rms_norm_add_norm only

// 1 / sqrt(mean(x[src ..][c]^2) + eps) of one row, from every invocation of the workgroup (call it in
// uniform control flow: the sum synchronises the workgroup).
fn rms_scale(src: u32, lid: u32) -> f32 {
  var squares = 0.0;
  for (var c = lid; c < params.cols; c += WG) {
    let v = x[src + c];
    squares += v * v;
  }
  let mean_square = workgroup_sum(lid, squares) / f32(params.cols);
  return 1.0 / sqrt(mean_square + params.eps);
}

@compute @workgroup_size(WG)
fn rms_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
  let row = grid_group(wid, nwg);
  if (row >= params.rows) { return; }
  let src = params.x_offset + row * params.cols;
  let dst = params.out_offset + row * params.cols;
  let scale = rms_scale(src, lid);
  for (var c = lid; c < params.cols; c += WG) {
    out[dst + c] = x[src + c] * scale * weight[params.weight_offset + c];
  }
}

@compute @workgroup_size(WG)
fn layer_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
  let row = grid_group(wid, nwg);
  if (row >= params.rows) { return; }
  let src = params.x_offset + row * params.cols;
  let dst = params.out_offset + row * params.cols;
  let n = f32(params.cols);
  // Deviations are taken from the row's first element, then from the mean: a mean far from zero
  // (|mean| >> std) then costs no precision, where a plain sum would round it away.
  let pivot = x[src];
  var total = 0.0;
  for (var c = lid; c < params.cols; c += WG) { total += x[src + c] - pivot; }
  let mean = workgroup_sum(lid, total) / n; // mean of (x - pivot)
  var squares = 0.0;
  for (var c = lid; c < params.cols; c += WG) {
    let d = (x[src + c] - pivot) - mean;
    squares += d * d;
  }
  let variance = workgroup_sum(lid, squares) / n;
  let scale = 1.0 / sqrt(variance + params.eps);
  for (var c = lid; c < params.cols; c += WG) {
    let d = (x[src + c] - pivot) - mean;
    out[dst + c] = d * scale * weight[params.weight_offset + c] + bias[params.bias_offset + c];
  }
}

// Element c of row `row`'s residual + x / rms(x) * weight (scale = 1 / rms(x)), written to out and returned.
fn add_normalised(row: u32, c: u32, scale: f32) -> f32 {
  let at = row * params.cols + c;
  let v = residual[params.residual_offset + at] + x[params.x_offset + at] * scale * weight[params.weight_offset + c];
  out[params.out_offset + at] = v;
  return v;
}

@compute @workgroup_size(WG)
fn rms_norm_add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
  let row = grid_group(wid, nwg);
  if (row >= params.rows) { return; }
  let scale = rms_scale(params.x_offset + row * params.cols, lid);
  for (var c = lid; c < params.cols; c += WG) { add_normalised(row, c, scale); }
}

@compute @workgroup_size(WG)
fn rms_norm_add_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
  let row = grid_group(wid, nwg);
  if (row >= params.rows) { return; }
  let dst = params.out_offset + row * params.cols;
  let scale = rms_scale(params.x_offset + row * params.cols, lid);
  var squares = 0.0;
  for (var c = lid; c < params.cols; c += WG) {
    let v = add_normalised(row, c, scale);
    squares += v * v;
  }
  let next_scale = 1.0 / sqrt(workgroup_sum(lid, squares) / f32(params.cols) + params.eps);
  // Each invocation reads back only the elements it wrote itself.
  for (var c = lid; c < params.cols; c += WG) {
    next_out[dst + c] = out[dst + c] * next_scale * next_weight[c];
  }
}

// Softmax and log-softmax over each row of x (M, C): one workgroup per row, WG invocations stride
// the row. Two passes over the row: running (max, sum of exp) statistics, then the output.
//
// softmax(x)_c     = exp(x_c - m) / s                 with m = max_c x_c, s = sum_c exp(x_c - m)
// log_softmax(x)_c = (x_c - m) - log(s)
// A -inf entry (a mask) gives probability 0 and log-probability -inf. A row of only -inf gives all
// zeros (softmax) and all -inf (log-softmax) instead of NaN. Very negative finite values (-1e30)
// are ordinary values. +inf and NaN entries are not supported.
//
// The in_place entry point reads and writes `out` (binding 1 unbound), since WebGPU forbids
// binding one buffer as both read-only and writable storage in a dispatch.
//! include grid.wgsl
//! include reduce.wgsl

struct Params {
  rows: u32,        // M: rows
  cols: u32,        // C: elements per row
  in_offset: u32,   // first element of the input (elements), in x or, in place, in out
  out_offset: u32,  // first element of out (elements)
}

override WG: u32 = 256;
// log-softmax instead of softmax.
override LOG: bool = false;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;         // (M, C); unbound in place
@group(0) @binding(2) var<storage, read_write> out: array<f32>; // (M, C)

// (shift, scale) for softmax: out = exp(v - shift) * scale; all zeros for a fully masked row.
fn softmax_coefficients(stats: vec2<f32>) -> vec2<f32> {
  return vec2<f32>(stats.x, select(1.0 / stats.y, 0.0, stats.y == 0.0));
}

// (shift, log_sum) for log-softmax: out = (v - shift) - log_sum; a fully masked row keeps its -inf.
fn log_softmax_coefficients(stats: vec2<f32>) -> vec2<f32> {
  let masked = stats.y == 0.0;
  return vec2<f32>(select(stats.x, 0.0, masked), select(log(stats.y), 0.0, masked));
}

// One row's output value from its input value and the row's coefficients: softmax, or log-softmax
// when the LOG override is set (structural variant chosen at pipeline creation).
fn row_output(v: f32, stats: vec2<f32>) -> f32 {
  if (LOG) {
    let k = log_softmax_coefficients(stats);
    return (v - k.x) - k.y;
  }
  let k = softmax_coefficients(stats);
  return exp(v - k.x) * k.y;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let row = grid_group(wid, nwg);
  if (row >= params.rows) { return; }
  let src = params.in_offset + row * params.cols;
  let dst = params.out_offset + row * params.cols;
  var stats = softmax_stats_empty();
  for (var c = lid; c < params.cols; c += WG) { stats = softmax_stats_push(stats, x[src + c]); }
  let total = workgroup_softmax_stats(lid, stats);
  for (var c = lid; c < params.cols; c += WG) { out[dst + c] = row_output(x[src + c], total); }
}

@compute @workgroup_size(WG)
fn in_place(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
  let row = grid_group(wid, nwg);
  if (row >= params.rows) { return; }
  let src = params.in_offset + row * params.cols;
  let dst = params.out_offset + row * params.cols;
  var stats = softmax_stats_empty();
  for (var c = lid; c < params.cols; c += WG) { stats = softmax_stats_push(stats, out[src + c]); }
  let total = workgroup_softmax_stats(lid, stats);
  for (var c = lid; c < params.cols; c += WG) { out[dst + c] = row_output(out[src + c], total); }
}

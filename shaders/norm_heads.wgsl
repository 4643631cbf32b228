// RMSNorm of every attention head of every row, in place (Qwen3, Gemma 3: each query and key head is
// normalised over its D elements, with a weight of D, before RoPE). The heads lie in the fused qkv
// rows: row r's heads start at `offset + r * row_stride`, `heads` of them back to back, D apart;
// heads [0, q_heads) take weight[0..D) (q_norm), the rest weight[D..2D) (k_norm). One workgroup per
// (row, head); WG invocations stride the head.
//
// out = x / sqrt(mean(x^2) + eps) * weight
//! include grid.wgsl
//! include reduce.wgsl

struct Params {
  rows: u32,        // R: rows
  heads: u32,       // heads per row normalised (query heads, then key heads)
  head_dim: u32,    // D: elements per head
  row_stride: u32,  // elements from one row's first head to the next row's
  offset: u32,      // first element of row 0's first head
  q_heads: u32,     // heads that take the first D weights; the rest take the next D
  eps: f32,         // added to the mean square (unitless)
}

override WG: u32 = 64;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>; // (R, row_stride), heads at offset..
@group(0) @binding(2) var<storage, read> weight: array<f32>;  // (2, D): q_norm then k_norm

@compute @workgroup_size(WG)
fn rms_norm_heads(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
  let group = grid_group(wid, nwg);
  if (group >= params.rows * params.heads) { return; }
  let row = group / params.heads;
  let head = group % params.heads;
  let base = params.offset + row * params.row_stride + head * params.head_dim;
  let w_base = select(params.head_dim, 0u, head < params.q_heads);
  var squares = 0.0;
  for (var d = lid; d < params.head_dim; d += WG) {
    let v = x[base + d];
    squares += v * v;
  }
  let scale = 1.0 / sqrt(workgroup_sum(lid, squares) / f32(params.head_dim) + params.eps);
  // Each invocation rewrites only the elements it read above.
  for (var d = lid; d < params.head_dim; d += WG) {
    x[base + d] = x[base + d] * scale * weight[w_base + d];
  }
}

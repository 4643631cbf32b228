// rope_kv_write.wgsl with Qwen3's and Gemma 3's RMSNorm of each query and key head before RoPE (their
// q_norm / k_norm), so a layer needs no head-norm dispatch: composed in place of
// rope_kv_write_plain.wgsl. Each head becomes x / sqrt(mean(x^2) + eps) * weight, its squares summed
// by one workgroup (reduce.wgsl), then is rotated. Query heads take head_weight[0..D), key heads head_weight[D..2D); values are not normalised.
// The queries are rewritten in place, so the grid is one workgroup per (row, head), query heads then
// key heads: its invocations sum the head's squares and reduce them (the reduction's barriers order
// every read of the head before any write), then run the head's items (its Rd/2 pairs, or its
// D / KV_GROUP key/value groups) and normalise a query head's elements [Rd, D), which no pair holds.
//! include reduce.wgsl

override HEAD_NORM_EPS: f32 = 0.0; // added to a head's mean square (unitless)

@group(0) @binding(7) var<storage, read> head_weight: array<f32>; // (2, D): q_norm then k_norm

// Element x of a head, normalised (scale: the head's 1 / rms; w: the element's weight).
fn head_normed(x: f32, scale: f32, w: u32) -> f32 {
  return x * scale * head_weight[w];
}

fn rope_kv_write(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, interleaved: bool) {
  let heads = params.q_heads + params.kv_heads;
  let group = grid_group(wid, nwg);
  if (group >= params.rows * heads) { return; }
  let row = group / heads;
  let h = group % heads;
  let is_query = h < params.q_heads;
  let kv_h = h - params.q_heads; // wraps for a query head, where it goes unused
  let base = row * params.row_stride + select(params.k_offset + kv_h * params.head_dim, params.q_offset + h * params.head_dim, is_query);
  var squares = 0.0;
  for (var d = lid; d < params.head_dim; d += WG) {
    let v = qkv[base + d];
    squares += v * v;
  }
  let scale = 1.0 / sqrt(workgroup_sum(lid, squares) / f32(params.head_dim) + HEAD_NORM_EPS);
  let half = params.rotary_dims / 2u;
  let kv_head_items = params.head_dim / KV_GROUP;
  let first = select(params.q_heads * half + kv_h * kv_head_items, h * half, is_query);
  let count = select(kv_head_items, half, is_query);
  for (var j = lid; j < count; j += WG) {
    rope_kv_item(row, first + j, scale, interleaved);
  }
  if (is_query) {
    for (var d = params.rotary_dims + lid; d < params.head_dim; d += WG) {
      qkv[base + d] = head_normed(qkv[base + d], scale, d);
    }
  }
}

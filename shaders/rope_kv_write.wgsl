// RoPE of a step's queries and keys, fused with the KV-cache write: one dispatch where RoPE then
// kv_write (attention_kv_write.wgsl) took two.
//
// qkv holds R token rows `row_stride` elements apart, with Hq query heads at q_offset and Hkv key and
// value heads at k_offset and v_offset (D elements each). Each row's (table_row, position) metadata
// says where its key and value go in the paged cache (attention_common.wgsl) and by which position to
// rotate. Per row, the invocations are
//   Hq * Rd/2 query pairs, each rotated in place (rope.wgsl's rotate), then
//   Hkv * D / KV_GROUP key/value groups, each storing KV_GROUP rotated key elements and as many value
//   elements as the cache's dtype keeps them (one f32, an f16 pair, a q8_0 block of 32).
// The keys in qkv stay unrotated: attention reads keys only from the cache. A key element computes its
// pair's rotation itself (the same expression rope.wgsl evaluates), so no invocation waits for another.
// Pairs (rotary dims Rd, pair i < Rd/2, angle = position * inv_freq[i]):
//   rope_kv_write_half        (HF rotate_half):  elements (i, i + Rd/2)
//   rope_kv_write_interleaved (llama.cpp / GGUF): elements (2i, 2i + 1)
//   (a, b) -> (a cos - b sin, b cos + a sin); elements [Rd, D) are copied as they are.
// A row whose position is past its table row, or whose block the pool does not have, writes nothing
// to the caches (as kv_write).
// HEAD_NORM (Qwen3, Gemma 3): every query and key head is RMS-normalised first, as norm_heads.wgsl
// does it (the same statistics, eps and expression x * scale * weight; query heads take
// head_weight[0..D), key heads head_weight[D..2D)), so a layer needs no head-norm dispatch. The
// queries are rewritten in place, so the grid is one workgroup per (row, head): its invocations sum
// the head's squares, reduce them (the barriers order those reads before any write), then run the
// head's items, a query head also normalising its elements [Rd, D). The values are never normalised.
// Compose as: the KV dtype module and its store module (kv_f32.wgsl, kv_f32_store.wgsl, ...), this file.
// Legend: R = params.rows, Hq/Hkv = q_heads/kv_heads, D = head_dim, Rd = rotary_dims,
// N = kv_blocks, TW = table_width.
//! include grid.wgsl
//! include rope_common.wgsl
//! include attention_common.wgsl
//! include reduce.wgsl

struct RopeKvWriteParams {
  rows: u32,          // R: token rows
  q_heads: u32,       // Hq: query heads in each row
  kv_heads: u32,      // Hkv: key / value heads in each row
  head_dim: u32,      // D: elements per head
  rotary_dims: u32,   // Rd: rotated elements per head, even, <= D
  table_width: u32,   // TW: block ids per table row (a row holds positions < TW * 16)
  kv_blocks: u32,     // N: blocks in each pool
  row_stride: u32,    // elements from one row of qkv to the next
  q_offset: u32,      // element of row 0, query head 0 in qkv
  k_offset: u32,      // element of row 0, key head 0 in qkv
  v_offset: u32,      // element of row 0, value head 0 in qkv
  meta_offset: u32,   // u32 index of row 0's (table_row, position) pair in row_meta
}

override WG: u32 = 64;
override HEAD_NORM: bool = false;  // normalise each query and key head first (see above)
override HEAD_NORM_EPS: f32 = 0.0; // added to a head's mean square (unitless)

@group(0) @binding(0) var<uniform> params: RopeKvWriteParams;
@group(0) @binding(1) var<storage, read_write> qkv: array<f32>;     // (R, row_stride): queries rotated in place
@group(0) @binding(2) var<storage, read> row_meta: array<u32>;          // (R, 2) at meta_offset: table_row, position
@group(0) @binding(3) var<storage, read> inv_freq: array<f32>;          // (Rd / 2) radians per position
@group(0) @binding(4) var<storage, read_write> k_cache: array<KvWord>;  // (N, Hkv, 16, D) as the dtype stores it
@group(0) @binding(5) var<storage, read_write> v_cache: array<KvWord>;  // (N, Hkv, 16, D) as the dtype stores it
@group(0) @binding(6) var<storage, read> block_table: array<u32>;       // (rows, TW) block ids
@group(0) @binding(7) var<storage, read> head_weight: array<f32>;       // (2, D): q_norm then k_norm; a placeholder without HEAD_NORM

// The two elements of the pair that element d of a head (d < Rd) belongs to, relative to the head,
// and the pair's index (its frequency).
fn pair_of(d: u32, interleaved: bool) -> vec3<u32> {
  let half = params.rotary_dims / 2u;
  if (interleaved) {
    let i = d / 2u;
    return vec3<u32>(2u * i, 2u * i + 1u, i);
  }
  let i = d % half;
  return vec3<u32>(i, i + half, i);
}

// Element x of a head as the head norm leaves it (w: its weight's index); x itself without HEAD_NORM.
fn head_normed(x: f32, scale: f32, w: u32) -> f32 {
  if (HEAD_NORM) { return x * scale * head_weight[w]; }
  return x;
}

// Items per query head: its Rd/2 pairs, and with HEAD_NORM its D - Rd unrotated elements.
fn query_head_items() -> u32 {
  return params.rotary_dims / 2u + select(0u, params.head_dim - params.rotary_dims, HEAD_NORM);
}

// Item e of a row: a query item, or a key/value group. scale: the head's 1 / rms (HEAD_NORM only).
fn rope_kv_item(row: u32, e: u32, scale: f32, interleaved: bool) {
  let half = params.rotary_dims / 2u;
  let q_head_items = query_head_items();
  let q_items = params.q_heads * q_head_items;
  let table_row = row_meta[params.meta_offset + 2u * row];
  let pos = row_meta[params.meta_offset + 2u * row + 1u];
  let row_start = row * params.row_stride;
  if (e < q_items) {
    let head = params.q_offset + row_start + (e / q_head_items) * params.head_dim;
    let j = e % q_head_items;
    if (HEAD_NORM && j >= half) {
      // An element past the rotary dims: normalised only.
      let d = params.rotary_dims + (j - half);
      qkv[head + d] = head_normed(qkv[head + d], scale, d);
      return;
    }
    // A query pair, rotated in place.
    let p = pair_of(select(j, 2u * j, interleaved), interleaved);
    let angle = rope_angle(pos, inv_freq[p.z]);
    let c = cos(angle);
    let s = sin(angle);
    let a = head_normed(qkv[head + p.x], scale, p.x);
    let b = head_normed(qkv[head + p.y], scale, p.y);
    qkv[head + p.x] = a * c - b * s;
    qkv[head + p.y] = b * c + a * s;
    return;
  }
  let kv0 = (e - q_items) * KV_GROUP;
  let block_elems = kv_block_elements(params.kv_heads, params.head_dim);
  let block = kv_block(table_row, pos, params.table_width, kv_pool_blocks(params.kv_blocks, block_elems));
  if (block == KV_NO_BLOCK) {
    return;
  }
  let h = kv0 / params.head_dim;
  let head = params.k_offset + row_start + h * params.head_dim;
  let w = params.head_dim; // the key heads' weights
  var kg: array<f32, KV_GROUP>;
  var vg: array<f32, KV_GROUP>;
  for (var g = 0u; g < KV_GROUP; g++) {
    let d = kv0 % params.head_dim + g;
    var key = head_normed(qkv[head + d], scale, w + d);
    if (d < params.rotary_dims) {
      let p = pair_of(d, interleaved);
      let angle = rope_angle(pos, inv_freq[p.z]);
      let c = cos(angle);
      let s = sin(angle);
      let a = head_normed(qkv[head + p.x], scale, w + p.x);
      let b = head_normed(qkv[head + p.y], scale, w + p.y);
      key = select(b * c + a * s, a * c - b * s, d == p.x);
    }
    kg[g] = key;
    vg[g] = qkv[params.v_offset + row_start + kv0 + g];
  }
  kv_store(block, block_elems, kv_in_block(h, pos, params.head_dim) + kv0 % params.head_dim, kg, vg);
}

// One invocation per item of every row.
fn rope_kv_write_items(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, interleaved: bool) {
  let i = grid_index(wid, nwg, lid, WG);
  let per_row = params.q_heads * query_head_items() + params.kv_heads * params.head_dim / KV_GROUP;
  if (i < params.rows * per_row) {
    rope_kv_item(i / per_row, i % per_row, 1.0, interleaved);
  }
}

// HEAD_NORM: one workgroup per (row, head), query heads then key heads. Call from uniform control flow.
fn rope_kv_write_heads(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, interleaved: bool) {
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
  let kv_head_items = params.head_dim / KV_GROUP;
  let first = select(params.q_heads * query_head_items() + kv_h * kv_head_items, h * query_head_items(), is_query);
  let count = select(kv_head_items, query_head_items(), is_query);
  for (var j = lid; j < count; j += WG) {
    rope_kv_item(row, first + j, scale, interleaved);
  }
}

fn rope_kv_write(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, interleaved: bool) {
  if (HEAD_NORM) {
    rope_kv_write_heads(wid, nwg, lid, interleaved);
  } else {
    rope_kv_write_items(wid, nwg, lid, interleaved);
  }
}

@compute @workgroup_size(WG)
fn rope_kv_write_half(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
  rope_kv_write(wid, nwg, lid, false);
}

@compute @workgroup_size(WG)
fn rope_kv_write_interleaved(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                             @builtin(local_invocation_index) lid: u32) {
  rope_kv_write(wid, nwg, lid, true);
}

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
// Compose as: the KV dtype module and its store module (kv_f32.wgsl, kv_f32_store.wgsl, ...), this file,
// and the variant module, which provides head_normed and rope_kv_write (the grid):
//   rope_kv_write_plain.wgsl      one invocation per item, as above;
//   rope_kv_write_head_norm.wgsl  Qwen3's and Gemma 3's RMSNorm of each query and key head first.
// Legend: R = params.rows, Hq/Hkv = q_heads/kv_heads, D = head_dim, Rd = rotary_dims,
// N = kv_blocks, TW = table_width.
//! include grid.wgsl
//! include rope_common.wgsl
//! include attention_common.wgsl

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

@group(0) @binding(0) var<uniform> params: RopeKvWriteParams;
@group(0) @binding(1) var<storage, read_write> qkv: array<f32>;     // (R, row_stride): queries rotated in place
@group(0) @binding(2) var<storage, read> row_meta: array<u32>;          // (R, 2) at meta_offset: table_row, position
@group(0) @binding(3) var<storage, read> inv_freq: array<f32>;          // (Rd / 2) radians per position
@group(0) @binding(4) var<storage, read_write> k_cache: array<KvWord>;  // (N, Hkv, 16, D) as the dtype stores it
@group(0) @binding(5) var<storage, read_write> v_cache: array<KvWord>;  // (N, Hkv, 16, D) as the dtype stores it
@group(0) @binding(6) var<storage, read> block_table: array<u32>;       // (rows, TW) block ids

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

// Item e of a row (< Hq * Rd/2 + Hkv * D / KV_GROUP): a query pair, or a key/value group. scale: the
// head's 1 / rms for head_normed.
fn rope_kv_item(row: u32, e: u32, scale: f32, interleaved: bool) {
  let half = params.rotary_dims / 2u;
  let q_items = params.q_heads * half;
  let table_row = row_meta[params.meta_offset + 2u * row];
  let pos = row_meta[params.meta_offset + 2u * row + 1u];
  let row_start = row * params.row_stride;
  if (e < q_items) {
    // A query pair, rotated in place.
    let head = params.q_offset + row_start + (e / half) * params.head_dim;
    let p = pair_of(select(e % half, 2u * (e % half), interleaved), interleaved);
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
  let w = params.head_dim; // the key heads' weights follow the query heads'
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

// KV cache write: copy the new K and V rows of a step into the paged cache (attention_common.wgsl)
// at each row's position. One invocation per (row, kv head, group of KV_GROUP dims) stores one
// group of K and of V as the dtype keeps it (KV_GROUP = 1 for f32, 2 for f16 pairs, 32 for a q8_0
// block), so no two invocations share a stored word. Each row has its own (table_row, position)
// metadata, so one dispatch serves a decode batch of different sequences; a prefill passes the same
// table row with positions p0 .. p0 + T - 1.
// Compose as: the KV dtype module and its store module (kv_f16.wgsl, kv_f16_store.wgsl, ...), this file.
// Legend: R = params.rows, Hkv = params.kv_heads, D = params.head_dim, N = params.kv_blocks,
// TW = params.table_width.
//! include grid.wgsl
//! include attention_common.wgsl

struct KvWriteParams {
  rows: u32,          // R: new rows (tokens) to write
  kv_heads: u32,      // Hkv: key/value heads
  head_dim: u32,      // D: elements per head (a multiple of KV_GROUP)
  table_width: u32,   // TW: block ids per table row (a row holds positions < TW * 16)
  kv_blocks: u32,     // N: blocks in each pool
  k_offset: u32,      // element of row 0, head 0, dim 0 in k
  k_row_stride: u32,  // elements between consecutive rows of k (>= Hkv * D)
  v_offset: u32,      // element of row 0, head 0, dim 0 in v
  v_row_stride: u32,  // elements between consecutive rows of v (>= Hkv * D)
  meta_offset: u32,   // u32 index of row 0's (table_row, position) pair in row_meta
}

override WG: u32 = 256;

@group(0) @binding(0) var<uniform> params: KvWriteParams;
@group(0) @binding(1) var<storage, read> k: array<f32>;                 // (R, k_row_stride): (Hkv, D) at k_offset
@group(0) @binding(2) var<storage, read> v: array<f32>;                 // (R, v_row_stride): (Hkv, D) at v_offset; may be k's buffer
@group(0) @binding(3) var<storage, read> row_meta: array<u32>;          // (R, 2) at meta_offset: table_row, position (tokens)
@group(0) @binding(4) var<storage, read_write> k_cache: array<KvWord>;  // (N, Hkv, 16, D) as the dtype stores it
@group(0) @binding(5) var<storage, read_write> v_cache: array<KvWord>;  // (N, Hkv, 16, D) as the dtype stores it
@group(0) @binding(6) var<storage, read> block_table: array<u32>;       // (rows, TW) block ids

@compute @workgroup_size(WG)
fn kv_write(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
  let i = grid_index(wid, nwg, lid, WG);
  let row_len = params.kv_heads * params.head_dim;
  let groups = row_len / KV_GROUP;
  if (i >= params.rows * groups) { return; }
  let row = i / groups;
  let e = (i % groups) * KV_GROUP;
  let table_row = row_meta[params.meta_offset + 2u * row];
  let pos = row_meta[params.meta_offset + 2u * row + 1u];
  // A position past the row or a block the pool does not have would overwrite another sequence's
  // keys (or memory past the pool): such a row is dropped (the host validates what it can see).
  let block_elems = kv_block_elements(params.kv_heads, params.head_dim);
  let block = kv_block(table_row, pos, params.table_width, kv_pool_blocks(params.kv_blocks, block_elems));
  if (block == KV_NO_BLOCK) {
    return;
  }
  var kg: array<f32, KV_GROUP>;
  var vg: array<f32, KV_GROUP>;
  for (var g = 0u; g < KV_GROUP; g++) {
    kg[g] = k[params.k_offset + row * params.k_row_stride + e + g];
    vg[g] = v[params.v_offset + row * params.v_row_stride + e + g];
  }
  let head = e / params.head_dim;
  kv_store(block, block_elems, kv_in_block(head, pos, params.head_dim) + e % params.head_dim, kg, vg);
}

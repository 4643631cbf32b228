// Causal flash attention for prefill, shared by both tiers (attention.wgsl, the baseline and
// reference, and attention_subgroup.wgsl): the run contract (uniforms, bindings), the Q/K/V tiles in
// workgroup memory, and every step the two take alike: which queries and keys a workgroup covers,
// the cooperative Q and K/V tile loads, which keys a query sees, and their scores. The including file
// keeps only how a query row's softmax is reduced and its output accumulated.
//
// T query tokens of one sequence attend its paged KV cache (attention_common.wgsl), reached through
// row `table_row` of the block table. Query t sits at position past_len + t and sees keys
// 0 ..= past_len + t (its own key included: the step's new K/V rows are written to the cache before
// this runs); with a sliding window only the last `window` of them (attention_common.wgsl), and key
// tiles wholly before a query tile's window are never loaded. Keys whose block the table does not
// name (attention_common.wgsl's kv_block) are masked. A workgroup takes BQ queries of one head (grid
// (ceil(T / BQ), Hq)); K and V tiles of BK keys pass through workgroup memory, everything in f32.
// Compose with the KV dtype module (kv_f32.wgsl, kv_f16.wgsl, kv_q8_0.wgsl) first.
// Legend: T = params.tokens, Hq = params.q_heads, Hkv = Hq / params.group, N = params.kv_blocks,
// TW = params.table_width, D = head dim (override).
//! include attention_common.wgsl

struct PrefillAttentionParams {
  tokens: u32,          // T: query rows
  past_len: u32,        // tokens already in the region before this step (query t is at past_len + t)
  window: u32,          // sliding window in keys, the query's own included (0 = unlimited)
  table_row: u32,       // the sequence's row of block_table
  table_width: u32,     // TW: block ids per table row (a sequence holds at most TW * 16 tokens)
  kv_blocks: u32,       // N: blocks in each pool
  q_heads: u32,         // Hq: query heads
  group: u32,           // Hq / Hkv: query heads sharing one kv head (head h reads kv head h / group)
  q_offset: u32,        // element of token 0, head 0, dim 0 in q
  q_row_stride: u32,    // elements between consecutive tokens of q (>= Hq * D)
  out_offset: u32,      // element of token 0, head 0, dim 0 in out
  out_row_stride: u32,  // elements between consecutive tokens of out (>= Hq * D)
  scale: f32,           // multiplies q.k before the softmax (1/sqrt(D) by default)
}

override D: u32 = 64;          // head dim (elements)
override BQ: u32 = 16;         // queries per workgroup
override BK: u32 = 16;         // keys per tile
override DP: u32 = D + 1u;     // row length of the Q/K/V tiles, padded so a column read hits distinct banks
override Q_TILE: u32 = BQ * DP;
override KV_TILE: u32 = BK * DP;

@group(0) @binding(0) var<uniform> params: PrefillAttentionParams;
@group(0) @binding(1) var<storage, read> q: array<f32>;              // (T, q_row_stride): (Hq, D) at q_offset
@group(0) @binding(2) var<storage, read> k_cache: array<KvWord>;     // (N, Hkv, 16, D) as the dtype stores it
@group(0) @binding(3) var<storage, read> v_cache: array<KvWord>;     // (N, Hkv, 16, D) as the dtype stores it
@group(0) @binding(4) var<storage, read_write> out: array<f32>;      // (T, out_row_stride): (Hq, D) at out_offset
@group(0) @binding(5) var<storage, read> block_table: array<u32>;    // (rows, TW) block ids

var<workgroup> q_tile: array<f32, Q_TILE>;    // (BQ, DP): queries, pre-multiplied by scale
var<workgroup> k_tile: array<f32, KV_TILE>;   // (BK, DP)
var<workgroup> v_tile: array<f32, KV_TILE>;   // (BK, DP)

// What a workgroup covers: queries q0 .. q0 + BQ - 1 of head h, and the keys k_first .. n_keys - 1
// they need, from the first key its first query sees (0 without a window) up to and including its
// last valid query's position. The same in every invocation, so loops over it are uniform.
struct PrefillTile {
  q0: u32,
  h: u32,
  k_first: u32,
  n_keys: u32,
  kv_head: u32,
  block_elems: u32,   // elements of one KV block (attention_common.wgsl)
  pool_blocks: u32,   // blocks the pools really hold
}

// The tile of workgroup `wid` of the grid (ceil(T / BQ), Hq).
fn prefill_tile(wid: vec3<u32>) -> PrefillTile {
  let q0 = wid.x * BQ;
  let block_elems = kv_block_elements(params.q_heads / params.group, D);
  return PrefillTile(q0, wid.y, window_start(params.past_len + q0, params.window),
                     params.past_len + min(q0 + BQ, params.tokens), wid.y / params.group,
                     block_elems, kv_pool_blocks(params.kv_blocks, block_elems));
}

// The block holding key `key` of the sequence, or KV_NO_BLOCK.
fn key_block(tile: PrefillTile, key: u32) -> u32 {
  return kv_block(params.table_row, key, params.table_width, tile.pool_blocks);
}

// The tile's queries into q_tile, pre-multiplied by scale (0 for rows past T). Invocation `lid` of
// `n_inv` loads elements lid, lid + n_inv, ...; the first K/V load's barrier publishes them.
fn load_q_tile(tile: PrefillTile, lid: u32, n_inv: u32) {
  for (var e = lid; e < BQ * D; e += n_inv) {
    let qi = e / D;
    let d = e % D;
    var x = 0.0;
    if (tile.q0 + qi < params.tokens) {
      x = q[params.q_offset + (tile.q0 + qi) * params.q_row_stride + tile.h * D + d] * params.scale;
    }
    q_tile[qi * DP + d] = x;
  }
}

// Keys k0 .. k0 + BK - 1 into k_tile and v_tile (0 for a key at or past n_keys, or in no block),
// shared out as load_q_tile does. Its first barrier waits until the previous tile is fully read (and
// q_tile written, on the first pass), its second publishes this tile. Every invocation calls it, once
// per key tile, in uniform control flow.
fn load_kv_tile(tile: PrefillTile, k0: u32, lid: u32, n_inv: u32) {
  workgroupBarrier();
  for (var e = lid; e < BK * D; e += n_inv) {
    let kj = e / D;
    let d = e % D;
    var kx = 0.0;
    var vx = 0.0;
    let block = key_block(tile, k0 + kj);
    if (k0 + kj < tile.n_keys && block != KV_NO_BLOCK) {
      let at = kv_in_block(tile.kv_head, k0 + kj, D) + d;
      kx = k_at(block, tile.block_elems, at);
      vx = v_at(block, tile.block_elems, at);
    }
    k_tile[kj * DP + d] = kx;
    v_tile[kj * DP + d] = vx;
  }
  workgroupBarrier();
}

// Whether query i of the tile sees key `key`: the query is one of the T, the key is at or before its
// position and inside its window, and the table names the key's block.
fn key_visible(tile: PrefillTile, i: u32, key: u32) -> bool {
  let pos = params.past_len + tile.q0 + i;
  return tile.q0 + i < params.tokens && key <= pos && key >= window_start(pos, params.window) &&
         key_block(tile, key) != KV_NO_BLOCK;
}

// Score of query i against key j of the loaded tiles: q.k (q carries the scale), soft-capped.
fn tile_score(i: u32, j: u32) -> f32 {
  var dot = 0.0;
  for (var d = 0u; d < D; d++) {
    dot += q_tile[i * DP + d] * k_tile[j * DP + d];
  }
  return soft_capped(dot);
}

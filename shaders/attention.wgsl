// Causal flash attention for prefill: T query tokens of one sequence attend its paged KV cache
// (attention_common.wgsl), reached through row `table_row` of the block table.
// Query t sits at position past_len + t and sees keys 0 ..= past_len + t (its own key included: the
// step's new K/V rows are written to the cache before this runs); with a sliding window only the last
// `window` of them (attention_common.wgsl), and key tiles wholly before a query tile's window are
// never loaded.
//
// One workgroup = BQ queries of one head, laid out (BQ, BK) invocations: invocation (i, j) scores
// query i against key j of the current tile, and owns output dims j, j + BK, j + 2 BK, ... of query i.
// K and V tiles of BK keys pass through workgroup memory; the softmax is online (running max m and
// sum l per query, the accumulator rescaled by exp(m_old - m_new)), everything in f32.
// Keys whose block the table does not name (attention_common.wgsl's kv_block) are masked.
// Compose as: the KV dtype module (kv_f32.wgsl, kv_f16.wgsl, kv_q8_0.wgsl), this file.
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
override BK: u32 = 16;         // keys per tile; the workgroup is BK x BQ invocations
override DP: u32 = D + 1u;     // row length of the Q/K/V tiles, padded so a column read hits distinct banks
override DPI: u32 = (D + BK - 1u) / BK;  // output dims per invocation (<= ACC_MAX, checked in TS)
override Q_TILE: u32 = BQ * DP;
override KV_TILE: u32 = BK * DP;
override S_TILE: u32 = BQ * BK;
const ACC_MAX: u32 = 16u;

@group(0) @binding(0) var<uniform> params: PrefillAttentionParams;
@group(0) @binding(1) var<storage, read> q: array<f32>;              // (T, q_row_stride): (Hq, D) at q_offset
@group(0) @binding(2) var<storage, read> k_cache: array<KvWord>;     // (N, Hkv, 16, D) as the dtype stores it
@group(0) @binding(3) var<storage, read> v_cache: array<KvWord>;     // (N, Hkv, 16, D) as the dtype stores it
@group(0) @binding(4) var<storage, read_write> out: array<f32>;      // (T, out_row_stride): (Hq, D) at out_offset
@group(0) @binding(5) var<storage, read> block_table: array<u32>;    // (rows, TW) block ids

var<workgroup> q_tile: array<f32, Q_TILE>;    // (BQ, DP): queries, pre-multiplied by scale
var<workgroup> k_tile: array<f32, KV_TILE>;   // (BK, DP)
var<workgroup> v_tile: array<f32, KV_TILE>;   // (BK, DP)
var<workgroup> s_tile: array<f32, S_TILE>;    // (BQ, BK): scores, NEG_BIG where masked
var<workgroup> p_tile: array<f32, S_TILE>;    // (BQ, BK): exp(score - running max), 0 where masked

// Grid: (ceil(T / BQ), Hq).
@compute @workgroup_size(BK, BQ)
fn prefill(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
  let j = lid3.x;
  let i = lid3.y;
  let q0 = wid.x * BQ;
  let h = wid.y;
  let t = q0 + i;
  let row_valid = t < params.tokens;
  let pos = params.past_len + t;
  // Keys this tile of queries needs: from the first key its first query sees (0 without a window)
  // up to and including the last valid query's position. Query i sees keys key_first ..= pos.
  let k_first = window_start(params.past_len + q0, params.window);
  let n_keys = params.past_len + min(q0 + BQ, params.tokens);
  let key_first = window_start(pos, params.window);
  let kv_head = h / params.group;
  let block_elems = kv_block_elements(params.q_heads / params.group, D);
  let pool_blocks = kv_pool_blocks(params.kv_blocks, block_elems);
  let n_inv = BQ * BK;

  for (var e = lid; e < BQ * D; e += n_inv) {
    let qi = e / D;
    let d = e % D;
    var x = 0.0;
    if (q0 + qi < params.tokens) {
      x = q[params.q_offset + (q0 + qi) * params.q_row_stride + h * D + d] * params.scale;
    }
    q_tile[qi * DP + d] = x;
  }

  var m = NEG_BIG;                 // running max of query i's scores
  var l = 0.0;                     // running sum of exp(score - m)
  var acc: array<f32, ACC_MAX>;    // sum of exp(score - m) * v over dims j + c * BK
  for (var k0 = k_first; k0 < n_keys; k0 += BK) {
    workgroupBarrier();  // the previous tile is fully read (and q_tile written, on the first pass)
    for (var e = lid; e < BK * D; e += n_inv) {
      let kj = e / D;
      let d = e % D;
      var kx = 0.0;
      var vx = 0.0;
      let block = kv_block(params.table_row, k0 + kj, params.table_width, pool_blocks);
      if (k0 + kj < n_keys && block != KV_NO_BLOCK) {
        let at = kv_in_block(kv_head, k0 + kj, D) + d;
        kx = k_at(block, block_elems, at);
        vx = v_at(block, block_elems, at);
      }
      k_tile[kj * DP + d] = kx;
      v_tile[kj * DP + d] = vx;
    }
    workgroupBarrier();

    let visible = row_valid && k0 + j <= pos && k0 + j >= key_first &&
                  kv_block(params.table_row, k0 + j, params.table_width, pool_blocks) != KV_NO_BLOCK;
    var s = NEG_BIG;
    if (visible) {
      var dot = 0.0;
      for (var d = 0u; d < D; d++) {
        dot += q_tile[i * DP + d] * k_tile[j * DP + d];
      }
      s = soft_capped(dot);
    }
    s_tile[i * BK + j] = s;
    workgroupBarrier();

    var m_new = m;
    for (var jj = 0u; jj < BK; jj++) {
      m_new = max(m_new, s_tile[i * BK + jj]);
    }
    var p = 0.0;
    if (visible) {
      p = exp(s - m_new);
    }
    p_tile[i * BK + j] = p;
    workgroupBarrier();

    let alpha = exp(m - m_new);
    var sum = 0.0;
    for (var jj = 0u; jj < BK; jj++) {
      sum += p_tile[i * BK + jj];
    }
    l = l * alpha + sum;
    m = m_new;
    for (var c = 0u; c < DPI; c++) {
      let d = j + c * BK;
      if (d < D) {
        var a = acc[c] * alpha;
        for (var jj = 0u; jj < BK; jj++) {
          a += p_tile[i * BK + jj] * v_tile[jj * DP + d];
        }
        acc[c] = a;
      }
    }
  }

  if (row_valid) {
    // l >= exp(0) = 1 when the key at the query's own position is visible (window >= 1); l is 0 only
    // when the table names no block for any visible key, and the output is then 0.
    let inv = select(0.0, 1.0 / l, l > 0.0);
    let o = params.out_offset + t * params.out_row_stride + h * D;
    for (var c = 0u; c < DPI; c++) {
      let d = j + c * BK;
      if (d < D) {
        out[o + d] = acc[c] * inv;
      }
    }
  }
}

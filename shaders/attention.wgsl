// Causal flash attention for prefill, the baseline tier and the reference: the run contract,
// tiles, masking and scores are attention_prefill_common.wgsl's; this file does each query row's
// softmax through workgroup memory.
//
// One workgroup = BQ queries of one head, laid out (BQ, BK) invocations: invocation (i, j) scores
// query i against key j of the current tile, and owns output dims j, j + BK, j + 2 BK, ... of query i.
// A row's scores and probabilities pass through two workgroup tiles (s_tile, p_tile); the softmax is
// online (running max m and sum l per query, the accumulator rescaled by exp(m_old - m_new)),
// everything in f32.
// Compose as: the KV dtype module (kv_f32.wgsl, kv_f16.wgsl, kv_q8_0.wgsl), this file.
// Legend: T = params.tokens, Hq = params.q_heads, D = head dim (override).
//! include attention_prefill_common.wgsl

override DPI: u32 = (D + BK - 1u) / BK;  // output dims per invocation (<= ACC_MAX, checked in TS)
override S_TILE: u32 = BQ * BK;
const ACC_MAX: u32 = 16u;

var<workgroup> s_tile: array<f32, S_TILE>;    // (BQ, BK): scores, NEG_BIG where masked
var<workgroup> p_tile: array<f32, S_TILE>;    // (BQ, BK): exp(score - running max), 0 where masked

// Grid: (ceil(T / BQ), Hq); the workgroup is BK x BQ invocations.
@compute @workgroup_size(BK, BQ)
fn prefill(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
  let tile = prefill_tile(wid);
  let j = lid3.x;
  let i = lid3.y;
  let t = tile.q0 + i;
  let n_inv = BQ * BK;
  load_q_tile(tile, lid, n_inv);

  var m = NEG_BIG;                 // running max of query i's scores
  var l = 0.0;                     // running sum of exp(score - m)
  var acc: array<f32, ACC_MAX>;    // sum of exp(score - m) * v over dims j + c * BK
  for (var k0 = tile.k_first; k0 < tile.n_keys; k0 += BK) {
    load_kv_tile(tile, k0, lid, n_inv);
    let visible = key_visible(tile, i, k0 + j);
    var s = NEG_BIG;
    if (visible) {
      s = tile_score(i, j);
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

  if (t < params.tokens) {
    // l >= exp(0) = 1 when the key at the query's own position is visible (window >= 1); l is 0 only
    // when the table names no block for any visible key, and the output is then 0.
    let inv = select(0.0, 1.0 / l, l > 0.0);
    let o = params.out_offset + t * params.out_row_stride + tile.h * D;
    for (var c = 0u; c < DPI; c++) {
      let d = j + c * BK;
      if (d < D) {
        out[o + d] = acc[c] * inv;
      }
    }
  }
}

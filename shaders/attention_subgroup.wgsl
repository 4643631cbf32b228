// Causal flash attention for prefill, subgroup tier: the run contract, tiles, masking and scores are
// attention_prefill_common.wgsl's, as for `prefill` in attention.wgsl (the baseline and reference),
// and so are the results (to f32 rounding); what differs is that each query row's softmax
// reductions are done inside one subgroup.
// Compose as: subgroups_enable.wgsl, the KV dtype module, this file.
//
// The baseline lays a workgroup out (BQ queries x BK keys) and shares each row's scores through two
// workgroup tiles (s_tile, p_tile), four barriers per key tile. Here a query row belongs to one
// subgroup, whatever its size: subgroup r of the workgroup's sg_count (numbered by subgroup_slots.wgsl)
// takes rows r, r + sg_count, ... of the BQ, and for each, per key tile:
//   1. lane l scores keys l, l + n, ... (n = the subgroup's active lanes); subgroupMax gives the row's
//      tile max, subgroupAdd the sum of its exp(score - max): no workgroup memory, no barrier;
//   2. the BK probabilities are gathered into every lane by subgroupShuffle;
//   3. lane l updates output dims l, l + n, ... of the row's accumulator (o_tile, (BQ, D) in workgroup
//      memory: only that lane ever touches those cells, so it needs no barrier either).
// Two barriers per key tile remain, around the cooperative K/V load (load_kv_tile). The only assumption about
// subgroups is the one every implementation meets: a subgroup's active lanes are numbered 0 .. n - 1.
// The per-row loops depend on the subgroup's slot, which is uniform within a subgroup but not across
// the workgroup, so the subgroup operations sit in control flow WGSL's analysis cannot prove uniform:
// subgroups_enable.wgsl turns that diagnostic off for this reason.
// Legend: T = params.tokens, Hq = params.q_heads, Hkv = Hq / params.group, D = head dim (override).
//! include attention_prefill_common.wgsl
//! include subgroup_slots.wgsl

override WG: u32 = 128;     // invocations per workgroup (power of two, >= 4)
override SG_MIN: u32 = 4;   // the adapter's smallest subgroup size (sizes subgroup_slots' arrays)
const MAX_BQ: u32 = 16u;    // most queries per workgroup (the per-row state below is sized for it)
const MAX_BK: u32 = 16u;    // most keys per tile

var<workgroup> o_tile: array<f32, BQ * D>;  // (BQ, D): sum of exp(score - m) * v, unnormalised

// Grid: (ceil(T / BQ), Hq).
@compute @workgroup_size(WG)
fn prefill_subgroup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
                    @builtin(subgroup_invocation_id) lane: u32) {
  sg_slots_init(lid);
  let n = subgroupAdd(1u);  // active lanes of this subgroup
  let tile = prefill_tile(wid);
  load_q_tile(tile, lid, WG);
  // This lane's cells of its rows' accumulators, zeroed by the lane that will own them.
  for (var i = sg_slot; i < BQ; i += sg_count) {
    for (var d = lane; d < D; d += n) { o_tile[i * D + d] = 0.0; }
  }

  var m_row: array<f32, MAX_BQ>;  // running max of each of this subgroup's rows (index t: row sg_slot + t sg_count)
  var l_row: array<f32, MAX_BQ>;  // running sum of exp(score - m)
  for (var t = 0u; t < MAX_BQ; t++) { m_row[t] = NEG_BIG; }

  for (var k0 = tile.k_first; k0 < tile.n_keys; k0 += BK) {
    load_kv_tile(tile, k0, lid, WG);

    var t = 0u;
    for (var i = sg_slot; i < BQ; i += sg_count) {
      // 1. This lane's keys j = lane + c n of the tile, scored; the row's tile max.
      var p: array<f32, MAX_BK>;
      var local_max = NEG_BIG;
      for (var c = 0u; lane + c * n < BK; c++) {
        let j = lane + c * n;
        var s = NEG_BIG;
        if (key_visible(tile, i, k0 + j)) {
          s = tile_score(i, j);
        }
        p[c] = s;
        local_max = max(local_max, s);
      }
      let m_new = max(m_row[t], subgroupMax(local_max));
      var local_sum = 0.0;
      for (var c = 0u; lane + c * n < BK; c++) {
        // Masked keys (NEG_BIG) get 0, also when every key so far is masked (m_new = NEG_BIG).
        let e = select(0.0, exp(p[c] - m_new), p[c] > NEG_BIG);
        p[c] = e;
        local_sum += e;
      }
      let alpha = exp(m_row[t] - m_new);
      l_row[t] = l_row[t] * alpha + subgroupAdd(local_sum);
      m_row[t] = m_new;
      // 2. Every key's probability, from the lane that holds it (key j is lane j % n's slot j / n).
      var p_all: array<f32, MAX_BK>;
      for (var j = 0u; j < BK; j++) {
        p_all[j] = subgroupShuffle(p[j / n], j % n);
      }
      // 3. This lane's dims of the row's accumulator.
      for (var d = lane; d < D; d += n) {
        var a = o_tile[i * D + d] * alpha;
        for (var j = 0u; j < BK; j++) {
          a += p_all[j] * v_tile[j * DP + d];
        }
        o_tile[i * D + d] = a;
      }
      t++;
    }
  }

  var t = 0u;
  for (var i = sg_slot; i < BQ; i += sg_count) {
    if (tile.q0 + i < params.tokens) {
      // l is 0 only when the table names no block for any visible key (as the baseline).
      let inv = select(0.0, 1.0 / l_row[t], l_row[t] > 0.0);
      let o = params.out_offset + (tile.q0 + i) * params.out_row_stride + tile.h * D;
      for (var d = lane; d < D; d += n) {
        out[o + d] = o_tile[i * D + d] * inv;
      }
    }
    t++;
  }
}

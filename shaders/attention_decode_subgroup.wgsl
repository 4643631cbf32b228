// Split-K flash-decoding, pass 1, subgroup tier: the same split as decode_split in
// attention_decode.wgsl (the baseline and reference; pass 2, decode_reduce, is shared), with the
// split's max and sum taken by subgroupMax / subgroupAdd and one slot per subgroup
// (subgroup_slots.wgsl) instead of a workgroup-memory tree: one barrier per reduction against
// log2(WG) + 2. The max is exact either way; the sum adds the same values in another order.
// Its subgroup operations run in control flow uniform over the whole workgroup (every invocation
// calls both reductions).
// Compose as: subgroups_enable.wgsl, the KV dtype module, this file.
//! include attention_decode_common.wgsl
//! include subgroup_slots.wgsl

override SG_MIN: u32 = 4;  // the adapter's smallest subgroup size (WebGPU guarantees >= 4)

// One slot per subgroup for each of the two reductions (each is used once per workgroup, so neither
// needs a barrier before it is written again).
var<workgroup> max_slots: array<f32, (WG + SG_MIN - 1u) / SG_MIN>;
var<workgroup> sum_slots: array<f32, (WG + SG_MIN - 1u) / SG_MIN>;

fn workgroup_max(v: f32, lid: u32) -> f32 {
  let s = subgroupMax(v);
  if (sg_is_leader) { max_slots[sg_slot] = s; }
  workgroupBarrier();
  var m = NEG_BIG;
  for (var i = 0u; i < sg_count; i++) { m = max(m, max_slots[i]); }
  return m;
}

fn workgroup_sum(v: f32, lid: u32) -> f32 {
  let s = subgroupAdd(v);
  if (sg_is_leader) { sum_slots[sg_slot] = s; }
  workgroupBarrier();
  var total = 0.0;
  for (var i = 0u; i < sg_count; i++) { total += sum_slots[i]; }
  return total;
}

// Grid: (S, Hq, R).
@compute @workgroup_size(WG)
fn decode_split_subgroup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  sg_slots_init(lid);
  split_partial(wid, lid);
}

// Per-subgroup slots in workgroup memory for a subgroup-tier reduction: each subgroup reduces its own
// values with a subgroup operation, its leader writes the result to the subgroup's slot, and after
// one barrier any invocation folds the slots in slot order. Nothing assumes a subgroup size or which
// invocations form a subgroup: the slots are the leaders' ranks by invocation index, so the order of
// the fold, and the result, is the same on every run. A workgroup of WG invocations has at most
// ceil(WG / SG_MIN) subgroups, SG_MIN the adapter's smallest subgroup size (all but one are full).
// The including file declares the overrides WG and SG_MIN, and is composed after subgroups_enable.wgsl.

// Bit i of word i / 32: invocation i leads its subgroup.
var<workgroup> sg_leaders: array<atomic<u32>, (WG + 31u) / 32u>;

var<private> sg_is_leader: bool; // this invocation writes its subgroup's slot
var<private> sg_slot: u32;       // its subgroup's slot, 0 .. sg_count - 1 (the same in every lane of the subgroup)
var<private> sg_count: u32;      // subgroups in the workgroup: slots 0 .. sg_count - 1 are written

// Elect the leaders and number their slots. Every invocation calls it once, in uniform control flow,
// before any reduction. Two barriers. The bitmask is cleared here rather than trusted to start at
// zero, so the kernel stays correct where workgroup memory is not zero-initialised.
fn sg_slots_init(lid: u32) {
  if (lid < (WG + 31u) / 32u) { atomicStore(&sg_leaders[lid], 0u); }
  workgroupBarrier();
  sg_is_leader = subgroupElect();
  if (sg_is_leader) { atomicOr(&sg_leaders[lid / 32u], 1u << (lid % 32u)); }
  workgroupBarrier();
  let word = lid / 32u;
  var below = countOneBits(atomicLoad(&sg_leaders[word]) & ((1u << (lid % 32u)) - 1u));
  var count = 0u;
  for (var w = 0u; w < (WG + 31u) / 32u; w++) {
    let bits = countOneBits(atomicLoad(&sg_leaders[w]));
    if (w < word) { below += bits; }
    count += bits;
  }
  // The leader is the subgroup's lowest active invocation, whose value subgroupBroadcastFirst returns.
  sg_slot = subgroupBroadcastFirst(below);
  sg_count = count;
}

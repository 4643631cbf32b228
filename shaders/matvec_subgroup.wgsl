// Matrix-vector product for decode, subgroup tier: out = act(norm(a) · Wᵀ + bias) (+ residual) for
// M = 1..8 activation rows, the same run contract, fusions and results as matvec.wgsl (the baseline),
// reduced with subgroup operations instead of a workgroup-memory tree.
// Compose as: matvec_subgroup_enable.wgsl, one weights_<dtype>.wgsl (bindings 1-2, weight4),
// matvec_plain.wgsl or matvec_fusion.wgsl, this file.
//
// A workgroup owns ROWS consecutive outputs (W_ROWS weight rows). Its WG threads stride over K four
// columns at a time: each thread loads its activations a[m, k..k+3] once into registers and uses them
// for all W_ROWS rows (so every activation element is read once per workgroup, and workgroup memory
// would add nothing), and each weight element is read once and used for all M rows. Then:
//   1. subgroupAdd sums each of the W_ROWS x M partials within every subgroup (no barrier);
//   2. one lane per subgroup (its leader, elected at the start) has its subgroup's slot, numbered by
//      subgroup_slots.wgsl from the leaders' invocation indices;
//   3. the leader writes the subgroup's W_ROWS x M sums into that slot; barrier;
//   4. ROWS x M threads each add the slots of one output in slot order and write it.
// Nothing assumes a subgroup size or which invocations form a subgroup, so the sum order, and the
// result, is the same on every run. The norm's statistics (NORM) are reduced the same way.
//! include grid.wgsl
//! include matmul_projection.wgsl
//! include matvec_common.wgsl
//! include subgroup_slots.wgsl

override WG: u32 = 128;    // threads per workgroup, a power of two
override ROWS: u32 = 4;    // outputs per workgroup
override W_ROWS: u32 = 4;  // weight rows per workgroup: ROWS, or 2 ROWS with GLU; <= MAX_ROWS
override SG_MIN: u32 = 4;  // the adapter's smallest subgroup size (WebGPU guarantees >= 4)

// (subgroups, (W_ROWS + SQUARE_ROWS) * MAX_M): each subgroup's sums (matvec_common.wgsl's slots), in
// its slot (subgroup_slots.wgsl).
var<workgroup> partial: array<f32, ((WG + SG_MIN - 1u) / SG_MIN) * (W_ROWS + SQUARE_ROWS) * MAX_M>;

// For a fused LayerNorm's statistics (matvec_fusion.wgsl).
fn workgroup_sum(v: f32, lid: u32) -> f32 {
  let sum = subgroupAdd(v);
  if (sg_is_leader) { partial[sg_slot] = sum; }
  workgroupBarrier();
  var total = 0.0;
  for (var s = 0u; s < sg_count; s++) { total += partial[s]; }
  workgroupBarrier(); // every thread has read the total before partial is written again
  return total;
}

fn slot_total(j: u32) -> f32 {
  let slots = (W_ROWS + SQUARE_ROWS) * MAX_M;
  var v = 0.0;
  for (var s = 0u; s < sg_count; s++) { v += partial[s * slots + j]; }
  return v;
}

@compute @workgroup_size(WG)
fn matvec_subgroup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
  let row0 = grid_group(wid, nwg) * ROWS;
  if (row0 >= params.n) { return; } // whole workgroup: the grid may overshoot when split over y
  let slots = (W_ROWS + SQUARE_ROWS) * MAX_M;
  // 2. One leader per subgroup, and its slot (control flow is uniform here: the guards depend on
  // uniforms only).
  sg_slots_init(lid);
  post_norm_statistics(lid, row0);
  norm_statistics(lid);
  var acc = partial_sums(row0, lid);

  // 1. Subgroup sums.
  for (var j = 0u; j < slots; j++) {
    if (j % MAX_M < params.m) { acc[j] = subgroupAdd(acc[j]); }
  }
  // 3. The leader writes its subgroup's sums into the subgroup's slot.
  if (sg_is_leader) {
    for (var j = 0u; j < slots; j++) {
      if (j % MAX_M < params.m) { partial[sg_slot * slots + j] = acc[j]; }
    }
  }
  workgroupBarrier();
  // 4. Sum the subgroups' slots in order, then bias, activation and residual as the baseline does.
  for (var j = lid; j < ROWS * MAX_M; j += WG) { write_output(j, row0); }
}

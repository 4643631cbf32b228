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
//   2. one lane per subgroup (subgroupElect, at the start) has set its bit in a workgroup bitmask;
//   3. that lane's rank among the subgroup leaders (bits below its own) is its subgroup's slot: it
//      writes the subgroup's W_ROWS x M sums there; barrier;
//   4. ROWS x M threads each add the slots of one output in slot order and write it.
// Nothing assumes a subgroup size or which invocations form a subgroup: the slots come from the
// leaders' invocation indices, so the sum order, and the result, is the same on every run. Slots are
// sized for ceil(WG / SG_MIN) subgroups, SG_MIN the adapter's smallest subgroup size (every subgroup
// of a workgroup but one is full). The norm's statistics (NORM) are reduced the same way.
//! include grid.wgsl
//! include matmul_projection.wgsl
//! include matvec_common.wgsl

override WG: u32 = 128;    // threads per workgroup, a power of two
override ROWS: u32 = 4;    // outputs per workgroup
override W_ROWS: u32 = 4;  // weight rows per workgroup: ROWS, or 2 ROWS with GLU; <= MAX_ROWS
override SG_MIN: u32 = 4;  // the adapter's smallest subgroup size (WebGPU guarantees >= 4)

// Bit i of word i / 32: invocation i leads its subgroup.
var<workgroup> leaders: array<atomic<u32>, (WG + 31u) / 32u>;
// (subgroups, (W_ROWS + SQUARE_ROWS) * MAX_M): each subgroup's sums (matvec_common.wgsl's slots), in
// the order of its leader's invocation index.
var<workgroup> partial: array<f32, ((WG + SG_MIN - 1u) / SG_MIN) * (W_ROWS + SQUARE_ROWS) * MAX_M>;
// This invocation leads its subgroup (set once, at the start).
var<private> is_leader: bool;

// Leaders with an invocation index below `lid` (bit `lid` itself excluded).
fn leaders_below(lid: u32) -> u32 {
  let word = lid / 32u;
  var count = countOneBits(atomicLoad(&leaders[word]) & ((1u << (lid % 32u)) - 1u));
  for (var w = 0u; w < word; w++) { count += countOneBits(atomicLoad(&leaders[w])); }
  return count;
}

// Subgroups in this workgroup.
fn leader_count() -> u32 {
  var count = 0u;
  for (var w = 0u; w < (WG + 31u) / 32u; w++) { count += countOneBits(atomicLoad(&leaders[w])); }
  return count;
}

// For a fused LayerNorm's statistics (matvec_fusion.wgsl).
fn workgroup_sum(v: f32, lid: u32) -> f32 {
  let sum = subgroupAdd(v);
  if (is_leader) { partial[leaders_below(lid)] = sum; }
  workgroupBarrier();
  var total = 0.0;
  let count = leader_count();
  for (var s = 0u; s < count; s++) { total += partial[s]; }
  workgroupBarrier(); // every thread has read the total before partial is written again
  return total;
}

fn slot_total(j: u32) -> f32 {
  let slots = (W_ROWS + SQUARE_ROWS) * MAX_M;
  let count = leader_count();
  var v = 0.0;
  for (var s = 0u; s < count; s++) { v += partial[s * slots + j]; }
  return v;
}

@compute @workgroup_size(WG)
fn matvec_subgroup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
  let row0 = grid_group(wid, nwg) * ROWS;
  if (row0 >= params.n) { return; } // whole workgroup: the grid may overshoot when split over y
  let slots = (W_ROWS + SQUARE_ROWS) * MAX_M;
  // 2. One leader per subgroup (control flow is uniform here: the guards depend on uniforms only).
  is_leader = subgroupElect();
  if (is_leader) { atomicOr(&leaders[lid / 32u], 1u << (lid % 32u)); }
  workgroupBarrier();
  norm_statistics(lid);
  var acc = partial_sums(row0, lid);

  // 1. Subgroup sums.
  for (var j = 0u; j < slots; j++) {
    if (j % MAX_M < params.m) { acc[j] = subgroupAdd(acc[j]); }
  }
  // 3. The leader's rank is its subgroup's slot.
  if (is_leader) {
    let slot = leaders_below(lid);
    for (var j = 0u; j < slots; j++) {
      if (j % MAX_M < params.m) { partial[slot * slots + j] = acc[j]; }
    }
  }
  workgroupBarrier();
  // 4. Sum the subgroups' slots in order, then bias, activation and residual as the baseline does.
  for (var j = lid; j < ROWS * MAX_M; j += WG) { write_output(j, row0); }
}

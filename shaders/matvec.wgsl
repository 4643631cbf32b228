// Matrix-vector product for decode: out = act(norm(a) · Wᵀ + bias) (+ residual) for M = 1..8
// activation rows, the norm and activation optional (see matvec_fusion.wgsl).
// Compose as: one weights_<dtype>.wgsl (bindings 1-2, the weight4 interface), matvec_plain.wgsl or
// matvec_fusion.wgsl, this file.
// Legend: M activation rows (<= MAX_M), N output features (weight rows; with GLU, pairs of them),
// K input features = weight cols, Kp = K rounded up to 4 (stored weight row length).
//
// Memory-bound: a workgroup owns ROWS consecutive outputs (W_ROWS weight rows); its WG threads stride
// over K four columns at a time, so each weight element is read once and used for all M activation
// rows, then a workgroup tree reduction sums the WG partials. Workgroups are numbered over a 2-D grid
// (grid_group) so vocabularies above 65535 rows fit.
//! include grid.wgsl
//! include matmul_projection.wgsl
//! include matvec_common.wgsl

override WG: u32 = 128;    // threads per workgroup, power of two >= ROWS * MAX_M
override ROWS: u32 = 1;    // outputs per workgroup
override W_ROWS: u32 = 1;  // weight rows per workgroup: ROWS, or 2 ROWS with GLU; <= MAX_ROWS

// ((W_ROWS + SQUARE_ROWS) * MAX_M, WG): per-thread partial sums (matvec_common.wgsl's slots)
var<workgroup> partial: array<f32, (W_ROWS + SQUARE_ROWS) * MAX_M * WG>;

// For a fused LayerNorm's statistics (matvec_fusion.wgsl).
fn workgroup_sum(v: f32, lid: u32) -> f32 {
  partial[lid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (lid < s) { partial[lid] += partial[lid + s]; }
    workgroupBarrier();
  }
  let total = partial[0];
  workgroupBarrier(); // every thread has read the total before partial is written again
  return total;
}

fn slot_total(j: u32) -> f32 {
  return partial[j * WG];
}

@compute @workgroup_size(WG)
fn matvec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
  let row0 = grid_group(wid, nwg) * ROWS;
  if (row0 >= params.n) { return; } // whole workgroup: the grid may overshoot when split over y
  post_norm_statistics(lid, row0);
  norm_statistics(lid);
  var acc = partial_sums(row0, lid);

  let slots = (W_ROWS + SQUARE_ROWS) * MAX_M;
  for (var j = 0u; j < slots; j++) {
    partial[j * WG + lid] = acc[j];
  }
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (lid < s) {
      for (var j = 0u; j < slots; j++) {
        if (j % MAX_M < params.m) { partial[j * WG + lid] += partial[j * WG + lid + s]; }
      }
    }
    workgroupBarrier();
  }
  if (lid < ROWS * MAX_M) { write_output(lid, row0); }
}

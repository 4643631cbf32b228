// Matrix-vector product for decode: out = a · Wᵀ (+ bias) (+ residual) for M = 1..8 activation rows.
// Compose with one weights_<dtype>.wgsl (bindings 1-2, the weight4 interface).
// Legend: M activation rows (<= MAX_M), N output features = weight rows, K input features = weight
// cols, Kp = K rounded up to 4 (stored weight row length).
//
// Memory-bound: a workgroup owns ROWS consecutive weight rows; its WG threads stride over K four
// columns at a time, so each weight element is read once and used for all M activation rows, then a
// workgroup tree reduction sums the WG partials. Workgroups are numbered over a 2-D grid
// (grid_group) so vocabularies above 65535 rows fit.
//! include grid.wgsl
//! include matmul_projection.wgsl
//! include matvec_common.wgsl

override WG: u32 = 128;    // threads per workgroup, power of two >= ROWS * MAX_M
override ROWS: u32 = 1;    // weight rows per workgroup, 1..MAX_ROWS

var<workgroup> partial: array<f32, ROWS * MAX_M * WG>; // (ROWS * MAX_M, WG): per-thread partial sums

@compute @workgroup_size(WG)
fn matvec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
  let row0 = grid_group(wid, nwg) * ROWS;
  if (row0 >= params.n) { return; } // whole workgroup: the grid may overshoot when split over y
  var acc = partial_sums(row0, lid);

  let slots = ROWS * MAX_M;
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
  if (lid < slots) {
    let r = lid / MAX_M;
    let m = lid % MAX_M;
    let n = row0 + r;
    if (m < params.m && n < params.n) {
      var v = partial[lid * WG];
      if (HAS_BIAS) { v += bias[params.bias_offset + n]; }
      if (HAS_RESIDUAL) { v += residual[params.residual_offset + m * params.residual_stride + n]; }
      out[params.out_offset + m * params.out_stride + n] = v;
    }
  }
}

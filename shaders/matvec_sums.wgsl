// One thread's partial sums over its share of K from f32 activations (the matvec's default): composed
// with matvec.wgsl or matvec_subgroup.wgsl (which include matvec_common.wgsl), a weights module
// (weight4) and matvec_plain.wgsl or matvec_fusion.wgsl (normalised, SQUARE_ROWS).

// a[row, k..k+3] as the product takes it (stream4: after a folded post-norm, if any), zero past K:
// a's offset and stride are arbitrary, so scalar loads.
fn load_a4(row: u32, k: u32) -> vec4<f32> {
  let base = params.a_offset + row * params.a_stride + k;
  if (k + 4u <= params.k) {
    return stream4(row, k, vec4<f32>(a[base], a[base + 1u], a[base + 2u], a[base + 3u]));
  }
  var v = vec4<f32>(0.0);
  for (var i = 0u; i < 4u; i++) {
    if (k + i < params.k) { v[i] = a[base + i]; }
  }
  return stream4(row, k, v);
}

// This thread's sums acc[r * MAX_M + m] = sum over its columns k (4 * lid, then every 4 * WG) of
// W[w0 + r, k..k+3] . a[m, k..k+3], w0 the workgroup's first weight row. Each weight element is read
// once and used for all M rows. Loops run to the constants MAX_M / W_ROWS with uniform guards, so
// indices stay compile-time constants and acc / xs live in registers.
fn partial_sums(row0: u32, lid: u32) -> array<f32, MAX_SLOTS> {
  let kp = (params.k + 3u) & ~3u;
  let w0 = first_weight_row(row0);
  let w_end = weight_row_end();
  var acc: array<f32, MAX_SLOTS>;
  for (var k = 4u * lid; k < kp; k += 4u * WG) {
    var xs: array<vec4<f32>, MAX_M>;
    for (var m = 0u; m < MAX_M; m++) {
      if (m < params.m) {
        let x = load_a4(m, k);
        if (SQUARE_ROWS > 0u) { acc[W_ROWS * MAX_M + m] += dot(x, x); } // a fused RMSNorm's
        xs[m] = normalised(x, m, k);
      }
    }
    for (var r = 0u; r < W_ROWS; r++) {
      if (w0 + r < w_end) {
        let w = weight4(w0 + r, k, params.k);
        for (var m = 0u; m < MAX_M; m++) {
          if (m < params.m) { acc[r * MAX_M + m] += dot(w, xs[m]); }
        }
      }
    }
  }
  return acc;
}

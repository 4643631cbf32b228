// Tiled matrix multiply for prefill, f16 tier: out = a · Wᵀ (+ bias) (+ residual), the same run
// contract, tiling and results (to f16 storage rounding) as matmul.wgsl, the baseline and reference.
// Compose as: matmul_f16_enable.wgsl, one weights_<dtype>.wgsl (bindings 1-2, weight4), this file.
// Legend: M activation rows (tokens), N output features = weight rows, K input features = weight
// cols, Kp = K rounded up to 4 (stored weight row length).
//
// What changes from the baseline: both tiles live in workgroup memory as f16. W is dequantised to f32
// by the dtype's weight4 (so every format the baseline reads works here unchanged) and rounded once to
// f16 on its way into the tile; the f32 activations likewise. That halves the workgroup memory a tile
// takes and the bytes the inner loop reads from it per FMA, the limiting traffic of this kernel on a
// GPU. Products and sums stay f32: an f16 x f16 product is exact in f32 (11 + 11 significant bits), so
// the only new error is the two roundings to f16 (2^-11 relative at nearest, under 2^-10 for any
// conversion WGSL allows; bounded in test/matmul.test.ts).
// Values beyond f16's range (|x| > 65504) become infinite here; the baseline tier takes any f32.
//
// No subgroup operations: each thread owns a 4x4 register block and nothing is reduced across
// threads, so there is no tree for subgroupAdd to replace; what a subgroup could share (a row of the
// tile) already comes from workgroup memory in one vec4 load.
//! include matmul_common.wgsl

var<workgroup> tile_a: array<vec4<f16>, TILE_K * TILE_M / 4u>; // (TILE_K, TILE_M/4): a[m0 + m, k0 + kk], f16
var<workgroup> tile_w: array<vec4<f16>, TILE_K * TILE_N / 4u>; // (TILE_K, TILE_N/4): W[n0 + n, k0 + kk], f16

// Four (row, k..k+3) loads transposed into four f16 vec4s over the rows, one per column of k.
fn transpose_f16(v0: vec4<f32>, v1: vec4<f32>, v2: vec4<f32>, v3: vec4<f32>) -> array<vec4<f16>, 4> {
  return array<vec4<f16>, 4>(
    vec4<f16>(vec4<f32>(v0.x, v1.x, v2.x, v3.x)),
    vec4<f16>(vec4<f32>(v0.y, v1.y, v2.y, v3.y)),
    vec4<f16>(vec4<f32>(v0.z, v1.z, v2.z, v3.z)),
    vec4<f16>(vec4<f32>(v0.w, v1.w, v2.w, v3.w)),
  );
}

@compute @workgroup_size(TILE_N / 4u, TILE_M / 4u)
fn matmul_f16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
  let n0 = wid.x * TILE_N;
  let m0 = wid.y * TILE_M;
  let threads = (TILE_N / 4u) * (TILE_M / 4u);
  let kp = (params.k + 3u) & ~3u;
  // Tile loads go in 4x4 units (4 rows x 4 columns of k), transposed in registers into 4 vec4 stores.
  let k_units = TILE_K / 4u;
  let a_units = (TILE_M / 4u) * k_units;
  let w_units = (TILE_N / 4u) * k_units;
  var acc: array<vec4<f32>, 4>; // acc[i][j] = out[m0 + 4 ty + i, n0 + 4 tx + j]

  for (var k0 = 0u; k0 < kp; k0 += TILE_K) {
    for (var u = lid; u < a_units + w_units; u += threads) {
      if (u < a_units) {
        let r = (u / k_units) * 4u;
        let c = (u % k_units) * 4u;
        let cols = transpose_f16(load_a4(m0 + r, k0 + c), load_a4(m0 + r + 1u, k0 + c),
                                 load_a4(m0 + r + 2u, k0 + c), load_a4(m0 + r + 3u, k0 + c));
        let base = c * (TILE_M / 4u) + r / 4u;
        for (var i = 0u; i < 4u; i++) { tile_a[base + i * (TILE_M / 4u)] = cols[i]; }
      } else {
        let uw = u - a_units;
        let r = (uw / k_units) * 4u;
        let c = (uw % k_units) * 4u;
        let cols = transpose_f16(load_w4(n0 + r, k0 + c, kp), load_w4(n0 + r + 1u, k0 + c, kp),
                                 load_w4(n0 + r + 2u, k0 + c, kp), load_w4(n0 + r + 3u, k0 + c, kp));
        let base = c * (TILE_N / 4u) + r / 4u;
        for (var i = 0u; i < 4u; i++) { tile_w[base + i * (TILE_N / 4u)] = cols[i]; }
      }
    }
    workgroupBarrier();
    for (var kk = 0u; kk < TILE_K; kk++) {
      let av = vec4<f32>(tile_a[kk * (TILE_M / 4u) + lid3.y]);
      let wv = vec4<f32>(tile_w[kk * (TILE_N / 4u) + lid3.x]);
      acc[0] += av.x * wv;
      acc[1] += av.y * wv;
      acc[2] += av.z * wv;
      acc[3] += av.w * wv;
    }
    workgroupBarrier();
  }

  store_block(acc, m0, n0, lid3.x, lid3.y);
}

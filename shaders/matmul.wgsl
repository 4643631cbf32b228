// Tiled matrix multiply for prefill: out = a · Wᵀ (+ bias) (+ residual), activations f32, W any
// weight dtype. Two tiers share this file and differ only in the type of the workgroup tiles:
//   baseline  compose matmul_tile_f32.wgsl, one weights_<dtype>.wgsl (bindings 1-2, weight4), this file
//   f16 tier  compose matmul_tile_f16.wgsl (first: it holds `enable f16`), weights, this file
// W is dequantised to f32 by weight4 while a tile is loaded into workgroup memory, and every product
// and sum is f32. On the f16 tier both tiles are rounded once to f16 on their way into workgroup
// memory: that halves the workgroup memory a tile takes and the bytes the inner loop reads from it
// per FMA, the limiting traffic of this kernel on a GPU. An f16 x f16 product is exact in f32 (11 + 11
// significant bits), so the only new error is the two roundings (2^-11 relative at nearest, under
// 2^-10 for any conversion WGSL allows; bounded in test/matmul.test.ts), and values beyond f16's range
// (|x| > 65504) become infinite there; the baseline takes any f32.
// No subgroup operations: each thread owns a 4x4 register block and nothing is reduced across
// threads, so there is no tree for subgroupAdd to replace.
// Legend: M activation rows (tokens), N output features = weight rows, K input features = weight
// cols, Kp = K rounded up to 4 (stored weight row length).
//
// A workgroup computes a TILE_M x TILE_N output tile with (TILE_N/4) x (TILE_M/4) threads, each
// owning a 4x4 register block. K advances TILE_K = 32 columns at a time (one quant block). Tiles are
// stored transposed ([k][row], vec4 over rows) so the inner loop reads one vec4 of a and one of W
// per k, conflict-free, for 16 FMAs.
//! include matmul_common.wgsl

var<workgroup> tile_a: array<tile4, TILE_K * TILE_M / 4u>; // (TILE_K, TILE_M/4): a[m0 + m, k0 + kk]
var<workgroup> tile_w: array<tile4, TILE_K * TILE_N / 4u>; // (TILE_K, TILE_N/4): W[n0 + n, k0 + kk]

@compute @workgroup_size(TILE_N / 4u, TILE_M / 4u)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>,
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
        let v0 = load_a4(m0 + r, k0 + c);
        let v1 = load_a4(m0 + r + 1u, k0 + c);
        let v2 = load_a4(m0 + r + 2u, k0 + c);
        let v3 = load_a4(m0 + r + 3u, k0 + c);
        let base = c * (TILE_M / 4u) + r / 4u;
        tile_a[base] = tile4(vec4<f32>(v0.x, v1.x, v2.x, v3.x));
        tile_a[base + TILE_M / 4u] = tile4(vec4<f32>(v0.y, v1.y, v2.y, v3.y));
        tile_a[base + 2u * (TILE_M / 4u)] = tile4(vec4<f32>(v0.z, v1.z, v2.z, v3.z));
        tile_a[base + 3u * (TILE_M / 4u)] = tile4(vec4<f32>(v0.w, v1.w, v2.w, v3.w));
      } else {
        let uw = u - a_units;
        let r = (uw / k_units) * 4u;
        let c = (uw % k_units) * 4u;
        let v0 = load_w4(n0 + r, k0 + c, kp);
        let v1 = load_w4(n0 + r + 1u, k0 + c, kp);
        let v2 = load_w4(n0 + r + 2u, k0 + c, kp);
        let v3 = load_w4(n0 + r + 3u, k0 + c, kp);
        let base = c * (TILE_N / 4u) + r / 4u;
        tile_w[base] = tile4(vec4<f32>(v0.x, v1.x, v2.x, v3.x));
        tile_w[base + TILE_N / 4u] = tile4(vec4<f32>(v0.y, v1.y, v2.y, v3.y));
        tile_w[base + 2u * (TILE_N / 4u)] = tile4(vec4<f32>(v0.z, v1.z, v2.z, v3.z));
        tile_w[base + 3u * (TILE_N / 4u)] = tile4(vec4<f32>(v0.w, v1.w, v2.w, v3.w));
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

// Included by matmul.wgsl (both tiers): the tile sizes, the tile loads from
// storage (f32, before either tier stores them) and the epilogue. The including file declares the
// workgroup tiles and composes a weights module (weight4).
//! include matmul_projection.wgsl

override TILE_M: u32 = 64; // output rows per workgroup, multiple of 4
override TILE_N: u32 = 64; // output cols per workgroup, multiple of 4
const TILE_K: u32 = 32u;   // columns of K per tile (one quant block)

// a[row, k..k+3], zero outside (M, K): a's offset and stride are arbitrary, so scalar loads.
fn load_a4(row: u32, k: u32) -> vec4<f32> {
  var v = vec4<f32>(0.0);
  if (row < params.m) {
    let base = params.a_offset + row * params.a_stride + k;
    for (var i = 0u; i < 4u; i++) {
      if (k + i < params.k) { v[i] = a[base + i]; }
    }
  }
  return v;
}

// W[row, k..k+3], zero outside (N, Kp); the padded columns K..Kp are zero in the weight planes.
fn load_w4(row: u32, k: u32, kp: u32) -> vec4<f32> {
  if (row < params.n && k < kp) { return weight4(row, k, params.k); }
  return vec4<f32>(0.0);
}

// Write a thread's 4x4 block acc[i][j] = out[m0 + 4 ty + i, n0 + 4 tx + j] (tx, ty its position in
// the workgroup), adding the bias and the residual; rows and columns past (M, N) are not written.
fn store_block(acc: array<vec4<f32>, 4>, m0: u32, n0: u32, tx: u32, ty: u32) {
  for (var i = 0u; i < 4u; i++) {
    let m = m0 + 4u * ty + i;
    if (m >= params.m) { break; }
    for (var j = 0u; j < 4u; j++) {
      let n = n0 + 4u * tx + j;
      if (n >= params.n) { break; }
      var v = acc[i][j];
      if (HAS_BIAS) { v += bias[params.bias_offset + n]; }
      if (HAS_RESIDUAL) { v += residual[params.residual_offset + m * params.residual_stride + n]; }
      out[params.out_offset + m * params.out_stride + n] = v;
    }
  }
}

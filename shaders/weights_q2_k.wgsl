// Weight module: GGUF Q2_K (super-blocks of 256 columns = 16 sub-blocks of 16; value = d * sc * q -
// dmin * m with q 2 bits, sc and m 4 bits, d and dmin f16), repacked at load by cutting each 84-byte
// block in three: the quants plane takes qs[64], the scales plane scales[16] (sc | m << 4 per
// sub-block) and then the trailing d, dmin as one word: 2.625 bits per weight, the file's.
// Interface: see weights_f32.wgsl. K % 256 == 0.
//
// Columns are laid out as weights_k_low_bits.wgsl says.
//! include weights_k_low_bits.wgsl

// Typed as 16-byte vectors so that a 16-column chunk (weights_q2_k_q8.wgsl) is one wide load.
@group(0) @binding(1) var<storage, read> weight_quants: array<vec4<u32>>; // (N, K/256, 4): qs[64] as 4 vectors
@group(0) @binding(2) var<storage, read> weight_scales: array<u32>; // (N, K/256, 5): scales[16] as 4 u32, d | dmin << 16 (f16)

// (scale, offset) of sub-block s of super-block `block`: value = q * scale + offset, scale = d * sc and
// offset = -dmin * m, both exact in f32 (products of an f16 and a 4-bit integer).
fn sub_block_scale(block: u32, s: u32) -> vec2<f32> {
  let sm = (weight_scales[block * 5u + s / 4u] >> ((s % 4u) * 8u)) & 255u;
  let dm = unpack2x16float(weight_scales[block * 5u + 4u]);
  return vec2<f32>(dm.x * f32(sm & 15u), -dm.y * f32(sm >> 4u));
}

fn weight4(row: u32, k: u32, cols: u32) -> vec4<f32> {
  let c = low_bit_column(row, k, cols);
  let word = weight_quants[c.block * 4u + c.n * 2u + c.h][(k % 16u) / 4u];
  let q = (vec4<u32>(word) >> (vec4<u32>(0u, 8u, 16u, 24u) + 2u * c.j)) & vec4<u32>(3u);
  let so = sub_block_scale(c.block, c.s);
  // q * scale is exact in f32: one rounding, at the sum, as in ggml.
  return vec4<f32>(q) * so.x + so.y;
}

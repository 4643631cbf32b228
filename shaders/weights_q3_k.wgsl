// Weight module: GGUF Q3_K (super-blocks of 256 columns = 16 sub-blocks of 16; value = d * (sc - 32) *
// (q - 4) with d f16, sc 6 bits and q 3 bits: 2 low bits in qs, the high bit in hmask), repacked at
// load by cutting each 110-byte block in two: a quants plane (hmask[32] then qs[64]) and a scales
// plane (scales[12], then d in the low half of a fourth word). Interface: see weights_f32.wgsl.
// K % 256 == 0.
//
// Columns are laid out as weights_k_low_bits.wgsl says, with the high bit of column e at bit 4n + j
// of hmask[16 h + l]; scale s is the nibble s / 8 of scales[s % 8] below bits 2 (s / 4)..+1 of
// scales[8 + s % 4]. The scales stay packed (not widened to a byte or an f32 per 16 columns): that
// would cost 4 or 8 more bits per 16 weights than the 6 the file spends; 3.5 bits per weight, the
// file's 3.4375 plus 2 bytes of padding per super-block so every block's scales start on a word.
//! include weights_k_low_bits.wgsl

// Typed as 16-byte vectors so that a 16-column chunk (weights_q3_k_q8.wgsl) is two wide loads.
@group(0) @binding(1) var<storage, read> weight_quants: array<vec4<u32>>; // (N, K/256, 6): hmask[32] as 2 vectors, qs[64] as 4
@group(0) @binding(2) var<storage, read> weight_scales: array<vec4<u32>>; // (N, K/256): scales[12] as 3 u32, d (f16, low half)

// d * (sc - 32) of sub-block s of super-block `block`: exact in f32 (an f16 times a 6-bit integer).
fn sub_block_scale(block: u32, s: u32) -> f32 {
  let header = weight_scales[block];
  let nibble = (select(header.x, header.y, s % 8u >= 4u) >> ((s % 4u) * 8u + (s / 8u) * 4u)) & 15u;
  let top = (header.z >> ((s % 4u) * 8u + (s / 4u) * 2u)) & 3u;
  return unpack2x16float(header.w).x * f32(i32(nibble | (top << 4u)) - 32);
}

fn weight4(row: u32, k: u32, cols: u32) -> vec4<f32> {
  let c = low_bit_column(row, k, cols);
  let l4 = (k % 16u) / 4u; // word of columns l..l+3 within a 16-byte run
  let base = c.block * 6u;
  let bytes = vec4<u32>(0u, 8u, 16u, 24u);
  let low = (vec4<u32>(weight_quants[base + 2u + c.n * 2u + c.h][l4]) >> (bytes + 2u * c.j)) & vec4<u32>(3u);
  let high = (vec4<u32>(weight_quants[base + c.h][l4]) >> (bytes + 4u * c.n + c.j)) & vec4<u32>(1u);
  let q = vec4<i32>(low | (high << vec4<u32>(2u))) - vec4<i32>(4);
  // q * (d * sc) is exact in f32 (at most 20 significant bits), as in ggml.
  return vec4<f32>(q) * sub_block_scale(c.block, c.s);
}

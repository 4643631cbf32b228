// Q3_K weights for the matvec's q8 tier (matvec_sums_q8.wgsl): 16 columns = one sub-block, value
// d (sc - 32) (q - 4) with q 3 bits (0..7): scale d (sc - 32), offset -4 d (sc - 32). K % 256 == 0.
// Columns as in weights_k_low_bits.wgsl and weights_q3_k.wgsl; a chunk is l = 0..15.
//! include weights_q3_k.wgsl

fn weight_chunk16(row: u32, k: u32, cols: u32) -> Chunk16 {
  let c = low_bit_column(row, k, cols);
  // Low bits: qs[32 n + 16 h + l] at 2 j; high bit: hmask[16 h + l] at 4 n + j; l = 0..15 is one vector.
  let base = c.block * 6u;
  let low = (weight_quants[base + 2u + c.n * 2u + c.h] >> vec4<u32>(2u * c.j)) & vec4<u32>(0x03030303u);
  let high = (weight_quants[base + c.h] >> vec4<u32>(4u * c.n + c.j)) & vec4<u32>(0x01010101u);
  let scale = sub_block_scale(c.block, c.s);
  return Chunk16(low | (high << vec4<u32>(2u)), scale, -4.0 * scale);
}

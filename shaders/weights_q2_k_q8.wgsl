// Q2_K weights for the matvec's q8 tier (matvec_sums_q8.wgsl): 16 columns = one sub-block, value
// q * (d sc) - dmin m with q 2 bits (0..3): scale d sc, offset -dmin m. K % 256 == 0.
// Columns as in weights_k_low_bits.wgsl; a chunk is l = 0..15.
//! include weights_q2_k.wgsl

fn weight_chunk16(row: u32, k: u32, cols: u32) -> Chunk16 {
  let c = low_bit_column(row, k, cols);
  // qs[32 n + 16 h + l] for l = 0..15 is one vector; column l's two bits sit at 2 j of byte l.
  let words = weight_quants[c.block * 4u + c.n * 2u + c.h];
  let so = sub_block_scale(c.block, c.s);
  return Chunk16((words >> vec4<u32>(2u * c.j)) & vec4<u32>(0x03030303u), so.x, so.y);
}

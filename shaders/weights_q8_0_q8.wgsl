// Q8_0 weights for the matvec's q8 tier (matvec_sums_q8.wgsl): 16 columns of a row as their int8
// quants (the quants plane's words as they are) and the block's scale. K % 32 == 0.
//! include weights_q8_0.wgsl

fn weight_chunk16(row: u32, k: u32, cols: u32) -> Chunk16 {
  return Chunk16(weight_quants[row * (cols / 16u) + k / 16u], weight_scale(row, k, cols), 0.0);
}

// Q5_0 weights for the matvec's q8 tier (matvec_sums_q8.wgsl): value (q - 16) * d: scale d, offset
// -16 d. K % 32 == 0.
//! include weights_q5_0.wgsl
//! include weights_q5_q8.wgsl

fn weight_chunk16(row: u32, k: u32, cols: u32) -> Chunk16 {
  let d = weight_scale(row, k, cols);
  return Chunk16(q5_chunk16(row, k, cols), d, -16.0 * d);
}

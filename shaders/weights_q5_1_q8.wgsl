// Q5_1 weights for the matvec's q8 tier (matvec_sums_q8.wgsl): value q * d + m: scale d, offset m.
// K % 32 == 0.
//! include weights_q5_1.wgsl
//! include weights_q5_q8.wgsl

fn weight_chunk16(row: u32, k: u32, cols: u32) -> Chunk16 {
  let dm = weight_scale_min(row, k, cols);
  return Chunk16(q5_chunk16(row, k, cols), dm.x, dm.y);
}

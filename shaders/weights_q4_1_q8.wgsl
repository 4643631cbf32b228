// Q4_1 weights for the matvec's q8 tier (matvec_sums_q8.wgsl): nibbles with value nibble * d + m:
// scale d, offset m. K % 32 == 0.
//! include weights_q4_1.wgsl

fn weight_chunk16(row: u32, k: u32, cols: u32) -> Chunk16 {
  let words = weight_quants[row * (cols / 32u) + k / 32u];
  let q = (words >> vec4<u32>(select(0u, 4u, (k & 16u) != 0u))) & vec4<u32>(0x0f0f0f0fu);
  let dm = weight_scale_min(row, k, cols);
  return Chunk16(q, dm.x, dm.y);
}

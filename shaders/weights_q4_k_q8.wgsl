// Q4_K weights for the matvec's q8 tier (matvec_sums_q8.wgsl): 16 columns of one sub-block of 32,
// value nibble * (d sc) - dmin m: scale d sc, offset -dmin m (both exact in f32). K % 256 == 0.
//! include weights_q4_k.wgsl

fn weight_chunk16(row: u32, k: u32, cols: u32) -> Chunk16 {
  let block = row * (cols / 256u) + k / 256u;
  let sub = (k % 256u) / 32u;
  // Sub-blocks 2c and 2c + 1 share qs[32c .. 32c + 31]: 2c in the low nibbles, 2c + 1 in the high.
  let words = weight_quants[block * 8u + (sub / 2u) * 2u + (k % 32u) / 16u];
  let q = (words >> vec4<u32>((sub & 1u) * 4u)) & vec4<u32>(0x0f0f0f0fu);
  let sm = scale_min_k4(block, sub);
  return Chunk16(q, sm.x, -sm.y);
}

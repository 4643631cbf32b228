// Q4_0 weights for the matvec's q8 tier (matvec_sums_q8.wgsl): 16 columns of a row as their nibbles
// (0..15, valid int8 lanes) with value (nibble - 8) * d: scale d, offset -8 d. K % 32 == 0.
//! include weights_q4_0.wgsl

// The 16 nibble bytes' words of block (row, k / 32), low nibbles for columns 0..15, high for 16..31:
// word i byte j is column 4 i + j (+ 16), as Chunk16 wants.
fn block_nibble_chunk(words: vec4<u32>, k: u32) -> vec4<u32> {
  return (words >> vec4<u32>(select(0u, 4u, (k & 16u) != 0u))) & vec4<u32>(0x0f0f0f0fu);
}

fn weight_chunk16(row: u32, k: u32, cols: u32) -> Chunk16 {
  let d = weight_scale(row, k, cols);
  return Chunk16(block_nibble_chunk(weight_quants[row * (cols / 32u) + k / 32u], k), d, -8.0 * d);
}

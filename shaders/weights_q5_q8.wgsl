// The 5-bit quants of a Q5_0 / Q5_1 block for the matvec's q8 tier: 16 columns k..k+15 (k % 16 == 0)
// as int8 lanes 0..31, the 16 nibble bytes' low or high nibbles with bit 4 from qh.
// Included by weights_q5_0_q8.wgsl and weights_q5_1_q8.wgsl (after their weights module).

// Bits 0..3 of h spread to bit 4 of bytes 0..3.
fn spread_bit4(h: u32) -> u32 {
  return ((h & 1u) | ((h & 2u) << 7u) | ((h & 4u) << 14u) | ((h & 8u) << 21u)) << 4u;
}

fn q5_chunk16(row: u32, k: u32, cols: u32) -> vec4<u32> {
  let base = (row * (cols / 32u) + k / 32u) * 5u;
  let words = vec4<u32>(weight_quants[base + 1u], weight_quants[base + 2u], weight_quants[base + 3u], weight_quants[base + 4u]);
  let low = (words >> vec4<u32>(select(0u, 4u, (k & 16u) != 0u))) & vec4<u32>(0x0f0f0f0fu);
  let qh = weight_quants[base] >> (k % 32u); // bit i: column k + i
  return low | vec4<u32>(spread_bit4(qh), spread_bit4(qh >> 4u), spread_bit4(qh >> 8u), spread_bit4(qh >> 12u));
}

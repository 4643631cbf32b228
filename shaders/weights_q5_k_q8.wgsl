// Q5_K weights for the matvec's q8 tier (matvec_sums_q8.wgsl): 16 columns of one sub-block of 32,
// value q * (d sc) - dmin m with q 5 bits (0..31): scale d sc, offset -dmin m. K % 256 == 0.
//! include weights_q5_k.wgsl

fn weight_chunk16(row: u32, k: u32, cols: u32) -> Chunk16 {
  let block = row * (cols / 256u) + k / 256u;
  let sub = (k % 256u) / 32u;
  let l4 = (k % 32u) / 4u;
  let base = block * 40u;
  // Word offsets, multiples of 4 (l4 is 0 or 4): one vector each.
  let qs = base + 8u + (sub / 2u) * 8u + l4;
  let low = (weight_quants[qs / 4u] >> vec4<u32>((sub & 1u) * 4u)) & vec4<u32>(0x0f0f0f0fu);
  // qh byte l bit `sub` is bit 4 of column l of sub-block `sub`: shift it to bit 4 of each byte.
  let qh = weight_quants[(base + l4) / 4u];
  let high = ((qh >> vec4<u32>(sub)) & vec4<u32>(0x01010101u)) << vec4<u32>(4u);
  let sm = scale_min_k4(block, sub);
  return Chunk16(low | high, sm.x, -sm.y);
}

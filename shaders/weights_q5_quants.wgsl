// 5-bit block quants shared by weights_q5_0.wgsl and weights_q5_1.wgsl. GGUF Q5_0 / Q5_1 blocks of
// 32 columns hold qh[4] (bit j = bit 4 of column j) and qs[16] (the low 4 bits as Q4_0's nibbles);
// the quants plane keeps them in that order, 5 u32 per block, cut from the block at byte boundaries.
//! include weights_nibbles.wgsl

@group(0) @binding(1) var<storage, read> weight_quants: array<u32>; // (N, K/32, 5): qh as 1 u32, then qs[16] as 4 u32

// The unsigned 5-bit quants (0..31) of W[row, k..k+3], k % 4 == 0.
fn q5_quants(row: u32, k: u32, cols: u32) -> vec4<u32> {
  let base = (row * (cols / 32u) + k / 32u) * 5u;
  let low = block_nibbles(weight_quants[base + 1u + (k % 16u) / 4u], k);
  let high = (vec4<u32>(weight_quants[base]) >> (vec4<u32>(0u, 1u, 2u, 3u) + k % 32u)) & vec4<u32>(1u);
  return low | (high << vec4<u32>(4u));
}

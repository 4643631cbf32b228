// Nibble unpacking shared by the GGUF 32-column block modules whose quants are 16 nibble bytes per
// block (weights_q4_0.wgsl, weights_q4_1.wgsl, and the low 4 bits of weights_q5_quants.wgsl).
// GGUF order: the low nibble of byte j is column j, the high nibble column j + 16.

// Columns k..k+3 (k % 4 == 0) of a block from `word`, word (k % 16) / 4 of its 16 nibble bytes:
// the low nibbles for k % 32 < 16, else the high nibbles.
fn block_nibbles(word: u32, k: u32) -> vec4<u32> {
  let shift = vec4<u32>(0u, 8u, 16u, 24u) + select(0u, 4u, (k & 16u) != 0u);
  return (vec4<u32>(word) >> shift) & vec4<u32>(15u);
}

// Weight module: GGUF Q4_0 (blocks of 32 columns: value = (nibble - 8) * d, d f16), repacked at load
// into a quants plane (each block's 16 nibble bytes as 4 u32, GGUF order: low nibble of byte j is
// column j, high nibble is column j + 16) and a scales plane (weights_scales.wgsl).
// Interface: see weights_f32.wgsl. K % 32 == 0.
//! include weights_scales.wgsl
//! include weights_nibbles.wgsl

// Typed as 16-byte vectors, a block each, so that a block's chunk (weights_q4_0_q8.wgsl) is one wide load.
@group(0) @binding(1) var<storage, read> weight_quants: array<vec4<u32>>; // (N, K/32): 16 nibble bytes per block

fn weight4(row: u32, k: u32, cols: u32) -> vec4<f32> {
  let word = weight_quants[row * (cols / 32u) + k / 32u][(k % 16u) / 4u];
  return (vec4<f32>(block_nibbles(word, k)) - 8.0) * weight_scale(row, k, cols);
}

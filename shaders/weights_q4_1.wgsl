// Weight module: GGUF Q4_1 (blocks of 32 columns: value = nibble * d + m, d and m f16), repacked at
// load into a quants plane (each block's 16 nibble bytes as 4 u32, as Q4_0) and a scales plane (the
// block's d | m << 16, weights_scales_min.wgsl): 5 bits per weight, the file's.
// Interface: see weights_f32.wgsl. K % 32 == 0.
//! include weights_scales_min.wgsl
//! include weights_nibbles.wgsl

// Typed as 16-byte vectors so that a 16-column chunk (weights_q4_1_q8.wgsl) is one wide load.
@group(0) @binding(1) var<storage, read> weight_quants: array<vec4<u32>>; // (N, K/32): 16 nibble bytes per block

fn weight4(row: u32, k: u32, cols: u32) -> vec4<f32> {
  let word = weight_quants[row * (cols / 32u) + k / 32u][(k % 16u) / 4u];
  let dm = weight_scale_min(row, k, cols);
  // nibble * d is exact in f32 (at most 15 significant bits): one rounding, at + m, as in ggml.
  return vec4<f32>(block_nibbles(word, k)) * dm.x + dm.y;
}

// Weight module: GGUF Q8_0 (blocks of 32 columns: value = q * d, q int8, d f16), repacked at load
// into a quants plane (int8 packed 4 per u32, row-major) and a scales plane (weights_scales.wgsl).
// Interface: see weights_f32.wgsl. K % 32 == 0.
//! include weights_scales.wgsl

// Typed as 16-byte vectors so that a 16-column chunk (weights_q8_0_q8.wgsl) is one wide load.
@group(0) @binding(1) var<storage, read> weight_quants: array<vec4<u32>>; // (N, K/16), int8 x16, column k at byte k % 16

fn weight4(row: u32, k: u32, cols: u32) -> vec4<f32> {
  let word = bitcast<i32>(weight_quants[row * (cols / 16u) + k / 16u][(k % 16u) / 4u]);
  // Move each byte to the top, then an arithmetic shift sign-extends it.
  let q = vec4<i32>(word << 24u, word << 16u, word << 8u, word) >> vec4<u32>(24u);
  return vec4<f32>(q) * weight_scale(row, k, cols);
}

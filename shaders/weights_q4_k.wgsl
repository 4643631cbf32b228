// Weight module: GGUF Q4_K (super-blocks of 256 columns = 8 sub-blocks of 32; sub-block j's value is
// d * sc_j * nibble - dmin * m_j with d, dmin f16 and sc_j, m_j 6-bit), repacked at load by cutting
// each 144-byte block in two: a quants plane (qs[128]) and a scales plane (the 16-byte header d, dmin,
// scales[12], weights_scales_k4.wgsl): 4.5 bits per weight, the file's.
// Interface: see weights_f32.wgsl. K % 256 == 0.
//! include weights_scales_k4.wgsl

// Typed as 16-byte vectors so that a 16-column chunk (weights_q4_k_q8.wgsl) is one wide load.
@group(0) @binding(1) var<storage, read> weight_quants: array<vec4<u32>>; // (N, K/256, 8): qs[128] per super-block

fn weight4(row: u32, k: u32, cols: u32) -> vec4<f32> {
  let block = row * (cols / 256u) + k / 256u;
  let sub = (k % 256u) / 32u;
  // Sub-blocks 2c and 2c + 1 share qs[32c .. 32c + 31]: 2c in the low nibbles, 2c + 1 in the high.
  let word = weight_quants[block * 8u + (sub / 2u) * 2u + (k % 32u) / 16u][(k % 16u) / 4u];
  let nibbles = (vec4<u32>(word) >> (vec4<u32>(0u, 8u, 16u, 24u) + (sub & 1u) * 4u)) & vec4<u32>(15u);
  let sm = scale_min_k4(block, sub);
  // nibble * (d * sc) is exact in f32 (at most 21 significant bits): one rounding, at - dmin * m, as ggml.
  return vec4<f32>(nibbles) * sm.x - sm.y;
}

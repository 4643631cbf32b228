// Weight module: GGUF Q5_K (super-blocks of 256 columns = 8 sub-blocks of 32; sub-block j's value is
// d * sc_j * q - dmin * m_j with q 5 bits, d, dmin f16 and sc_j, m_j 6-bit), repacked at load by
// cutting each 176-byte block in two: a quants plane (qh[32] then qs[128]) and a scales plane (the
// 16-byte header d, dmin, scales[12], weights_scales_k4.wgsl): 5.5 bits per weight, the file's.
// Interface: see weights_f32.wgsl. K % 256 == 0.
//
// Column 32 j + l of a super-block (sub-block j, l 0..31) has its low 4 bits in qs[32 (j / 2) + l]
// (low nibble for even j, high for odd, as Q4_K) and bit 4 in bit j of qh[l].
//! include weights_scales_k4.wgsl

// Typed as 16-byte vectors so that a 16-column chunk (weights_q5_k_q8.wgsl) is two wide loads: its
// qs and qh words both start on 16 bytes (a super-block's 160 bytes are 10 vectors).
@group(0) @binding(1) var<storage, read> weight_quants: array<vec4<u32>>; // (N, K/256, 10): qh[32] as 2, qs[128] as 8

// Word i of the quants plane.
fn q5k_word(i: u32) -> u32 {
  return weight_quants[i / 4u][i % 4u];
}

fn weight4(row: u32, k: u32, cols: u32) -> vec4<f32> {
  let block = row * (cols / 256u) + k / 256u;
  let sub = (k % 256u) / 32u;
  let l4 = (k % 32u) / 4u; // word of columns l..l+3 within a 32-byte run
  let base = block * 40u;
  let bytes = vec4<u32>(0u, 8u, 16u, 24u);
  let low = (vec4<u32>(q5k_word(base + 8u + (sub / 2u) * 8u + l4)) >> (bytes + (sub & 1u) * 4u)) & vec4<u32>(15u);
  let high = (vec4<u32>(q5k_word(base + l4)) >> (bytes + sub)) & vec4<u32>(1u);
  let sm = scale_min_k4(block, sub);
  // q * (d * sc) is exact in f32 (at most 22 significant bits): one rounding, at - dmin * m, as ggml.
  return vec4<f32>(low | (high << vec4<u32>(4u))) * sm.x - sm.y;
}

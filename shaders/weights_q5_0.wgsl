// Weight module: GGUF Q5_0 (blocks of 32 columns: value = (q - 16) * d, q 5 bits, d f16), repacked at
// load into a quants plane (qh then qs, weights_q5_quants.wgsl) and a scales plane (d, two per u32,
// weights_scales.wgsl): 5.5 bits per weight, the file's.
// Interface: see weights_f32.wgsl. K % 32 == 0.
//! include weights_scales.wgsl
//! include weights_q5_quants.wgsl

fn weight4(row: u32, k: u32, cols: u32) -> vec4<f32> {
  return (vec4<f32>(q5_quants(row, k, cols)) - 16.0) * weight_scale(row, k, cols);
}

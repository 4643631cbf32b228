// Weight module: GGUF Q5_1 (blocks of 32 columns: value = q * d + m, q 5 bits, d and m f16), repacked
// at load into a quants plane (qh then qs, weights_q5_quants.wgsl) and a scales plane (d | m << 16,
// weights_scales_min.wgsl): 6 bits per weight, the file's.
// Interface: see weights_f32.wgsl. K % 32 == 0.
//! include weights_scales_min.wgsl
//! include weights_q5_quants.wgsl

fn weight4(row: u32, k: u32, cols: u32) -> vec4<f32> {
  let dm = weight_scale_min(row, k, cols);
  // q * d is exact in f32 (at most 16 significant bits): one rounding, at + m, as in ggml.
  return vec4<f32>(q5_quants(row, k, cols)) * dm.x + dm.y;
}

// Weight module: f32. One of the weights_<dtype>.wgsl modules; a kernel (matmul, matvec, embed) is
// composed with exactly one of them and reads W only through the interface below.
//
// Interface every weights_<dtype>.wgsl provides (kernels/weights.ts packs the planes):
//   W is (N, K) row-major: N rows = output features, K cols = input features (HF linear layout).
//   Stored rows are Kp = K rounded up to a multiple of 4 long; padded columns dequantise to 0.
//   (Quant dtypes need K % 32 == 0, K-quants K % 256 == 0, so Kp = K for them.)
//   fn weight4(row: u32, k: u32, cols: u32) -> vec4<f32>
//     W[row, k..k+3] as f32, for row < N, k % 4 == 0, k < Kp; `cols` is the logical K.
//   Bindings 1 and 2 are the weight planes (binding 2 unused by single-plane dtypes); a kernel's own
//   storage buffers start at binding 3.

@group(0) @binding(1) var<storage, read> weight_values: array<vec4<f32>>; // (N, Kp/4)

fn weight4(row: u32, k: u32, cols: u32) -> vec4<f32> {
  return weight_values[row * ((cols + 3u) / 4u) + k / 4u];
}

// Block scale and min shared by the GGUF "_1" block modules (weights_q4_1.wgsl, weights_q5_1.wgsl):
// value = q * d + m per block of 32 columns. Each block's 4-byte GGUF header d, m (f16) is kept as
// the one u32 d | m << 16, not widened to f32: decode is memory-bound (f32 would add 0.125 B per
// weight, 20 % for Q4_1), and unpack2x16float is exact.
// Block b = row * (K / 32) + k / 32, numbered row-major over the whole matrix.

@group(0) @binding(2) var<storage, read> weight_scales: array<u32>; // (N, K/32): d | m << 16 (f16)

// (d, m) of the block holding W[row, k].
fn weight_scale_min(row: u32, k: u32, cols: u32) -> vec2<f32> {
  return unpack2x16float(weight_scales[row * (cols / 32u) + k / 32u]);
}

// Block scales shared by the GGUF block-quant modules with one f16 scale per block (weights_q8_0.wgsl,
// weights_q4_0.wgsl, weights_q5_0.wgsl; Q4_1 / Q5_1 use weights_scales_min.wgsl, the K-quant modules
// their own scale planes).
// One f16 scale per block of 32 columns, kept as f16 (two per u32) rather than widened to f32: decode
// is memory-bound and f32 scales would add 6% (Q8_0), 9% (Q5_0) or 11% (Q4_0) to the bytes read per
// weight, while unpack2x16float is exact and costs one ALU op.
// Block b = row * (K / 32) + k / 32 (blocks numbered row-major over the whole matrix) is half b % 2
// of word b / 2.

@group(0) @binding(2) var<storage, read> weight_scales: array<u32>; // (ceil(N * K / 32 / 2)), f16 x2

fn weight_scale(row: u32, k: u32, cols: u32) -> f32 {
  let block = row * (cols / 32u) + k / 32u;
  let pair = unpack2x16float(weight_scales[block / 2u]);
  return select(pair.x, pair.y, (block & 1u) == 1u);
}

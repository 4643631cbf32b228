// Super-block header shared by the K-quant modules with 8 sub-blocks of 32 and 6-bit scales and
// mins (weights_q4_k.wgsl, weights_q5_k.wgsl): per 256 columns the GGUF header d, dmin (f16) and
// scales[12], 16 bytes cut from the block as they are.
//
// The header stays as the file has it (not widened to precomputed f32 d*sc, dmin*m per sub-block):
// decode is memory-bound, and the planes then cost exactly the file's bits per weight where f32
// scale and min would add 1.5 bits (f16 would add 0.5 and round d*sc); unpacking get_scale_min_k4
// is a few integer ops on one vec4 that every column of the super-block shares.

@group(0) @binding(2) var<storage, read> weight_scales: array<vec4<u32>>; // (N, K/256): d | dmin << 16 (f16), scales[12]

// (d * sc, dmin * m) of sub-block `sub` (0..7) of super-block `block`, with sc and m unpacked as
// ggml's get_scale_min_k4: byte sub % 4 of scales[0..3], scales[4..7] and scales[8..11].
// Both products are exact in f32 (f16 times 6 bits: at most 17 significant bits).
fn scale_min_k4(block: u32, sub: u32) -> vec2<f32> {
  let header = weight_scales[block];
  let dm = unpack2x16float(header.x);
  let shift = (sub % 4u) * 8u;
  let lo = (header.y >> shift) & 255u;
  let mid = (header.z >> shift) & 255u;
  let hi = (header.w >> shift) & 255u;
  let sc = select((hi & 15u) | ((lo >> 6u) << 4u), lo & 63u, sub < 4u);
  let mn = select((hi >> 4u) | ((mid >> 6u) << 4u), mid & 63u, sub < 4u);
  return vec2<f32>(dm.x * f32(sc), dm.y * f32(mn));
}

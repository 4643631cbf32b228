// Weight module: GGUF Q4_K (super-blocks of 256 columns = 8 sub-blocks of 32; sub-block j's value is
// d * sc_j * nibble - dmin * m_j with d, dmin f16 and sc_j, m_j 6-bit), repacked at load by cutting
// each 144-byte block in two: a quants plane (qs[128]) and a scales plane (the 16-byte header d, dmin,
// scales[12]). Interface: see weights_f32.wgsl. K % 256 == 0.
//
// The header stays as the file has it (not widened to precomputed f32 d*sc, dmin*m per sub-block):
// decode is memory-bound, and the planes then cost exactly the file's 4.5 bits per weight where f32
// scale and min would cost 6 (f16 would cost 5 and round d*sc); unpacking get_scale_min_k4 is a few
// integer ops on one vec4 that every column of the super-block shares.

@group(0) @binding(1) var<storage, read> weight_quants: array<u32>;       // (N, K/256, 32): qs[128] per super-block
@group(0) @binding(2) var<storage, read> weight_scales: array<vec4<u32>>; // (N, K/256): d | dmin << 16 (f16), scales[12]

fn weight4(row: u32, k: u32, cols: u32) -> vec4<f32> {
  let block = row * (cols / 256u) + k / 256u;
  let sub = (k % 256u) / 32u;
  // Sub-blocks 2c and 2c + 1 share qs[32c .. 32c + 31]: 2c in the low nibbles, 2c + 1 in the high.
  let word = weight_quants[block * 32u + (sub / 2u) * 8u + (k % 32u) / 4u];
  let nibbles = (vec4<u32>(word) >> (vec4<u32>(0u, 8u, 16u, 24u) + (sub & 1u) * 4u)) & vec4<u32>(15u);
  let header = weight_scales[block];
  let dm = unpack2x16float(header.x);
  // get_scale_min_k4(sub, scales): byte sub % 4 of scales[0..3], scales[4..7] and scales[8..11].
  let shift = (sub % 4u) * 8u;
  let lo = (header.y >> shift) & 255u;
  let mid = (header.z >> shift) & 255u;
  let hi = (header.w >> shift) & 255u;
  let sc = select((hi & 15u) | ((lo >> 6u) << 4u), lo & 63u, sub < 4u);
  let mn = select((hi >> 4u) | ((mid >> 6u) << 4u), mid & 63u, sub < 4u);
  // d * sc and nibble * (d * sc) are exact in f32 (at most 21 significant bits): one rounding, as ggml.
  return vec4<f32>(nibbles) * (dm.x * f32(sc)) - dm.y * f32(mn);
}

// Weight module: GGUF Q6_K (super-blocks of 256 columns = 16 sub-blocks of 16; value = d * sc_j * (q - 32)
// with d f16, sc_j int8 and q 6 bits split over ql (low 4) and qh (high 2)), repacked at load by
// cutting each 210-byte block in two: a quants plane (ql[128] then qh[64]) and a scales plane
// (scales[16], then d in the low half of a fifth word). Interface: see weights_f32.wgsl. K % 256 == 0.
//
// Column e of a super-block, e = 128 h + 32 g + l (h 0..1, g 0..3, l 0..31), is the nibble g / 2 of
// ql[64 h + 32 (g % 2) + l], bits 2g..2g+1 of qh[32 h + l], and scales[e / 16].
// Scales stay int8 and d f16 (not precomputed as f32 d * sc per 16 columns): that would cost 8 bits
// per weight instead of 6.625 (the file's 6.5625 plus 2 bytes of padding per super-block).

// Typed as 16-byte vectors so that a 16-column chunk (weights_q6_k_q8.wgsl) is two wide loads: its
// ql and qh words both start on 16 bytes (a super-block's 192 bytes are 12 vectors).
@group(0) @binding(1) var<storage, read> weight_quants: array<vec4<u32>>; // (N, K/256, 12): ql[128] as 8, qh[64] as 4
@group(0) @binding(2) var<storage, read> weight_scales: array<u32>; // (N, K/256, 5): scales[16] int8 as 4 u32, d f16 (low half)

// Word i of the quants plane.
fn q6_word(i: u32) -> u32 {
  return weight_quants[i / 4u][i % 4u];
}

fn weight4(row: u32, k: u32, cols: u32) -> vec4<f32> {
  let block = row * (cols / 256u) + k / 256u;
  let e = k % 256u;
  let h = e / 128u;
  let g = (e % 128u) / 32u;
  let l = e % 32u;
  let base = block * 48u;
  let low = q6_word(base + h * 16u + (g % 2u) * 8u + l / 4u);
  let high = q6_word(base + 32u + h * 8u + l / 4u);
  let bytes = vec4<u32>(0u, 8u, 16u, 24u);
  let lo4 = (vec4<u32>(low) >> (bytes + (g / 2u) * 4u)) & vec4<u32>(15u);
  let hi2 = (vec4<u32>(high) >> (bytes + g * 2u)) & vec4<u32>(3u);
  let q = vec4<i32>(lo4 | (hi2 << vec4<u32>(4u))) - vec4<i32>(32);
  let s = block * 5u;
  // Move byte (e / 16) % 4 to the top, then an arithmetic shift sign-extends it.
  let sc = (bitcast<i32>(weight_scales[s + e / 64u]) << (24u - ((e / 16u) % 4u) * 8u)) >> 24u;
  let d = unpack2x16float(weight_scales[s + 4u]).x;
  // d * sc and q * (d * sc) are exact in f32 (at most 23 significant bits), as in ggml.
  return vec4<f32>(q) * (d * f32(sc));
}

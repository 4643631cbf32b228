// Q6_K weights for the matvec's q8 tier (matvec_sums_q8.wgsl): 16 columns = one sub-block, value
// d sc (q - 32) with q 6 bits (0..63): scale d sc, offset -32 d sc (exact in f32). K % 256 == 0.
// Column e = 128 h + 32 g + l of a super-block as in weights_q6_k.wgsl; a chunk is l = 0..15 or 16..31.
//! include weights_q6_k.wgsl

fn weight_chunk16(row: u32, k: u32, cols: u32) -> Chunk16 {
  let block = row * (cols / 256u) + k / 256u;
  let e = k % 256u;
  let h = e / 128u;
  let g = (e % 128u) / 32u;
  let l = e % 32u;
  let base = block * 48u;
  // Word offsets, multiples of 4 (l is 0 or 16): one vector each.
  let lo = base + h * 16u + (g % 2u) * 8u + l / 4u;
  let hi = base + 32u + h * 8u + l / 4u;
  let low = (weight_quants[lo / 4u] >> vec4<u32>((g / 2u) * 4u)) & vec4<u32>(0x0f0f0f0fu);
  let high = ((weight_quants[hi / 4u] >> vec4<u32>(g * 2u)) & vec4<u32>(0x03030303u)) << vec4<u32>(4u);
  let s = block * 5u;
  let sc = (bitcast<i32>(weight_scales[s + e / 64u]) << (24u - ((e / 16u) % 4u) * 8u)) >> 24u;
  let scale = unpack2x16float(weight_scales[s + 4u]).x * f32(sc);
  return Chunk16(low | high, scale, -32.0 * scale);
}

// The column layout Q2_K and Q3_K share (weights_q2_k.wgsl, weights_q3_k.wgsl): column e of a
// super-block of 256, e = 128 n + 32 j + 16 h + l (n 0..1, j 0..3, h 0..1, l 0..15), has its two low
// bits at 2 j of byte 32 n + 16 h + l of the 64 qs bytes, and scale s = 8 n + 2 j + h.

struct LowBitColumn {
  block: u32,  // super-block of the weight (row-major over K / 256 per row)
  n: u32,
  j: u32,
  h: u32,
  s: u32,      // the sub-block (scale) index, 8 n + 2 j + h
}

fn low_bit_column(row: u32, k: u32, cols: u32) -> LowBitColumn {
  let e = k % 256u;
  let n = e / 128u;
  let j = (e % 128u) / 32u;
  let h = (e % 32u) / 16u;
  return LowBitColumn(row * (cols / 256u) + k / 256u, n, j, h, 8u * n + 2u * j + h);
}

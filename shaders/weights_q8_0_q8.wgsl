// Q8_0 weights for the matvec's q8 tier (matvec_sums_q8.wgsl): 16 columns of a row as their int8
// quants (the quants plane's words as they are) and the block's scale. K % 32 == 0.
//! include weights_q8_0.wgsl

fn weight_chunk16(row: u32, k: u32, cols: u32) -> Chunk16 {
  let base = row * (cols / 4u) + k / 4u;
  let q = vec4<u32>(weight_quants[base], weight_quants[base + 1u], weight_quants[base + 2u], weight_quants[base + 3u]);
  return Chunk16(q, weight_scale(row, k, cols), 0.0);
}

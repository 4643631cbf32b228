// One thread's partial sums over its share of K from f32 activations, a chunk of CHUNK_COLS
// consecutive columns at a time (MatvecOptions.layout 'chunked'), where the strided layout
// (matvec_sums.wgsl) reads 4 columns per step, its threads 4 columns apart. The chunk comes from a
// chunk reader, composed before this module:
//   matvec_chunk_quant.wgsl over a weights_<dtype>_q8.wgsl module: 16 columns of a block format as
//     int8 quants and one scale, in one 16-byte load (Q8_0: the chunk's 16 bytes; Q4_0, Q4_1: its
//     block's 16; Q4_K: its sub-block pair's half; Q2_K: its 16 bytes of 2-bit fields), two (Q3_K,
//     Q5_K, Q6_K: low and high bits) or five words (Q5_0, Q5_1: 20-byte blocks, not on 16 bytes);
//   weights_f16_chunked.wgsl: 8 f16 columns, one 16-byte load.
// A reader provides
//   const CHUNK_COLS: u32                                   16 or 8; K % CHUNK_COLS == 0
//   alias WeightChunk                                       what one row's chunk loads
//   fn weight_chunk(row: u32, k: u32, cols: u32) -> WeightChunk     k % CHUNK_COLS == 0
//   fn chunk_columns4(chunk: WeightChunk, i: u32) -> vec4<f32>      its columns 4 i .. 4 i + 3
// Which layout is faster is the GPU's to say (the autotune times both). The products are the same;
// they are summed in another order, so results agree to f32 rounding.
// Composed with matvec.wgsl or matvec_subgroup.wgsl (which include matvec_common.wgsl), a chunk
// reader and matvec_plain.wgsl or matvec_fusion.wgsl (normalised, SQUARE_ROWS). Chunks never pass
// the row's end (K % CHUNK_COLS == 0, checked by kernels/matvec.ts).
//! include matvec_chunk16.wgsl

// acc[r * MAX_M + m] = sum over this thread's chunks (CHUNK_COLS lid, then every CHUNK_COLS WG) of
// W[w0 + r, chunk] . a[m, chunk]. The W_ROWS chunks are loaded first (their loads in flight together),
// then each 4 columns of activations are loaded once and used for every weight row. Loops run to the
// constants MAX_ROWS / MAX_M with uniform guards, so indices stay compile-time constants.
fn partial_sums(row0: u32, lid: u32) -> array<f32, MAX_SLOTS> {
  let w0 = first_weight_row(row0);
  let w_end = weight_row_end();
  var acc: array<f32, MAX_SLOTS>;
  for (var k = CHUNK_COLS * lid; k < params.k; k += CHUNK_COLS * WG) {
    var chunks: array<WeightChunk, MAX_ROWS>;
    for (var r = 0u; r < W_ROWS; r++) {
      if (w0 + r < w_end) { chunks[r] = weight_chunk(w0 + r, k, params.k); }
    }
    for (var i = 0u; i < CHUNK_COLS / 4u; i++) {
      var xs: array<vec4<f32>, MAX_M>;
      for (var m = 0u; m < MAX_M; m++) {
        if (m < params.m) {
          let x = raw4(m, k + 4u * i);
          if (SQUARE_ROWS > 0u) { acc[W_ROWS * MAX_M + m] += dot(x, x); } // a fused RMSNorm's
          xs[m] = normalised(x, m, k + 4u * i);
        }
      }
      for (var r = 0u; r < W_ROWS; r++) {
        if (w0 + r < w_end) {
          let w = chunk_columns4(chunks[r], i);
          for (var m = 0u; m < MAX_M; m++) {
            if (m < params.m) { acc[r * MAX_M + m] += dot(w, xs[m]); }
          }
        }
      }
    }
  }
  return acc;
}

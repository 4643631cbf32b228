// One thread's partial sums over its share of K from f32 activations, a chunk of 16 consecutive
// columns at a time (MatvecOptions.layout 'chunked'): the weight comes through the dtype's
// weight_chunk16 (matvec_chunk16.wgsl), so a thread reads each weight row's 16 columns in one
// 16-byte load (Q8_0: the 16 bytes of the chunk; Q4_0: its block's 16; Q4_K: its sub-block pair's
// half) or four loads of adjacent words (the other formats), and one scale, where the strided layout (matvec_sums.wgsl) reads a word and a scale per 4 columns, its
// threads 4 columns apart. Which is faster is the GPU's to say (the autotune times both). The
// products are the same; they are summed in another order, so results agree to f32 rounding.
// Composed with matvec.wgsl or matvec_subgroup.wgsl (which include matvec_common.wgsl), a
// weights_<dtype>_q8.wgsl module and matvec_plain.wgsl or matvec_fusion.wgsl (normalised,
// SQUARE_ROWS). K % 32 == 0 (every dtype with a chunk module), so chunks never pass the row's end.
//! include matvec_chunk16.wgsl

// Signed bytes of `word` as floats (byte j is lane j): shifted to the top, then back arithmetically.
fn int8x4(word: u32) -> vec4<f32> {
  return vec4<f32>((vec4<i32>(bitcast<i32>(word)) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u));
}

// acc[r * MAX_M + m] = sum over this thread's chunks (16 lid, then every 16 WG) of
// W[w0 + r, chunk] . a[m, chunk]. The W_ROWS chunks are loaded first (their loads in flight together),
// then each 4 columns of activations are loaded once and used for every weight row. Loops run to the
// constants MAX_ROWS / MAX_M with uniform guards, so indices stay compile-time constants.
fn partial_sums(row0: u32, lid: u32) -> array<f32, MAX_SLOTS> {
  let w0 = first_weight_row(row0);
  let w_end = weight_row_end();
  var acc: array<f32, MAX_SLOTS>;
  for (var k = 16u * lid; k < params.k; k += 16u * WG) {
    var chunks: array<Chunk16, MAX_ROWS>;
    for (var r = 0u; r < W_ROWS; r++) {
      if (w0 + r < w_end) { chunks[r] = weight_chunk16(w0 + r, k, params.k); }
    }
    for (var i = 0u; i < 4u; i++) {
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
          let w = fma(int8x4(chunks[r].q[i]), vec4<f32>(chunks[r].scale), vec4<f32>(chunks[r].offset));
          for (var m = 0u; m < MAX_M; m++) {
            if (m < params.m) { acc[r * MAX_M + m] += dot(w, xs[m]); }
          }
        }
      }
    }
  }
  return acc;
}

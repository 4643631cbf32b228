// The chunked layout's reader (see matvec_sums_chunked.wgsl) for the block formats: a
// weights_<dtype>_q8.wgsl module's 16-column chunks (matvec_chunk16.wgsl), int8 quants with one scale
// and one offset, dequantised 4 columns at a time. K % 32 == 0.

const CHUNK_COLS: u32 = 16u;
alias WeightChunk = Chunk16;

fn weight_chunk(row: u32, k: u32, cols: u32) -> Chunk16 {
  return weight_chunk16(row, k, cols);
}

// Signed bytes of `word` as floats (byte j is lane j): shifted to the top, then back arithmetically.
fn int8x4(word: u32) -> vec4<f32> {
  return vec4<f32>((vec4<i32>(bitcast<i32>(word)) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u));
}

fn chunk_columns4(chunk: Chunk16, i: u32) -> vec4<f32> {
  return fma(int8x4(chunk.q[i]), vec4<f32>(chunk.scale), vec4<f32>(chunk.offset));
}

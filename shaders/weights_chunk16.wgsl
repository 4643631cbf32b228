// What every weights_<dtype>_q8.wgsl module serves: 16 consecutive columns of a weight row, read with
// a few loads of adjacent words, as int8 quants with one scale and one offset (within 16 columns every
// GGUF block format has a single scale). Used by the q8-activation sums (matvec_sums_q8.wgsl) and the
// chunked f32 sums (matvec_sums_chunked.wgsl).
//   fn weight_chunk16(row: u32, k: u32, cols: u32) -> Chunk16   k % 16 == 0

struct Chunk16 {
  q: vec4<u32>,  // 16 int8 weight quants, column k + 4 i + j at byte j of q[i]
  scale: f32,    // the chunk's value per unit of q
  offset: f32,   // added per column: W = scale * q + offset
}

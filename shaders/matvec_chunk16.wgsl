// What the chunk-based partial-sums modules share (matvec_sums_q8.wgsl: q8 activations;
// matvec_sums_chunked.wgsl: f32 activations in the chunked layout), both over whole chunks of K.
// Every weights_<dtype>_q8.wgsl module serves 16 consecutive columns of a weight row as int8 quants
// with one scale and one offset (within 16 columns every GGUF block format has a single scale):
//   fn weight_chunk16(row: u32, k: u32, cols: u32) -> Chunk16   k % 16 == 0

struct Chunk16 {
  q: vec4<u32>,  // 16 int8 weight quants, column k + 4 i + j at byte j of q[i]
  scale: f32,    // the chunk's value per unit of q
  offset: f32,   // added per column: W = scale * q + offset
}

// a[m, k..k+3] as the product takes it (stream4: after a folded post-norm, if any; before the
// pre-norm); K is whole chunks (a multiple of 8 or 32) and k % 4 == 0, so k + 3 < K.
fn raw4(m: u32, k: u32) -> vec4<f32> {
  let base = params.a_offset + m * params.a_stride + k;
  return stream4(m, k, vec4<f32>(a[base], a[base + 1u], a[base + 2u], a[base + 3u]));
}

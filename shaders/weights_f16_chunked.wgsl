// The chunked layout's reader (see matvec_sums_chunked.wgsl) for f16 weights: 8 columns, one 16-byte
// load, where weights_f16.wgsl reads 4 (8 bytes). The same plane, seen as vec4<u32>: rows are
// Kp = K long (K % 8 == 0, so Kp = K and every row starts on 16 bytes), two f16 a word, the low half
// the even column.

@group(0) @binding(1) var<storage, read> weight_values: array<vec4<u32>>; // (N, K/8), 8 f16 each

const CHUNK_COLS: u32 = 8u;
alias WeightChunk = vec4<u32>;

fn weight_chunk(row: u32, k: u32, cols: u32) -> vec4<u32> {
  return weight_values[row * (cols / 8u) + k / 8u];
}

fn chunk_columns4(chunk: vec4<u32>, i: u32) -> vec4<f32> {
  return vec4<f32>(unpack2x16float(chunk[2u * i]), unpack2x16float(chunk[2u * i + 1u]));
}

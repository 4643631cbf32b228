// KV cache dtype q8_0 (see attention_common.wgsl): ggml's Q8_0, every 32 consecutive elements of a
// head row (D a multiple of 32) share one scale d rounded to f16, value = q * d with q an int8.
// A block of block_elems elements is its quants, four int8 per u32 (element 4i + j in byte j), then
// its scales, one per 32 elements, each an f32 word holding the f16-rounded d (a word each keeps
// every load and store aligned and the writer's word its own): block_elems * (1/4 + 1/32) words.
alias KvWord = u32;

// Elements one writer invocation quantises together: one whole 32-block, so no atomics are needed.
const KV_GROUP: u32 = 32u;

fn kv_block_words(block_elems: u32) -> u32 {
  return block_elems / 4u + block_elems / 32u;
}

fn q8_value(word: u32, scale_word: u32, e: u32) -> f32 {
  // extractBits on an i32 sign-extends the byte.
  let q = extractBits(bitcast<i32>(word), (e % 4u) * 8u, 8u);
  return f32(q) * bitcast<f32>(scale_word);
}

fn k_at(block: u32, block_elems: u32, e: u32) -> f32 {
  let base = block * kv_block_words(block_elems);
  return q8_value(k_cache[base + e / 4u], k_cache[base + block_elems / 4u + e / 32u], e);
}

fn v_at(block: u32, block_elems: u32, e: u32) -> f32 {
  let base = block * kv_block_words(block_elems);
  return q8_value(v_cache[base + e / 4u], v_cache[base + block_elems / 4u + e / 32u], e);
}

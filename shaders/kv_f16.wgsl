// KV cache dtype f16 (see attention_common.wgsl): elements packed two per u32 (element 2i in the low
// half), read with unpack2x16float so no `shader-f16` is needed; a block is (Hkv, KV_BLOCK_TOKENS, D)
// halves, D even.
alias KvWord = u32;

// Elements one writer invocation stores together (one u32 word, so no two invocations share one).
const KV_GROUP: u32 = 2u;

fn kv_block_words(block_elems: u32) -> u32 {
  return block_elems / 2u;
}

fn k_at(block: u32, block_elems: u32, e: u32) -> f32 {
  return unpack2x16float(k_cache[block * (block_elems / 2u) + e / 2u])[e & 1u];
}

fn v_at(block: u32, block_elems: u32, e: u32) -> f32 {
  return unpack2x16float(v_cache[block * (block_elems / 2u) + e / 2u])[e & 1u];
}

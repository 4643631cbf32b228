// KV cache dtype f32 (see attention_common.wgsl): one f32 per element, a block is
// (Hkv, KV_BLOCK_TOKENS, D) words.
alias KvWord = f32;

// Elements one writer invocation stores together (kv_store).
const KV_GROUP: u32 = 1u;

fn kv_block_words(block_elems: u32) -> u32 {
  return block_elems;
}

// Element e of block `block` (block_elems elements a block) of the key / value pool.
fn k_at(block: u32, block_elems: u32, e: u32) -> f32 {
  return k_cache[block * block_elems + e];
}

fn v_at(block: u32, block_elems: u32, e: u32) -> f32 {
  return v_cache[block * block_elems + e];
}

// KV cache dtype f16, read natively (devices with the 'shader-f16' feature): the layout of
// kv_f16.wgsl (halves two to a u32 word, element 2i in the low half, which is how array<f16> lays
// them out), bound as array<f16> so each element is one f16 load and one conversion. The writers
// keep kv_f16_store.wgsl's packed stores (one u32 a pair), so both reads see the same bits.
// Compose after f16_enable.wgsl.
alias KvWord = f16;

// Elements one writer invocation stores together (unused by readers; kept for the module contract).
const KV_GROUP: u32 = 2u;

// Array elements (here halves) of one block.
fn kv_block_words(block_elems: u32) -> u32 {
  return block_elems;
}

fn k_at(block: u32, block_elems: u32, e: u32) -> f32 {
  return f32(k_cache[block * block_elems + e]);
}

fn v_at(block: u32, block_elems: u32, e: u32) -> f32 {
  return f32(v_cache[block * block_elems + e]);
}

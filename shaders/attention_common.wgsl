// Paged KV cache layout and constants shared by the attention kernels (kernels/attention.ts).
//! include activation.wgsl
//
// Each layer has one pool per cache (K and V) of `kv_blocks` blocks; a block holds KV_BLOCK_TOKENS
// consecutive positions of one sequence for every kv head, laid out (Hkv, KV_BLOCK_TOKENS, D), so a
// block of one layer is contiguous and copying it is one copyBufferToBuffer per cache. How a block's
// elements are stored (f32, f16 pairs, q8_0 32-blocks) is the dtype module's business (kv_f32.wgsl,
// kv_f16.wgsl, kv_q8_0.wgsl): kernels read through its k_at / v_at and write through its kv_store.
// A sequence reaches its blocks through one row of the block table: (rows, table_width) u32 block
// ids; position p lives in block table[row * table_width + p / KV_BLOCK_TOKENS] at slot p % 16.
// Every lookup is checked: an entry past the table, or naming a block the pool does not have (or
// the buffers cannot hold), gives KV_NO_BLOCK, and the kernels skip such keys instead of reading or
// writing out of bounds. The including shader declares `block_table` (array<u32>) and the caches.

const KV_BLOCK_TOKENS: u32 = 16u;
const KV_NO_BLOCK: u32 = 0xffffffffu;

// Score of a masked or missing key, and the running max before any key. Finite on purpose:
// exp(NEG_BIG - NEG_BIG) is 1, never NaN, and exp(NEG_BIG - x) is 0 for any real score x.
const NEG_BIG: f32 = -3.0e38;

// Sliding-window attention: every kernel takes a uniform `window` (keys; 0 = unlimited). A query at
// absolute position q sees key k iff k <= q and k > q - window, so the window counts the query's own
// key (window 1 = itself only). This is Hugging Face transformers' convention (masking_utils.py:
// sliding_window_overlay is `kv_idx > q_idx - sliding_window`, AND-ed with the causal `kv_idx <= q_idx`;
// used by Mistral and by Qwen2's sliding layers) and llama.cpp's (llama_hparams::is_masked_swa,
// LLAMA_SWA_TYPE_STANDARD: masked iff q - k >= n_swa).

// The first key a query at position `pos` sees: max(0, pos + 1 - window), or 0 without a window.
fn window_start(pos: u32, window: u32) -> u32 {
  if (window == 0u || pos < window) {
    return 0u;
  }
  return pos + 1u - window;
}

// Attention logit soft-capping (Gemma 2): a score s (q.k times the scale) becomes
// SOFTCAP * tanh(s / SOFTCAP) before the softmax; 0 = off. The prefill and decode-split pipelines set
// it only for models that cap (kernels/attention.ts), so every other pipeline is unchanged.
override SOFTCAP: f32 = 0.0;

fn soft_capped(s: f32) -> f32 {
  if (SOFTCAP <= 0.0) { return s; }
  return soft_cap(s, SOFTCAP);
}

// Elements of one block of one layer: (Hkv, KV_BLOCK_TOKENS, D).
fn kv_block_elements(kv_heads: u32, head_dim: u32) -> u32 {
  return kv_heads * KV_BLOCK_TOKENS * head_dim;
}

// Blocks both pools really hold: the run's kv_blocks, lowered to what the buffers can store (the
// host checks this too; the shader does not trust it). kv_block_words is the dtype module's count of
// array elements (KvWord) in one block.
fn kv_pool_blocks(kv_blocks: u32, block_elems: u32) -> u32 {
  let words = kv_block_words(block_elems);
  return min(kv_blocks, min(arrayLength(&k_cache), arrayLength(&v_cache)) / words);
}

// The block holding position `pos` of the sequence in table row `row`, or KV_NO_BLOCK when the
// position is past the row, the entry past the table buffer, or its id not below `pool_blocks`.
fn kv_block(row: u32, pos: u32, table_width: u32, pool_blocks: u32) -> u32 {
  let entry = pos / KV_BLOCK_TOKENS;
  if (entry >= table_width || row >= arrayLength(&block_table) / table_width) {
    return KV_NO_BLOCK;
  }
  let block = block_table[row * table_width + entry];
  if (block >= pool_blocks) {
    return KV_NO_BLOCK;
  }
  return block;
}

// Element index of (head, pos, 0) inside its block.
fn kv_in_block(head: u32, pos: u32, head_dim: u32) -> u32 {
  return (head * KV_BLOCK_TOKENS + pos % KV_BLOCK_TOKENS) * head_dim;
}

// KV cache layout and constants shared by the attention kernels (kernels/attention.ts).
//! include activation.wgsl
//
// A cache buffer (one for K, one for V, both f32) holds many regions: one per (sequence slot, layer).
// A region starts at element `kv_base` and is laid out (Hkv, capacity, D): head-major, so one head's
// keys are `capacity * D` contiguous elements and one key row is D contiguous elements.

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

// Element index of (head, pos, 0) in the region starting at kv_base.
fn kv_row(kv_base: u32, head: u32, pos: u32, capacity: u32, head_dim: u32) -> u32 {
  return kv_base + (head * capacity + pos) * head_dim;
}

// True when a region of `region_len` elements starting at kv_base lies inside an array of `len`
// elements (written so that no u32 sum can wrap).
fn region_fits(kv_base: u32, region_len: u32, len: u32) -> bool {
  return kv_base <= len && region_len <= len - kv_base;
}

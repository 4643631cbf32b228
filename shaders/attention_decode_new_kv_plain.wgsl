// attention_decode_new_kv.wgsl without a head norm: composed in place of
// attention_decode_new_kv_head_norm.wgsl (same functions), so a Llama's shader carries none of its code.

fn head_scale(head: u32, lid: u32) -> f32 {
  return 1.0;
}

fn head_normed(x: f32, scale: f32, w: u32) -> f32 {
  return x;
}

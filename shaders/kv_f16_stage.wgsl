// The step's key and value staged in workgroup memory as an f16 cache stores them, pairs packed as
// kv_f16_store.wgsl packs them (see attention_decode_new_kv.wgsl, which declares k_new and v_new).
// Read back from memory, not unpacked from the packing at once: a compiler may fold
// unpack2x16float(pack2x16float(x)) into x and skip the rounding (Mesa's lavapipe does, for the high half).
// Compose after kv_f16.wgsl.

fn kv_stage(x: array<f32, KV_GROUP>, g: u32, value: bool) {
  let word = pack2x16float(vec2<f32>(x[0], x[1]));
  if (value) { v_new[g / 2u] = word; } else { k_new[g / 2u] = word; }
}

fn kv_staged(d: u32, value: bool) -> f32 {
  return unpack2x16float(select(k_new[d / 2u], v_new[d / 2u], value))[d & 1u];
}

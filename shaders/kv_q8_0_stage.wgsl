// The step's key and value staged in workgroup memory as a q8_0 cache stores them: a head row's
// quants (D / 4 words), then its scales (D / 32 words), as kv_q8_0_store.wgsl writes them (see
// attention_decode_new_kv.wgsl, which declares k_new and v_new). Compose after kv_q8_0.wgsl and
// kv_q8_0_store.wgsl.

fn kv_stage(x: array<f32, KV_GROUP>, g: u32, value: bool) {
  let group = q8_group(x);
  for (var w = 0u; w < KV_GROUP / 4u; w++) {
    if (value) { v_new[g / 4u + w] = group.words[w]; } else { k_new[g / 4u + w] = group.words[w]; }
  }
  let scale = bitcast<u32>(group.d16);
  if (value) { v_new[D / 4u + g / 32u] = scale; } else { k_new[D / 4u + g / 32u] = scale; }
}

fn kv_staged(d: u32, value: bool) -> f32 {
  if (value) { return q8_value(v_new[d / 4u], v_new[D / 4u + d / 32u], d); }
  return q8_value(k_new[d / 4u], k_new[D / 4u + d / 32u], d);
}

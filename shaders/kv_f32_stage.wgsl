// The step's key and value staged in workgroup memory as an f32 cache stores them (see
// attention_decode_new_kv.wgsl, which declares k_new and v_new). Compose after kv_f32.wgsl.

// Elements g .. g + KV_GROUP - 1 of the head row, x, stored as kv_store would.
fn kv_stage(x: array<f32, KV_GROUP>, g: u32, value: bool) {
  if (value) { v_new[g] = bitcast<u32>(x[0]); } else { k_new[g] = bitcast<u32>(x[0]); }
}

// Element d of the staged head row, as a reader of the cache gets it.
fn kv_staged(d: u32, value: bool) -> f32 {
  return bitcast<f32>(select(k_new[d], v_new[d], value));
}

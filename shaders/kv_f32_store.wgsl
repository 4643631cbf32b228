// KV cache writes, dtype f32: elements e .. e + KV_GROUP - 1 of a block. Compose after kv_f32.wgsl.
fn kv_store(block: u32, block_elems: u32, e: u32, k: array<f32, KV_GROUP>, v: array<f32, KV_GROUP>) {
  k_cache[block * block_elems + e] = k[0];
  v_cache[block * block_elems + e] = v[0];
}

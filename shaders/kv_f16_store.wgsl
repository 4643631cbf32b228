// KV cache writes, dtype f16: elements e, e + 1 (e even) of a block, rounded to nearest f16 by
// pack2x16float. Compose after kv_f16.wgsl.
fn kv_store(block: u32, block_elems: u32, e: u32, k: array<f32, KV_GROUP>, v: array<f32, KV_GROUP>) {
  let w = block * (block_elems / 2u) + e / 2u;
  k_cache[w] = pack2x16float(vec2<f32>(k[0], k[1]));
  v_cache[w] = pack2x16float(vec2<f32>(v[0], v[1]));
}

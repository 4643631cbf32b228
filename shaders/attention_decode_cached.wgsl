// Decode attention over keys and values already in the caches (another kernel, RopeKvWrite or
// KvWrite, wrote the step's own before this one runs): composed before attention_decode_common.wgsl
// in place of attention_decode_new_kv.wgsl, so this shader carries none of that module's code.

@group(0) @binding(3) var<storage, read> k_cache: array<KvWord>;
@group(0) @binding(4) var<storage, read> v_cache: array<KvWord>;

fn load_query(row: u32, h: u32, kv_len: u32, lid: u32) {
  for (var d = lid; d < D; d += WG) {
    q_s[d] = q[params.q_offset + row * params.q_row_stride + h * D + d] * params.scale;
  }
}

fn load_new_kv(row: u32, h: u32, kv_len: u32, first: u32, count: u32, table_row: u32, block_elems: u32, pool_blocks: u32, lid: u32) {}

fn is_new_key(pos: u32, kv_len: u32) -> bool {
  return false;
}

fn new_key_score() -> f32 {
  return 0.0;
}

fn new_value(d: u32) -> f32 {
  return 0.0;
}

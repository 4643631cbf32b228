// rope_kv_write.wgsl without the head norm: composed in place of rope_kv_write_head_norm.wgsl (same
// functions), so a Llama's shader carries none of the norm's code. One invocation per item.

fn head_normed(x: f32, scale: f32, w: u32) -> f32 {
  return x;
}

fn rope_kv_write(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, interleaved: bool) {
  let i = grid_index(wid, nwg, lid, WG);
  let per_row = params.q_heads * (params.rotary_dims / 2u) + params.kv_heads * params.head_dim / KV_GROUP;
  if (i >= params.rows * per_row) { return; }
  rope_kv_item(i / per_row, i % per_row, 1.0, interleaved);
}

// Decode attention with the step's head norm (if any), RoPE and KV-cache write folded in: composed before
// attention_decode_common.wgsl in place of attention_decode_cached.wgsl, so a decode step's layer runs
// no RoPE + KV-write dispatch (rope_kv_write.wgsl) or KV-write dispatch (attention_kv_write.wgsl)
// before its attention.
//
// The q binding holds the step's projection rows unrotated: query heads at q_offset, key heads at
// k_offset, value heads at v_offset, q_row_stride apart. A row's query and key sit at position
// kv_len - 1, which only the split holding that key sees. Each workgroup normalises and rotates its
// own query head as it loads it. The workgroups of the split holding the step's key compute that key (rotated) and value,
// stage them in workgroup memory as the cache stores them (f16-rounded, or q8_0-quantised), and
// score against those instead of reading the cache; the last query head of each kv head's group also
// stores them in the caches, for the steps after. No workgroup reads what another writes: the others
// read only earlier positions, whose words the step's key shares with none (D is a multiple of the
// dtype's KV_GROUP, so a position's words are its own). Every expression is rope_kv_write.wgsl's (and
// its head norm's), so the outputs and the caches are those of RopeKvWrite then
// attention_decode_cached.wgsl.
// Pairs (ROTARY_DIMS Rd, pair i < Rd/2, angle = position * inv_freq[i]): (i, i + Rd/2) for HF's
// rotate_half, (2i, 2i + 1) with INTERLEAVED (llama.cpp / GGUF); elements [Rd, D) are not rotated,
// and Rd = 0 is a model with learned positions (the KV write alone).
// Compose as: the KV dtype module, its store and stage modules (kv_f32.wgsl, kv_f32_store.wgsl,
// kv_f32_stage.wgsl, ...), the variant module, this file. The variant module provides
//   fn head_scale(head: u32, lid: u32) -> f32           1 / rms of a head (1 without a head norm)
//   fn head_normed(x: f32, scale: f32, w: u32) -> f32   element x normalised, w its weight's index
//   attention_decode_new_kv_plain.wgsl      no head norm;
//   attention_decode_new_kv_head_norm.wgsl  Qwen3's and Gemma 3's RMSNorm of each query and key head first.
//! include rope_common.wgsl

override ROTARY_DIMS: u32 = 0u;
override INTERLEAVED: bool = false;

@group(0) @binding(3) var<storage, read_write> k_cache: array<KvWord>;
@group(0) @binding(4) var<storage, read_write> v_cache: array<KvWord>;
// Inverse frequencies (Rd / 2 radians per position; a placeholder for Rd = 0), then with the head
// norm its weights (attention_decode_new_kv_head_norm.wgsl).
@group(0) @binding(8) var<storage, read> rope_table: array<f32>;

// The step's key (rotated) and value, as the cache stores them (the dtype's stage module: kv_stage
// writes a group, kv_staged reads an element back as a reader of the cache gets it).
var<workgroup> k_new: array<u32, D>;
var<workgroup> v_new: array<u32, D>;

// Element d (< D) of the head whose element 0 is q[head], normalised (scale, weights from w) and
// rotated to position pos where d < Rd.
fn rotated(head: u32, d: u32, pos: u32, scale: f32, w: u32) -> f32 {
  if (d >= ROTARY_DIMS) {
    return head_normed(q[head + d], scale, w + d);
  }
  let half = ROTARY_DIMS / 2u;
  var p = vec3<u32>(d % half, d % half + half, d % half);
  if (INTERLEAVED) {
    p = vec3<u32>(d & ~1u, d | 1u, d / 2u);
  }
  let angle = rope_angle(pos, rope_table[p.z]);
  let c = cos(angle);
  let s = sin(angle);
  let a = head_normed(q[head + p.x], scale, w + p.x);
  let b = head_normed(q[head + p.y], scale, w + p.y);
  return select(b * c + a * s, a * c - b * s, d == p.x);
}

fn load_query(row: u32, h: u32, kv_len: u32, lid: u32) {
  let head = params.q_offset + row * params.q_row_stride + h * D;
  let scale = head_scale(head, lid);
  for (var d = lid; d < D; d += WG) {
    q_s[d] = rotated(head, d, kv_len - 1u, scale, 0u) * params.scale;
  }
}

fn load_new_kv(row: u32, h: u32, kv_len: u32, first: u32, count: u32, table_row: u32, block_elems: u32, pool_blocks: u32, lid: u32) {
  let kv_head = h / params.group;
  let k_head = params.k_offset + row * params.q_row_stride + kv_head * D;
  let v_head = params.v_offset + row * params.q_row_stride + kv_head * D;
  // Every workgroup takes the key head's scale, since the reduction needs uniform control flow; only
  // the split holding the step's position uses it.
  let scale = head_scale(k_head, lid);
  let pos = kv_len - 1u;
  if (kv_len == 0u || pos < first || pos >= first + count) {
    return;
  }
  let block = kv_block(table_row, pos, params.table_width, pool_blocks);
  // The group's last query head stores them. Any one would do; the last, because a device that runs
  // workgroups in order (a CPU adapter) then runs the group's other heads before it, so a split that
  // read the step's key from the cache would read it unwritten there, and the tests would see it.
  let writes = h % params.group == params.group - 1u && block != KV_NO_BLOCK;
  for (var g = lid * KV_GROUP; g < D; g += WG * KV_GROUP) {
    var kg: array<f32, KV_GROUP>;
    var vg: array<f32, KV_GROUP>;
    for (var i = 0u; i < KV_GROUP; i++) {
      kg[i] = rotated(k_head, g + i, pos, scale, D);
      vg[i] = q[v_head + g + i];
    }
    if (writes) {
      kv_store(block, block_elems, kv_in_block(kv_head, pos, D) + g, kg, vg);
    }
    kv_stage(kg, g, false);
    kv_stage(vg, g, true);
  }
}

fn is_new_key(pos: u32, kv_len: u32) -> bool {
  return pos + 1u == kv_len;
}

// The same sum, in the same order, as the split's loop over a cached key.
fn new_key_score() -> f32 {
  var dot = 0.0;
  for (var d = 0u; d < D; d++) {
    dot += q_s[d] * kv_staged(d, false);
  }
  return dot;
}

fn new_value(d: u32) -> f32 {
  return kv_staged(d, true);
}

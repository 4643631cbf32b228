// Rotary position embedding, in place, one invocation per rotated pair.
//
// x holds T token rows `row_stride` elements apart; each row holds H heads of D elements from
// `offset` (in a fused QKV buffer (T, (Hq + 2 Hkv) D), offset 0 and H = Hq + Hkv rotate Q and K in
// one dispatch). The first R = rotary_dims elements of a head rotate, the rest stay (partial rotary).
// Pair i (i < R/2) turns by angle = position[t] * inv_freq[i]:
//   rope_half        (HF rotate_half, GPT-NeoX): elements (i, i + R/2)
//   rope_interleaved (llama.cpp / GGUF, GPT-J):  elements (2i, 2i + 1)
//   (a, b) -> (a cos - b sin, b cos + a sin)
// The angle is the f32-rounded product, as HF computes it (rope_common.wgsl).
//! include grid.wgsl
//! include rope_common.wgsl

struct Params {
  tokens: u32,           // T: token rows
  heads: u32,            // H: heads to rotate in each row
  head_dim: u32,         // D: elements per head
  rotary_dims: u32,      // R: rotated elements per head, even, <= D
  offset: u32,           // first element of head 0 of token 0 in x (elements)
  row_stride: u32,       // elements from one token row to the next in x
  positions_offset: u32, // first entry of positions (elements)
  inv_freq_offset: u32,  // first entry of inv_freq (elements)
}

override WG: u32 = 64;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;   // (T, row_stride), heads (H, D) at offset
@group(0) @binding(2) var<storage, read> positions: array<u32>; // (T) token positions
@group(0) @binding(3) var<storage, read> inv_freq: array<f32>;  // (R / 2) radians per position

// Turn the pair (x[i0], x[i1]) by `angle` radians.
fn rotate(i0: u32, i1: u32, angle: f32) {
  let c = cos(angle);
  let s = sin(angle);
  let a = x[i0];
  let b = x[i1];
  x[i0] = a * c - b * s;
  x[i1] = b * c + a * s;
}

struct Pair {
  base: u32,     // element 0 of the head in x
  index: u32,    // i < R / 2
  angle: f32,
}

// The pair of invocation i: pairs run fastest, then heads, then tokens.
fn pair_of(i: u32) -> Pair {
  let half = params.rotary_dims / 2u;
  let index = i % half;
  let token_head = i / half;
  let head = token_head % params.heads;
  let token = token_head / params.heads;
  let base = params.offset + token * params.row_stride + head * params.head_dim;
  let angle = rope_angle(positions[params.positions_offset + token], inv_freq[params.inv_freq_offset + index]);
  return Pair(base, index, angle);
}

@compute @workgroup_size(WG)
fn rope_half(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
  let i = grid_index(wid, nwg, lid, WG);
  if (i >= params.tokens * params.heads * (params.rotary_dims / 2u)) { return; }
  let p = pair_of(i);
  rotate(p.base + p.index, p.base + p.index + params.rotary_dims / 2u, p.angle);
}

@compute @workgroup_size(WG)
fn rope_interleaved(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
  let i = grid_index(wid, nwg, lid, WG);
  if (i >= params.tokens * params.heads * (params.rotary_dims / 2u)) { return; }
  let p = pair_of(i);
  rotate(p.base + 2u * p.index, p.base + 2u * p.index + 1u, p.angle);
}

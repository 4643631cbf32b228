// KV cache write: copy the new K and V rows of a step into the cache at each row's position.
// One invocation per (row, kv head, dim) copies one K and one V element. Each row has its own
// (kv_base, position) metadata, so one dispatch serves a decode batch of different sequences; a
// prefill passes the same kv_base with positions p0 .. p0 + T - 1.
// Legend: R = params.rows, Hkv = params.kv_heads, D = params.head_dim, C = params.capacity.
//! include grid.wgsl
//! include attention_common.wgsl

struct KvWriteParams {
  rows: u32,          // R: new rows (tokens) to write
  kv_heads: u32,      // Hkv: key/value heads
  head_dim: u32,      // D: elements per head
  capacity: u32,      // C: token positions per head in one region (elements per head = C * D)
  k_offset: u32,      // element of row 0, head 0, dim 0 in k
  k_row_stride: u32,  // elements between consecutive rows of k (>= Hkv * D)
  v_offset: u32,      // element of row 0, head 0, dim 0 in v
  v_row_stride: u32,  // elements between consecutive rows of v (>= Hkv * D)
  meta_offset: u32,   // u32 index of row 0's (kv_base, position) pair in row_meta
  kv_offset: u32,     // elements added to every row's kv_base (a layer's offset inside a slot)
}

override WG: u32 = 256;

@group(0) @binding(0) var<uniform> params: KvWriteParams;
@group(0) @binding(1) var<storage, read> k: array<f32>;              // (R, k_row_stride): (Hkv, D) at k_offset
@group(0) @binding(2) var<storage, read> v: array<f32>;              // (R, v_row_stride): (Hkv, D) at v_offset; may be k's buffer
@group(0) @binding(3) var<storage, read> row_meta: array<u32>;       // (R, 2) at meta_offset: kv_base (elements), position (tokens)
@group(0) @binding(4) var<storage, read_write> k_cache: array<f32>;  // regions of (Hkv, C, D) at kv_base + kv_offset
@group(0) @binding(5) var<storage, read_write> v_cache: array<f32>;  // regions of (Hkv, C, D) at kv_base + kv_offset

@compute @workgroup_size(WG)
fn kv_write(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
  let i = grid_index(wid, nwg, lid, WG);
  let row_len = params.kv_heads * params.head_dim;
  if (i >= params.rows * row_len) { return; }
  let row = i / row_len;
  let e = i % row_len;
  let kv_base = row_meta[params.meta_offset + 2u * row] + params.kv_offset;
  let pos = row_meta[params.meta_offset + 2u * row + 1u];
  // A position past the capacity, or a region past the end of a cache, would overwrite another
  // sequence's keys: such a row is dropped (the host validates what it can see; this guards the rest).
  let region_len = row_len * params.capacity;
  if (pos >= params.capacity || !region_fits(kv_base, region_len, arrayLength(&k_cache)) ||
      !region_fits(kv_base, region_len, arrayLength(&v_cache))) {
    return;
  }
  let dst = kv_row(kv_base, e / params.head_dim, pos, params.capacity, params.head_dim) + e % params.head_dim;
  k_cache[dst] = k[params.k_offset + row * params.k_row_stride + e];
  v_cache[dst] = v[params.v_offset + row * params.v_row_stride + e];
}

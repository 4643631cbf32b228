// Embedding gather: out[t, :] = table[ids[t], :] for T token ids, table any weight dtype.
// Compose with one weights_<dtype>.wgsl (bindings 1-2, the weight4 interface).
// Legend: T tokens, V table rows (vocabulary), D table cols (embedding width), Dp = D rounded up to 4.
// One workgroup per token (2-D grid via grid_group); its threads stride over D four columns at a time.
// Ids are validated by the engine on the CPU; an id >= V is clamped to V - 1 here only so the read
// stays in bounds (it is not an error path).
//! include grid.wgsl

struct Params {
  count: u32,       // tokens T
  rows: u32,        // table rows V
  cols: u32,        // table cols D
  ids_offset: u32,  // first element of ids (elements)
  out_offset: u32,  // first element of out (elements)
  out_stride: u32,  // elements between consecutive rows of out (>= cols)
}

override WG: u32 = 64;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(3) var<storage, read> ids: array<u32>;        // (T) from ids_offset
@group(0) @binding(4) var<storage, read_write> out: array<f32>;  // (T, out_stride) from out_offset

@compute @workgroup_size(WG)
fn embed(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
  let t = grid_group(wid, nwg);
  if (t >= params.count) { return; }
  let row = min(ids[params.ids_offset + t], params.rows - 1u);
  let base = params.out_offset + t * params.out_stride;
  let dp = (params.cols + 3u) & ~3u;
  for (var k = 4u * lid; k < dp; k += 4u * WG) {
    let w = weight4(row, k, params.cols);
    for (var i = 0u; i < 4u; i++) {
      if (k + i < params.cols) { out[base + k + i] = w[i]; }
    }
  }
}

// Embedding gather: out[t, :] = table[ids[t], :] * scale for T token ids, table any weight dtype.
// Compose with one weights_<dtype>.wgsl (bindings 1-2, the weight4 interface).
// Legend: T tokens, V table rows (vocabulary), D table cols (embedding width), Dp = D rounded up to 4.
// A table too large for one storage binding is split into row chunks, one dispatch each: the bound
// weight holds table rows first_row .. first_row + rows - 1, and only tokens whose id falls in that
// range write their output row (the others are skipped, not clamped), so the chunks together write
// every row once. An unsplit table is the one chunk first_row = 0, rows = V.
// One workgroup per token (2-D grid via grid_group); its threads stride over D four columns at a time.
// Ids are validated by the engine on the CPU; an id >= V is clamped to V - 1 here only so the read
// stays in bounds (it is not an error path): the chunk holding row V - 1 writes it.
//! include grid.wgsl

struct Params {
  count: u32,       // tokens T
  rows: u32,        // table rows in this chunk (the bound weight's rows)
  cols: u32,        // table cols D
  ids_offset: u32,  // first element of ids (elements)
  out_offset: u32,  // first element of out (elements)
  out_stride: u32,  // elements between consecutive rows of out (>= cols)
  first_row: u32,   // table row of this chunk's row 0 (rows)
  table_rows: u32,  // rows V of the whole table (rows), for the clamp
  scale: f32,       // multiplies every value (Gemma: sqrt(D)); 1 elsewhere (unitless)
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
  let id = min(ids[params.ids_offset + t], params.table_rows - 1u);
  if (id < params.first_row || id - params.first_row >= params.rows) { return; }
  let row = id - params.first_row;
  let base = params.out_offset + t * params.out_stride;
  let dp = (params.cols + 3u) & ~3u;
  for (var k = 4u * lid; k < dp; k += 4u * WG) {
    let w = weight4(row, k, params.cols);
    for (var i = 0u; i < 4u; i++) {
      if (k + i < params.cols) { out[base + k + i] = w[i] * params.scale; }
    }
  }
}

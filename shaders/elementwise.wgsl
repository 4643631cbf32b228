// Element-wise ops over flat f32 arrays. Offsets are in elements so one buffer can hold many tensors.
// Legend: n = params.count elements.
//! include grid.wgsl
//! include activation.wgsl

struct Params {
  count: u32,       // elements to process
  a_offset: u32,    // first element of a (elements)
  b_offset: u32,    // first element of b (elements)
  out_offset: u32,  // first element of out (elements)
}

override WG: u32 = 256;
override SOFTCAP: f32 = 1.0; // softcap's c (logits), set by the pipeline that runs it

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;        // (n)
@group(0) @binding(2) var<storage, read> b: array<f32>;        // (n); unary ops leave it unbound
@group(0) @binding(3) var<storage, read_write> out: array<f32>; // (n); may alias nothing above

@compute @workgroup_size(WG)
fn add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
  let i = grid_index(wid, nwg, lid, WG);
  if (i >= params.count) { return; }
  out[params.out_offset + i] = a[params.a_offset + i] + b[params.b_offset + i];
}

// out = silu(a) * b: the SwiGLU gate with a = gate projection, b = up projection.
@compute @workgroup_size(WG)
fn swiglu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
  let i = grid_index(wid, nwg, lid, WG);
  if (i >= params.count) { return; }
  out[params.out_offset + i] = silu(a[params.a_offset + i]) * b[params.b_offset + i];
}

@compute @workgroup_size(WG)
fn silu_op(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
  let i = grid_index(wid, nwg, lid, WG);
  if (i >= params.count) { return; }
  out[params.out_offset + i] = silu(a[params.a_offset + i]);
}

@compute @workgroup_size(WG)
fn gelu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = grid_index(wid, nwg, lid, WG);
  if (i >= params.count) { return; }
  out[params.out_offset + i] = gelu_tanh(a[params.a_offset + i]);
}

// out[i] = silu(a[2i]) * a[2i + 1]: SwiGLU over a projection whose weight interleaves gate and up rows
// (gate row n at 2n, up row n at 2n + 1: models/transformer.ts fuses them so at load), whose output
// rows (M, 2F) thus hold (gate, up) pairs; out is (M, F). a_offset must be even.
@compute @workgroup_size(WG)
fn swiglu_pairs(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
  let i = grid_index(wid, nwg, lid, WG);
  if (i >= params.count) { return; }
  out[params.out_offset + i] = silu(a[params.a_offset + 2u * i]) * a[params.a_offset + 2u * i + 1u];
}

// out = c tanh(a / c): Gemma 2's final logit soft-capping (in place on the logits).
@compute @workgroup_size(WG)
fn softcap(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
  let i = grid_index(wid, nwg, lid, WG);
  if (i >= params.count) { return; }
  out[params.out_offset + i] = soft_cap(a[params.a_offset + i], SOFTCAP);
}

// out[i] = gelu_tanh(a[2i]) * a[2i + 1]: GeGLU (Gemma) over interleaved (gate, up) pairs, as swiglu_pairs.
@compute @workgroup_size(WG)
fn geglu_pairs(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
  let i = grid_index(wid, nwg, lid, WG);
  if (i >= params.count) { return; }
  out[params.out_offset + i] = gelu_tanh(a[params.a_offset + 2u * i]) * a[params.a_offset + 2u * i + 1u];
}

// Bandwidth probe for the roofline: dst = src, one vec4<f32> per step, so every byte of src is read
// once and every byte of dst written once (bytes moved = 2 x 16 x count). A grid-stride loop lets the
// host pick any grid (kernels/bench.ts sizes it to about one vec4 per invocation).
// Legend: n = params.count vec4 elements.
//! include grid.wgsl

struct CopyParams {
  count: u32, // n: vec4<f32> elements to copy
}

override WG: u32 = 256; // invocations per workgroup

@group(0) @binding(0) var<uniform> params: CopyParams;
@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;        // (n)
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<f32>>;  // (n)

@compute @workgroup_size(WG)
fn copy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let stride = nwg.x * nwg.y * WG;
  for (var i = grid_index(wid, nwg, lid, WG); i < params.count; i += stride) {
    dst[i] = src[i];
  }
}

// Arithmetic probe for the roofline: each invocation runs params.iterations trips of 32 independent
// vec4 fused multiply-adds (8 accumulators x 4 rounds, so the chains overlap), i.e. 256 FLOP per
// trip, all in registers. The sum lands in sink so no work is dead; the multiplier and addend come
// from the uniforms so the compiler cannot fold the loop.
// Legend: I = invocations in the grid (workgroups x WG).
//! include grid.wgsl

struct FmaParams {
  iterations: u32, // loop trips per invocation (256 FLOP each)
  count: u32,      // I: sink elements (invocations past it write nothing)
  mul: f32,        // multiplier of every FMA (close to 1 keeps values finite)
  add: f32,        // addend of every FMA
}

override WG: u32 = 256; // invocations per workgroup

@group(0) @binding(0) var<uniform> params: FmaParams;
@group(0) @binding(1) var<storage, read_write> sink: array<f32>; // (I): one result per invocation

@compute @workgroup_size(WG)
fn fma_peak(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
  let i = grid_index(wid, nwg, lid, WG);
  let m = vec4<f32>(params.mul);
  let c = vec4<f32>(params.add);
  let x = f32(lid) * 1e-3;
  var a0 = vec4<f32>(x, x + 0.1, x + 0.2, x + 0.3);
  var a1 = a0 + 1.0;
  var a2 = a0 + 2.0;
  var a3 = a0 + 3.0;
  var a4 = a0 + 4.0;
  var a5 = a0 + 5.0;
  var a6 = a0 + 6.0;
  var a7 = a0 + 7.0;
  for (var t = 0u; t < params.iterations; t++) {
    for (var r = 0u; r < 4u; r++) {
      a0 = fma(a0, m, c); a1 = fma(a1, m, c); a2 = fma(a2, m, c); a3 = fma(a3, m, c);
      a4 = fma(a4, m, c); a5 = fma(a5, m, c); a6 = fma(a6, m, c); a7 = fma(a7, m, c);
    }
  }
  if (i < params.count) {
    sink[i] = dot((a0 + a1) + (a2 + a3) + (a4 + a5) + (a6 + a7), vec4<f32>(1.0));
  }
}

// The run contract shared by matmul.wgsl (prefill) and matvec.wgsl (decode): one uniform struct
// (MatmulParams in kernels/matmul.ts), the activation/bias/residual/output bindings and the two
// fusion flags. The weight (bindings 1-2) comes from a weights_<dtype>.wgsl module.

struct Params {
  m: u32,               // activation rows (tokens; 1..8 in matvec)
  n: u32,               // output features (weight rows)
  k: u32,               // input features (weight cols)
  a_offset: u32,        // first element of a (elements)
  a_stride: u32,        // elements between consecutive rows of a (>= k)
  out_offset: u32,      // first element of out (elements)
  out_stride: u32,      // elements between consecutive rows of out (>= n)
  bias_offset: u32,     // first element of bias (elements); unused without HAS_BIAS
  residual_offset: u32, // first element of residual (elements); unused without HAS_RESIDUAL
  residual_stride: u32, // elements between consecutive rows of residual (>= n); unused without HAS_RESIDUAL
}

override HAS_BIAS: bool = false;
override HAS_RESIDUAL: bool = false; // add residual[m, n] (a fused residual connection)

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(3) var<storage, read> a: array<f32>;          // (M, a_stride) from a_offset
@group(0) @binding(4) var<storage, read> bias: array<f32>;       // (N) from bias_offset; a placeholder without HAS_BIAS
@group(0) @binding(5) var<storage, read> residual: array<f32>;   // (M, residual_stride) from residual_offset; a placeholder without HAS_RESIDUAL
@group(0) @binding(6) var<storage, read_write> out: array<f32>;  // (M, out_stride) from out_offset; never the residual's buffer

// Activation functions shared by the element-wise kernels (elementwise.wgsl) and the fused matvec
// epilogue (matvec_common.wgsl), so both compute exactly the same expression.

fn silu(x: f32) -> f32 {
  return x / (1.0 + exp(-x));
}

// Soft-capping (Gemma 2's attention and final logits): cap * tanh(x / cap), with tanh written as in
// gelu_tanh below; |x / cap| > 15 gives +-cap in f32 anyway.
fn soft_cap(x: f32, cap: f32) -> f32 {
  let e = exp(2.0 * clamp(x / cap, -15.0, 15.0));
  return cap * (e - 1.0) / (e + 1.0);
}

// GELU, tanh approximation as GPT-2 uses: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
// tanh is written through exp of a clamped argument: the builtin overflows to NaN on some drivers.
fn gelu_tanh(x: f32) -> f32 {
  let u = clamp(0.7978845608028654 * (x + 0.044715 * x * x * x), -15.0, 15.0);
  let e = exp(2.0 * u);
  return 0.5 * x * (1.0 + (e - 1.0) / (e + 1.0));
}

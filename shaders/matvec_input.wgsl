// The matvec's activations as its input binding holds them: no post-norm before the product (composed
// where shaders/matvec_post_norm.wgsl is not; the partial-sums modules call both through these).

fn post_norm_statistics(lid: u32, row0: u32) {}

// a[m, k..k+3] as the product takes it, from the values loaded from the input binding.
fn stream4(m: u32, k: u32, loaded: vec4<f32>) -> vec4<f32> {
  return loaded;
}

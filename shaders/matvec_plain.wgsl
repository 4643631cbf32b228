// The matvec without fusions: composed in place of matvec_fusion.wgsl (same functions, nothing fused),
// so a plain projection's shader carries none of the fusion code.
//! include matvec_input.wgsl

fn norm_statistics(lid: u32) {}

const SQUARE_ROWS: u32 = 0u;

fn normalised(x: vec4<f32>, m: u32, k: u32) -> vec4<f32> {
  return x;
}

fn first_weight_row(row0: u32) -> u32 {
  return row0;
}

fn weight_row_end() -> u32 {
  return params.n;
}

// Output j = r * MAX_M + m (output row row0 + r, activation row m): bias, residual, store.
fn write_output(j: u32, row0: u32) {
  let r = j / MAX_M;
  let m = j % MAX_M;
  let n = row0 + r;
  if (m >= params.m || n >= params.n) { return; }
  var v = slot_total(j);
  if (HAS_BIAS) { v += bias[params.bias_offset + n]; }
  if (HAS_RESIDUAL) { v += residual[params.residual_offset + m * params.residual_stride + n]; }
  out[params.out_offset + m * params.out_stride + n] = v;
}

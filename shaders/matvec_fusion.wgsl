// The decode fusions of the matvec (kernels/matvec.ts, MatvecFusion), for both tiers: composed in
// place of matvec_plain.wgsl, between the tier's file and matvec_common.wgsl. It provides what
// matvec_common.wgsl and the tier files call: norm_statistics, normalised, SQUARE_ROWS,
// first_weight_row, weight_row_end, write_output.
//   NORM  the activation rows are normalised as they are loaded (RMSNorm or LayerNorm over K, scaled by
//         norm_weight, LayerNorm shifted by norm_bias): one dispatch (the norm's) fewer. Each workgroup
//         computes its rows' statistics itself, from the same loads.
//         RMSNorm: x / rms(x) * w. The 1 / rms factor is the same for every column of a row, so it
//         comes out of the dot product: the loads are multiplied by w only, each thread also sums the
//         squares of the raw values it loads anyway, in slots of their own beside the products
//         (SQUARE_ROWS, matvec_common.wgsl), the tier reduces them with the products, and
//         write_output scales the row's totals by 1 / rms. No pass over the activations and no
//         reduction (with its barriers) of their own: on lavapipe those doubled a 7B-shaped Q4_0
//         matvec's time.
//         LayerNorm (GPT-2): its mean must be taken off before the products, so its statistics are a
//         pass of their own before them (norm_statistics), kept in the exact form of norm.wgsl.
//   ACT   an activation on each result (after the bias, before the residual).
//   GLU   weight rows come in (gate, up) pairs, rows 2n and 2n + 1, and output n is act(gate) * up:
//         a gated MLP (SwiGLU) in the projection. params.n counts outputs, so 2n weight rows are read.
// The tier file provides
//   fn workgroup_sum(v: f32, lid: u32) -> f32   every thread's v summed over the workgroup, returned to
//                                                every thread (ends with a barrier);
//   fn slot_total(j: u32) -> f32                after the tier's reduction: the workgroup's total of
//                                                accumulator slot j.
//! include activation.wgsl

const NORM_NONE: u32 = 0u;
const NORM_RMS: u32 = 1u;    // x / sqrt(mean(x^2) + eps) * norm_weight
const NORM_LAYER: u32 = 2u;  // (x - mean) / sqrt(var + eps) * norm_weight + norm_bias
const ACT_NONE: u32 = 0u;
const ACT_SILU: u32 = 1u;
const ACT_GELU: u32 = 2u;    // tanh approximation

override NORM: u32 = 0u;     // NORM_*: normalise the activation rows as they are loaded
override NORM_EPS: f32 = 0.0; // added to the mean square / variance (unitless)
override ACT: u32 = 0u;      // ACT_*: applied to each result (to the gate, with GLU)
override GLU: bool = false;  // weight rows in (gate, up) pairs: out = act(gate) * up

@group(0) @binding(7) var<storage, read> norm_weight: array<f32>; // (K); a placeholder without NORM
@group(0) @binding(8) var<storage, read> norm_bias: array<f32>;   // (K); a placeholder unless NORM_LAYER

// Per activation row m: (pivot, mean of x - pivot, 1 / sqrt(var + eps)) for LayerNorm, computed as
// norm.wgsl does (deviations from the row's first element, so a mean far from zero costs no precision),
// set by norm_statistics before partial_sums reads the rows.
var<private> norm_stats: array<vec3<f32>, MAX_M>;

// Slot rows of sums of squares (matvec_common.wgsl): one with RMSNorm.
override SQUARE_ROWS: u32 = select(0u, 1u, NORM == NORM_RMS);

fn a_at(row: u32, c: u32) -> f32 {
  return a[params.a_offset + row * params.a_stride + c];
}

// LayerNorm's statistics of the workgroup's activation rows, before the products (nothing for
// RMSNorm: see row_scale), one row at a time (M is small, and scalar code keeps the shader quick to
// compile). Call from uniform control flow: it contains barriers.
fn norm_statistics(lid: u32) {
  if (NORM != NORM_LAYER) { return; }
  let n = f32(params.k);
  for (var m = 0u; m < params.m; m++) {
    let pivot = a_at(m, 0u);
    var deviations = 0.0;
    for (var c = lid; c < params.k; c += WG) { deviations += a_at(m, c) - pivot; }
    let mean = workgroup_sum(deviations, lid) / n;
    var squares = 0.0;
    for (var c = lid; c < params.k; c += WG) {
      let d = (a_at(m, c) - pivot) - mean;
      squares += d * d;
    }
    norm_stats[m] = vec3<f32>(pivot, mean, 1.0 / sqrt(workgroup_sum(squares, lid) / n + NORM_EPS));
  }
}

// norm_weight[k..k+3], zero past K.
fn norm_scale4(k: u32) -> vec4<f32> {
  if (k + 4u <= params.k) { return vec4<f32>(norm_weight[k], norm_weight[k + 1u], norm_weight[k + 2u], norm_weight[k + 3u]); }
  var v = vec4<f32>(0.0);
  for (var i = 0u; i < 4u; i++) {
    if (k + i < params.k) { v[i] = norm_weight[k + i]; }
  }
  return v;
}

// norm_bias[k..k+3], zero past K.
fn norm_shift4(k: u32) -> vec4<f32> {
  if (k + 4u <= params.k) { return vec4<f32>(norm_bias[k], norm_bias[k + 1u], norm_bias[k + 2u], norm_bias[k + 3u]); }
  var v = vec4<f32>(0.0);
  for (var i = 0u; i < 4u; i++) {
    if (k + i < params.k) { v[i] = norm_bias[k + i]; }
  }
  return v;
}

// x = a[m, k..k+3] as loaded, as the products take it: LayerNorm's expression is norm.wgsl's;
// RMSNorm's is x * w, its 1 / rms applied to the totals (row_scale). Zero past K stays zero: scale
// and shift are 0 there.
fn normalised(x: vec4<f32>, m: u32, k: u32) -> vec4<f32> {
  if (NORM == NORM_RMS) { return x * norm_scale4(k); }
  if (NORM == NORM_LAYER) {
    let s = norm_stats[m];
    return ((x - s.x) - s.y) * s.z * norm_scale4(k) + norm_shift4(k);
  }
  return x;
}

// The factor on activation row m's totals, after the tier's reduction: 1 / rms for RMSNorm (from
// the row's reduced squares), else 1.
fn row_scale(m: u32) -> f32 {
  if (NORM != NORM_RMS) { return 1.0; }
  return 1.0 / sqrt(slot_total(W_ROWS * MAX_M + m) / f32(params.k) + NORM_EPS);
}

// The first weight row of the workgroup whose first output is row0, and the end of the weight's rows.
fn first_weight_row(row0: u32) -> u32 {
  return select(row0, 2u * row0, GLU);
}

fn weight_row_end() -> u32 {
  return select(params.n, 2u * params.n, GLU);
}

fn activate(x: f32) -> f32 {
  if (ACT == ACT_SILU) { return silu(x); }
  if (ACT == ACT_GELU) { return gelu_tanh(x); }
  return x;
}

// Output j = r * MAX_M + m (output row row0 + r, activation row m) from the reduced slot totals:
// bias, activation (GLU: act(gate) * up), residual, store.
fn write_output(j: u32, row0: u32) {
  let r = j / MAX_M;
  let m = j % MAX_M;
  let n = row0 + r;
  if (m >= params.m || n >= params.n) { return; }
  var v: f32;
  let scale = row_scale(m);
  if (GLU) {
    var gate = slot_total(2u * r * MAX_M + m) * scale;
    var up = slot_total((2u * r + 1u) * MAX_M + m) * scale;
    if (HAS_BIAS) {
      gate += bias[params.bias_offset + 2u * n];
      up += bias[params.bias_offset + 2u * n + 1u];
    }
    v = activate(gate) * up;
  } else {
    v = slot_total(j) * scale;
    if (HAS_BIAS) { v += bias[params.bias_offset + n]; }
    v = activate(v);
  }
  if (HAS_RESIDUAL) { v += residual[params.residual_offset + m * params.residual_stride + n]; }
  out[params.out_offset + m * params.out_stride + n] = v;
}

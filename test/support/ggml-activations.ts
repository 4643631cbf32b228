// What llama.cpp's CPU backend does to activations that a float64 reference does not, so a test can
// show that a gap between llama.cpp and us (or the reference) is exactly that and nothing else.
//  - Q8_0 matmuls first quantise the activations to Q8_0 (ggml-cpu quantize_row_q8_0, x86 path).
//  - GELU is a lookup table over f16 inputs (GGML_GELU_FP16 in ggml-cpu/vec.h).
import { f16BitsToF32, f32ToF16Bits } from '../../models/ggml.ts';

const fr = Math.fround;
const f16 = (x: number) => f16BitsToF32(f32ToF16Bits(x));

/** f32 round to nearest integer, ties to even (_mm256_round_ps with _MM_ROUND_NEAREST). */
const nearestEven = (x: number) => fr(fr(x + 12582912) - 12582912);

/**
 * `x` as ggml's CPU matmul multiplies it with a Q8_0 weight: per block of 32, amax = max |x|,
 * d = amax / 127 stored as f16, q = nearest-even(x * (127 / amax)) in f32, value = f16(d) * q.
 */
export function roundQ8_0(x: Float64Array): Float64Array {
  if (x.length % 32 !== 0) throw new RangeError(`Q8_0 needs a multiple of 32 values (got ${x.length})`);
  const out = new Float64Array(x.length);
  for (let b = 0; b < x.length; b += 32) {
    let amax = 0;
    for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(fr(x[b + j])));
    if (amax === 0) continue;
    const d = f16(fr(amax / 127));
    const id = fr(127 / amax);
    for (let j = 0; j < 32; j++) out[b + j] = d * nearestEven(fr(fr(x[b + j]) * id));
  }
  return out;
}

/** ggml_gelu_f32: the tanh approximation, evaluated in f32 (here in float64, then rounded). */
function geluF32(x: number): number {
  return fr(0.5 * x * (1 + Math.tanh(0.7978845608028654 * x * (1 + 0.044715 * x * x))));
}

/**
 * GELU as ggml's CPU backend computes it for f32 tensors: 0 at or below -10, identity at or above
 * 10, else ggml_table_gelu_f16[f16(x)], a table of f16(gelu(h)) over every f16 h.
 */
export function ggmlGelu(x: number): number {
  const v = fr(x);
  if (v <= -10) return 0;
  if (v >= 10) return v;
  return f16(geluF32(f16(v)));
}

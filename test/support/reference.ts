// Float64 references and the helpers every kernel test shares: a seeded generator, NaN poisoning,
// and the relative L2 error with the first bad index for failure messages.
import { randomU32 } from '../../models/synthetic-gguf.ts';

/** mulberry32 scaled to [0, 1): small, fast, and the same sequence on every machine for a given seed. */
export function rng(seed: number): () => number {
  const next = randomU32(seed);
  return () => next() / 4294967296;
}

/** `n` values uniform in [-scale, scale). */
export function randomF32(n: number, seed: number, scale = 1): Float32Array {
  const next = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (next() * 2 - 1) * scale;
  return out;
}

/** A Float32Array of `n` NaNs: outputs start poisoned so an unwritten element fails the test. */
export function nanArray(n: number): Float32Array {
  return new Float32Array(n).fill(NaN);
}

export interface Comparison {
  relL2: number;
  maxAbs: number;
  /** First index where the output is not finite while the reference is, or -1. */
  firstNonFinite: number;
  /** Index of the largest absolute error. */
  worstIndex: number;
}

/** ||out - ref|| / ||ref|| over float64; non-finite reference entries must match exactly. */
export function compare(out: ArrayLike<number>, ref: ArrayLike<number>): Comparison {
  if (out.length !== ref.length) throw new Error(`length mismatch: out ${out.length}, ref ${ref.length}`);
  let num = 0;
  let den = 0;
  let maxAbs = 0;
  let worstIndex = -1;
  let firstNonFinite = -1;
  for (let i = 0; i < ref.length; i++) {
    const r = ref[i];
    const o = out[i];
    if (!Number.isFinite(r)) {
      if (!Object.is(o, r) && !(Number.isNaN(o) && Number.isNaN(r)) && firstNonFinite < 0) firstNonFinite = i;
      continue;
    }
    if (!Number.isFinite(o)) {
      if (firstNonFinite < 0) firstNonFinite = i;
      continue;
    }
    const d = o - r;
    num += d * d;
    den += r * r;
    if (Math.abs(d) > maxAbs) {
      maxAbs = Math.abs(d);
      worstIndex = i;
    }
  }
  const relL2 = den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
  return { relL2, maxAbs, firstNonFinite, worstIndex };
}

/** Throw a descriptive error unless out matches ref within `tolerance` relative L2. */
export function expectClose(out: ArrayLike<number>, ref: ArrayLike<number>, tolerance: number, what: string): Comparison {
  const c = compare(out, ref);
  if (c.firstNonFinite >= 0) {
    throw new Error(
      `${what}: element ${c.firstNonFinite} is ${out[c.firstNonFinite]} but the reference is ${ref[c.firstNonFinite]} (unwritten or overflowed)`,
    );
  }
  if (!(c.relL2 <= tolerance)) {
    throw new Error(
      `${what}: rel-L2 ${c.relL2.toExponential(3)} > ${tolerance} (max abs ${c.maxAbs.toExponential(3)} at ${c.worstIndex}: ` +
        `got ${out[c.worstIndex]}, want ${ref[c.worstIndex]})`,
    );
  }
  return c;
}

/**
 * Float64 RMSNorm of each D-element head (Qwen3's and Gemma 3's q_norm / k_norm): `rows` rows `stride` apart from
 * `offset`, `heads` heads each; heads [0, qHeads) take w[0..D), the rest w[D..2D). Returns a copy of x
 * with those heads normalised, every other element as it was.
 */
export function headNormReference(
  x: ArrayLike<number>, w: ArrayLike<number>, rows: number, heads: number, qHeads: number, D: number, stride: number, offset: number, eps: number,
): Float64Array {
  const out = Float64Array.from(x);
  for (let r = 0; r < rows; r++) {
    for (let h = 0; h < heads; h++) {
      const base = offset + r * stride + h * D;
      const wBase = h < qHeads ? 0 : D;
      let ss = 0;
      for (let d = 0; d < D; d++) ss += x[base + d] ** 2;
      const scale = 1 / Math.sqrt(ss / D + eps);
      for (let d = 0; d < D; d++) out[base + d] = x[base + d] * scale * w[wBase + d];
    }
  }
  return out;
}

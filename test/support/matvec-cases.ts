// The cases of the fused decode matvec tests (test/matvec-fused.test.ts, test/matvec-q8.test.ts): what
// a case is, the activations its reference applies, its buffer layout and its name.
import type { WeightDtype } from '../../kernels/weights.ts';

export interface FusedCase {
  dtype: WeightDtype;
  M: number;
  /** Outputs (with glu the weight has 2N rows). */
  N: number;
  K: number;
  norm?: 'rms' | 'layer';
  activation?: 'silu' | 'gelu';
  glu?: boolean;
  bias?: boolean;
  residual?: boolean;
  rowsPerWorkgroup?: number;
  workgroupSize?: number;
  seed: number;
}

export const silu = (x: number) => x / (1 + Math.exp(-x));
export const gelu = (x: number) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));

/** The layout of a case's buffers: every offset and stride non-trivial. */
export function layout(c: FusedCase) {
  return { inputOffset: 3, inputRowStride: c.K + 5, outputOffset: 2, outputRowStride: c.N + 3, biasOffset: 4, residualOffset: 1, residualRowStride: c.N + 2 };
}

export function describeFused(c: FusedCase): string {
  const parts = [c.dtype, `M=${c.M} N=${c.N} K=${c.K}`, c.norm && `${c.norm}norm`, c.glu ? `glu(${c.activation})` : c.activation, c.bias && 'bias', c.residual && 'residual'];
  if (c.rowsPerWorkgroup) parts.push(`rows/wg=${c.rowsPerWorkgroup} wg=${c.workgroupSize}`);
  return parts.filter(Boolean).join(' ');
}

/** Float64: out[m, n] = act(norm(a[m]) · W[n] + bias[n]) (glu: act(gate) * up) + residual[m, n]. */

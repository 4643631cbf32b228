// Shared set-up for projection tests (matmul, matvec, linear): random weights packed in a dtype
// (random valid blocks for the K-quants, which are not quantised from floats here), a float64 reference that multiplies by the dequantised packed weight, and a check that reads the
// whole output region (written cells against the reference, stride gaps still NaN). Input and
// residual elements outside their logical rows are NaN, so a kernel reading the wrong place fails.
import type { Gpu } from '../../src/gpu/device.ts';
import type { PackedWeight, WeightDtype } from '../../kernels/weights.ts';
import { dequantize } from '../../kernels/weights-reference.ts';
import { uploadWeight } from '../../kernels/weights-upload.ts';
import type { MatmulRun } from '../../kernels/matmul.ts';
import { createStorage, poisoned, readF32 } from './gpu.ts';
import { randomWeight } from './kquants.ts';
import { expectClose, randomF32, type Comparison } from './reference.ts';

/** A residual added to a projection: (M, N) values from `offset`, rows `stride` elements apart. */
export interface ResidualReference {
  values: Float32Array;
  offset: number;
  stride: number;
}

/** out[m, n] = residual[m, n] + bias[n] + sum_k a[m, k] W[n, k] in float64 (bias, residual optional). */
export function projectionReference(
  w: Float64Array,
  n: number,
  k: number,
  a: Float32Array,
  m: number,
  aOffset: number,
  aStride: number,
  bias?: Float32Array,
  biasOffset = 0,
  residual?: ResidualReference,
): Float64Array {
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = bias ? bias[biasOffset + j] : 0;
      if (residual) s += residual.values[residual.offset + i * residual.stride + j];
      for (let c = 0; c < k; c++) s += a[aOffset + i * aStride + c] * w[j * k + c];
      out[i * n + j] = s;
    }
  }
  return out;
}

export interface ProjectionCase {
  dtype: WeightDtype;
  M: number;
  N: number;
  K: number;
  bias: boolean;
  inputOffset: number;
  inputRowStride: number;
  outputOffset: number;
  outputRowStride: number;
  biasOffset: number;
  residual: boolean;
  residualOffset: number;
  residualRowStride: number;
  seed: number;
}

export function projectionCase(partial: Partial<ProjectionCase> & Pick<ProjectionCase, 'dtype' | 'M' | 'N' | 'K'>): ProjectionCase {
  return {
    bias: false,
    inputOffset: 3,
    inputRowStride: partial.K,
    outputOffset: 5,
    outputRowStride: partial.N,
    biasOffset: 2,
    residual: false,
    residualOffset: 7,
    residualRowStride: partial.N,
    seed: 1,
    ...partial,
  };
}

export function describeCase(c: ProjectionCase): string {
  return `${c.dtype} M=${c.M} N=${c.N} K=${c.K}${c.bias ? ' bias' : ''}${c.residual ? ' residual' : ''}` +
    (c.inputRowStride !== c.K ? ` inStride=${c.inputRowStride}` : '') +
    (c.outputRowStride !== c.N ? ` outStride=${c.outputRowStride}` : '') +
    (c.residual && c.residualRowStride !== c.N ? ` resStride=${c.residualRowStride}` : '');
}

export interface ProjectionSetup {
  weight: PackedWeight;
  input: GPUBuffer;
  output: GPUBuffer;
  bias?: GPUBuffer;
  residual?: GPUBuffer;
  run: MatmulRun;
  /** The float64 reference, (M, N). */
  reference: Float64Array;
  /** The dequantised weight (N, K) and the input as uploaded (rows from inputOffset, inputRowStride apart). */
  operands: { w: Float64Array; a: Float32Array };
  /** Read the written (M, N) cells; throws if a cell outside them (a stride gap) was written. */
  read(): Promise<Float32Array>;
  /** Read the output and compare with the reference; gaps between output rows must stay NaN. */
  check(tolerance: number): Promise<Comparison>;
}

export function setupProjection(gpu: Gpu, c: ProjectionCase): ProjectionSetup {
  const { dtype, M, N, K } = c;
  const host = randomWeight(dtype, N, K, c.seed, 0.5);
  const w = dequantize(host);
  const weight = uploadWeight(gpu, `w_${dtype}`, host);
  // Elements outside the M logical rows are NaN: a kernel reading past K (into zero weight padding)
  // or into a stride gap turns its output NaN instead of silently multiplying garbage by zero.
  const a = rowsWithNaNGaps(M, K, c.inputOffset, c.inputRowStride, c.seed + 1);
  const residual = c.residual ? rowsWithNaNGaps(M, N, c.residualOffset, c.residualRowStride, c.seed + 3) : undefined;
  const biasValues = c.bias ? randomF32(c.biasOffset + N + 1, c.seed + 2, 1) : undefined;
  const outLength = c.outputOffset + (M - 1) * c.outputRowStride + N;
  const output = poisoned(gpu, 'out', outLength + 3);
  const ref = projectionReference(w, N, K, a, M, c.inputOffset, c.inputRowStride, biasValues, c.biasOffset,
    residual && { values: residual, offset: c.residualOffset, stride: c.residualRowStride });
  const what = describeCase(c);
  const read = async () => {
    const all = await readF32(gpu, output, outLength + 3);
    const got = new Float32Array(M * N);
    for (let i = 0; i < all.length; i++) {
      const rel = i - c.outputOffset;
      const row = Math.floor(rel / c.outputRowStride);
      const col = rel - row * c.outputRowStride;
      const inside = rel >= 0 && row < M && col < N;
      if (inside) got[row * N + col] = all[i];
      else if (!Number.isNaN(all[i])) throw new Error(`${what}: element ${i} outside the output was written (${all[i]})`);
    }
    return got;
  };
  return {
    weight,
    input: createStorage(gpu, 'a', a),
    output,
    bias: biasValues ? createStorage(gpu, 'bias', biasValues) : undefined,
    residual: residual ? createStorage(gpu, 'residual', residual) : undefined,
    run: {
      M,
      inputOffset: c.inputOffset,
      inputRowStride: c.inputRowStride,
      outputOffset: c.outputOffset,
      outputRowStride: c.outputRowStride,
      biasOffset: c.biasOffset,
      ...(c.residual ? { residualOffset: c.residualOffset, residualRowStride: c.residualRowStride } : {}),
    },
    reference: ref,
    operands: { w, a },
    read,
    async check(tolerance: number) {
      return expectClose(await read(), ref, tolerance, what);
    },
  };
}

/**
 * Random values in (rows, cols) from `offset` with rows `stride` apart, NaN everywhere else (before
 * the offset, in the stride gaps, and two elements past the end).
 */
export function rowsWithNaNGaps(rows: number, cols: number, offset: number, stride: number, seed: number): Float32Array {
  const length = offset + (rows - 1) * stride + cols + 2;
  const values = randomF32(length, seed, 1);
  for (let i = 0; i < length; i++) {
    const rel = i - offset;
    const row = Math.floor(rel / stride);
    if (rel < 0 || row >= rows || rel - row * stride >= cols) values[i] = NaN;
  }
  return values;
}

/** Worst rel-L2 per group, printed once per file so reports can quote it. */
export class ErrorLog {
  readonly #worst = new Map<string, number>();
  add(group: string, c: Comparison): void {
    this.#worst.set(group, Math.max(this.#worst.get(group) ?? 0, c.relL2));
  }
  summary(): string {
    return [...this.#worst].map(([g, e]) => `${g}: max rel-L2 ${e.toExponential(2)}`).join('\n');
  }
}

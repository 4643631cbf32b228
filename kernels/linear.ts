// A linear layer for one weight and one buffer set: matvec for decode-sized runs (M <= 8), tiled
// matmul above. Both dispatches are built once; encode picks one per run.
import type { Gpu } from '../src/gpu/device.ts';
import { ShapeError } from '../src/errors.ts';
import { Matmul, type MatmulOptions, type MatmulRun } from './matmul.ts';
import { MATVEC_MAX_ROWS, Matvec, type MatvecOptions } from './matvec.ts';
import type { PackedWeight } from './weights.ts';

export interface LinearConfig {
  /** (N, K) weight, uploaded. */
  weight: PackedWeight;
  /** (N) f32 bias. */
  bias?: GPUBuffer;
  /** (M, K) f32 activations (row stride and offset per run). */
  input: GPUBuffer;
  /** (M, N) f32 result (row stride and offset per run). */
  output: GPUBuffer;
  /** Largest M this layer will be run with (the matmul is built only when it exceeds 8). */
  maxRows: number;
  matvec?: MatvecOptions;
  matmul?: MatmulOptions;
}

export type LinearRun = MatmulRun;

/** out = input · Wᵀ (+ bias). */
export class Linear {
  readonly weight: PackedWeight;
  readonly maxRows: number;
  readonly #matvec: Matvec;
  readonly #matmul: Matmul | undefined;

  constructor(gpu: Gpu, config: LinearConfig) {
    const { weight, bias, input, output, maxRows } = config;
    if (!Number.isSafeInteger(maxRows) || maxRows < 1) {
      throw new ShapeError(`linear(${weight.label}): maxRows must be an integer >= 1 (got ${maxRows})`);
    }
    this.weight = weight;
    this.maxRows = maxRows;
    const buffers = { weight, bias, input, output };
    this.#matvec = new Matvec(gpu, buffers, config.matvec);
    this.#matmul = maxRows > MATVEC_MAX_ROWS ? new Matmul(gpu, buffers, config.matmul) : undefined;
  }

  /** Which kernel a run of M rows uses. */
  kernelFor(M: number): 'matvec' | 'matmul' {
    return M <= MATVEC_MAX_ROWS ? 'matvec' : 'matmul';
  }

  encode(pass: GPUComputePassEncoder, run: LinearRun): void {
    if (run.M > this.maxRows) {
      throw new ShapeError(`linear(${this.weight.label}): M = ${run.M} exceeds maxRows = ${this.maxRows}`);
    }
    if (this.kernelFor(run.M) === 'matvec' || !this.#matmul) this.#matvec.encode(pass, run);
    else this.#matmul.encode(pass, run);
  }
}

// A linear layer for one weight and one buffer set: matvec for decode-sized runs (M <= 8), tiled
// matmul above. Both dispatches are built once; encode picks one per run.
// A weight split into row chunks (uploadWeightChunks) gets one matvec / matmul per chunk, each
// writing its column slice of the output rows (and reading its slice of the bias and residual).
import type { Gpu } from '../src/gpu/device.ts';
import { ShapeError } from '../src/errors.ts';
import { Matmul, checkProjectionBuffers, projectionValues, type MatmulOptions, type MatmulRun } from './matmul.ts';
import { MATVEC_MAX_ROWS, Matvec, type MatvecOptions } from './matvec.ts';
import { asChunked, type ChunkedWeight, type PackedWeight } from './weights.ts';

export interface LinearConfig {
  /** (N, K) weight, uploaded whole or in row chunks. */
  weight: PackedWeight | ChunkedWeight;
  /** (N) f32 bias. */
  bias?: GPUBuffer;
  /** (M, K) f32 activations (row stride and offset per run). */
  input: GPUBuffer;
  /** (M, N) f32 result (row stride and offset per run). */
  output: GPUBuffer;
  /**
   * (M, N) f32 added to the result, a fused residual connection (row stride and offset per run).
   * Must be a different buffer from `output`.
   */
  residual?: GPUBuffer;
  /** Largest M this layer will be run with (the matmul is built only when it exceeds 8). */
  maxRows: number;
  matvec?: MatvecOptions;
  matmul?: MatmulOptions;
}

export type LinearRun = MatmulRun;

/** The kernels of one row chunk: weight rows firstRow .. firstRow + n - 1 = output columns. */
interface ChunkOps {
  firstRow: number;
  matvec: Matvec;
  matmul: Matmul | undefined;
}

/** out = input · Wᵀ (+ bias) (+ residual). */
export class Linear {
  readonly weight: ChunkedWeight;
  readonly maxRows: number;
  readonly #config: LinearConfig;
  readonly #chunks: ChunkOps[];

  constructor(gpu: Gpu, config: LinearConfig) {
    const { bias, input, output, residual, maxRows } = config;
    const weight = asChunked(config.weight);
    const label = `linear(${weight.label})`;
    if (!Number.isSafeInteger(maxRows) || maxRows < 1) {
      throw new ShapeError(`${label}: maxRows must be an integer >= 1 (got ${maxRows})`);
    }
    checkProjectionBuffers(label, config);
    this.weight = weight;
    this.maxRows = maxRows;
    this.#config = config;
    this.#chunks = weight.chunks.map(({ firstRow, weight: part }) => {
      const buffers = { weight: part, bias, input, output, residual };
      return {
        firstRow,
        matvec: new Matvec(gpu, buffers, config.matvec),
        matmul: maxRows > MATVEC_MAX_ROWS ? new Matmul(gpu, buffers, config.matmul) : undefined,
      };
    });
  }

  /** Which kernel a run of M rows uses. */
  kernelFor(M: number): 'matvec' | 'matmul' {
    return M <= MATVEC_MAX_ROWS ? 'matvec' : 'matmul';
  }

  encode(pass: GPUComputePassEncoder, run: LinearRun): void {
    const label = `linear(${this.weight.label})`;
    if (run.M > this.maxRows) {
      throw new ShapeError(`${label}: M = ${run.M} exceeds maxRows = ${this.maxRows}`);
    }
    if (this.#chunks.length === 1) {
      this.#encodeChunk(pass, this.#chunks[0], run);
      return;
    }
    // Validate the whole (N, K) run before recording any chunk, so a bad run records nothing.
    const values = projectionValues(label, { ...this.#config, weight: this.weight }, run, this.maxRows);
    for (const chunk of this.#chunks) {
      this.#encodeChunk(pass, chunk, {
        ...run,
        outputOffset: values.out_offset + chunk.firstRow,
        outputRowStride: values.out_stride,
        biasOffset: values.bias_offset + chunk.firstRow,
        residualOffset: values.residual_offset + chunk.firstRow,
        residualRowStride: values.residual_stride,
      });
    }
  }

  #encodeChunk(pass: GPUComputePassEncoder, chunk: ChunkOps, run: LinearRun): void {
    if (this.kernelFor(run.M) === 'matvec' || !chunk.matmul) chunk.matvec.encode(pass, run);
    else chunk.matmul.encode(pass, run);
  }
}

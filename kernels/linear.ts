// A linear layer for one weight and one buffer set: matvec for decode-sized runs (M <= 8), tiled
// matmul above. Both dispatches are built once; encode picks one per run. With `fused`, the matvec
// runs fused (norm before, activation after: MatvecFusion) on its own input and output buffers, and
// the caller runs as separate kernels what the kernel in use does not (normFoldedFor,
// activationFusedFor): both around the matmul.
// A weight split into row chunks (uploadWeightChunks) gets one matvec / matmul per chunk, each
// writing its column slice of the output rows (and reading its slice of the bias and residual).
import type { Gpu } from '../src/gpu/device.ts';
import { ShapeError } from '../src/errors.ts';
import { Matmul, checkProjectionBuffers, projectionValues, type MatmulOptions, type MatmulRun } from './matmul.ts';
import { MATVEC_MAX_ROWS, Matvec, matvecValues, type MatvecFusion, type MatvecOptions } from './matvec.ts';
import type { PackedWeight } from './weights.ts';
import { asChunked, type ChunkedWeight } from './weights-upload.ts';

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
  /**
   * The matvec's fused form: it reads `input` (with a norm folded in, the raw rows the norm would
   * read) and writes `output` (with glu, (M, N / 2)); the matmul keeps the buffers above. Residual
   * and bias as above.
   */
  fused?: { input: GPUBuffer; output: GPUBuffer; fusion: MatvecFusion };
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
    const fused = config.fused;
    if (fused) {
      checkProjectionBuffers(label, { output: fused.output, residual });
      if (fused.fusion.glu && weight.chunks.some((c) => c.firstRow % 2 !== 0 || c.weight.rows % 2 !== 0)) {
        throw new ShapeError(`${label}: glu needs every row chunk to hold whole (gate, up) pairs (upload with rowMultiple 2)`);
      }
    }
    this.#chunks = weight.chunks.map(({ firstRow, weight: part }, i) => {
      const buffers = { weight: part, bias, input, output, residual };
      const matvecBuffers = fused ? { ...buffers, input: fused.input, output: fused.output } : buffers;
      // A folded post-norm's stream is written once, by the first chunk.
      const post = fused?.fusion.postNorm;
      const fusion = post && i > 0 ? { ...fused!.fusion, postNorm: { ...post, writeStream: false } } : fused?.fusion;
      return {
        firstRow,
        matvec: new Matvec(gpu, matvecBuffers, { ...config.matvec, fusion }),
        matmul: maxRows > MATVEC_MAX_ROWS ? new Matmul(gpu, buffers, config.matmul) : undefined,
      };
    });
  }

  /** Which kernel a run of M rows uses. */
  kernelFor(M: number): 'matvec' | 'matmul' {
    return M <= MATVEC_MAX_ROWS ? 'matvec' : 'matmul';
  }

  /** True when a run of M rows takes the fused matvec. */
  fusedFor(M: number): boolean {
    return this.#config.fused !== undefined && this.kernelFor(M) === 'matvec';
  }

  /** True when a run of M rows folds the norm in (so the caller skips its norm kernel). */
  normFoldedFor(M: number): boolean {
    return this.fusedFor(M) && this.#config.fused!.fusion.norm !== undefined;
  }

  /** True when a run of M rows applies the activation itself (so the caller skips its activation kernel). */
  activationFusedFor(M: number): boolean {
    const fusion = this.#config.fused?.fusion;
    return this.fusedFor(M) && (fusion!.activation !== undefined || fusion!.glu === true);
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
    const fused = this.fusedFor(run.M) ? this.#config.fused : undefined;
    const values = fused
      ? matvecValues(label, { ...this.#config, input: fused.input, output: fused.output, weight: this.weight }, fused.fusion, run)
      : projectionValues(label, { ...this.#config, weight: this.weight }, run, this.maxRows);
    // With glu, chunk rows firstRow.. are outputs firstRow / 2.. (the bias stays per weight row).
    const outputsPerRow = fused?.fusion.glu ? 2 : 1;
    for (const chunk of this.#chunks) {
      this.#encodeChunk(pass, chunk, {
        ...run,
        outputOffset: values.out_offset + chunk.firstRow / outputsPerRow,
        outputRowStride: values.out_stride,
        biasOffset: values.bias_offset + chunk.firstRow,
        residualOffset: values.residual_offset + chunk.firstRow / outputsPerRow,
        residualRowStride: values.residual_stride,
      });
    }
  }

  #encodeChunk(pass: GPUComputePassEncoder, chunk: ChunkOps, run: LinearRun): void {
    if (this.kernelFor(run.M) === 'matvec' || !chunk.matmul) chunk.matvec.encode(pass, run);
    else chunk.matmul.encode(pass, run);
  }
}

// Matrix-vector products for decode: out = input · Wᵀ (+ bias) (+ residual) for M = 1..8 rows, W any weight
// dtype. Memory-bound: judge it in GB/s of weight read. See shaders/matvec.wgsl.
import type { Gpu } from '../src/gpu/device.ts';
import { ShapeError } from '../src/errors.ts';
import { composeShader, dispatchGrid } from './shader.ts';
import { Dispatch, checkWorkgroupSize } from './dispatch.ts';
import { paddedCols, weightShader, type PackedWeight } from './weights.ts';
import {
  MatmulParams,
  checkProjectionBuffers,
  projectionBindings,
  projectionConstants,
  projectionValues,
  type MatmulBuffers,
  type MatmulRun,
  type ProjectionField,
} from './matmul.ts';

/** Most activation rows one matvec handles (MAX_M in the shader). */
export const MATVEC_MAX_ROWS = 8;
/** Most weight rows one workgroup owns (MAX_ROWS in the shader). */
export const MATVEC_MAX_ROWS_PER_WORKGROUP = 4;

export type MatvecBuffers = MatmulBuffers;
export type MatvecRun = MatmulRun;

export interface MatvecOptions {
  /** Threads per workgroup, a power of two (default: about four vec4 steps of K per thread, 32..256). */
  workgroupSize?: number;
  /** Weight rows per workgroup, 1..4 (default 1). */
  rowsPerWorkgroup?: number;
}

/** Default workgroup size for K input features: each thread walks about 4 groups of 4 columns. */
export function defaultMatvecWorkgroupSize(cols: number): number {
  const want = Math.ceil(paddedCols(cols) / 16);
  return Math.min(256, Math.max(32, 2 ** Math.ceil(Math.log2(want))));
}

/** out[M, N] = input[M, K] · Wᵀ (+ bias) (+ residual) for M <= 8; one workgroup per weight row (or few rows). */
export class Matvec {
  readonly weight: PackedWeight;
  readonly #buffers: MatvecBuffers;
  readonly #dispatch: Dispatch<ProjectionField>;
  readonly #rowsPerGroup: number;
  readonly #maxPerDimension: number;

  constructor(gpu: Gpu, buffers: MatvecBuffers, options: MatvecOptions = {}) {
    const label = `matvec(${buffers.weight.label})`;
    checkProjectionBuffers(label, buffers);
    const { workgroupSize = defaultMatvecWorkgroupSize(buffers.weight.cols), rowsPerWorkgroup = 1 } = options;
    const wg = checkWorkgroupSize(gpu, workgroupSize, label);
    if (!Number.isSafeInteger(rowsPerWorkgroup) || rowsPerWorkgroup < 1 || rowsPerWorkgroup > MATVEC_MAX_ROWS_PER_WORKGROUP) {
      throw new ShapeError(`${label}: rowsPerWorkgroup must be 1..${MATVEC_MAX_ROWS_PER_WORKGROUP} (got ${rowsPerWorkgroup})`);
    }
    const slots = rowsPerWorkgroup * MATVEC_MAX_ROWS;
    if (wg < slots) throw new ShapeError(`${label}: workgroup size ${wg} must be >= ${slots} (rows x ${MATVEC_MAX_ROWS})`);
    const shared = slots * wg * 4;
    if (shared > gpu.limits.maxComputeWorkgroupStorageSize) {
      throw new ShapeError(
        `${label}: ${rowsPerWorkgroup} rows x workgroup ${wg} need ${shared} bytes of workgroup memory, ` +
          `over this adapter's ${gpu.limits.maxComputeWorkgroupStorageSize}`,
      );
    }
    this.weight = buffers.weight;
    this.#buffers = buffers;
    this.#rowsPerGroup = rowsPerWorkgroup;
    this.#maxPerDimension = gpu.limits.maxComputeWorkgroupsPerDimension;
    this.#dispatch = new Dispatch(
      gpu,
      {
        name: 'matvec',
        variant: buffers.weight.dtype,
        code: composeShader(weightShader(buffers.weight.dtype), 'matvec.wgsl'),
        entryPoint: 'matvec',
        constants: { WG: wg, ROWS: rowsPerWorkgroup, ...projectionConstants(buffers) },
      },
      MatmulParams, // one run contract for both kernels (shaders/matmul_projection.wgsl)
      projectionBindings(gpu, buffers),
    );
  }

  encode(pass: GPUComputePassEncoder, run: MatvecRun): void {
    const values = projectionValues(`matvec(${this.weight.label})`, this.#buffers, run, MATVEC_MAX_ROWS);
    const [x, y] = dispatchGrid(Math.ceil(values.n / this.#rowsPerGroup), this.#maxPerDimension);
    this.#dispatch.encode(pass, values, x, y);
  }
}

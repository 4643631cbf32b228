// Matrix-vector products for decode: out = input · Wᵀ (+ bias) (+ residual) for M = 1..8 rows, W any weight
// dtype. Memory-bound: judge it in GB/s of weight read. Two tiers with the same results: the baseline
// (shaders/matvec.wgsl, a workgroup-memory tree reduction, runs anywhere) and the subgroup tier
// (shaders/matvec_subgroup.wgsl, subgroupAdd and two barriers, needs the 'subgroups' feature), picked by
// kernelTiers() unless MatvecOptions.tier says which.
import type { Gpu } from '../src/gpu/device.ts';
import { ShapeError } from '../src/errors.ts';
import { composeShader, dispatchGrid } from './shader.ts';
import { Dispatch, checkWorkgroupSize } from './dispatch.ts';
import { paddedCols, weightShader, type PackedWeight } from './weights.ts';
import { kernelTiers, type Tier } from './tiers.ts';
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
  /**
   * Threads per workgroup, a power of two (default: about four vec4 steps of K per thread, 32..256; on
   * the subgroup tier at least the adapter's largest subgroup).
   */
  workgroupSize?: number;
  /** Weight rows per workgroup, 1..4 (default: 1 on the baseline, defaultSubgroupMatvecRows(N) on the subgroup tier). */
  rowsPerWorkgroup?: number;
  /**
   * Kernel variant (default kernelTiers(gpu).matvec: 'subgroup' where the device has the 'subgroups'
   * feature). 'subgroup' on a device without that feature is a ShapeError.
   */
  tier?: Tier;
}

/** Default workgroup size for K input features: each thread walks about 4 groups of 4 columns. */
export function defaultMatvecWorkgroupSize(cols: number): number {
  const want = Math.ceil(paddedCols(cols) / 16);
  return Math.min(256, Math.max(32, 2 ** Math.ceil(Math.log2(want))));
}

/**
 * Default weight rows per workgroup on the subgroup tier for N output features: four (each thread's
 * activations then serve four weight rows) while that leaves at least 256 workgroups, fewer below.
 */
export function defaultSubgroupMatvecRows(rows: number): number {
  return rows >= 1024 ? 4 : rows >= 512 ? 2 : 1;
}

/**
 * A power of two in 4..128 (WebGPU's bounds on a subgroup) from an adapter-reported subgroup size,
 * rounded down or up; `fallback` when the adapter reports none.
 */
function subgroupBound(size: number | undefined, round: 'down' | 'up', fallback: number): number {
  if (size === undefined || !Number.isSafeInteger(size) || size < 1) return fallback;
  const log = round === 'down' ? Math.floor(Math.log2(size)) : Math.ceil(Math.log2(size));
  return Math.min(128, Math.max(4, 2 ** log));
}

/** out[M, N] = input[M, K] · Wᵀ (+ bias) (+ residual) for M <= 8; one workgroup per weight row (or few rows). */
export class Matvec {
  readonly weight: PackedWeight;
  readonly #buffers: MatvecBuffers;
  readonly #dispatch: Dispatch<ProjectionField>;
  /** The variant this instance runs. */
  readonly tier: Tier;
  readonly workgroupSize: number;
  readonly rowsPerWorkgroup: number;
  readonly #maxPerDimension: number;

  constructor(gpu: Gpu, buffers: MatvecBuffers, options: MatvecOptions = {}) {
    const label = `matvec(${buffers.weight.label})`;
    checkProjectionBuffers(label, buffers);
    const tier = options.tier ?? kernelTiers(gpu).matvec;
    if (tier !== 'baseline' && tier !== 'subgroup') throw new ShapeError(`${label}: unknown tier ${String(tier)}`);
    if (tier === 'subgroup' && !gpu.features.has('subgroups')) {
      throw new ShapeError(`${label}: the subgroup tier needs the device feature 'subgroups', which this adapter does not offer`);
    }
    const subgroup = tier === 'subgroup';
    const info = gpu.adapter.info;
    // The smallest subgroup sizes the shader's per-subgroup slots (rounded down: more slots, never
    // fewer); the largest sets the least default workgroup size.
    const sgMin = subgroupBound(info.subgroupMinSize, 'down', 4);
    const sgMax = Math.max(sgMin, subgroupBound(info.subgroupMaxSize, 'up', 32));
    const byK = defaultMatvecWorkgroupSize(buffers.weight.cols);
    const {
      // The subgroup tier fills at least one whole subgroup.
      workgroupSize = subgroup ? Math.min(Math.max(byK, sgMax), gpu.limits.maxComputeInvocationsPerWorkgroup, gpu.limits.maxComputeWorkgroupSizeX) : byK,
      rowsPerWorkgroup = subgroup ? defaultSubgroupMatvecRows(buffers.weight.rows) : 1,
    } = options;
    const wg = checkWorkgroupSize(gpu, workgroupSize, label);
    if (!Number.isSafeInteger(rowsPerWorkgroup) || rowsPerWorkgroup < 1 || rowsPerWorkgroup > MATVEC_MAX_ROWS_PER_WORKGROUP) {
      throw new ShapeError(`${label}: rowsPerWorkgroup must be 1..${MATVEC_MAX_ROWS_PER_WORKGROUP} (got ${rowsPerWorkgroup})`);
    }
    const slots = rowsPerWorkgroup * MATVEC_MAX_ROWS;
    // Baseline: a (slots, WG) tree. Subgroup tier: the leader bitmask and (subgroups, slots) sums.
    if (!subgroup && wg < slots) throw new ShapeError(`${label}: workgroup size ${wg} must be >= ${slots} (rows x ${MATVEC_MAX_ROWS})`);
    const shared = subgroup ? (Math.ceil(wg / 32) + Math.ceil(wg / sgMin) * slots) * 4 : slots * wg * 4;
    if (shared > gpu.limits.maxComputeWorkgroupStorageSize) {
      throw new ShapeError(
        `${label}: ${rowsPerWorkgroup} rows x workgroup ${wg} need ${shared} bytes of workgroup memory, ` +
          `over this adapter's ${gpu.limits.maxComputeWorkgroupStorageSize}`,
      );
    }
    this.weight = buffers.weight;
    this.tier = tier;
    this.workgroupSize = wg;
    this.rowsPerWorkgroup = rowsPerWorkgroup;
    this.#buffers = buffers;
    this.#maxPerDimension = gpu.limits.maxComputeWorkgroupsPerDimension;
    const dtype = buffers.weight.dtype;
    this.#dispatch = new Dispatch(
      gpu,
      {
        name: 'matvec',
        variant: dtype,
        code: subgroup
          ? composeShader('matvec_subgroup_enable.wgsl', weightShader(dtype), 'matvec_subgroup.wgsl')
          : composeShader(weightShader(dtype), 'matvec.wgsl'),
        entryPoint: subgroup ? 'matvec_subgroup' : 'matvec',
        constants: { WG: wg, ROWS: rowsPerWorkgroup, ...(subgroup ? { SG_MIN: sgMin } : {}), ...projectionConstants(buffers) },
      },
      MatmulParams, // one run contract for both kernels (shaders/matmul_projection.wgsl)
      projectionBindings(gpu, buffers),
    );
  }

  encode(pass: GPUComputePassEncoder, run: MatvecRun): void {
    const values = projectionValues(`matvec(${this.weight.label})`, this.#buffers, run, MATVEC_MAX_ROWS);
    const [x, y] = dispatchGrid(Math.ceil(values.n / this.rowsPerWorkgroup), this.#maxPerDimension);
    this.#dispatch.encode(pass, values, x, y);
  }
}

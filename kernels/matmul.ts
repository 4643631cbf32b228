// Tiled matmul for prefill: out = input · Wᵀ (+ bias) (+ residual), W any weight dtype. Compute-bound:
// judge it in GFLOP/s. Two tiers with one run contract, one shader (shaders/matmul.wgsl) and the same
// tiling: the baseline (f32 tiles, runs anywhere, the reference) and the f16 tier (tiles stored as f16
// in workgroup memory, f32 products and sums, needs the 'shader-f16' feature), picked by
// defaultMatmulTier() unless MatmulOptions.tier says which.
// Also the run contract shared with kernels/matvec.ts (same uniforms, same buffers, same run shape).
import type { Gpu } from '../src/gpu/device.ts';
import { UniformLayout } from '../src/gpu/uniforms.ts';
import { createStorage } from '../src/gpu/buffers.ts';
import { ShapeError } from '../src/errors.ts';
import { composeShader } from './shader.ts';
import { Dispatch, checkFits, checkShape } from './dispatch.ts';
import { weightBindings, weightShader, type PackedWeight } from './weights.ts';
import { kernelTiers, type Tier } from './tiers.ts';

export const MatmulParams = new UniformLayout('Params', [
  ['m', 'u32'],
  ['n', 'u32'],
  ['k', 'u32'],
  ['a_offset', 'u32'],
  ['a_stride', 'u32'],
  ['out_offset', 'u32'],
  ['out_stride', 'u32'],
  ['bias_offset', 'u32'],
  ['residual_offset', 'u32'],
  ['residual_stride', 'u32'],
] as const);

export type ProjectionField = (typeof MatmulParams.fields)[number][0];

/**
 * Buffers of one projection: input (M, K) f32, output (M, N) f32, weight (N, K), bias (N) f32,
 * residual (M, N) f32. out = residual + bias + input · Wᵀ.
 */
export interface MatmulBuffers {
  weight: PackedWeight;
  input: GPUBuffer;
  output: GPUBuffer;
  bias?: GPUBuffer;
  /**
   * Added to the result (a fused residual connection). Must be a different buffer from `output`:
   * WebGPU forbids one buffer bound read-only and writable in the same dispatch.
   */
  residual?: GPUBuffer;
}

/** One projection run. Offsets and strides are in f32 elements. */
export interface MatmulRun {
  /** Activation rows (tokens). */
  M: number;
  /** First element of the input; default 0. */
  inputOffset?: number;
  /** Elements between input rows; default K. */
  inputRowStride?: number;
  /** First element of the output; default 0. With outputRowStride, selects a column slice (fused QKV). */
  outputOffset?: number;
  /** Elements between output rows; default N. */
  outputRowStride?: number;
  /** First element of the bias; default 0. */
  biasOffset?: number;
  /** First element of the residual; default 0. */
  residualOffset?: number;
  /** Elements between residual rows; default N. */
  residualRowStride?: number;
}

export interface MatmulOptions {
  /** Output rows per workgroup, a multiple of 4 (default 64). */
  tileM?: number;
  /** Output cols per workgroup, a multiple of 4 (default 64). */
  tileN?: number;
  /**
   * Kernel variant (default defaultMatmulTier: 'f16' where the device has the 'shader-f16' feature,
   * for every weight dtype but f32). 'f16' on a device without that feature is a ShapeError.
   */
  tier?: Tier;
}

/**
 * Relative L2 error the f16 tier stays within against a float64 reference on the same (dequantised)
 * weights: it stores activations and weights as f16 (each off by less than 2^-10, the most a WGSL
 * f32-to-f16 conversion may be), and those roundings, independent of one another and of the terms'
 * signs, leave a sum ~2^-11 off at nearest, ~2^-10 were every conversion to truncate; this allows
 * four times that (test/matmul.test.ts states the per-element bound beside it). The baseline's bound
 * is f32 accumulation's, 1e-5.
 */
export const F16_TIER_REL_L2 = 2 ** -8;

/** The relative L2 bound of a projection's result on `tier` (against float64, on the same weights). */
export function projectionBound(tier: Tier): number {
  return tier === 'f16' ? F16_TIER_REL_L2 : 1e-5;
}

/**
 * The tier a projection takes unless told: kernelTiers(gpu).matmul, except that f32 weights stay on
 * the baseline. Every other dtype is already rounded (f16 values, or block scales and quants whose
 * products the f16 tier rounds once more at 2^-11, below the format's own step), while an F32 model is
 * a request for f32 arithmetic: its logits match llama.cpp's, which does not round an F32 matmul, to
 * 1e-4. The f16 tier runs f32 weights too when asked (options.tier).
 */
export function defaultMatmulTier(gpu: Pick<Gpu, 'features'>, dtype: PackedWeight['dtype']): Tier {
  const tier = kernelTiers(gpu).matmul;
  return dtype === 'f32' ? 'baseline' : tier;
}

/**
 * Validate a run against the buffers and return the uniform values (shared by Matmul and Matvec;
 * Linear checks a chunked weight's whole (N, K) with it before encoding any chunk).
 */
export function projectionValues(
  label: string,
  buffers: Omit<MatmulBuffers, 'weight'> & { weight: Pick<PackedWeight, 'rows' | 'cols'> },
  run: MatmulRun,
  maxM: number,
): Record<ProjectionField, number> {
  const { rows: n, cols: k } = buffers.weight;
  const {
    M,
    inputOffset = 0,
    inputRowStride = k,
    outputOffset = 0,
    outputRowStride = n,
    biasOffset = 0,
    residualOffset = 0,
    residualRowStride = n,
  } = run;
  checkShape(
    label,
    { M, inputOffset, inputRowStride, outputOffset, outputRowStride, biasOffset, residualOffset, residualRowStride },
    ['inputOffset', 'outputOffset', 'biasOffset', 'residualOffset'],
  );
  if (M > maxM) throw new ShapeError(`${label}: M = ${M} rows exceeds this kernel's maximum of ${maxM}`);
  if (inputRowStride < k) throw new ShapeError(`${label}: inputRowStride ${inputRowStride} < K = ${k}`);
  if (outputRowStride < n) throw new ShapeError(`${label}: outputRowStride ${outputRowStride} < N = ${n}`);
  if (residualRowStride < n) throw new ShapeError(`${label}: residualRowStride ${residualRowStride} < N = ${n}`);
  checkFits(label, 'input', buffers.input, inputOffset, (M - 1) * inputRowStride + k);
  checkFits(label, 'output', buffers.output, outputOffset, (M - 1) * outputRowStride + n);
  if (buffers.bias) checkFits(label, 'bias', buffers.bias, biasOffset, n);
  if (buffers.residual) checkFits(label, 'residual', buffers.residual, residualOffset, (M - 1) * residualRowStride + n);
  return {
    m: M,
    n,
    k,
    a_offset: inputOffset,
    a_stride: inputRowStride,
    out_offset: outputOffset,
    out_stride: outputRowStride,
    bias_offset: biasOffset,
    residual_offset: residualOffset,
    residual_stride: residualRowStride,
  };
}

/** Refuse buffer sets WebGPU cannot bind: the residual (read-only) must not be the output (writable). */
export function checkProjectionBuffers(label: string, buffers: Pick<MatmulBuffers, 'output' | 'residual'>): void {
  if (buffers.residual && buffers.residual === buffers.output) {
    throw new ShapeError(
      `${label}: residual and output are the same buffer; a dispatch cannot bind one buffer read-only and writable, ` +
        'so write the sum to a different buffer',
    );
  }
}

// A kernel compiled without bias (or residual) still declares the binding (override-guarded reads
// are static uses), so it gets this 16-byte buffer, one per device.
const placeholders = new WeakMap<Gpu, GPUBuffer>();
export function placeholderStorage(gpu: Gpu): GPUBuffer {
  let buffer = placeholders.get(gpu);
  if (!buffer) {
    buffer = createStorage(gpu, 'placeholder', 16);
    placeholders.set(gpu, buffer);
  }
  return buffer;
}

/** Storage buffers of a projection kernel in binding order (1..6). */
export function projectionBindings(gpu: Gpu, buffers: MatmulBuffers): Array<GPUBuffer | undefined> {
  return [
    ...weightBindings(buffers.weight),
    buffers.input,
    buffers.bias ?? placeholderStorage(gpu),
    buffers.residual ?? placeholderStorage(gpu),
    buffers.output,
  ];
}

/** The override constants that switch the optional inputs of a projection kernel. */
export function projectionConstants(buffers: MatmulBuffers): Record<'HAS_BIAS' | 'HAS_RESIDUAL', number> {
  return { HAS_BIAS: buffers.bias ? 1 : 0, HAS_RESIDUAL: buffers.residual ? 1 : 0 };
}

/** out[M, N] = input[M, K] · Wᵀ (+ bias) (+ residual) for any M; tiled, for prefill. */
export class Matmul {
  readonly weight: PackedWeight;
  readonly #buffers: MatmulBuffers;
  readonly #dispatch: Dispatch<ProjectionField>;
  /** The variant this instance runs. */
  readonly tier: Tier;
  readonly #tileM: number;
  readonly #tileN: number;

  constructor(gpu: Gpu, buffers: MatmulBuffers, options: MatmulOptions = {}) {
    const { tileM = 64, tileN = 64 } = options;
    const label = `matmul(${buffers.weight.label})`;
    checkProjectionBuffers(label, buffers);
    const tier = options.tier ?? defaultMatmulTier(gpu, buffers.weight.dtype);
    if (tier !== 'baseline' && tier !== 'f16') throw new ShapeError(`${label}: unknown tier ${String(tier)}`);
    if (tier === 'f16' && !gpu.features.has('shader-f16')) {
      throw new ShapeError(`${label}: the f16 tier needs the device feature 'shader-f16', which this adapter does not offer`);
    }
    const f16 = tier === 'f16';
    for (const [name, tile] of [['tileM', tileM], ['tileN', tileN]] as const) {
      if (!Number.isSafeInteger(tile) || tile < 4 || tile % 4 !== 0) {
        throw new ShapeError(`${label}: ${name} must be a positive multiple of 4 (got ${tile})`);
      }
    }
    const limits = gpu.limits;
    const threads = (tileM / 4) * (tileN / 4);
    if (
      threads > limits.maxComputeInvocationsPerWorkgroup ||
      tileN / 4 > limits.maxComputeWorkgroupSizeX ||
      tileM / 4 > limits.maxComputeWorkgroupSizeY
    ) {
      throw new ShapeError(`${label}: tile ${tileM}x${tileN} needs ${tileN / 4}x${tileM / 4} threads, over this adapter's limit`);
    }
    // TILE_K = 32 columns of both tiles, 4 bytes an element (2 on the f16 tier).
    const shared = 32 * (tileM + tileN) * (f16 ? 2 : 4);
    if (shared > limits.maxComputeWorkgroupStorageSize) {
      throw new ShapeError(
        `${label}: tile ${tileM}x${tileN} needs ${shared} bytes of workgroup memory, ` +
          `over this adapter's ${limits.maxComputeWorkgroupStorageSize}`,
      );
    }
    this.weight = buffers.weight;
    this.tier = tier;
    this.#buffers = buffers;
    this.#tileM = tileM;
    this.#tileN = tileN;
    this.#dispatch = new Dispatch(
      gpu,
      {
        name: 'matmul',
        variant: `${buffers.weight.dtype}${f16 ? ':f16' : ''}`,
        code: composeShader(f16 ? 'matmul_tile_f16.wgsl' : 'matmul_tile_f32.wgsl', weightShader(buffers.weight.dtype), 'matmul.wgsl'),
        entryPoint: 'matmul',
        constants: { TILE_M: tileM, TILE_N: tileN, ...projectionConstants(buffers) },
      },
      MatmulParams,
      projectionBindings(gpu, buffers),
    );
  }

  encode(pass: GPUComputePassEncoder, run: MatmulRun): void {
    const values = projectionValues(`matmul(${this.weight.label})`, this.#buffers, run, Number.MAX_SAFE_INTEGER);
    this.#dispatch.encode(pass, values, Math.ceil(values.n / this.#tileN), Math.ceil(values.m / this.#tileM));
  }
}

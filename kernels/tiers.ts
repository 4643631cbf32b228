// Which variant of each kernel family runs on an adapter. The baseline tier needs nothing beyond
// WebGPU's compatibility level and is the reference every other tier is tested against; the fast tier
// uses optional features (subgroups; shader-f16; the WGSL language feature packed_4x8_integer_dot_product)
// where the adapter offers them. Kernel modules ask
// kernelTiers() once at construction; `info --json` and the bench report the same answer.
import type { Gpu } from '../src/gpu/device.ts';

export type Tier = 'baseline' | 'subgroup' | 'f16';

/**
 * What a decode matvec over a block-quantised weight multiplies: the f32 activations, or the
 * activation rows quantised to int8 as each workgroup loads them ('q8': blocks of 32 with an f32
 * scale, as llama.cpp quantises them for its CPU dot products) and multiplied with dot4I8Packed.
 */
export type MatvecActivations = 'f32' | 'q8';

/** The WGSL language feature the q8 activations need (dot4I8Packed, pack4xI8). */
export const PACKED_DOT_FEATURE = 'packed_4x8_integer_dot_product';

/** True when the device's WGSL offers dot4I8Packed. */
export function hasPackedDot(gpu: Partial<Pick<Gpu, 'wgslLanguageFeatures'>>): boolean {
  return gpu.wgslLanguageFeatures?.has(PACKED_DOT_FEATURE) === true;
}

export interface KernelTiers {
  /** Decode projections (matrix x vector, 1..8 rows): 'subgroup' where the adapter has subgroups. */
  matvec: Tier;
  /**
   * Decode projections over quantised weights (Q8_0, Q4_0/1, Q5_0/1, Q2_K .. Q6_K): 'q8' where
   * WGSL offers packed_4x8_integer_dot_product, reduced by the `matvec` tier. Changes the numerics
   * by the activations' rounding (kernels/matvec.ts states the bound); f32 and f16 weights stay 'f32'.
   */
  matvecActivations: MatvecActivations;
  /**
   * Prefill projections (tiled matrix x matrix): 'f16' (tiles stored as f16) where the adapter has
   * shader-f16. f32 weights stay on the baseline unless asked (kernels/matmul.ts defaultMatmulTier).
   */
  matmul: Tier;
  /** Flash attention (prefill) and split-K decode attention: 'subgroup' where the adapter has subgroups. */
  attention: Tier;
  /** Row kernels: norms, softmax, RoPE, top-k. */
  rows: Tier;
}

/** Force the baseline everywhere (tests compare tiers; a user can rule out a fast-tier fault). */
export interface TierOptions {
  baselineOnly?: boolean;
  /** Keep quantised-weight matvecs on f32 activations (the previous tier) while other fast tiers stay. */
  f32Activations?: boolean;
}

export function kernelTiers(gpu: Pick<Gpu, 'features'> & Partial<Pick<Gpu, 'wgslLanguageFeatures' | 'info'>>, options: TierOptions = {}): KernelTiers {
  const subgroups = !options.baselineOnly && gpu.features.has('subgroups');
  const f16 = !options.baselineOnly && gpu.features.has('shader-f16');
  const q8 = !options.baselineOnly && !options.f32Activations && staticQ8(gpu);
  return {
    matvec: subgroups ? 'subgroup' : 'baseline',
    matvecActivations: q8 ? 'q8' : 'f32',
    matmul: f16 ? 'f16' : 'baseline',
    attention: subgroups ? 'subgroup' : 'baseline',
    rows: 'baseline',
  };
}

/**
 * The adapter's subgroup sizes as powers of two in 4..128 (WebGPU's bounds on a subgroup): the
 * smallest rounded down (a kernel sizing per-subgroup slots from it gets more, never fewer), the
 * largest rounded up; 4 and 32 when the adapter reports none.
 */
export function subgroupSizes(gpu: Pick<Gpu, 'adapter'>): { min: number; max: number } {
  const bound = (size: number | undefined, round: 'down' | 'up', fallback: number): number => {
    if (size === undefined || !Number.isSafeInteger(size) || size < 1) return fallback;
    const log = round === 'down' ? Math.floor(Math.log2(size)) : Math.ceil(Math.log2(size));
    return Math.min(128, Math.max(4, 2 ** log));
  };
  const info = gpu.adapter.info;
  const min = bound(info.subgroupMinSize, 'down', 4);
  return { min, max: Math.max(min, bound(info.subgroupMaxSize, 'up', 32)) };
}

/**
 * Whether quantised-weight matvecs take q8 activations without autotuning (the static default): only
 * when WEBGPU_MINER_MATVEC_ACTIVATIONS=q8 asks (and WGSL offers packed_4x8_integer_dot_product). q8
 * costs no dispatch, but it rounds the activations (kernels/matvec.ts states the bound) and whether
 * integer dot products beat f32 ones depends on the GPU, so it is not taken blind: the autotune
 * (kernels/autotune.ts) times both and picks q8 where it is faster on this adapter.
 */
function staticQ8(gpu: Partial<Pick<Gpu, 'wgslLanguageFeatures' | 'info'>>): boolean {
  return hasPackedDot(gpu) && process.env.WEBGPU_MINER_MATVEC_ACTIVATIONS === 'q8';
}

// Which variant of each kernel family runs on an adapter. The baseline tier needs nothing beyond
// WebGPU's compatibility level and is the reference every other tier is tested against; the fast tier
// uses optional features (subgroups; shader-f16) where the adapter offers them. Kernel modules ask
// kernelTiers() once at construction; `info --json` and the bench report the same answer.
import type { Gpu } from '../src/gpu/device.ts';

export type Tier = 'baseline' | 'subgroup' | 'f16';

export interface KernelTiers {
  /** Decode projections (matrix x vector, 1..8 rows): 'subgroup' where the adapter has subgroups. */
  matvec: Tier;
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
}

export function kernelTiers(gpu: Pick<Gpu, 'features'>, options: TierOptions = {}): KernelTiers {
  const subgroups = !options.baselineOnly && gpu.features.has('subgroups');
  const f16 = !options.baselineOnly && gpu.features.has('shader-f16');
  return {
    matvec: subgroups ? 'subgroup' : 'baseline',
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

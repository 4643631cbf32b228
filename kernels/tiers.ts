// Which variant of each kernel family runs on an adapter. The baseline tier needs nothing beyond
// WebGPU's compatibility level and is the reference every other tier is tested against; the fast tier
// uses optional features (subgroups; shader-f16) where the adapter offers them. Kernel modules ask
// kernelTiers() once at construction; `info --json` and the bench report the same answer.
import type { Gpu } from '../src/gpu/device.ts';

export type Tier = 'baseline' | 'subgroup';

export interface KernelTiers {
  /** Decode projections (matrix x vector, 1..8 rows). */
  matvec: Tier;
  /** Prefill projections (tiled matrix x matrix). */
  matmul: Tier;
  /** Flash attention (prefill) and split-K decode attention. */
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
  return {
    matvec: subgroups ? 'subgroup' : 'baseline',
    matmul: 'baseline',
    attention: 'baseline',
    rows: 'baseline',
  };
}

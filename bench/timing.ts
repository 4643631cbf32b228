// How the bench times GPU work. With the adapter's `timestamp-query` feature, a sample is the GPU
// time between the start and the end of one compute pass; without it, the wall time from submit to
// queue completion (gpu.sync()). Either way a sample runs the same dispatch `reps` times in one pass
// (reps chosen so a sample lasts about targetSampleMs), which amortises the submit and the clock's
// resolution; the time per run is sample / reps. Warm-up samples come first and are discarded. The
// result is the median of the samples with their min, max and median absolute deviation.
import type { Gpu } from '../src/gpu/device.ts';
import { timeSample, timingMethod, type TimingMethod } from '../src/gpu/timing.ts';

export { timeSample, timingMethod, type TimingMethod };

export interface TimingOptions {
  /** Samples run and discarded before measuring (the first run pays for lazy driver work). */
  warmup: number;
  /** Samples to keep (fewer when budgetMs runs out, but at least 3). */
  samples: number;
  /** Aim for samples about this long: small kernels are repeated within a sample. */
  targetSampleMs: number;
  /** Most runs per sample. */
  maxReps: number;
  /** Stop taking samples after this long (milliseconds of wall time for one measurement). */
  budgetMs: number;
}

export interface Timing {
  /** Median time of one run, milliseconds. */
  medianMs: number;
  minMs: number;
  maxMs: number;
  /** Median absolute deviation of the samples as a percentage of the median. */
  spreadPct: number;
  samples: number;
  /** Runs per sample. */
  reps: number;
  method: TimingMethod;
}


export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** Median, extremes and spread of per-run times. */
export function summarize(times: readonly number[], reps: number, method: TimingMethod): Timing {
  const med = median(times);
  const mad = median(times.map((t) => Math.abs(t - med)));
  return {
    medianMs: med,
    minMs: Math.min(...times),
    maxMs: Math.max(...times),
    spreadPct: med > 0 ? (100 * mad) / med : 0,
    samples: times.length,
    reps,
    method,
  };
}

/** Time one dispatch (or a fixed group of dispatches) recorded by `record`. */
export async function timeKernel(gpu: Gpu, record: (pass: GPUComputePassEncoder) => void, options: TimingOptions): Promise<Timing> {
  const method = timingMethod(gpu);
  const began = performance.now();
  let single = Infinity;
  for (let i = 0; i < Math.max(1, options.warmup); i++) single = Math.min(single, await timeSample(gpu, record, 1));
  const reps = Math.max(1, Math.min(options.maxReps, Math.ceil(options.targetSampleMs / Math.max(single, 1e-3))));
  const times: number[] = [];
  while (times.length < options.samples) {
    times.push((await timeSample(gpu, record, reps)) / reps);
    if (times.length >= 3 && performance.now() - began > options.budgetMs) break;
  }
  return summarize(times, reps, method);
}

/** Wall time of `run` (already warm), repeated: the median and spread of whole operations. */
export async function timeWall(run: () => Promise<void>, samples: number, budgetMs: number): Promise<Timing> {
  const began = performance.now();
  const times: number[] = [];
  while (times.length < samples) {
    const start = performance.now();
    await run();
    times.push(performance.now() - start);
    if (times.length >= 3 && performance.now() - began > budgetMs) break;
  }
  return summarize(times, 1, 'queue-completion');
}

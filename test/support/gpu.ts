// One GPU device per test file. A missing adapter fails the test (never skips): CI always has the
// software adapter, so "no GPU" there means a broken install.
import { afterAll, beforeAll } from 'vitest';
import { acquireGpu, type Gpu } from '../../src/gpu/device.ts';
import { createStorage, readF32 } from '../../src/gpu/buffers.ts';
import { nanArray } from './reference.ts';

/** Call at the top of a test file; the returned function gives the file's device inside tests. */
export function useGpu(): () => Gpu {
  let gpu: Gpu | undefined;
  beforeAll(async () => {
    gpu = await acquireGpu();
  });
  afterAll(() => gpu?.destroy());
  return () => {
    if (!gpu) throw new Error('GPU not acquired (useGpu must be called at the top level of the test file)');
    return gpu;
  };
}

/** A storage buffer of `n` f32 NaNs (poisoned output). */
export function poisoned(gpu: Gpu, label: string, n: number): GPUBuffer {
  return createStorage(gpu, label, nanArray(n));
}

export { createStorage, readF32 };

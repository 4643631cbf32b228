import { describe, expect, it } from 'vitest';
import { runSelfCheck } from '../kernels/selfcheck.ts';
import { useGpu } from './support/gpu.ts';

const gpu = useGpu();

describe('kernel self-check (what `webgpu-miner info` and `npm start` run)', () => {
  it('passes every check on this adapter', async () => {
    const results = await runSelfCheck(gpu());
    expect(results.length).toBeGreaterThanOrEqual(10);
    for (const r of results) expect(r.relL2, r.kernel).toBeLessThanOrEqual(r.bound);
  });
});

import { describe, expect, it } from 'vitest';
import { runSelfCheck } from '../kernels/selfcheck.ts';
import { hasPackedDot } from '../kernels/tiers.ts';
import { postNormFoldFits } from '../kernels/matvec.ts';
import { useGpu } from './support/gpu.ts';

const gpu = useGpu();

describe('kernel self-check (what `webgpu-miner info` and `npm start` run)', () => {
  it('passes every check on this adapter, the decode fusions and prefill attention among them', async () => {
    const results = await runSelfCheck(gpu());
    for (const r of results) expect(r.relL2, r.kernel).toBeLessThanOrEqual(r.bound);
    const kernels = results.map((r) => r.kernel);
    for (const dtype of ['q4_0', 'q8_0', 'q4_k', 'q6_k', 'f16', 'f32']) expect(kernels).toContain(`matvec ${dtype} (decode)`);
    expect(kernels).toContain('matvec q4_k + RMSNorm + SwiGLU');
    expect(kernels).toContain('matvec q4_0 chunked + RMSNorm + SwiGLU');
    // q8 activations are checked exactly where the adapter can run them.
    expect(kernels.includes('matvec q4_0 q8 + RMSNorm + SwiGLU')).toBe(hasPackedDot(gpu()));
    expect(kernels.includes('matvec q4_k + post-norm + RMSNorm + SwiGLU')).toBe(postNormFoldFits(gpu()));
    expect(kernels).toContain('attention prefill (causal, f16 KV)');
    expect(kernels).toContain('attention decode + RoPE + KV write');
  });
});

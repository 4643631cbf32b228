import { describe, expect, it } from 'vitest';
import { Linear } from '../kernels/linear.ts';
import { runPass } from '../kernels/dispatch.ts';
import { packWeight, uploadWeight, dequantize } from '../kernels/weights.ts';
import { ShapeError } from '../src/errors.ts';
import { createStorage, poisoned, readF32, useGpu } from './support/gpu.ts';
import { expectClose, randomF32 } from './support/reference.ts';
import { projectionReference } from './support/projection.ts';
import { randomKQuantWeight } from './support/kquants.ts';

const gpu = useGpu();

describe('linear', () => {
  // One layer with maxRows 20, run at M = 1 (matvec), 8 (matvec) and 20 (matmul) from the same
  // buffers; the output is a column slice of a fused (M, 3N) buffer as a fused QKV split would use.
  for (const [dtype, K] of [['q8_0', 64], ['q4_k', 256], ['q6_k', 256]] as const) {
    it(`${dtype} N=37 K=${K} with bias, M = 1, 8, 20, output column slice`, async () => {
      const N = 37;
      const maxRows = 20;
      const host = dtype === 'q8_0' ? packWeight(dtype, N, K, randomF32(N * K, 1, 0.5)) : randomKQuantWeight(dtype, N, K, 1);
      const a = randomF32(maxRows * K + 3, 2);
      const bias = randomF32(N, 3);
      const stride = 3 * N;
      const outBuffer = poisoned(gpu(), 'qkv', maxRows * stride);
      const layer = new Linear(gpu(), {
        weight: uploadWeight(gpu(), 'wk', host),
        bias: createStorage(gpu(), 'bias', bias),
        input: createStorage(gpu(), 'a', a),
        output: outBuffer,
        maxRows,
      });
      const w = dequantize(host);
      for (const M of [1, 8, 20]) {
        gpu().device.queue.writeBuffer(outBuffer, 0, new Float32Array(maxRows * stride).fill(NaN)); // re-poison: no stale rows
        await runPass(gpu(), (pass) => layer.encode(pass, { M, inputOffset: 3, outputOffset: N, outputRowStride: stride }));
        const all = await readF32(gpu(), outBuffer, M * stride);
        const got = Array.from({ length: M * N }, (_, i) => all[Math.floor(i / N) * stride + N + (i % N)]);
        const ref = projectionReference(w, N, K, a, M, 3, K, bias);
        expectClose(got, ref, 1e-5, `linear ${layer.kernelFor(M)} M=${M}`);
        // The Q and V slices of the fused buffer stay untouched.
        expect(all.filter((_, i) => i % stride < N || i % stride >= 2 * N).every(Number.isNaN)).toBe(true);
      }
      expect(layer.kernelFor(8)).toBe('matvec');
      expect(layer.kernelFor(9)).toBe('matmul');
    });
  }

  it('refuses M above maxRows', () => {
    const weight = uploadWeight(gpu(), 'w', packWeight('f32', 4, 4, randomF32(16, 1)));
    const layer = new Linear(gpu(), { weight, input: createStorage(gpu(), 'a', 64 * 4), output: createStorage(gpu(), 'o', 64 * 4), maxRows: 4 });
    const pass = gpu().device.createCommandEncoder().beginComputePass();
    expect(() => layer.encode(pass, { M: 5 })).toThrow(ShapeError);
    pass.end();
  });
});

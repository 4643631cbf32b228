import { afterAll, describe, expect, it } from 'vitest';
import { Matmul } from '../kernels/matmul.ts';
import { runPass } from '../kernels/dispatch.ts';
import { packWeight, uploadWeight } from '../kernels/weights.ts';
import { ShapeError } from '../src/errors.ts';
import { createStorage, useGpu } from './support/gpu.ts';
import { randomF32 } from './support/reference.ts';
import { ErrorLog, describeCase, projectionCase, setupProjection, type ProjectionCase } from './support/projection.ts';

const gpu = useGpu();
const log = new ErrorLog();
afterAll(() => console.log(`matmul\n${log.summary()}`));

// Every dtype's reference multiplies by the dequantised packed weight, so all bounds are f32
// accumulation error only: 1e-5 relative L2.
const TOLERANCE = 1e-5;

const cases: ProjectionCase[] = [];
for (const dtype of ['f32', 'f16'] as const) {
  cases.push(
    projectionCase({ dtype, M: 1, N: 1, K: 1 }),
    projectionCase({ dtype, M: 7, N: 37, K: 53, bias: true }),
    projectionCase({ dtype, M: 70, N: 130, K: 160, seed: 3 }),
    projectionCase({ dtype, M: 65, N: 67, K: 35, bias: true, inputRowStride: 38, outputRowStride: 70, seed: 4 }),
  );
}
for (const dtype of ['q8_0', 'q4_0', 'q4_1', 'q5_0', 'q5_1'] as const) {
  cases.push(
    projectionCase({ dtype, M: 1, N: 3, K: 32 }),
    projectionCase({ dtype, M: 5, N: 37, K: 96, bias: true }),
    projectionCase({ dtype, M: 70, N: 130, K: 160, bias: true, seed: 3 }),
    projectionCase({ dtype, M: 66, N: 65, K: 64, inputRowStride: 70, outputRowStride: 67, seed: 4 }),
  );
}
// K-quants: random valid super-blocks (K % 256 == 0); K = 512 crosses super-blocks within a row.
for (const dtype of ['q2_k', 'q3_k', 'q4_k', 'q5_k', 'q6_k'] as const) {
  cases.push(
    projectionCase({ dtype, M: 1, N: 3, K: 256 }),
    projectionCase({ dtype, M: 5, N: 37, K: 512, bias: true }),
    projectionCase({ dtype, M: 70, N: 131, K: 256, bias: true, seed: 3 }),
    projectionCase({ dtype, M: 66, N: 67, K: 512, inputRowStride: 515, outputRowStride: 69, seed: 4 }),
  );
}
// Fused residual: out = residual + bias + a · Wᵀ, the residual with its own offset and row stride
// (NaN in its gaps), alone and with bias, at one row, below one tile and across two tiles.
const RESIDUAL_K = { f32: 53, f16: 35, q8_0: 64, q4_0: 96, q4_1: 64, q5_0: 96, q5_1: 160, q2_k: 512, q3_k: 256, q4_k: 256, q5_k: 512, q6_k: 512 } as const;
for (const [dtype, K] of Object.entries(RESIDUAL_K) as Array<[keyof typeof RESIDUAL_K, number]>) {
  cases.push(
    projectionCase({ dtype, M: 1, N: 3, K, residual: true, seed: 6 }),
    projectionCase({ dtype, M: 7, N: 37, K, bias: true, residual: true, residualRowStride: 41, seed: 7 }),
    projectionCase({
      dtype, M: 67, N: 69, K, bias: true, residual: true,
      inputRowStride: K + 3, outputRowStride: 70, residualOffset: 11, residualRowStride: 73, seed: 8,
    }),
  );
}

describe('matmul', () => {
  for (const c of cases) {
    it(describeCase(c), async () => {
      const s = setupProjection(gpu(), c);
      const kernel = new Matmul(gpu(), s);
      await runPass(gpu(), (pass) => kernel.encode(pass, s.run));
      log.add(c.residual ? `${c.dtype} residual` : c.dtype, await s.check(TOLERANCE));
    });
  }

  it('smaller tiles (16x32) give the same result', async () => {
    const c = projectionCase({ dtype: 'q4_0', M: 37, N: 41, K: 64, bias: true, seed: 9 });
    const s = setupProjection(gpu(), c);
    const kernel = new Matmul(gpu(), s, { tileM: 16, tileN: 32 });
    await runPass(gpu(), (pass) => kernel.encode(pass, s.run));
    log.add('q4_0 16x32 tiles', await s.check(TOLERANCE));
  });

  it('q8_0 with residual and smaller tiles (16x32) gives the same result', async () => {
    const c = projectionCase({ dtype: 'q8_0', M: 37, N: 41, K: 64, bias: true, residual: true, residualRowStride: 45, seed: 10 });
    const s = setupProjection(gpu(), c);
    const kernel = new Matmul(gpu(), s, { tileM: 16, tileN: 32 });
    await runPass(gpu(), (pass) => kernel.encode(pass, s.run));
    log.add('q8_0 residual 16x32 tiles', await s.check(TOLERANCE));
  });

  it('q6_k with smaller tiles (16x32) gives the same result', async () => {
    const c = projectionCase({ dtype: 'q6_k', M: 37, N: 41, K: 256, bias: true, seed: 9 });
    const s = setupProjection(gpu(), c);
    const kernel = new Matmul(gpu(), s, { tileM: 16, tileN: 32 });
    await runPass(gpu(), (pass) => kernel.encode(pass, s.run));
    log.add('q6_k 16x32 tiles', await s.check(TOLERANCE));
  });

  it('refuses runs that do not fit their buffers', () => {
    const weight = uploadWeight(gpu(), 'w', packWeight('f32', 8, 12, randomF32(96, 1)));
    const input = createStorage(gpu(), 'a', 4 * 12 * 4);
    const output = createStorage(gpu(), 'out', 4 * 8 * 4);
    const kernel = new Matmul(gpu(), { weight, input, output });
    const pass = gpu().device.createCommandEncoder().beginComputePass();
    expect(() => kernel.encode(pass, { M: 5 })).toThrow(ShapeError);
    expect(() => kernel.encode(pass, { M: 4, inputOffset: 1 })).toThrow(/input needs/);
    expect(() => kernel.encode(pass, { M: 2, outputRowStride: 7 })).toThrow(/outputRowStride/);
    expect(() => kernel.encode(pass, { M: 0 })).toThrow(/M must be/);
    expect(() => new Matmul(gpu(), { weight, input, output }, { tileM: 6 })).toThrow(/multiple of 4/);
    pass.end();
  });

  it('refuses a residual that is the output buffer, or does not fit', () => {
    const weight = uploadWeight(gpu(), 'w', packWeight('f32', 8, 12, randomF32(96, 1)));
    const input = createStorage(gpu(), 'a', 4 * 12 * 4);
    const output = createStorage(gpu(), 'out', 4 * 8 * 4);
    expect(() => new Matmul(gpu(), { weight, input, output, residual: output })).toThrow(ShapeError);
    expect(() => new Matmul(gpu(), { weight, input, output, residual: output })).toThrow(/matmul\(w\): residual and output are the same buffer/);
    const kernel = new Matmul(gpu(), { weight, input, output, residual: createStorage(gpu(), 'res', 3 * 8 * 4) });
    const pass = gpu().device.createCommandEncoder().beginComputePass();
    expect(() => kernel.encode(pass, { M: 4 })).toThrow(/residual needs 128 bytes but its buffer has 96/);
    expect(() => kernel.encode(pass, { M: 3, residualOffset: 1 })).toThrow(/residual needs/);
    expect(() => kernel.encode(pass, { M: 1, residualRowStride: 7 })).toThrow(/residualRowStride 7 < N = 8/);
    pass.end();
  });
});

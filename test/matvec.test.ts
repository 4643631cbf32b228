import { afterAll, describe, expect, it } from 'vitest';
import { MATVEC_MAX_ROWS, Matvec, defaultMatvecWorkgroupSize } from '../kernels/matvec.ts';
import { runPass } from '../kernels/dispatch.ts';
import { dequantize, packWeight, uploadWeight } from '../kernels/weights.ts';
import { ShapeError } from '../src/errors.ts';
import { createStorage, poisoned, readF32, useGpu } from './support/gpu.ts';
import { expectClose, randomF32 } from './support/reference.ts';
import { ErrorLog, describeCase, projectionCase, projectionReference, setupProjection, type ProjectionCase } from './support/projection.ts';

const gpu = useGpu();
const log = new ErrorLog();
afterAll(() => console.log(`matvec\n${log.summary()}`));

// References multiply by the dequantised packed weight: f32 accumulation error only, every dtype.
const TOLERANCE = 1e-5;

const cases: Array<ProjectionCase & { rowsPerWorkgroup?: number; workgroupSize?: number }> = [];
for (const dtype of ['f32', 'f16'] as const) {
  cases.push(
    projectionCase({ dtype, M: 1, N: 1, K: 1 }),
    projectionCase({ dtype, M: 1, N: 37, K: 53, bias: true }),
    projectionCase({ dtype, M: 7, N: 37, K: 53, inputRowStride: 57, outputRowStride: 40 }),
    projectionCase({ dtype, M: 8, N: 130, K: 1030, bias: true, seed: 3 }),
  );
}
for (const dtype of ['q8_0', 'q4_0', 'q4_1', 'q5_0', 'q5_1'] as const) {
  cases.push(
    projectionCase({ dtype, M: 1, N: 3, K: 32 }),
    projectionCase({ dtype, M: 5, N: 37, K: 96, bias: true }),
    projectionCase({ dtype, M: 8, N: 130, K: 1024, inputRowStride: 1030, outputRowStride: 131, seed: 3 }),
    { ...projectionCase({ dtype, M: 3, N: 37, K: 160, bias: true, seed: 5 }), rowsPerWorkgroup: 3, workgroupSize: 32 },
  );
}
// K-quants: random valid super-blocks (K % 256 == 0).
for (const dtype of ['q2_k', 'q3_k', 'q4_k', 'q5_k', 'q6_k'] as const) {
  cases.push(
    projectionCase({ dtype, M: 1, N: 3, K: 256 }),
    projectionCase({ dtype, M: 1, N: 37, K: 512, bias: true }),
    projectionCase({ dtype, M: 8, N: 130, K: 1024, inputRowStride: 1030, outputRowStride: 131, seed: 3 }),
    { ...projectionCase({ dtype, M: 3, N: 37, K: 256, bias: true, seed: 5 }), rowsPerWorkgroup: 3, workgroupSize: 32 },
  );
}

// Fused residual: out = residual + bias + a · Wᵀ, the residual with its own offset and row stride
// (NaN in its gaps), alone and with bias, at M = 1, a middle M and the full 8 rows.
const RESIDUAL_K = { f32: 53, f16: 1030, q8_0: 96, q4_0: 1024, q4_1: 160, q5_0: 1024, q5_1: 96, q2_k: 256, q3_k: 512, q4_k: 512, q5_k: 256, q6_k: 256 } as const;
for (const [dtype, K] of Object.entries(RESIDUAL_K) as Array<[keyof typeof RESIDUAL_K, number]>) {
  cases.push(
    projectionCase({ dtype, M: 1, N: 37, K, residual: true, seed: 6 }),
    projectionCase({ dtype, M: 5, N: 37, K, bias: true, residual: true, residualRowStride: 41, outputRowStride: 39, seed: 7 }),
    projectionCase({
      dtype, M: 8, N: 130, K, bias: true, residual: true,
      inputRowStride: K + 3, outputRowStride: 131, residualOffset: 11, residualRowStride: 133, seed: 8,
    }),
  );
}
cases.push(
  { ...projectionCase({ dtype: 'q4_0', M: 3, N: 37, K: 160, bias: true, residual: true, residualRowStride: 40, seed: 9 }), rowsPerWorkgroup: 3, workgroupSize: 32 },
  { ...projectionCase({ dtype: 'f16', M: 8, N: 13, K: 70, residual: true, seed: 9 }), rowsPerWorkgroup: 4, workgroupSize: 64 },
);

describe('matvec', () => {
  for (const c of cases) {
    const extra = c.rowsPerWorkgroup ? ` rows/wg=${c.rowsPerWorkgroup} wg=${c.workgroupSize}` : '';
    it(describeCase(c) + extra, async () => {
      const s = setupProjection(gpu(), c);
      const kernel = new Matvec(gpu(), s, { rowsPerWorkgroup: c.rowsPerWorkgroup, workgroupSize: c.workgroupSize });
      await runPass(gpu(), (pass) => kernel.encode(pass, s.run));
      log.add(c.residual ? `${c.dtype} residual` : c.dtype, await s.check(TOLERANCE));
    });
  }

  // 70001 rows need 2 workgroup rows of the grid (dispatchGrid): the vocabulary-sized case.
  it('q4_0 N=70001 K=32 M=2 (grid split over y)', async () => {
    const N = 70001;
    const K = 32;
    const M = 2;
    const host = packWeight('q4_0', N, K, randomF32(N * K, 11));
    const weight = uploadWeight(gpu(), 'lm_head', host);
    const a = randomF32(M * K, 12);
    const output = poisoned(gpu(), 'out', M * N);
    const kernel = new Matvec(gpu(), { weight, input: createStorage(gpu(), 'a', a), output }, { workgroupSize: 32 });
    await runPass(gpu(), (pass) => kernel.encode(pass, { M }));
    const ref = projectionReference(dequantize(host), N, K, a, M, 0, K);
    log.add('q4_0 N=70001', expectClose(await readF32(gpu(), output, M * N), ref, TOLERANCE, 'q4_0 N=70001'));
  });

  it('default workgroup size follows K', () => {
    expect(defaultMatvecWorkgroupSize(1)).toBe(32);
    expect(defaultMatvecWorkgroupSize(896)).toBe(64);
    expect(defaultMatvecWorkgroupSize(4096)).toBe(256);
    expect(defaultMatvecWorkgroupSize(14336)).toBe(256);
  });

  it('refuses M above 8 and bad options', () => {
    const weight = uploadWeight(gpu(), 'w', packWeight('f16', 8, 12, randomF32(96, 1)));
    const input = createStorage(gpu(), 'a', 9 * 12 * 4);
    const output = createStorage(gpu(), 'out', 9 * 8 * 4);
    const kernel = new Matvec(gpu(), { weight, input, output });
    const pass = gpu().device.createCommandEncoder().beginComputePass();
    expect(() => kernel.encode(pass, { M: MATVEC_MAX_ROWS + 1 })).toThrow(ShapeError);
    expect(() => kernel.encode(pass, { M: 1, inputRowStride: 11 })).toThrow(/inputRowStride/);
    pass.end();
    expect(() => new Matvec(gpu(), { weight, input, output }, { rowsPerWorkgroup: 5 })).toThrow(/rowsPerWorkgroup/);
    expect(() => new Matvec(gpu(), { weight, input, output }, { workgroupSize: 48 })).toThrow(/power of two/);
    expect(() => new Matvec(gpu(), { weight, input, output }, { workgroupSize: 16, rowsPerWorkgroup: 4 })).toThrow(/>= 32/);
  });

  it('refuses a residual that is the output buffer, or does not fit', () => {
    const weight = uploadWeight(gpu(), 'w', packWeight('q8_0', 8, 32, randomF32(256, 1)));
    const input = createStorage(gpu(), 'a', 2 * 32 * 4);
    const output = createStorage(gpu(), 'out', 2 * 8 * 4);
    expect(() => new Matvec(gpu(), { weight, input, output, residual: output })).toThrow(ShapeError);
    expect(() => new Matvec(gpu(), { weight, input, output, residual: output })).toThrow(/matvec\(w\): residual and output are the same buffer/);
    const kernel = new Matvec(gpu(), { weight, input, output, residual: createStorage(gpu(), 'res', 12 * 4) });
    const pass = gpu().device.createCommandEncoder().beginComputePass();
    expect(() => kernel.encode(pass, { M: 2 })).toThrow(/residual needs 64 bytes but its buffer has 48/);
    expect(() => kernel.encode(pass, { M: 1, residualOffset: 5 })).toThrow(/residual needs 52 bytes/);
    expect(() => kernel.encode(pass, { M: 1, residualRowStride: 7 })).toThrow(/residualRowStride 7 < N = 8/);
    pass.end();
  });
});

import { afterAll, describe, expect, it } from 'vitest';
import { Linear } from '../kernels/linear.ts';
import { defaultMatmulTier, projectionBound } from '../kernels/matmul.ts';
import { runPass } from '../kernels/dispatch.ts';
import { planeWords, type HostWeight, type WeightDtype } from '../kernels/weights.ts';
import { packWeight } from '../kernels/weights-quantize.ts';
import { dequantize } from '../kernels/weights-reference.ts';
import { uploadWeight, uploadWeightChunks } from '../kernels/weights-upload.ts';
import { ShapeError } from '../src/errors.ts';
import { createStorage, poisoned, readF32, useGpu } from './support/gpu.ts';
import { expectClose, randomF32 } from './support/reference.ts';
import { ErrorLog, projectionReference, rowsWithNaNGaps } from './support/projection.ts';
import { randomKQuantWeight, randomWeight } from './support/kquants.ts';
import { compare } from './support/reference.ts';

const gpu = useGpu();
const log = new ErrorLog();
afterAll(() => console.log(`linear\n${log.summary()}`));

/**
 * The bound of a `dtype` layer run at M rows: f32 accumulation (1e-5) through matvec, and through
 * matmul the bound of the tier the device gives it (f16 storage on the f16 tier: kernels/matmul.ts).
 */
function bound(layer: Linear, dtype: WeightDtype, M: number): number {
  return layer.kernelFor(M) === 'matmul' ? projectionBound(defaultMatmulTier(gpu(), dtype)) : 1e-5;
}

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
        expectClose(got, ref, bound(layer, dtype, M), `linear ${layer.kernelFor(M)} M=${M}`);
        // The Q and V slices of the fused buffer stay untouched.
        expect(all.filter((_, i) => i % stride < N || i % stride >= 2 * N).every(Number.isNaN)).toBe(true);
      }
      expect(layer.kernelFor(8)).toBe('matvec');
      expect(layer.kernelFor(9)).toBe('matmul');
    });
  }

  // Row chunks: N = 37 forced into chunks of 13, 12, 12 rows (output columns 0..12, 13..24, 25..36),
  // each its own matvec / matmul writing its column slice of the output rows and reading its slice
  // of the bias. Equal to the unchunked layer bit for bit (same kernels, same per-element sums) and
  // to the float64 reference.
  const CHUNK_K: Record<WeightDtype, number> = { f32: 53, f16: 53, q8_0: 96, q4_0: 96, q4_1: 96, q5_0: 96, q5_1: 160, q2_k: 256, q3_k: 512, q4_k: 512, q5_k: 256, q6_k: 256 };
  for (const [dtype, K] of Object.entries(CHUNK_K) as Array<[WeightDtype, number]>) {
    it(`${dtype} N=37 K=${K} in 3 row chunks, with bias, M = 1, 5, 8, 20, equals unchunked`, async () => {
      const N = 37;
      const maxRows = 20;
      const host: HostWeight = randomWeight(dtype, N, K, 4, 0.5);
      const maxChunkBytes = 4 * Math.max(...planeWords(dtype, 13, K));
      const chunked = uploadWeightChunks(gpu(), 'w', host, { maxChunkBytes });
      expect(chunked.chunks.map((c) => [c.firstRow, c.weight.rows])).toEqual([[0, 13], [13, 12], [25, 12]]);
      expect(chunked.chunks.map((c) => c.weight.label)).toEqual(['w#0', 'w#1', 'w#2']);
      const a = randomF32(maxRows * K + 3, 5);
      const bias = randomF32(N + 2, 6); // biasOffset 2
      const stride = 3 * N;
      const input = createStorage(gpu(), 'a', a);
      const biasBuffer = createStorage(gpu(), 'bias', bias);
      const outputs = [poisoned(gpu(), 'out.chunked', maxRows * stride), poisoned(gpu(), 'out.whole', maxRows * stride)];
      const [layer, whole] = [chunked, uploadWeight(gpu(), 'w', host)].map(
        (weight, i) => new Linear(gpu(), { weight, bias: biasBuffer, input, output: outputs[i], maxRows }),
      );
      expect(whole.weight.chunks).toHaveLength(1);
      const w = dequantize(host);
      for (const M of [1, 5, 8, 20]) {
        for (const out of outputs) gpu().device.queue.writeBuffer(out, 0, new Float32Array(maxRows * stride).fill(NaN));
        const run = { M, inputOffset: 3, outputOffset: N, outputRowStride: stride, biasOffset: 2 };
        await runPass(gpu(), (pass) => {
          layer.encode(pass, run);
          whole.encode(pass, run);
        });
        const [all, allWhole] = [await readF32(gpu(), outputs[0], M * stride), await readF32(gpu(), outputs[1], M * stride)];
        const got = Array.from({ length: M * N }, (_, i) => all[Math.floor(i / N) * stride + N + (i % N)]);
        const ref = projectionReference(w, N, K, a, M, 3, K, bias, 2);
        expectClose(got, ref, bound(layer, dtype, M), `chunked linear ${dtype} ${layer.kernelFor(M)} M=${M}`);
        // Bit-equal to the unchunked layer, stride gaps included (NaN in both).
        expect(compare(all, allWhole)).toMatchObject({ maxAbs: 0, firstNonFinite: -1 });
        expect(all.filter((_, i) => i % stride < N || i % stride >= 2 * N).every(Number.isNaN)).toBe(true);
      }
    });
  }

  // Fused residual through row chunks: each chunk reads its own column slice of the residual rows
  // as it writes its slice of the output. Two residual layouts: its own offset and row stride (NaN
  // in the gaps), and the defaults (offset 0, row stride N, which each chunk must get as N, not as
  // its own row count), as the model runs it.
  for (const [dtype, K] of Object.entries(CHUNK_K) as Array<[WeightDtype, number]>) {
    it(`${dtype} N=37 K=${K} in 3 row chunks, with bias and residual, M = 1, 5, 8, 20, equals unchunked`, async () => {
      const N = 37;
      const maxRows = 20;
      const host: HostWeight = randomWeight(dtype, N, K, 7, 0.5);
      const chunked = uploadWeightChunks(gpu(), 'w', host, { maxChunkBytes: 4 * Math.max(...planeWords(dtype, 13, K)) });
      expect(chunked.chunks).toHaveLength(3);
      const whole = uploadWeight(gpu(), 'w', host);
      const w = dequantize(host);
      const a = randomF32(maxRows * K + 3, 8);
      const bias = randomF32(N + 2, 9);
      const stride = 2 * N + 1;
      const input = createStorage(gpu(), 'a', a);
      const biasBuffer = createStorage(gpu(), 'bias', bias);
      for (const [resOffset, resStride, explicit] of [[4, N + 6, true], [0, N, false]] as const) {
        const residualValues = rowsWithNaNGaps(maxRows, N, resOffset, resStride, 10);
        const residual = createStorage(gpu(), 'residual', residualValues);
        const outputs = [poisoned(gpu(), 'out.chunked', maxRows * stride), poisoned(gpu(), 'out.whole', maxRows * stride)];
        const [layer, wholeLayer] = [chunked, whole].map(
          (weight, i) => new Linear(gpu(), { weight, bias: biasBuffer, input, output: outputs[i], residual, maxRows }),
        );
        const what = `chunked linear ${dtype} residual${explicit ? ` offset ${resOffset} stride ${resStride}` : ' (default layout)'}`;
        for (const M of [1, 5, 8, 20]) {
          for (const out of outputs) gpu().device.queue.writeBuffer(out, 0, new Float32Array(maxRows * stride).fill(NaN));
          const run = {
            M, inputOffset: 3, outputOffset: 1, outputRowStride: stride, biasOffset: 2,
            ...(explicit ? { residualOffset: resOffset, residualRowStride: resStride } : {}),
          };
          await runPass(gpu(), (pass) => {
            layer.encode(pass, run);
            wholeLayer.encode(pass, run);
          });
          const [all, allWhole] = [await readF32(gpu(), outputs[0], maxRows * stride), await readF32(gpu(), outputs[1], maxRows * stride)];
          const got = Array.from({ length: M * N }, (_, i) => all[Math.floor(i / N) * stride + 1 + (i % N)]);
          const ref = projectionReference(w, N, K, a, M, 3, K, bias, 2, { values: residualValues, offset: resOffset, stride: resStride });
          log.add(`${dtype} chunked residual`, expectClose(got, ref, bound(layer, dtype, M), `${what} ${layer.kernelFor(M)} M=${M}`));
          expect(compare(all, allWhole)).toMatchObject({ maxAbs: 0, firstNonFinite: -1 });
          // Only the M rows' N columns from offset 1 are written.
          expect(all.filter((_, i) => i % stride < 1 || i % stride > N || i >= M * stride).every(Number.isNaN)).toBe(true);
        }
      }
    });
  }

  it('refuses a residual that is the output buffer, for whole and chunked weights', () => {
    const host = packWeight('f32', 37, 8, randomF32(37 * 8, 1));
    const output = createStorage(gpu(), 'o', 2 * 37 * 4);
    const input = createStorage(gpu(), 'a', 16 * 4);
    for (const weight of [uploadWeight(gpu(), 'w', host), uploadWeightChunks(gpu(), 'w', host, { maxChunkBytes: 13 * 8 * 4 })]) {
      expect(() => new Linear(gpu(), { weight, input, output, residual: output, maxRows: 2 })).toThrow(ShapeError);
      expect(() => new Linear(gpu(), { weight, input, output, residual: output, maxRows: 2 })).toThrow(
        /linear\(w\): residual and output are the same buffer/,
      );
    }
  });

  it('a chunked layer checks the whole N before recording any chunk', () => {
    const host = packWeight('f32', 37, 8, randomF32(37 * 8, 1));
    const weight = uploadWeightChunks(gpu(), 'w', host, { maxChunkBytes: 13 * 8 * 4 });
    expect(weight.chunks).toHaveLength(3);
    const output = createStorage(gpu(), 'o', 2 * 37 * 4);
    const layer = new Linear(gpu(), { weight, bias: createStorage(gpu(), 'b', 37 * 4), input: createStorage(gpu(), 'a', 16 * 4), output, maxRows: 2 });
    const pass = gpu().device.createCommandEncoder().beginComputePass();
    // A stride that holds one chunk's 13 columns but not N = 37.
    expect(() => layer.encode(pass, { M: 1, outputRowStride: 20 })).toThrow(/outputRowStride 20 < N = 37/);
    expect(() => layer.encode(pass, { M: 2, outputOffset: 1 })).toThrow(/output needs 300 bytes/);
    expect(() => layer.encode(pass, { M: 1, biasOffset: 1 })).toThrow(/bias needs 152 bytes/);
    pass.end();
    // The same for the residual: its stride and extent are checked against N = 37, not a chunk's rows.
    const withResidual = new Linear(gpu(), { weight, input: createStorage(gpu(), 'a', 16 * 4), output, residual: createStorage(gpu(), 'r', 2 * 37 * 4), maxRows: 2 });
    const pass2 = gpu().device.createCommandEncoder().beginComputePass();
    expect(() => withResidual.encode(pass2, { M: 1, residualRowStride: 20 })).toThrow(/residualRowStride 20 < N = 37/);
    expect(() => withResidual.encode(pass2, { M: 2, residualOffset: 1 })).toThrow(/residual needs 300 bytes/);
    pass2.end();
  });

  it('refuses M above maxRows', () => {
    const weight = uploadWeight(gpu(), 'w', packWeight('f32', 4, 4, randomF32(16, 1)));
    const layer = new Linear(gpu(), { weight, input: createStorage(gpu(), 'a', 64 * 4), output: createStorage(gpu(), 'o', 64 * 4), maxRows: 4 });
    const pass = gpu().device.createCommandEncoder().beginComputePass();
    expect(() => layer.encode(pass, { M: 5 })).toThrow(ShapeError);
    pass.end();
  });
});

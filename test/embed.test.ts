import { describe, expect, it } from 'vitest';
import { Embed } from '../kernels/embed.ts';
import { runPass } from '../kernels/dispatch.ts';
import { planeWords, WEIGHT_DTYPES, type WeightDtype } from '../kernels/weights.ts';
import { packWeight } from '../kernels/weights-quantize.ts';
import { dequantize } from '../kernels/weights-reference.ts';
import { uploadWeight, uploadWeightChunks, type ChunkedWeight } from '../kernels/weights-upload.ts';
import { ShapeError } from '../src/errors.ts';
import { createStorage, poisoned, readF32, useGpu } from './support/gpu.ts';
import { expectClose, randomF32 } from './support/reference.ts';
import { randomWeight } from './support/kquants.ts';

const gpu = useGpu();

// The reference is the dequantised packed table, and a gather is a copy: exact for every dtype.
const SHAPES: Record<WeightDtype, [number, number]> = {
  f32: [37, 53],
  f16: [37, 53],
  q8_0: [37, 96],
  q4_0: [37, 96],
  q4_1: [37, 96],
  q5_0: [37, 96],
  q5_1: [37, 160],
  q2_k: [37, 256],
  q3_k: [37, 512],
  q4_k: [37, 512],
  q5_k: [37, 512],
  q6_k: [37, 512],
};

describe('embed', () => {
  it('scales every value (Gemma: sqrt(hidden)) and refuses a non-finite scale', async () => {
    const [V, D] = [37, 53];
    const host = randomWeight('q8_0', V, 96, 2);
    const table = dequantize(host);
    const ids = new Uint32Array([4, 36, 0]);
    const output = poisoned(gpu(), 'out', 3 * 96);
    const kernel = new Embed(gpu(), { table: uploadWeight(gpu(), 'tok_embd', host), ids: createStorage(gpu(), 'ids', ids), output });
    const scale = Math.fround(Math.sqrt(D));
    await runPass(gpu(), (pass) => kernel.encode(pass, { count: 3, scale }));
    const got = await readF32(gpu(), output, 3 * 96);
    const want = Array.from(ids).flatMap((id) => Array.from(table.subarray(id * 96, (id + 1) * 96), (v) => Math.fround(v * scale)));
    expectClose(got, want, 0, 'embed scaled');
    expect(() => kernel.encode({} as GPUComputePassEncoder, { count: 3, scale: NaN })).toThrow(/scale must be finite/);
  });

  for (const dtype of WEIGHT_DTYPES) {
    const [V, D] = SHAPES[dtype];
    for (const T of [1, 7]) {
      it(`${dtype} V=${V} D=${D} T=${T}`, async () => {
        const host = randomWeight(dtype, V, D, 1);
        const table = dequantize(host);
        // Ids include row 0, the last row and, at T=7, an out-of-range id (clamped to V - 1).
        const allIds = [5, 0, V - 1, 17, V + 100, 3, 36];
        const ids = new Uint32Array([99, 99, ...allIds.slice(0, T)]); // idsOffset = 2
        const outputOffset = 3;
        const outputRowStride = D + 2;
        const length = outputOffset + (T - 1) * outputRowStride + D;
        const output = poisoned(gpu(), 'out', length + 1);
        const kernel = new Embed(gpu(), { table: uploadWeight(gpu(), 'tok_embd', host), ids: createStorage(gpu(), 'ids', ids), output });
        await runPass(gpu(), (pass) => kernel.encode(pass, { count: T, idsOffset: 2, outputOffset, outputRowStride }));
        const all = await readF32(gpu(), output, length + 1);
        const got: number[] = [];
        const want: number[] = [];
        for (let t = 0; t < T; t++) {
          const row = Math.min(allIds[t], V - 1);
          for (let c = 0; c < D; c++) {
            got.push(all[outputOffset + t * outputRowStride + c]);
            want.push(table[row * D + c]);
          }
        }
        expectClose(got, want, 0, `embed ${dtype} T=${T}`);
        // Everything outside the T rows (offset, stride gaps, tail) stays NaN.
        const outside = all.filter((_, i) => {
          const rel = i - outputOffset;
          return rel < 0 || rel % outputRowStride >= D || rel >= T * outputRowStride;
        });
        expect(outside.length).toBe(all.length - T * D);
        expect(outside.every(Number.isNaN)).toBe(true);
      });
    }
  }

  // Row chunks: V = 37 forced into chunks of rows 0..12, 13..24, 25..36, one gather each. Ids on
  // both sides of each boundary, repeated ids and an out-of-range id (clamped to V - 1, so written
  // by the last chunk). Together the chunks write every row once, equal to the unchunked gather.
  for (const dtype of WEIGHT_DTYPES) {
    const [V, D] = SHAPES[dtype];
    it(`${dtype} V=${V} D=${D} in 3 row chunks equals unchunked`, async () => {
      const host = randomWeight(dtype, V, D, 2);
      const table = dequantize(host);
      const chunked = uploadWeightChunks(gpu(), 'tok_embd', host, { maxChunkBytes: 4 * Math.max(...planeWords(dtype, 13, D)) });
      expect(chunked.chunks.map((c) => [c.firstRow, c.weight.rows])).toEqual([[0, 13], [13, 12], [25, 12]]);
      const allIds = [12, 13, 24, 25, 0, 36, V + 100, 13, 5, 30];
      const T = allIds.length;
      const ids = createStorage(gpu(), 'ids', new Uint32Array([7, ...allIds])); // idsOffset = 1
      const outputOffset = 2;
      const outputRowStride = D + 3;
      const length = outputOffset + T * outputRowStride;
      const outputs = [poisoned(gpu(), 'out.chunked', length), poisoned(gpu(), 'out.whole', length)];
      const [kernel, whole] = [chunked, uploadWeight(gpu(), 'tok_embd', host)].map((t, i) => new Embed(gpu(), { table: t, ids, output: outputs[i] }));
      const run = { count: T, idsOffset: 1, outputOffset, outputRowStride };
      await runPass(gpu(), (pass) => {
        kernel.encode(pass, run);
        whole.encode(pass, run);
      });
      const [all, allWhole] = [await readF32(gpu(), outputs[0], length), await readF32(gpu(), outputs[1], length)];
      const got: number[] = [];
      const want: number[] = [];
      for (let t = 0; t < T; t++) {
        const row = Math.min(allIds[t], V - 1);
        for (let c = 0; c < D; c++) {
          got.push(all[outputOffset + t * outputRowStride + c]);
          want.push(table[row * D + c]);
        }
      }
      expectClose(got, want, 0, `chunked embed ${dtype}`);
      expectClose(all, allWhole, 0, `chunked embed ${dtype} vs unchunked (gaps NaN in both)`);
      expect(all.filter(Number.isNaN)).toHaveLength(length - T * D);
    });
  }

  it('one chunk writes only the tokens whose ids it holds (others skipped, not clamped)', async () => {
    const [V, D] = SHAPES.q8_0;
    const host = packWeight('q8_0', V, D, randomF32(V * D, 3));
    const table = dequantize(host);
    const chunked = uploadWeightChunks(gpu(), 'tok_embd', host, { maxChunkBytes: 13 * D });
    // The middle chunk alone (rows 13..24) as a table of V rows.
    const middle: ChunkedWeight = { ...chunked, chunks: [chunked.chunks[1]] };
    const allIds = [12, 13, 24, 25, V + 100, 0, 20];
    const T = allIds.length;
    const output = poisoned(gpu(), 'out', T * D);
    const kernel = new Embed(gpu(), { table: middle, ids: createStorage(gpu(), 'ids', new Uint32Array(allIds)), output });
    await runPass(gpu(), (pass) => kernel.encode(pass, { count: T }));
    const all = await readF32(gpu(), output, T * D);
    allIds.forEach((id, t) => {
      const row = all.subarray(t * D, (t + 1) * D);
      if (id >= 13 && id <= 24) expectClose(row, table.subarray(id * D, (id + 1) * D), 0, `middle chunk, id ${id}`);
      else expect(row.every(Number.isNaN), `id ${id} outside rows 13..24 stays unwritten`).toBe(true);
    });
  });

  it('refuses runs that do not fit', () => {
    const table = uploadWeight(gpu(), 't', packWeight('f32', 4, 8, randomF32(32, 1)));
    const kernel = new Embed(gpu(), { table, ids: createStorage(gpu(), 'ids', 4 * 4), output: createStorage(gpu(), 'o', 16 * 4) });
    const pass = gpu().device.createCommandEncoder().beginComputePass();
    expect(() => kernel.encode(pass, { count: 3 })).toThrow(ShapeError);
    expect(() => kernel.encode(pass, { count: 5 })).toThrow(/ids needs/);
    expect(() => kernel.encode(pass, { count: 1, outputRowStride: 7 })).toThrow(/outputRowStride/);
    pass.end();
  });
});

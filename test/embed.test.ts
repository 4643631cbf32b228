import { describe, expect, it } from 'vitest';
import { Embed } from '../kernels/embed.ts';
import { runPass } from '../kernels/dispatch.ts';
import { dequantize, packWeight, uploadWeight, type WeightDtype } from '../kernels/weights.ts';
import { ShapeError } from '../src/errors.ts';
import { createStorage, poisoned, readF32, useGpu } from './support/gpu.ts';
import { expectClose, randomF32 } from './support/reference.ts';
import { randomKQuantWeight } from './support/kquants.ts';

const gpu = useGpu();

// The reference is the dequantised packed table, and a gather is a copy: exact for every dtype.
const SHAPES: Record<WeightDtype, [number, number]> = {
  f32: [37, 53],
  f16: [37, 53],
  q8_0: [37, 96],
  q4_0: [37, 96],
  q4_k: [37, 512],
  q6_k: [37, 512],
};

describe('embed', () => {
  for (const dtype of ['f32', 'f16', 'q8_0', 'q4_0', 'q4_k', 'q6_k'] as const) {
    const [V, D] = SHAPES[dtype];
    for (const T of [1, 7]) {
      it(`${dtype} V=${V} D=${D} T=${T}`, async () => {
        const host =
          dtype === 'q4_k' || dtype === 'q6_k' ? randomKQuantWeight(dtype, V, D, 1) : packWeight(dtype, V, D, randomF32(V * D, 1));
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

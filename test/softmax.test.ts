import { describe, expect, it } from 'vitest';
import { Softmax, type SoftmaxOp } from '../kernels/softmax.ts';
import { runPass } from '../kernels/dispatch.ts';
import { ShapeError } from '../src/errors.ts';
import { createStorage, poisoned, readF32, useGpu } from './support/gpu.ts';
import { expectClose, randomF32 } from './support/reference.ts';

const gpu = useGpu();

/** Float64 softmax / log-softmax of each row; a row of only -inf gives zeros / -inf. */
function reference(op: SoftmaxOp, x: ArrayLike<number>, offset: number, rows: number, cols: number): Float64Array {
  const out = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    const row = Array.from({ length: cols }, (_, c) => x[offset + r * cols + c]);
    const m = Math.max(...row);
    if (m === -Infinity) {
      out.fill(op === 'softmax' ? 0 : -Infinity, r * cols, (r + 1) * cols);
      continue;
    }
    const sum = row.reduce((s, v) => s + Math.exp(v - m), 0);
    row.forEach((v, c) => {
      out[r * cols + c] = op === 'softmax' ? Math.exp(v - m) / sum : v - m - Math.log(sum);
    });
  }
  return out;
}

async function check(op: SoftmaxOp, x: Float32Array, rows: number, cols: number, inOffset: number, outOffset: number, what: string) {
  const count = rows * cols;
  const out = poisoned(gpu(), 'out', outOffset + count + 5);
  const kernel = new Softmax(gpu(), op, { x: createStorage(gpu(), 'x', x), out });
  await runPass(gpu(), (pass) => kernel.encode(pass, { rows, cols, inOffset, outOffset }));
  const all = await readF32(gpu(), out, outOffset + count + 5);
  const want = reference(op, x, inOffset, rows, cols);
  // Row by row: one row of -1e30 log-probabilities would otherwise swamp every other row's error.
  for (let r = 0; r < rows; r++) {
    const got = all.subarray(outOffset + r * cols, outOffset + (r + 1) * cols);
    expectClose(got, want.subarray(r * cols, (r + 1) * cols), 1e-5, `${what} row ${r}`);
  }
  // Nothing outside the output range was written.
  for (const i of [...Array(outOffset).keys(), outOffset + count, outOffset + count + 4]) {
    expect(Number.isNaN(all[i]), `${what}: element ${i} outside the output was written`).toBe(true);
  }
}

describe('softmax', () => {
  // Rows of 1, primes, and rows longer than one workgroup (256); non-zero offsets everywhere.
  const shapes: Array<[number, number]> = [
    [1, 1],
    [1, 37],
    [3, 1031],
    [7, 256],
    [2, 5000],
  ];
  for (const op of ['softmax', 'log_softmax'] as const) {
    for (const [rows, cols] of shapes) {
      it(`${op} ${rows}x${cols}`, async () => {
        const inOffset = 3;
        const x = randomF32(inOffset + rows * cols, rows * 1000 + cols, 6);
        await check(op, x, rows, cols, inOffset, 11, `${op} ${rows}x${cols}`);
      });
    }

    it(`${op} masks: -inf entries, a fully masked row, -1e30, huge values`, async () => {
      const cols = 300;
      const rows = 5;
      const x = randomF32(rows * cols, 77, 4);
      for (let c = 0; c < cols; c += 3) x[c] = -Infinity; // row 0: every third entry masked
      x.fill(-Infinity, cols, 2 * cols); // row 1: fully masked
      for (let c = 0; c < cols; c++) if (c % 2) x[2 * cols + c] = -1e30; // row 2: half at -1e30
      x.fill(-1e30, 3 * cols, 4 * cols); // row 3: all -1e30 (uniform)
      x.fill(-Infinity, 4 * cols, 5 * cols); // row 4: one finite entry of 80 (exp would overflow unshifted)
      x[4 * cols + 123] = 80;
      await check(op, x, rows, cols, 0, 2, `${op} masks`);
      // Spot-check the documented values exactly.
      const out = poisoned(gpu(), 'out', rows * cols);
      const kernel = new Softmax(gpu(), op, { x: createStorage(gpu(), 'x', x), out });
      await runPass(gpu(), (pass) => kernel.encode(pass, { rows, cols }));
      const got = await readF32(gpu(), out, rows * cols);
      const masked = op === 'softmax' ? 0 : -Infinity;
      expect(got[0]).toBe(masked);
      expect(Array.from(got.subarray(cols, 2 * cols)).every((v) => v === masked)).toBe(true);
      expect(got[4 * cols + 123]).toBeCloseTo(op === 'softmax' ? 1 : 0, 6);
    });

    it(`${op} in place`, async () => {
      const rows = 4;
      const cols = 517;
      const offset = 9;
      const x = randomF32(offset + rows * cols, 5, 5);
      x[offset + 2] = -Infinity;
      const buffer = createStorage(gpu(), 'x', x);
      const kernel = new Softmax(gpu(), op, { x: buffer, out: buffer });
      expect(kernel.inPlace).toBe(true);
      await runPass(gpu(), (pass) => kernel.encode(pass, { rows, cols, inOffset: offset, outOffset: offset }));
      const all = await readF32(gpu(), buffer, offset + rows * cols);
      expectClose(all.subarray(offset), reference(op, x, offset, rows, cols), 1e-5, `${op} in place`);
      expect(Array.from(all.subarray(0, offset))).toEqual(Array.from(x.subarray(0, offset)));
    });
  }

  it('in place into a disjoint range of the same buffer', async () => {
    const rows = 2;
    const cols = 40;
    const x = randomF32(3 * rows * cols, 8, 3);
    const buffer = createStorage(gpu(), 'x', x);
    const kernel = new Softmax(gpu(), 'softmax', { x: buffer, out: buffer });
    await runPass(gpu(), (pass) => kernel.encode(pass, { rows, cols, inOffset: 0, outOffset: 2 * rows * cols }));
    const got = await readF32(gpu(), buffer, rows * cols, 2 * rows * cols);
    expectClose(got, reference('softmax', x, 0, rows, cols), 1e-5, 'disjoint in place');
  });

  it('more rows than one dispatch dimension (grid split over x and y)', async () => {
    const rows = 65537;
    const cols = 3;
    const x = randomF32(rows * cols, 99, 2);
    // Workgroup size 4 keeps the software adapter quick.
    const out = poisoned(gpu(), 'out', rows * cols);
    const kernel = new Softmax(gpu(), 'log_softmax', { x: createStorage(gpu(), 'x', x), out }, 4);
    await runPass(gpu(), (pass) => kernel.encode(pass, { rows, cols }));
    expectClose(await readF32(gpu(), out, rows * cols), reference('log_softmax', x, 0, rows, cols), 1e-5, 'many rows');
  });

  it('refuses shapes that do not fit or overlap in place', () => {
    const buffer = createStorage(gpu(), 'x', 100 * 4);
    const other = createStorage(gpu(), 'y', 100 * 4);
    const inPlace = new Softmax(gpu(), 'softmax', { x: buffer, out: buffer });
    const outOfPlace = new Softmax(gpu(), 'softmax', { x: buffer, out: other });
    const pass = {} as GPUComputePassEncoder; // never reached: validation throws first
    expect(() => outOfPlace.encode(pass, { rows: 11, cols: 10 })).toThrow(ShapeError);
    expect(() => outOfPlace.encode(pass, { rows: 0, cols: 10 })).toThrow(ShapeError);
    expect(() => outOfPlace.encode(pass, { rows: 2, cols: 10, outOffset: 81 })).toThrow(/out needs/);
    expect(() => inPlace.encode(pass, { rows: 2, cols: 10, inOffset: 0, outOffset: 5 })).toThrow(/disjoint/);
    expect(() => new Softmax(gpu(), 'softmax', { x: buffer, out: other }, 48)).toThrow(ShapeError);
  });
});

import { describe, expect, it } from 'vitest';
import { Elementwise, type BinaryOp, type UnaryOp } from '../kernels/elementwise.ts';
import { runPass } from '../kernels/dispatch.ts';
import { createStorage, poisoned, readF32, useGpu } from './support/gpu.ts';
import { expectClose, randomF32 } from './support/reference.ts';

const gpu = useGpu();

const silu = (x: number) => x / (1 + Math.exp(-x));
const gelu = (x: number) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));
const REFERENCE: Record<BinaryOp | UnaryOp, (a: number, b: number) => number> = {
  add: (a, b) => a + b,
  swiglu: (a, b) => silu(a) * b,
  silu: (a) => silu(a),
  gelu: (a) => gelu(a),
  swiglu_pairs: () => NaN, // its own test below: it reads two elements of a per output
  geglu_pairs: () => NaN, // likewise
  softcap: () => NaN, // its own test below: it takes a cap
};

describe('elementwise', () => {
  // 1, a prime, and sizes above one workgroup; non-zero offsets in every buffer.
  for (const op of ['add', 'swiglu', 'silu', 'gelu'] as const) {
    for (const count of [1, 97, 1031]) {
      it(`${op} n=${count}`, async () => {
        const aOffset = 3;
        const bOffset = 5;
        const outOffset = 7;
        const a = randomF32(count + aOffset, count, 8);
        const b = randomF32(count + bOffset, count + 1, 4);
        const binary = op === 'add' || op === 'swiglu';
        const out = poisoned(gpu(), 'out', count + outOffset);
        const kernel = new Elementwise(gpu(), op, {
          a: createStorage(gpu(), 'a', a),
          b: binary ? createStorage(gpu(), 'b', b) : undefined,
          out,
        });
        await runPass(gpu(), (pass) => kernel.encode(pass, { count, aOffset, bOffset, outOffset }));
        const got = await readF32(gpu(), out, count, outOffset);
        const want = Array.from({ length: count }, (_, i) => REFERENCE[op](a[aOffset + i], b[bOffset + i]));
        expectClose(got, want, 1e-5, `${op} n=${count}`);
        // The elements before the output offset stay untouched.
        expect(Number.isNaN((await readF32(gpu(), out, outOffset))[0])).toBe(true);
      });
    }
  }

  // (gate, up) pairs of an interleaved projection: out[i] = act(a[2i]) * a[2i + 1].
  for (const [op, act] of [['swiglu_pairs', silu], ['geglu_pairs', gelu]] as const) {
    for (const count of [1, 97, 1031]) {
      it(`${op} n=${count}`, async () => {
        const aOffset = 4;
        const outOffset = 7;
        const a = randomF32(2 * count + aOffset + 1, count + 2, 8);
        const out = poisoned(gpu(), 'out', count + outOffset + 1);
        const kernel = new Elementwise(gpu(), op, { a: createStorage(gpu(), 'a', a), out });
        await runPass(gpu(), (pass) => kernel.encode(pass, { count, aOffset, outOffset }));
        const all = await readF32(gpu(), out, count + outOffset + 1);
        const want = Array.from({ length: count }, (_, i) => act(a[aOffset + 2 * i]) * a[aOffset + 2 * i + 1]);
        expectClose(all.subarray(outOffset, outOffset + count), want, 1e-5, `${op} n=${count}`);
        // Nothing outside the output range is written.
        expect([all[outOffset - 1], all[outOffset + count]].every(Number.isNaN)).toBe(true);
      });
    }
  }

  it('swiglu_pairs refuses an odd aOffset and an output that is its input', () => {
    const a = createStorage(gpu(), 'a', randomF32(16, 1));
    const kernel = new Elementwise(gpu(), 'swiglu_pairs', { a, out: poisoned(gpu(), 'out', 8) });
    const pass = gpu().device.createCommandEncoder().beginComputePass();
    expect(() => kernel.encode(pass, { count: 4, aOffset: 1 })).toThrow(/aOffset must be even/);
    expect(() => kernel.encode(pass, { count: 9 })).toThrow(/a needs/);
    pass.end();
    expect(() => new Elementwise(gpu(), 'swiglu_pairs', { a, out: a })).toThrow(/different buffer/);
  });

  it('softcap: c tanh(a / c), finite for large inputs; the cap is required', async () => {
    const a = Float32Array.from([...randomF32(97, 5, 80), -1e30, 1e30, 0]);
    const buffer = createStorage(gpu(), 'a', a);
    const out = poisoned(gpu(), 'out', a.length + 2);
    const kernel = new Elementwise(gpu(), 'softcap', { a: buffer, out }, 256, 30);
    await runPass(gpu(), (pass) => kernel.encode(pass, { count: a.length, outOffset: 1 }));
    const all = await readF32(gpu(), out, a.length + 2);
    expectClose(all.subarray(1, a.length + 1), Array.from(a, (x) => 30 * Math.tanh(x / 30)), 1e-6, 'softcap');
    expect(Number.isNaN(all[0]) && Number.isNaN(all[a.length + 1])).toBe(true);
    expect(() => new Elementwise(gpu(), 'softcap', { a: buffer, out: buffer })).toThrow(/needs a cap/);
    expect(() => new Elementwise(gpu(), 'softcap', { a: buffer, out: buffer }, 256, 0)).toThrow(/needs a cap/);
    expect(() => new Elementwise(gpu(), 'gelu', { a: buffer, out: buffer }, 256, 30)).toThrow(/takes no cap/);
  });

  it('gelu stays finite for large inputs', async () => {
    const a = new Float32Array([-100, -30, 30, 100, 0]);
    const out = poisoned(gpu(), 'out', a.length);
    const kernel = new Elementwise(gpu(), 'gelu', { a: createStorage(gpu(), 'a', a), out });
    await runPass(gpu(), (pass) => kernel.encode(pass, { count: a.length }));
    expectClose(await readF32(gpu(), out, a.length), Array.from(a, gelu), 1e-6, 'gelu extremes');
  });
});

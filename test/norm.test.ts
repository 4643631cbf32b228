import { describe, expect, it } from 'vitest';
import { Norm, type NormKind } from '../kernels/norm.ts';
import { runPass } from '../kernels/dispatch.ts';
import { ShapeError } from '../src/errors.ts';
import { createStorage, poisoned, readF32, useGpu } from './support/gpu.ts';
import { expectClose, randomF32 } from './support/reference.ts';

const gpu = useGpu();

interface Case {
  x: Float32Array;
  w: Float32Array;
  b: Float32Array;
  rows: number;
  cols: number;
  xOffset: number;
  wOffset: number;
  bOffset: number;
  eps: number;
}

/** Float64 RMSNorm / LayerNorm (two-pass mean and variance). */
function reference(kind: NormKind, t: Case): Float64Array {
  const out = new Float64Array(t.rows * t.cols);
  for (let r = 0; r < t.rows; r++) {
    const row = Array.from({ length: t.cols }, (_, c) => t.x[t.xOffset + r * t.cols + c]);
    if (kind === 'rms') {
      const scale = 1 / Math.sqrt(row.reduce((s, v) => s + v * v, 0) / t.cols + t.eps);
      row.forEach((v, c) => (out[r * t.cols + c] = v * scale * t.w[t.wOffset + c]));
    } else {
      const mean = row.reduce((s, v) => s + v, 0) / t.cols;
      const variance = row.reduce((s, v) => s + (v - mean) ** 2, 0) / t.cols;
      const scale = 1 / Math.sqrt(variance + t.eps);
      row.forEach((v, c) => (out[r * t.cols + c] = (v - mean) * scale * t.w[t.wOffset + c] + t.b[t.bOffset + c]));
    }
  }
  return out;
}

function makeCase(rows: number, cols: number, seed: number, eps: number, shift = 0): Case {
  const xOffset = 5;
  const wOffset = 2;
  const bOffset = 7;
  const x = randomF32(xOffset + rows * cols, seed, 3);
  if (shift !== 0) for (let i = 0; i < x.length; i++) x[i] = Math.fround(x[i] + shift);
  return {
    x,
    w: randomF32(wOffset + cols, seed + 1, 1.5),
    b: randomF32(bOffset + cols, seed + 2, 0.5),
    rows,
    cols,
    xOffset,
    wOffset,
    bOffset,
    eps,
  };
}

async function check(kind: NormKind, t: Case, what: string, workgroupSize?: number): Promise<void> {
  const outOffset = 13;
  const count = t.rows * t.cols;
  const out = poisoned(gpu(), 'out', outOffset + count + 3);
  const kernel = new Norm(
    gpu(),
    kind,
    {
      x: createStorage(gpu(), 'x', t.x),
      weight: createStorage(gpu(), 'w', t.w),
      bias: kind === 'layer' ? createStorage(gpu(), 'b', t.b) : undefined,
      out,
    },
    { eps: t.eps, workgroupSize },
  );
  await runPass(gpu(), (pass) =>
    kernel.encode(pass, {
      rows: t.rows,
      cols: t.cols,
      xOffset: t.xOffset,
      weightOffset: t.wOffset,
      biasOffset: kind === 'layer' ? t.bOffset : 0,
      outOffset,
    }),
  );
  const all = await readF32(gpu(), out, outOffset + count + 3);
  expectClose(all.subarray(outOffset, outOffset + count), reference(kind, t), 1e-5, what);
  for (const i of [0, outOffset - 1, outOffset + count, outOffset + count + 2]) {
    expect(Number.isNaN(all[i]), `${what}: element ${i} outside the output was written`).toBe(true);
  }
}

describe('norm', () => {
  const shapes: Array<[number, number]> = [
    [1, 1],
    [1, 37],
    [3, 1031],
    [5, 256],
    [2, 4099],
  ];
  for (const kind of ['rms', 'layer'] as const) {
    for (const [rows, cols] of shapes) {
      it(`${kind} ${rows}x${cols}`, async () => {
        await check(kind, makeCase(rows, cols, rows * 7919 + cols, 1e-5), `${kind} ${rows}x${cols}`);
      });
    }

    it(`${kind} with a large eps and a small workgroup`, async () => {
      await check(kind, makeCase(4, 97, 3, 0.5), `${kind} eps 0.5`, 16);
    });

    it(`${kind} rows whose mean is far from zero`, async () => {
      // Mean 1000, spread 3: a one-pass E[x^2] - E[x]^2 in f32 would lose every digit here.
      await check(kind, makeCase(3, 1031, 11, 1e-6, 1000), `${kind} mean 1000`);
    });
  }

  it('a constant row normalises to the bias (LayerNorm) and keeps its sign (RMSNorm)', async () => {
    const cols = 50;
    const t: Case = { ...makeCase(1, cols, 1, 1e-5), x: new Float32Array(5 + cols).fill(2.5), w: new Float32Array(2 + cols).fill(1) };
    await check('layer', t, 'constant row, layer');
    await check('rms', t, 'constant row, rms');
  });

  it('refuses bad configurations and shapes', () => {
    const a = createStorage(gpu(), 'a', 64 * 4);
    const w = createStorage(gpu(), 'w', 8 * 4);
    const out = createStorage(gpu(), 'out', 64 * 4);
    expect(() => new Norm(gpu(), 'layer', { x: a, weight: w, out }, { eps: 1e-5 })).toThrow(/needs bias/);
    expect(() => new Norm(gpu(), 'rms', { x: a, weight: w, bias: w, out }, { eps: 1e-5 })).toThrow(/takes no bias/);
    expect(() => new Norm(gpu(), 'rms', { x: a, weight: w, out: a }, { eps: 1e-5 })).toThrow(/different buffer/);
    expect(() => new Norm(gpu(), 'rms', { x: a, weight: w, out }, { eps: NaN })).toThrow(/eps/);
    const norm = new Norm(gpu(), 'rms', { x: a, weight: w, out }, { eps: 1e-5 });
    const pass = {} as GPUComputePassEncoder; // never reached: validation throws first
    expect(() => norm.encode(pass, { rows: 2, cols: 9 })).toThrow(/weight needs/);
    expect(() => norm.encode(pass, { rows: 9, cols: 8 })).toThrow(/x needs/);
    expect(() => norm.encode(pass, { rows: 1, cols: 8, biasOffset: 1 })).toThrow(ShapeError);
    expect(() => norm.encode(pass, { rows: 1.5, cols: 8 })).toThrow(ShapeError);
  });
});

describe('RMSNorm plus a residual (Gemma post-norms)', () => {
  for (const [rows, cols, wg] of [[1, 37, undefined], [3, 1031, undefined], [4, 97, 16]] as const) {
    it(`${rows}x${cols}${wg ? `, workgroup ${wg}` : ''}`, async () => {
      const t = makeCase(rows, cols, rows * 31 + cols, 1e-6);
      const residualOffset = 4;
      const residual = randomF32(residualOffset + rows * cols, cols + 5, 2);
      const outOffset = 9;
      const count = rows * cols;
      const out = poisoned(gpu(), 'out', outOffset + count + 3);
      const kernel = new Norm(gpu(), 'rms', { x: createStorage(gpu(), 'x', t.x), weight: createStorage(gpu(), 'w', t.w), out, residual: createStorage(gpu(), 'r', residual) }, { eps: t.eps, workgroupSize: wg });
      await runPass(gpu(), (pass) => kernel.encode(pass, { rows, cols, xOffset: t.xOffset, weightOffset: t.wOffset, outOffset, residualOffset }));
      const all = await readF32(gpu(), out, outOffset + count + 3);
      const want = reference('rms', t).map((v, i) => v + residual[residualOffset + i]);
      expectClose(all.subarray(outOffset, outOffset + count), want, 1e-5, 'rms_norm_add');
      for (const i of [0, outOffset - 1, outOffset + count, outOffset + count + 2]) expect(Number.isNaN(all[i])).toBe(true);
    });
  }

  // rms_norm_add_norm: the post-norm's sum, then the next sublayer's pre-norm of it, in one pass.
  for (const [rows, cols, wg] of [[1, 37, undefined], [3, 1031, undefined], [4, 97, 16]] as const) {
    it(`then the next pre-norm, ${rows}x${cols}${wg ? `, workgroup ${wg}` : ''}`, async () => {
      const t = makeCase(rows, cols, rows * 17 + cols, 1e-6);
      const residualOffset = 4;
      const residual = randomF32(residualOffset + rows * cols, cols + 9, 2);
      const nextWeight = randomF32(cols, cols + 11, 1.5);
      const outOffset = 9;
      const count = rows * cols;
      const out = poisoned(gpu(), 'out', outOffset + count + 3);
      const nextOut = poisoned(gpu(), 'next', outOffset + count + 3);
      const kernel = new Norm(gpu(), 'rms', {
        x: createStorage(gpu(), 'x', t.x), weight: createStorage(gpu(), 'w', t.w), out, residual: createStorage(gpu(), 'r', residual),
        next: { weight: createStorage(gpu(), 'nw', nextWeight), out: nextOut },
      }, { eps: t.eps, workgroupSize: wg });
      await runPass(gpu(), (pass) => kernel.encode(pass, { rows, cols, xOffset: t.xOffset, weightOffset: t.wOffset, outOffset, residualOffset }));
      const sum = reference('rms', t).map((v, i) => v + residual[residualOffset + i]);
      const next = reference('rms', { ...t, x: new Float32Array(sum), xOffset: 0, w: nextWeight, wOffset: 0 });
      for (const [buffer, want, what] of [[out, sum, 'sum'], [nextOut, next, 'next norm']] as const) {
        const all = await readF32(gpu(), buffer, outOffset + count + 3);
        expectClose(all.subarray(outOffset, outOffset + count), want, 1e-5, `rms_norm_add_norm: ${what}`);
        for (const i of [0, outOffset - 1, outOffset + count, outOffset + count + 2]) expect(Number.isNaN(all[i])).toBe(true);
      }
    });
  }

  it('refuses a next norm without a residual or into a buffer it reads or writes', () => {
    const a = createStorage(gpu(), 'a', 64 * 4);
    const w = createStorage(gpu(), 'w', 8 * 4);
    const out = createStorage(gpu(), 'out', 64 * 4);
    const r = createStorage(gpu(), 'r', 64 * 4);
    const n = createStorage(gpu(), 'n', 64 * 4);
    expect(() => new Norm(gpu(), 'rms', { x: a, weight: w, out, next: { weight: w, out: n } }, { eps: 1e-5 })).toThrow(/follows a residual add only/);
    for (const clash of [a, out, r]) {
      expect(() => new Norm(gpu(), 'rms', { x: a, weight: w, out, residual: r, next: { weight: w, out: clash } }, { eps: 1e-5 })).toThrow(/buffer of its own/);
    }
    const pass = {} as GPUComputePassEncoder;
    const small = new Norm(gpu(), 'rms', { x: a, weight: w, out, residual: r, next: { weight: w, out: createStorage(gpu(), 's', 8 * 4) } }, { eps: 1e-5 });
    expect(() => small.encode(pass, { rows: 2, cols: 8 })).toThrow(/next out needs/);
  });

  it('refuses a residual on LayerNorm, a residual that is the output, and a residual offset without one', () => {
    const a = createStorage(gpu(), 'a', 64 * 4);
    const w = createStorage(gpu(), 'w', 8 * 4);
    const out = createStorage(gpu(), 'out', 64 * 4);
    const r = createStorage(gpu(), 'r', 8 * 4);
    expect(() => new Norm(gpu(), 'layer', { x: a, weight: w, bias: w, out, residual: r }, { eps: 1e-5 })).toThrow(/RMSNorm only/);
    expect(() => new Norm(gpu(), 'rms', { x: a, weight: w, out, residual: out }, { eps: 1e-5 })).toThrow(/residual must be a different buffer/);
    const pass = {} as GPUComputePassEncoder;
    expect(() => new Norm(gpu(), 'rms', { x: a, weight: w, out }, { eps: 1e-5 }).encode(pass, { rows: 1, cols: 8, residualOffset: 1 })).toThrow(/no residual/);
    expect(() => new Norm(gpu(), 'rms', { x: a, weight: w, out, residual: r }, { eps: 1e-5 }).encode(pass, { rows: 2, cols: 8 })).toThrow(/residual needs/);
  });
});

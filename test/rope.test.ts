import { describe, expect, it } from 'vitest';
import { Rope, ropeInverseFrequencies, type RopeMode, type RopeScaling } from '../kernels/rope.ts';
import { runPass } from '../kernels/dispatch.ts';
import { OptionError, ShapeError } from '../src/errors.ts';
import { createStorage, readF32, useGpu } from './support/gpu.ts';
import { expectClose, randomF32, rng } from './support/reference.ts';

const gpu = useGpu();

interface Layout {
  tokens: number;
  heads: number;
  headDim: number;
  rotaryDims: number;
  offset: number;
  rowStride: number;
}

/**
 * Float64 RoPE of a copy of x. The angle is position * inv_freq with inv_freq the f32 values the
 * kernel reads, rounded to f32 as the kernel (and HF, which computes it as an f32 product) does:
 * at position 4096 an f32 angle is only good to ~2.4e-4 rad, so a reference that kept the exact
 * product would differ from every f32 implementation by more than the tolerance. cos and sin are
 * then exact (float64) of that f32 angle.
 */
function reference(mode: RopeMode, x: Float32Array, l: Layout, positions: Uint32Array, invFreq: Float32Array): Float64Array {
  const out = Float64Array.from(x);
  const half = l.rotaryDims / 2;
  for (let t = 0; t < l.tokens; t++) {
    for (let h = 0; h < l.heads; h++) {
      const base = l.offset + t * l.rowStride + h * l.headDim;
      for (let i = 0; i < half; i++) {
        const angle = Math.fround(positions[t] * invFreq[i]);
        const [i0, i1] = mode === 'half' ? [base + i, base + i + half] : [base + 2 * i, base + 2 * i + 1];
        const a = x[i0];
        const b = x[i1];
        out[i0] = a * Math.cos(angle) - b * Math.sin(angle);
        out[i1] = b * Math.cos(angle) + a * Math.sin(angle);
      }
    }
  }
  return out;
}

async function check(mode: RopeMode, l: Layout, positions: Uint32Array, invFreq: Float32Array, seed: number, what: string) {
  const length = l.offset + (l.tokens - 1) * l.rowStride + l.heads * l.headDim + 5;
  const x = randomF32(length, seed, 2);
  const buffer = createStorage(gpu(), 'x', x);
  const kernel = new Rope(gpu(), mode, {
    x: buffer,
    positions: createStorage(gpu(), 'positions', positions),
    invFreq: createStorage(gpu(), 'invFreq', invFreq),
  });
  await runPass(gpu(), (pass) =>
    kernel.encode(pass, {
      tokens: l.tokens,
      heads: l.heads,
      headDim: l.headDim,
      rotaryDims: l.rotaryDims,
      offset: l.offset,
      rowStride: l.rowStride,
    }),
  );
  const got = await readF32(gpu(), buffer, length);
  const want = reference(mode, x, l, positions, invFreq);
  const c = expectClose(got, want, 1e-5, what);
  // Everything the rotation does not touch (offset prefix, dims past R, gaps between rows, V heads) is bit-identical.
  const rotated = new Set<number>();
  for (let t = 0; t < l.tokens; t++)
    for (let h = 0; h < l.heads; h++)
      for (let d = 0; d < l.rotaryDims; d++) rotated.add(l.offset + t * l.rowStride + h * l.headDim + d);
  for (let i = 0; i < length; i++) {
    if (!rotated.has(i) && !Object.is(got[i], x[i])) throw new Error(`${what}: element ${i} outside the rotated dims changed`);
  }
  return c;
}

const sequence = (start: number, n: number) => Uint32Array.from({ length: n }, (_, i) => start + i);

describe('rope', () => {
  for (const mode of ['half', 'interleaved'] as const) {
    it(`${mode}: one token, one head of 2`, async () => {
      await check(mode, { tokens: 1, heads: 1, headDim: 2, rotaryDims: 2, offset: 0, rowStride: 2 }, new Uint32Array([7]), ropeInverseFrequencies(2, 10000), 1, `${mode} 1x1x2`);
    });

    it(`${mode}: prefill of 37 tokens from position 4000, 3 heads of 64, offset`, async () => {
      const l = { tokens: 37, heads: 3, headDim: 64, rotaryDims: 64, offset: 11, rowStride: 3 * 64 };
      await check(mode, l, sequence(4000, 37), ropeInverseFrequencies(64, 10000), 2, `${mode} prefill`);
    });

    it(`${mode}: batched decode rows at scattered positions up to 4095, theta 500000`, async () => {
      const next = rng(3);
      const positions = Uint32Array.from({ length: 9 }, () => Math.floor(next() * 4096));
      positions[0] = 0;
      positions[1] = 4095;
      const l = { tokens: 9, heads: 5, headDim: 128, rotaryDims: 128, offset: 0, rowStride: 5 * 128 };
      await check(mode, l, positions, ropeInverseFrequencies(128, 500000), 3, `${mode} decode`);
    });

    it(`${mode}: long-context positions up to 131071 (angles up to 2^17 rad)`, async () => {
      const positions = new Uint32Array([131071, 65537, 100000, 32768, 8191]);
      const l = { tokens: 5, heads: 1, headDim: 64, rotaryDims: 64, offset: 0, rowStride: 64 };
      await check(mode, l, positions, ropeInverseFrequencies(64, 1000000), 7, `${mode} long context`);
    });

    it(`${mode}: partial rotary (R = 24 of D = 40) leaves dims R..D untouched`, async () => {
      const l = { tokens: 6, heads: 2, headDim: 40, rotaryDims: 24, offset: 4, rowStride: 2 * 40 };
      await check(mode, l, sequence(100, 6), ropeInverseFrequencies(24, 10000), 4, `${mode} partial`);
    });

    it(`${mode}: Q and K heads inside a fused QKV buffer (Hq 4, Hkv 2, D 16), V untouched`, async () => {
      const hq = 4;
      const hkv = 2;
      const d = 16;
      // Q heads then K heads are contiguous at the start of each row: one dispatch rotates both.
      const l = { tokens: 7, heads: hq + hkv, headDim: d, rotaryDims: d, offset: 3, rowStride: (hq + 2 * hkv) * d };
      await check(mode, l, sequence(2040, 7), ropeInverseFrequencies(d, 10000, { type: 'linear', factor: 2 }), 5, `${mode} fused QKV`);
    });
  }

  it('positions and inverse frequencies at offsets', async () => {
    const invFreq = ropeInverseFrequencies(8, 10000);
    const positions = new Uint32Array([99, 99, 5, 6]);
    const x = randomF32(2 * 8, 6, 1);
    const buffer = createStorage(gpu(), 'x', x);
    const kernel = new Rope(gpu(), 'half', {
      x: buffer,
      positions: createStorage(gpu(), 'positions', positions),
      invFreq: createStorage(gpu(), 'invFreq', Float32Array.from([0, 0, 0, ...invFreq])),
    });
    await runPass(gpu(), (pass) => kernel.encode(pass, { tokens: 2, heads: 1, headDim: 8, positionsOffset: 2, invFreqOffset: 3 }));
    const l = { tokens: 2, heads: 1, headDim: 8, rotaryDims: 8, offset: 0, rowStride: 8 };
    expectClose(await readF32(gpu(), buffer, 16), reference('half', x, l, positions.subarray(2), invFreq), 1e-5, 'offsets');
  });

  it('refuses bad shapes', () => {
    const small = createStorage(gpu(), 'x', 64 * 4);
    const kernel = new Rope(gpu(), 'half', { x: small, positions: small, invFreq: small });
    const pass = {} as GPUComputePassEncoder; // never reached: validation throws first
    expect(() => kernel.encode(pass, { tokens: 1, heads: 1, headDim: 8, rotaryDims: 7 })).toThrow(/even/);
    expect(() => kernel.encode(pass, { tokens: 1, heads: 1, headDim: 8, rotaryDims: 10 })).toThrow(ShapeError);
    expect(() => kernel.encode(pass, { tokens: 2, heads: 2, headDim: 8, rowStride: 8 })).toThrow(/rowStride/);
    expect(() => kernel.encode(pass, { tokens: 5, heads: 2, headDim: 8 })).toThrow(/x needs/);
    expect(() => kernel.encode(pass, { tokens: 1, heads: 1, headDim: 8, invFreqOffset: 61 })).toThrow(/invFreq needs/);
  });
});

describe('ropeInverseFrequencies', () => {
  it('default: 1 / theta^(2i / R)', () => {
    expect(Array.from(ropeInverseFrequencies(4, 10000))).toEqual([1, Math.fround(0.01)]);
    const f = ropeInverseFrequencies(128, 500000);
    expect(f.length).toBe(64);
    expect(f[63]).toBe(Math.fround(500000 ** (-126 / 128)));
  });

  it('linear divides every frequency by the factor', () => {
    expect(Array.from(ropeInverseFrequencies(4, 10000, { type: 'linear', factor: 4 }))).toEqual([0.25, Math.fround(0.0025)]);
  });

  it('llama3 (Llama 3.1: R 128, theta 500000, factor 8, low 1, high 4, original 8192)', () => {
    const scaling: RopeScaling = {
      type: 'llama3',
      factor: 8,
      low_freq_factor: 1,
      high_freq_factor: 4,
      original_max_position_embeddings: 8192,
    };
    const f = ropeInverseFrequencies(128, 500000, scaling);
    const plain = ropeInverseFrequencies(128, 500000);
    // Wavelength w = 2 pi / inv_freq: below 8192 / 4 = 2048 kept, above 8192 / 1 divided by 8, in
    // between interpolated. inv_freq_i = 500000^(-i/64): i = 28 is the last high frequency
    // (w = 1956.5), i = 35 the first low one (w = 8218.7).
    for (let i = 0; i <= 28; i++) expect(f[i], `i=${i}`).toBe(plain[i]);
    for (let i = 35; i < 64; i++) expect(f[i], `i=${i}`).toBe(Math.fround(500000 ** (-i / 64) / 8));
    // The medium band, worked by hand from the HF formula: s = (8192 / w - 1) / 3,
    // value = (1 - s) inv / 8 + s inv. E.g. i = 32: inv = 500000^-0.5 = sqrt(2) / 1000 = 1.41421356e-3,
    // w = 4442.88, s = (1.843869 - 1) / 3 = 0.281290, value = inv (0.719710 / 8 + 0.281290)
    // = inv * 0.371129 = 5.24846e-4.
    const hand: Array<[number, number]> = [
      [29, 2.16657076e-3], // inv 2.61609925e-3, w 2401.74
      [30, 1.37189357e-3], // inv 2.13111954e-3, w 2948.30
      [32, 5.24846161e-4],
      [34, 1.78507813e-4], // inv 9.38473870e-4, w 6695.11
    ];
    for (const [i, want] of hand) expect(f[i] / want, `i=${i}`).toBeCloseTo(1, 6);
  });

  it('refuses bad arguments', () => {
    expect(() => ropeInverseFrequencies(7, 10000)).toThrow(ShapeError);
    expect(() => ropeInverseFrequencies(8, 0)).toThrow(OptionError);
    expect(() => ropeInverseFrequencies(8, 10000, { type: 'linear', factor: -1 })).toThrow(OptionError);
    expect(() =>
      ropeInverseFrequencies(8, 10000, { type: 'llama3', factor: 8, low_freq_factor: 4, high_freq_factor: 1, original_max_position_embeddings: 8192 }),
    ).toThrow(/high_freq_factor/);
  });
});

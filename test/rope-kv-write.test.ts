// RoPE + KV-cache write in one dispatch (RopeKvWrite) against a float64 reference: the queries
// rotated in place in the fused qkv rows, the keys rotated into the cache at each row's slot and
// position, the values copied beside them, and nothing else touched (the cache starts NaN, the keys and
// values in qkv keep their bits).
import { describe, expect, it } from 'vitest';
import { RopeKvWrite, ropeInverseFrequencies, type RopeMode } from '../kernels/rope.ts';
import { runPass } from '../kernels/dispatch.ts';
import { ShapeError } from '../src/errors.ts';
import { createStorage, poisoned, readF32, useGpu } from './support/gpu.ts';
import { expectClose, randomF32 } from './support/reference.ts';

const gpu = useGpu();

interface Case {
  Hq: number;
  Hkv: number;
  D: number;
  rotaryDims: number;
  capacity: number;
  /** Per row: which region (slot) of the cache, and the position. */
  rows: Array<{ region: number; position: number }>;
  regions: number;
  theta: number;
  seed: number;
}

/** Float64 rotation of the pair holding element d of a head (as tests/rope.test.ts: f32-rounded angle). */
function rotated(mode: RopeMode, head: ArrayLike<number>, d: number, rotaryDims: number, position: number, invFreq: Float32Array): number {
  if (d >= rotaryDims) return head[d];
  const half = rotaryDims / 2;
  const [i, i0, i1] = mode === 'half' ? [d % half, d % half, (d % half) + half] : [d >> 1, d & ~1, (d & ~1) + 1];
  const angle = Math.fround(position * invFreq[i]);
  const a = head[i0];
  const b = head[i1];
  return d === i0 ? a * Math.cos(angle) - b * Math.sin(angle) : b * Math.cos(angle) + a * Math.sin(angle);
}

async function check(mode: RopeMode, c: Case) {
  const { Hq, Hkv, D, rotaryDims, capacity } = c;
  const R = c.rows.length;
  const qOffset = 2;
  const kOffset = qOffset + Hq * D + 1; // gaps between the head ranges stay untouched
  const vOffset = kOffset + Hkv * D + 3;
  const rowStride = vOffset + Hkv * D + 2;
  const qkvValues = randomF32(R * rowStride + 4, c.seed, 2);
  const metaOffset = 3;
  const regionLen = Hkv * capacity * D;
  const meta = new Uint32Array(metaOffset + 2 * R + 1);
  c.rows.forEach((row, r) => {
    meta[metaOffset + 2 * r] = row.region * regionLen;
    meta[metaOffset + 2 * r + 1] = row.position;
  });
  const invFreq = ropeInverseFrequencies(rotaryDims, c.theta);
  const qkv = createStorage(gpu(), 'qkv', qkvValues);
  const kCache = poisoned(gpu(), 'k', c.regions * regionLen);
  const vCache = poisoned(gpu(), 'v', c.regions * regionLen);
  const kernel = new RopeKvWrite(gpu(), mode, { Hq, Hkv, D, rotaryDims, capacity }, {
    qkv, rowMeta: createStorage(gpu(), 'meta', meta), invFreq: createStorage(gpu(), 'invFreq', invFreq), kCache, vCache,
  });
  await runPass(gpu(), (pass) => kernel.encode(pass, { rows: R, rowStride, qOffset, kOffset, vOffset, metaOffset }));

  // Expected qkv: queries rotated, all else as it was.
  const wantQkv = Float64Array.from(qkvValues);
  const wantK = new Float64Array(c.regions * regionLen).fill(NaN);
  const wantV = new Float64Array(c.regions * regionLen).fill(NaN);
  c.rows.forEach(({ region, position }, r) => {
    for (let h = 0; h < Hq; h++) {
      const start = r * rowStride + qOffset + h * D;
      const head = qkvValues.subarray(start, start + D);
      for (let d = 0; d < D; d++) wantQkv[start + d] = rotated(mode, head, d, rotaryDims, position, invFreq);
    }
    if (position >= capacity) return; // dropped: would overwrite another sequence's keys
    for (let h = 0; h < Hkv; h++) {
      const kStart = r * rowStride + kOffset + h * D;
      const head = qkvValues.subarray(kStart, kStart + D);
      for (let d = 0; d < D; d++) {
        const dst = region * regionLen + (h * capacity + position) * D + d;
        wantK[dst] = rotated(mode, head, d, rotaryDims, position, invFreq);
        wantV[dst] = qkvValues[r * rowStride + vOffset + h * D + d];
      }
    }
  });
  const what = `${mode} Hq=${Hq} Hkv=${Hkv} D=${D} R=${rotaryDims} rows=${R}`;
  expectClose(await readF32(gpu(), qkv, qkvValues.length), wantQkv, 1e-5, `${what}: qkv`);
  expectClose(await readF32(gpu(), kCache, wantK.length), wantK, 1e-5, `${what}: k cache`);
  expectClose(await readF32(gpu(), vCache, wantV.length), wantV, 0, `${what}: v cache`);
  // Keys, values and the gaps in qkv keep their exact bits (only the queries are rotated in place).
  const got = await readF32(gpu(), qkv, qkvValues.length);
  c.rows.forEach((_, r) => {
    for (let i = r * rowStride + kOffset - 1; i < (r + 1) * rowStride; i++) {
      if (!Object.is(got[i], qkvValues[i])) throw new Error(`${what}: qkv element ${i} (not a query) changed`);
    }
  });
}

describe('rope + kv write', () => {
  for (const mode of ['half', 'interleaved'] as const) {
    it(`${mode}: one decode row, one head of 2`, async () => {
      await check(mode, { Hq: 1, Hkv: 1, D: 2, rotaryDims: 2, capacity: 3, rows: [{ region: 0, position: 2 }], regions: 1, theta: 10000, seed: 1 });
    });

    it(`${mode}: batched decode over regions, grouped queries (Hq 6, Hkv 2), D 10 with 6 rotary dims`, async () => {
      const rows = [{ region: 2, position: 0 }, { region: 0, position: 12 }, { region: 1, position: 7 }];
      await check(mode, { Hq: 6, Hkv: 2, D: 10, rotaryDims: 6, capacity: 13, rows, regions: 3, theta: 10000, seed: 2 });
    });

    it(`${mode}: prefill of 37 rows from position 4000 (D 64, theta 500000)`, async () => {
      const rows = Array.from({ length: 37 }, (_, i) => ({ region: 1, position: 4000 + i }));
      await check(mode, { Hq: 3, Hkv: 1, D: 64, rotaryDims: 64, capacity: 4100, rows, regions: 2, theta: 500000, seed: 3 });
    });

    it(`${mode}: a row past the capacity writes no cache entry (its queries still rotate)`, async () => {
      const rows = [{ region: 0, position: 4 }, { region: 0, position: 5 }, { region: 1, position: 1 }];
      await check(mode, { Hq: 2, Hkv: 1, D: 8, rotaryDims: 8, capacity: 5, rows, regions: 2, theta: 10000, seed: 4 });
    });
  }

  it('refuses overlapping head ranges, shared buffers and odd rotary dims', () => {
    const qkv = createStorage(gpu(), 'qkv', 64 * 4);
    const rowMeta = createStorage(gpu(), 'meta', 8 * 4);
    const invFreq = createStorage(gpu(), 'invFreq', ropeInverseFrequencies(4, 10000));
    const kCache = createStorage(gpu(), 'k', 64 * 4);
    const vCache = createStorage(gpu(), 'v', 64 * 4);
    const config = { Hq: 2, Hkv: 1, D: 4, rotaryDims: 4, capacity: 4 };
    expect(() => new RopeKvWrite(gpu(), 'half', { ...config, rotaryDims: 3 }, { qkv, rowMeta, invFreq, kCache, vCache })).toThrow(/rotaryDims must be even/);
    expect(() => new RopeKvWrite(gpu(), 'half', config, { qkv, rowMeta, invFreq, kCache, vCache: kCache })).toThrow(/kCache and vCache must be different/);
    const kernel = new RopeKvWrite(gpu(), 'half', config, { qkv, rowMeta, invFreq, kCache, vCache });
    const pass = gpu().device.createCommandEncoder().beginComputePass();
    expect(() => kernel.encode(pass, { rows: 1, rowStride: 16, qOffset: 0, kOffset: 6, vOffset: 12 })).toThrow(/q and k heads overlap/);
    expect(() => kernel.encode(pass, { rows: 5, rowStride: 16, qOffset: 0, kOffset: 8, vOffset: 12 })).toThrow(ShapeError);
    pass.end();
  });
});

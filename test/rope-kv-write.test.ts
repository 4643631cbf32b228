// RoPE + KV-cache write in one dispatch (RopeKvWrite) against a float64 reference: the queries
// rotated in place in the fused qkv rows, the keys rotated into the paged cache through a shuffled
// block table at each row's table row and position, the values copied beside them (rounded or
// quantised for an f16 or q8_0 cache), and nothing else touched (the other blocks keep their bits,
// the keys and values in qkv too). With the head norm (Qwen3, Gemma 3), every query and key head is
// RMS-normalised first, in float64 here, and the values are not.
import { describe, expect, it } from 'vitest';
import { RopeKvWrite, ropeInverseFrequencies, type RopeMode } from '../kernels/rope.ts';
import { runPass } from '../kernels/dispatch.ts';
import { ShapeError } from '../src/errors.ts';
import { createStorage, poisoned, readF32, useGpu } from './support/gpu.ts';
import { expectClose, headNormReference, randomF32 } from './support/reference.ts';
import { PoolMirror, decodePool, poolWords, shuffledTable } from './support/kv-pool.ts';
import { kvTableWidth, type KvDtype } from '../kernels/attention.ts';
import { readU32 } from '../src/gpu/buffers.ts';

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
  /** Make this table entry name no block (an id past the pool). */
  noBlock?: { region: number; entry: number };
  /** RMSNorm of each query and key head first, with random (2, D) weights. */
  headNorm?: { eps: number };
  workgroupSize?: number;
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

async function check(mode: RopeMode, c: Case, dtype: KvDtype = 'f32') {
  const { Hq, Hkv, D, rotaryDims, capacity } = c;
  const R = c.rows.length;
  const qOffset = 2;
  const kOffset = qOffset + Hq * D + 1; // gaps between the head ranges stay untouched
  const vOffset = kOffset + Hkv * D + 3;
  const rowStride = vOffset + Hkv * D + 2;
  const qkvValues = randomF32(R * rowStride + 4, c.seed, 2);
  const metaOffset = 3;
  const meta = new Uint32Array(metaOffset + 2 * R + 1);
  c.rows.forEach((row, r) => {
    meta[metaOffset + 2 * r] = row.region;
    meta[metaOffset + 2 * r + 1] = row.position;
  });
  // The sequences' blocks scattered through the pool (one table row per region).
  const { table, kvBlocks } = shuffledTable(c.regions, capacity, c.seed + 20);
  if (c.noBlock) table[c.noBlock.region * kvTableWidth(capacity) + c.noBlock.entry] = kvBlocks + 2;
  const pool = new PoolMirror({ Hkv, D, capacity, kvBlocks, dtype }, table, c.seed + 30);
  const invFreq = ropeInverseFrequencies(rotaryDims, c.theta);
  const qkv = createStorage(gpu(), 'qkv', qkvValues);
  const kCache = createStorage(gpu(), 'k', pool.words('k'));
  const vCache = createStorage(gpu(), 'v', pool.words('v'));
  const normWeight = randomF32(2 * D, c.seed + 40, 1.5);
  const { headNorm, workgroupSize } = c;
  const kernel = new RopeKvWrite(gpu(), mode, { Hq, Hkv, D, rotaryDims, capacity, kvBlocks, dtype, headNorm, workgroupSize }, {
    qkv, rowMeta: createStorage(gpu(), 'meta', meta), invFreq: createStorage(gpu(), 'invFreq', invFreq), kCache, vCache,
    blockTable: createStorage(gpu(), 'table', table),
    headNormWeight: headNorm ? createStorage(gpu(), 'headNorm', normWeight) : undefined,
  });
  await runPass(gpu(), (pass) => kernel.encode(pass, { rows: R, rowStride, qOffset, kOffset, vOffset, metaOffset }));

  // The heads as RoPE sees them: with the head norm, each query and key head normalised in float64.
  const normed = headNorm
    ? headNormReference(headNormReference(qkvValues, normWeight, R, Hq, Hq, D, rowStride, qOffset, headNorm.eps), normWeight, R, Hkv, 0, D, rowStride, kOffset, headNorm.eps)
    : qkvValues;
  // Expected qkv: queries (normalised and) rotated, all else as it was.
  const wantQkv = Float64Array.from(qkvValues);
  const words = poolWords(pool.shape);
  const kWords = await readU32(gpu(), kCache, words);
  const vWords = await readU32(gpu(), vCache, words);
  const gotK = decodePool(pool.shape, kWords);
  const gotV = decodePool(pool.shape, vWords);
  const wantK: number[] = [];
  const seenK: number[] = [];
  const wantV: number[] = [];
  const seenV: number[] = [];
  c.rows.forEach(({ region, position }, r) => {
    for (let h = 0; h < Hq; h++) {
      const start = r * rowStride + qOffset + h * D;
      const head = normed.subarray(start, start + D);
      for (let d = 0; d < D; d++) wantQkv[start + d] = rotated(mode, head, d, rotaryDims, position, invFreq);
    }
    // Dropped (past the row, or no block): would overwrite another sequence's keys.
    if (pool.index(region, 0, position) < 0) return;
    for (let h = 0; h < Hkv; h++) {
      const kStart = r * rowStride + kOffset + h * D;
      const head = normed.subarray(kStart, kStart + D);
      const key = Array.from({ length: D }, (_, d) => rotated(mode, head, d, rotaryDims, position, invFreq));
      const value = qkvValues.subarray(r * rowStride + vOffset + h * D, r * rowStride + vOffset + (h + 1) * D);
      const at = pool.index(region, h, position);
      wantK.push(...key);
      seenK.push(...gotK.subarray(at, at + D));
      wantV.push(...value);
      seenV.push(...gotV.subarray(at, at + D));
      // f32: the f32 rotation is held to the float64 one below, then its own bits; f16 / q8_0: the
      // float64 key within the dtype's rounding.
      pool.expectWrite(region, position, h, dtype === 'f32' ? gotK.subarray(at, at + D) : key, value);
    }
  });
  const what = `${mode} ${dtype}${headNorm ? ' head norm' : ''} Hq=${Hq} Hkv=${Hkv} D=${D} R=${rotaryDims} rows=${R}`;
  expectClose(await readF32(gpu(), qkv, qkvValues.length), wantQkv, 1e-5, `${what}: qkv`);
  if (dtype === 'f32') {
    expectClose(seenK, wantK, 1e-5, `${what}: k cache`);
    expectClose(seenV, wantV, 0, `${what}: v cache`);
  }
  // Every written element within the dtype's rounding, every other one unchanged bit for bit.
  pool.check(kWords, vWords, what);
  // Keys, values and the gaps in qkv keep their exact bits (only the queries are rotated in place).
  const got = await readF32(gpu(), qkv, qkvValues.length);
  c.rows.forEach((_, r) => {
    for (let i = r * rowStride + kOffset - 1; i < (r + 1) * rowStride; i++) {
      if (!Object.is(got[i], qkvValues[i])) throw new Error(`${what}: qkv element ${i} (not a query) changed`);
    }
  });
}

const HEAD_NORM = { eps: 1e-6 };

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

    it(`${mode}: a row past its table row or without a block writes no cache entry (its queries still rotate)`, async () => {
      // Capacity 20: two table entries per region; region 1's second names no block.
      const rows = [{ region: 0, position: 4 }, { region: 0, position: 32 }, { region: 1, position: 1 }, { region: 1, position: 17 }];
      await check(mode, { Hq: 2, Hkv: 1, D: 8, rotaryDims: 8, capacity: 20, rows, regions: 2, theta: 10000, seed: 4, noBlock: { region: 1, entry: 1 } });
    });

    for (const dtype of ['f16', 'q8_0'] as const) {
      it(`${mode}: ${dtype} cache, batched decode and a prefill crossing blocks (D 64, GQA 4/2, 48 rotary dims)`, async () => {
        const rows = [{ region: 2, position: 0 }, { region: 0, position: 40 }, ...Array.from({ length: 21 }, (_, i) => ({ region: 1, position: 5 + i }))];
        await check(mode, { Hq: 4, Hkv: 2, D: 64, rotaryDims: 48, capacity: 50, rows, regions: 3, theta: 10000, seed: 5 }, dtype);
      });
    }

    it(`${mode}: head norm, batched decode, GQA 6/2, D 10 with 6 rotary dims (the other 4 normalised only)`, async () => {
      const rows = [{ region: 2, position: 0 }, { region: 0, position: 12 }, { region: 1, position: 7 }];
      await check(mode, { Hq: 6, Hkv: 2, D: 10, rotaryDims: 6, capacity: 13, rows, regions: 3, theta: 10000, seed: 6, headNorm: HEAD_NORM });
    });

    it(`${mode}: head norm, prefill of 37 rows, heads of 40 over a workgroup of 16, one row without a block`, async () => {
      const rows = Array.from({ length: 37 }, (_, i) => ({ region: i % 2, position: 3 + i }));
      await check(mode, {
        Hq: 3, Hkv: 1, D: 40, rotaryDims: 40, capacity: 50, rows, regions: 2, theta: 500000, seed: 7, headNorm: HEAD_NORM, workgroupSize: 16,
        noBlock: { region: 1, entry: 2 },
      });
    });

    for (const dtype of ['f16', 'q8_0'] as const) {
      it(`${mode}: head norm, ${dtype} cache (D 64, GQA 4/2, 48 rotary dims)`, async () => {
        const rows = [{ region: 2, position: 0 }, { region: 0, position: 40 }, ...Array.from({ length: 5 }, (_, i) => ({ region: 1, position: 13 + i }))];
        await check(mode, { Hq: 4, Hkv: 2, D: 64, rotaryDims: 48, capacity: 50, rows, regions: 3, theta: 10000, seed: 8, headNorm: HEAD_NORM }, dtype);
      });
    }
  }

  it('refuses overlapping head ranges, shared buffers, odd rotary dims and a head norm without its weight (or eps)', () => {
    const qkv = createStorage(gpu(), 'qkv', 64 * 4);
    const rowMeta = createStorage(gpu(), 'meta', 8 * 4);
    const invFreq = createStorage(gpu(), 'invFreq', ropeInverseFrequencies(4, 10000));
    const kCache = createStorage(gpu(), 'k', 64 * 4);
    const vCache = createStorage(gpu(), 'v', 64 * 4);
    const blockTable = createStorage(gpu(), 'table', 4);
    const config = { Hq: 2, Hkv: 1, D: 4, rotaryDims: 4, capacity: 4, kvBlocks: 1 };
    expect(() => new RopeKvWrite(gpu(), 'half', { ...config, rotaryDims: 3 }, { qkv, rowMeta, invFreq, kCache, vCache, blockTable })).toThrow(/rotaryDims must be even/);
    expect(() => new RopeKvWrite(gpu(), 'half', config, { qkv, rowMeta, invFreq, kCache, vCache: kCache, blockTable })).toThrow(/kCache and vCache must be different/);
    expect(() => new RopeKvWrite(gpu(), 'half', { ...config, kvBlocks: 2 }, { qkv, rowMeta, invFreq, kCache, vCache, blockTable })).toThrow(/kCache needs/);
    expect(() => new RopeKvWrite(gpu(), 'half', { ...config, dtype: 'q8_0' }, { qkv, rowMeta, invFreq, kCache, vCache, blockTable })).toThrow(
      /dtype q8_0 needs a head dim that is a multiple of 32, but this model's is 4/,
    );
    const headNormWeight = createStorage(gpu(), 'headNorm', 8 * 4);
    expect(() => new RopeKvWrite(gpu(), 'half', { ...config, headNorm: HEAD_NORM }, { qkv, rowMeta, invFreq, kCache, vCache, blockTable })).toThrow(/headNorm and buffers.headNormWeight go together \(got no weight\)/);
    expect(() => new RopeKvWrite(gpu(), 'half', config, { qkv, rowMeta, invFreq, kCache, vCache, blockTable, headNormWeight })).toThrow(/a weight without headNorm/);
    expect(() => new RopeKvWrite(gpu(), 'half', { ...config, headNorm: { eps: -1 } }, { qkv, rowMeta, invFreq, kCache, vCache, blockTable, headNormWeight })).toThrow(/headNorm.eps must be a finite number >= 0 \(got -1\)/);
    const short = createStorage(gpu(), 'short', 7 * 4);
    expect(() => new RopeKvWrite(gpu(), 'half', { ...config, headNorm: HEAD_NORM }, { qkv, rowMeta, invFreq, kCache, vCache, blockTable, headNormWeight: short })).toThrow(/headNormWeight needs 32 bytes/);
    expect(() => new RopeKvWrite(gpu(), 'half', { ...config, headNorm: HEAD_NORM }, { qkv, rowMeta, invFreq, kCache, vCache, blockTable, headNormWeight: qkv })).toThrow(/qkv and headNormWeight must be different/);
    const kernel = new RopeKvWrite(gpu(), 'half', config, { qkv, rowMeta, invFreq, kCache, vCache, blockTable });
    const pass = gpu().device.createCommandEncoder().beginComputePass();
    expect(() => kernel.encode(pass, { rows: 1, rowStride: 16, qOffset: 0, kOffset: 6, vOffset: 12 })).toThrow(/q and k heads overlap/);
    expect(() => kernel.encode(pass, { rows: 5, rowStride: 16, qOffset: 0, kOffset: 8, vOffset: 12 })).toThrow(ShapeError);
    pass.end();
  });
});

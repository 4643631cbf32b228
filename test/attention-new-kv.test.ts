// Decode attention with the step's RoPE and KV-cache write folded in (DecodeAttention's newKv) against
// the two dispatches it replaces: RopeKvWrite (KvWrite for learned positions) then DecodeAttention
// over the caches. Both run on the same random qkv rows and the same random pools behind shuffled
// block tables; the outputs and both caches must agree (the fold evaluates RoPE's expressions in
// the same order, so they may differ only where a compiler contracts them otherwise: 1e-6 relative
// on the outputs, and the caches within one f32 rounding of the key). The unfused path itself is held
// to the float64 reference in test/rope-kv-write.test.ts and test/attention.test.ts.
// Cases: both pair layouts, partial rotary dims, grouped queries, rows of different lengths in one
// batch, one split and many (with a window), f16 and q8_0 caches, Gemma 2's soft-cap, no RoPE, a row
// whose step position has no block (nothing written, the key skipped) and a row past its table row,
// on every tier the adapter runs. The grouped-query cases also catch a fold that read the step's key
// back from the cache: the software adapters run workgroups in order, and the group's last query head,
// which stores the key, runs after the others.
import { describe, expect, it } from 'vitest';
import { DecodeAttention, KvWrite, kvTableWidth, type KvDtype } from '../kernels/attention.ts';
import { RopeKvWrite, ropeInverseFrequencies, type RopeMode } from '../kernels/rope.ts';
import { runPass } from '../kernels/dispatch.ts';
import type { Tier } from '../kernels/tiers.ts';
import { readU32 } from '../src/gpu/buffers.ts';
import { ShapeError } from '../src/errors.ts';
import { createStorage, poisoned, readF32, useGpu } from './support/gpu.ts';
import { expectClose, randomF32 } from './support/reference.ts';
import { PoolMirror, decodePool, poolWords, shuffledTable } from './support/kv-pool.ts';

const gpu = useGpu();

interface Case {
  Hq: number;
  Hkv: number;
  D: number;
  /** 0: learned positions (the reference is KvWrite). */
  rotaryDims: number;
  mode: RopeMode;
  dtype: KvDtype;
  capacity: number;
  /** Per row: the sequence's table row and its kv_len (the step's token at kv_len - 1). */
  rows: Array<{ region: number; kvLen: number }>;
  regions: number;
  splitKeys?: number;
  maxSplits?: number;
  window?: number;
  softcap?: number;
  /** Make this table entry name no block (an id past the pool). */
  noBlock?: { region: number; entry: number };
  /** Qwen3's and Gemma 3's RMSNorm of each query and key head first, with random (2, D) weights. */
  headNorm?: { eps: number };
  seed: number;
}

function tiers(): Tier[] {
  return gpu().features.has('subgroups') ? ['baseline', 'subgroup'] : ['baseline'];
}

/** Run the case both ways; returns nothing, throws on any difference beyond the bounds above. */
async function check(c: Case, tier: Tier): Promise<void> {
  const { Hq, Hkv, D, rotaryDims, mode, dtype, capacity } = c;
  const R = c.rows.length;
  // Head ranges with gaps, as in the fused qkv rows of a layer (and some slack the kernels must not touch).
  const qOffset = 1;
  const kOffset = qOffset + Hq * D + 2;
  const vOffset = kOffset + Hkv * D + 1;
  const rowStride = vOffset + Hkv * D + 3;
  const qkvValues = randomF32(R * rowStride + 2, c.seed, 2);
  // Attention's (table_row, kv_len) pairs and the writers' (table_row, position) pairs, side by side.
  const attnMeta = 2;
  const kvMeta = attnMeta + 2 * R + 1;
  const meta = new Uint32Array(kvMeta + 2 * R);
  c.rows.forEach(({ region, kvLen }, r) => {
    meta.set([region, kvLen], attnMeta + 2 * r);
    meta.set([region, kvLen - 1], kvMeta + 2 * r);
  });
  const { table, kvBlocks } = shuffledTable(c.regions, capacity, c.seed + 1);
  if (c.noBlock) table[c.noBlock.region * kvTableWidth(capacity) + c.noBlock.entry] = kvBlocks + 5;
  const pool = new PoolMirror({ Hkv, D, capacity, kvBlocks, dtype }, table, c.seed + 2);
  const invFreq = rotaryDims > 0 ? ropeInverseFrequencies(rotaryDims, 10000) : undefined;
  const normWeight = randomF32(2 * D, c.seed + 3, 1.5);
  const { headNorm } = c;
  const shape = { Hq, Hkv, D, capacity, kvBlocks, dtype };
  // A row longer than the capacity is clamped to its table row (the run's maxLen may not exceed it).
  const maxLen = Math.min(capacity, Math.max(...c.rows.map((row) => row.kvLen)));
  const attentionConfig = { ...shape, maxRows: R, splitKeys: c.splitKeys, maxSplits: c.maxSplits, softcap: c.softcap, tier };
  const run = { rows: R, maxLen, qOffset, qRowStride: rowStride, outRowStride: Hq * D, metaOffset: attnMeta, window: c.window };

  const results: Array<{ out: Float32Array; k: Uint32Array; v: Uint32Array; qkv: Float32Array }> = [];
  for (const folded of [false, true]) {
    const qkv = createStorage(gpu(), 'qkv', qkvValues);
    const rowMeta = createStorage(gpu(), 'meta', meta);
    const kCache = createStorage(gpu(), 'k', pool.words('k'));
    const vCache = createStorage(gpu(), 'v', pool.words('v'));
    const blockTable = createStorage(gpu(), 'table', table);
    const invFreqBuffer = invFreq ? createStorage(gpu(), 'invFreq', invFreq) : undefined;
    // The fold's one table: the inverse frequencies, then (head norm) the q_norm and k_norm weights.
    const ropeTable = invFreq ? createStorage(gpu(), 'ropeTable', headNorm ? Float32Array.from([...invFreq, ...normWeight]) : invFreq) : undefined;
    const out = poisoned(gpu(), 'out', R * Hq * D);
    const buffers = { q: qkv, kCache, vCache, blockTable, out, rowMeta };
    if (folded) {
      const attention = new DecodeAttention(gpu(), { ...attentionConfig, newKv: { rotaryDims, mode, headNorm } }, { ...buffers, ropeTable });
      expect(attention.newKv).toEqual(headNorm ? { rotaryDims, mode, headNorm } : { rotaryDims, mode });
      await runPass(gpu(), (pass) => attention.encode(pass, { ...run, kOffset, vOffset }));
      attention.destroy();
    } else {
      const attention = new DecodeAttention(gpu(), attentionConfig, buffers);
      const writer = invFreqBuffer
        ? new RopeKvWrite(gpu(), mode, { ...shape, rotaryDims, headNorm }, {
            qkv, rowMeta, invFreq: invFreqBuffer, kCache, vCache, blockTable, headNormWeight: headNorm ? createStorage(gpu(), 'headNorm', normWeight) : undefined,
          })
        : new KvWrite(gpu(), shape, { k: qkv, v: qkv, rowMeta, kCache, vCache, blockTable });
      await runPass(gpu(), (pass) => {
        if (writer instanceof RopeKvWrite) writer.encode(pass, { rows: R, rowStride, qOffset, kOffset, vOffset, metaOffset: kvMeta });
        else writer.encode(pass, { rows: R, kOffset, kRowStride: rowStride, vOffset, vRowStride: rowStride, metaOffset: kvMeta });
        attention.encode(pass, run);
      });
      attention.destroy();
    }
    const words = poolWords(pool.shape);
    results.push({
      out: await readF32(gpu(), out, R * Hq * D),
      k: await readU32(gpu(), kCache, words),
      v: await readU32(gpu(), vCache, words),
      qkv: await readF32(gpu(), qkv, qkvValues.length),
    });
  }
  const [plain, folded] = results;
  const what = `${tier} ${mode} ${dtype}${headNorm ? ' head norm' : ''} Hq=${Hq} Hkv=${Hkv} D=${D} Rd=${rotaryDims} rows=${c.rows.map((r) => r.kvLen).join(',')}`;
  for (const x of folded.out) expect(Number.isFinite(x), `${what}: a finite output`).toBe(true);
  expectClose(folded.out, Array.from(plain.out), 1e-6, `${what}: output`);
  // The values are copied (or rounded the same way): bit for bit.
  expect(Array.from(folded.v), `${what}: v cache`).toEqual(Array.from(plain.v));
  // The keys: every element outside the step's positions bit for bit; the step's own are rotated by
  // the same expressions, so equal to an f32 rounding (f32 caches), or after the dtype's own rounding
  // but for a key within an ulp of a rounding boundary (a few elements at most).
  const stepElements = new Set<number>();
  for (const { region, kvLen } of c.rows) {
    for (let h = 0; h < Hkv; h++) {
      const at = pool.index(region, h, kvLen - 1);
      for (let d = 0; at >= 0 && d < D; d++) stepElements.add(at + d);
    }
  }
  const keys = { folded: decodePool(pool.shape, folded.k), plain: decodePool(pool.shape, plain.k) };
  let differing = 0;
  for (let i = 0; i < keys.plain.length; i++) {
    const [a, b] = [keys.folded[i], keys.plain[i]];
    if (Object.is(a, b)) continue;
    if (!stepElements.has(i)) throw new Error(`${what}: k element ${i}, no step's key, changed from ${b} to ${a}`);
    if (dtype === 'f32' && Math.abs(a - b) > 1e-6 * Math.abs(b)) throw new Error(`${what}: k element ${i} is ${a}, the unfused path wrote ${b}`);
    differing++;
  }
  if (dtype !== 'f32') expect(differing, `${what}: step key elements that differ`).toBeLessThanOrEqual(2);
  // The fold reads qkv and writes nothing there (the unfused path rotates the queries in place).
  expect(Array.from(folded.qkv)).toEqual(Array.from(qkvValues));
}

describe('decode attention with the RoPE and KV write folded in (newKv)', () => {
  const cases: Array<[string, Omit<Case, 'seed'>]> = [
    ['half pairs, grouped queries 6/2, D 10 with 6 rotary dims, rows of 1, 13 and 8 keys', {
      Hq: 6, Hkv: 2, D: 10, rotaryDims: 6, mode: 'half', dtype: 'f32', capacity: 20, regions: 3,
      rows: [{ region: 2, kvLen: 1 }, { region: 0, kvLen: 13 }, { region: 1, kvLen: 8 }],
    }],
    ['interleaved pairs, many splits of 8 keys (row of 70) beside one of 5', {
      Hq: 4, Hkv: 2, D: 16, rotaryDims: 16, mode: 'interleaved', dtype: 'f32', capacity: 80, regions: 2, splitKeys: 8, maxSplits: 16,
      rows: [{ region: 1, kvLen: 70 }, { region: 0, kvLen: 5 }],
    }],
    ['a window of 9 keys over splits of 4, soft-capped scores', {
      Hq: 2, Hkv: 1, D: 8, rotaryDims: 8, mode: 'half', dtype: 'f32', capacity: 40, regions: 2, splitKeys: 4, maxSplits: 8, window: 9, softcap: 5,
      rows: [{ region: 0, kvLen: 33 }, { region: 1, kvLen: 6 }],
    }],
    ['f16 cache, D 64 with 48 rotary dims, GQA 4/2, 2 splits', {
      Hq: 4, Hkv: 2, D: 64, rotaryDims: 48, mode: 'interleaved', dtype: 'f16', capacity: 50, regions: 3, splitKeys: 16,
      rows: [{ region: 2, kvLen: 1 }, { region: 0, kvLen: 41 }, { region: 1, kvLen: 17 }],
    }],
    ['q8_0 cache, D 64, GQA 4/2, 3 splits', {
      Hq: 4, Hkv: 2, D: 64, rotaryDims: 64, mode: 'half', dtype: 'q8_0', capacity: 50, regions: 2, splitKeys: 16,
      rows: [{ region: 1, kvLen: 40 }, { region: 0, kvLen: 3 }],
    }],
    ['learned positions (no RoPE: the KV write alone), f16 cache', {
      Hq: 3, Hkv: 3, D: 8, rotaryDims: 0, mode: 'half', dtype: 'f16', capacity: 20, regions: 2,
      rows: [{ region: 0, kvLen: 20 }, { region: 1, kvLen: 2 }],
    }],
    ['head norm (Qwen3, Gemma 3): GQA 6/2, D 10 with 6 rotary dims (the other 4 normalised only), 2 splits', {
      Hq: 6, Hkv: 2, D: 10, rotaryDims: 6, mode: 'half', dtype: 'f32', capacity: 20, regions: 3, splitKeys: 8, headNorm: { eps: 1e-6 },
      rows: [{ region: 2, kvLen: 1 }, { region: 0, kvLen: 13 }, { region: 1, kvLen: 8 }],
    }],
    ['head norm, f16 cache, D 64, GQA 4/2, interleaved pairs', {
      Hq: 4, Hkv: 2, D: 64, rotaryDims: 64, mode: 'interleaved', dtype: 'f16', capacity: 50, regions: 2, splitKeys: 16, headNorm: { eps: 1e-6 },
      rows: [{ region: 1, kvLen: 37 }, { region: 0, kvLen: 2 }],
    }],
    ['a step position without a block (nothing written, the key skipped) and a row past its table', {
      Hq: 2, Hkv: 1, D: 8, rotaryDims: 8, mode: 'interleaved', dtype: 'f32', capacity: 20, regions: 3, noBlock: { region: 1, entry: 1 },
      rows: [{ region: 1, kvLen: 18 }, { region: 0, kvLen: 33 }, { region: 2, kvLen: 4 }],
    }],
  ];
  cases.forEach(([name, c], i) => {
    it(name, async () => {
      for (const tier of tiers()) await check({ ...c, seed: 10 * (i + 1) }, tier);
    });
  });

  it('refuses a run without the key and value offsets, odd rotary dims, RoPE without its table or a table too short, and caches it reads', () => {
    const shape = { Hq: 2, Hkv: 1, D: 4, capacity: 16, kvBlocks: 1, maxRows: 1 };
    const q = createStorage(gpu(), 'qkv', 64 * 4);
    const b = {
      q, kCache: createStorage(gpu(), 'k', 64 * 4), vCache: createStorage(gpu(), 'v', 64 * 4), blockTable: createStorage(gpu(), 'table', 4),
      out: createStorage(gpu(), 'out', 8 * 4), rowMeta: createStorage(gpu(), 'meta', 8),
    };
    const ropeTable = createStorage(gpu(), 'ropeTable', ropeInverseFrequencies(4, 10000));
    expect(() => new DecodeAttention(gpu(), { ...shape, newKv: { rotaryDims: 3, mode: 'half' } }, { ...b, ropeTable })).toThrow(/rotaryDims must be even/);
    expect(() => new DecodeAttention(gpu(), { ...shape, newKv: { rotaryDims: 4, mode: 'half' } }, b)).toThrow(/ropeTable go together/);
    expect(() => new DecodeAttention(gpu(), { ...shape, newKv: { rotaryDims: 0, mode: 'half' } }, { ...b, ropeTable })).toThrow(/ropeTable go together/);
    expect(() => new DecodeAttention(gpu(), { ...shape, newKv: { rotaryDims: 4, mode: 'half' } }, { ...b, kCache: q, ropeTable })).toThrow(/kCache must be a different buffer from q/);
    // With the head norm the table also holds its 2 D weights.
    expect(() => new DecodeAttention(gpu(), { ...shape, newKv: { rotaryDims: 4, mode: 'half', headNorm: { eps: 1e-6 } } }, { ...b, ropeTable })).toThrow(/ropeTable needs 40 bytes/);
    expect(() => new DecodeAttention(gpu(), { ...shape, newKv: { rotaryDims: 4, mode: 'half', headNorm: { eps: -1 } } }, { ...b, ropeTable })).toThrow(/headNorm.eps must be a finite number >= 0/);
    const attention = new DecodeAttention(gpu(), { ...shape, newKv: { rotaryDims: 4, mode: 'half' } }, { ...b, ropeTable });
    const pass = gpu().device.createCommandEncoder().beginComputePass();
    expect(() => attention.encode(pass, { rows: 1, maxLen: 1, qRowStride: 16 })).toThrow(/needs kOffset and vOffset/);
    expect(() => attention.encode(pass, { rows: 1, maxLen: 1, qRowStride: 16, kOffset: 8, vOffset: 14 })).toThrow(/the v heads \(4 elements from 14\) do not fit a row of 16/);
    expect(() => attention.encode(pass, { rows: 1, maxLen: 1, qRowStride: 16, kOffset: 6, vOffset: 12 })).toThrow(/the q and k heads overlap/);
    expect(() => attention.encode(pass, { rows: 4, maxLen: 1, qRowStride: 16, kOffset: 8, vOffset: 12 })).toThrow(ShapeError);
    attention.encode(pass, { rows: 1, maxLen: 1, qRowStride: 16, kOffset: 8, vOffset: 12 });
    pass.end();
    attention.destroy();
  });
});

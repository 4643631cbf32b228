import { describe, expect, it } from 'vitest';
import {
  DecodeAttention,
  KvWrite,
  PrefillAttention,
  kvVariant,
  type AttentionShape,
  type KvDtype,
} from '../kernels/attention.ts';
import { runPass } from '../kernels/dispatch.ts';
import { kernelTiers, type Tier } from '../kernels/tiers.ts';
import type { Gpu } from '../src/gpu/device.ts';
import { ShapeError } from '../src/errors.ts';
import { createStorage, poisoned, readF32, useGpu } from './support/gpu.ts';
import { compare, expectClose, nanArray, randomF32 } from './support/reference.ts';
import { WorstErrors } from './support/worst-errors.ts';
import { PoolMirror, poolWords, shuffledTable } from './support/kv-pool.ts';
import { readU32 } from '../src/gpu/buffers.ts';

// The KV cache is paged: every case reads and writes it through a block table whose entries are a
// shuffled permutation of the pool's blocks (test/support/kv-pool.ts), so a sequence's positions sit
// in scattered blocks and every 16th position crosses into an unrelated one; the float64 reference
// reads through the same table. Cases run with each KV dtype where noted (f32 everywhere); for f16
// and q8_0 the written rows are checked within the dtype's rounding and the reference reads the
// stored (rounded) values, so the attention bound stays TOLERANCE.
const gpu = useGpu();

/**
 * Rel-L2 of every attention output against the float64 reference, on either tier: the subgroup tier
 * computes the same f32 values, only its sums run in another order.
 */
const TOLERANCE = 1e-5;

// Every case runs on each tier the device can run: the baseline everywhere, the subgroup tier too on
// an adapter with 'subgroups' (the core software adapter), each against the reference.
function tiers(): Tier[] {
  return gpu().features.has('subgroups') ? ['baseline', 'subgroup'] : ['baseline'];
}

/** `expected` case counts per key, for each tier the device runs (keys prefixed with the tier). */
function perTier(expected: Record<string, number>): Record<string, number> {
  return Object.fromEntries(tiers().flatMap((tier) => Object.entries(expected).map(([key, n]) => [`${tier} ${key}`, n])));
}

/** The same device seen as one without the 'subgroups' feature. */
function withoutSubgroups(device: Gpu): Gpu {
  const features = new Set([...device.features].filter((f) => f !== 'subgroups'));
  return Object.create(device, { features: { value: features } }) as Gpu;
}

// ---- float64 reference -------------------------------------------------------------------------

/**
 * The first key a query at position `pos` sees under a sliding window of `window` keys (0 = none):
 * transformers' masking_utils.sliding_window_overlay keeps key k iff k > pos - window.
 */
function windowStart(pos: number, window: number): number {
  return window > 0 ? Math.max(0, pos + 1 - window) : 0;
}

/** Gather (rows, Hq * D) at offset/stride from a flat readback, and check the gaps stayed NaN. */
function gatherRows(all: Float32Array, offset: number, stride: number, rows: number, width: number, what: string): Float32Array {
  const got = new Float32Array(rows * width);
  const inside = new Uint8Array(all.length);
  for (let r = 0; r < rows; r++) {
    for (let e = 0; e < width; e++) {
      got[r * width + e] = all[offset + r * stride + e];
      inside[offset + r * stride + e] = 1;
    }
  }
  for (let i = 0; i < all.length; i++) {
    if (!inside[i] && !Number.isNaN(all[i])) throw new Error(`${what}: element ${i} outside the output was written (${all[i]})`);
  }
  return got;
}

// ---- a fused QKV activation buffer -------------------------------------------------------------

interface Fused {
  data: Float32Array;
  offset: number;
  stride: number;
  qAt: (row: number, h: number) => number;
  kAt: (row: number, h: number) => number;
  vAt: (row: number, h: number) => number;
}

/** (rows, (Hq + 2 Hkv) D + pad) at `offset`: Q, then K, then V heads, then pad elements per row. */
function fusedQkv(shape: AttentionShape, rows: number, seed: number, offset = 2, pad = 3): Fused {
  const { Hq, Hkv, D } = shape;
  const stride = (Hq + 2 * Hkv) * D + pad;
  const data = randomF32(offset + rows * stride, seed);
  return {
    data, offset, stride,
    qAt: (row, h) => offset + row * stride + h * D,
    kAt: (row, h) => offset + row * stride + (Hq + h) * D,
    vAt: (row, h) => offset + row * stride + (Hq + Hkv + h) * D,
  };
}

/** Upload a mirror's pools and its table. */
function poolBuffers(pool: PoolMirror): { kCache: GPUBuffer; vCache: GPUBuffer; blockTable: GPUBuffer } {
  return {
    kCache: createStorage(gpu(), 'kCache', pool.words('k')),
    vCache: createStorage(gpu(), 'vCache', pool.words('v')),
    blockTable: createStorage(gpu(), 'blockTable', pool.table),
  };
}

/** Read both pools back and check them against the mirror (written rows within the dtype's rounding). */
async function checkPools(pool: PoolMirror, b: { kCache: GPUBuffer; vCache: GPUBuffer }, what: string): Promise<void> {
  const n = poolWords(pool.shape);
  pool.check(await readU32(gpu(), b.kCache, n), await readU32(gpu(), b.vCache, n), what);
}

/** Record that fused row `qrow`'s K and V heads go to (row, pos) of the pool. */
function expectWrites(pool: PoolMirror, qkv: Fused, qrow: number, row: number, pos: number): void {
  for (let h = 0; h < pool.shape.Hkv; h++) {
    pool.expectWrite(row, pos, h, qkv.data.subarray(qkv.kAt(qrow, h), qkv.kAt(qrow, h) + pool.shape.D), qkv.data.subarray(qkv.vAt(qrow, h), qkv.vAt(qrow, h) + pool.shape.D));
  }
}

// ---- prefill -----------------------------------------------------------------------------------

interface PrefillCase {
  D: number;
  Hq: number;
  Hkv: number;
  T: number;
  past: number;
  /** Sliding window (keys); omitted: the run passes none. */
  window?: number;
  /** Attention logit soft-cap (Gemma 2); omitted: none. */
  softcap?: number;
  tier: Tier;
  /** KV cache dtype (default f32). */
  dtype?: KvDtype;
}

/** Returns the rel-L2 error and the raw output (for bit comparisons). */
async function runPrefillCase({ D, Hq, Hkv, T, past, window, softcap, tier, dtype = 'f32' }: PrefillCase): Promise<{ relL2: number; out: Float32Array }> {
  const what = `prefill ${tier} ${dtype} D=${D} Hq=${Hq} Hkv=${Hkv} T=${T} past=${past} window=${window ?? 'none'} softcap=${softcap ?? 'none'}`;
  const capacity = past + T + 3;
  // Three table rows; the sequence is row 1, the others' blocks must stay untouched.
  const { table, kvBlocks } = shuffledTable(3, capacity, 13 * D + T + past);
  const shape: AttentionShape = { Hq, Hkv, D, capacity, kvBlocks, dtype };
  const row = 1;
  const pool = new PoolMirror(shape, table, 11 * D + T);
  // Positions from past on are NaN until this step writes them (a read past the causal limit shows
  // up as NaN); keys before the first query's window are seen by no query: NaN there shows any read
  // of them (a loaded V row is multiplied by a zero weight, and 0 x NaN is NaN).
  pool.poison(row, past, pool.width * 16);
  pool.poison(row, 0, windowStart(past, window ?? 0));
  const qkv = fusedQkv(shape, T, 100 + past);
  const outOffset = 5;
  const outStride = Hq * D + 2;
  const width = Hq * D;

  const meta = new Uint32Array(2 * T);
  for (let t = 0; t < T; t++) meta.set([row, past + t], 2 * t);
  const qkvBuffer = createStorage(gpu(), 'qkv', qkv.data);
  const b = poolBuffers(pool);
  const out = poisoned(gpu(), 'out', outOffset + T * outStride + 4);
  const write = new KvWrite(gpu(), shape, { k: qkvBuffer, v: qkvBuffer, rowMeta: createStorage(gpu(), 'meta', meta), ...b });
  const attention = new PrefillAttention(gpu(), shape, { q: qkvBuffer, ...b, out }, { tier, softcap });
  expect(attention.tier).toBe(tier);
  await runPass(gpu(), (pass) => {
    write.encode(pass, {
      rows: T, kOffset: qkv.kAt(0, 0), kRowStride: qkv.stride, vOffset: qkv.vAt(0, 0), vRowStride: qkv.stride,
    });
    attention.encode(pass, {
      tokens: T, pastLen: past, tableRow: row, qOffset: qkv.qAt(0, 0), qRowStride: qkv.stride, outOffset, outRowStride: outStride,
      ...(window === undefined ? {} : { window }),
    });
  });

  for (let t = 0; t < T; t++) expectWrites(pool, qkv, t, row, past + t);
  await checkPools(pool, b, what);

  const want = new Float64Array(T * width);
  const group = Hq / Hkv;
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < Hq; h++) {
      const first = windowStart(past + t, window ?? 0);
      const o = pool.attend(qkv.data, qkv.qAt(t, h), row, Math.floor(h / group), past + t + 1, 1 / Math.sqrt(D), first, softcap);
      want.set(o, t * width + h * D);
    }
  }
  const all = await readF32(gpu(), out, outOffset + T * outStride + 4);
  const got = gatherRows(all, outOffset, outStride, T, width, what);
  return { relL2: expectClose(got, want, TOLERANCE, what).relL2, out: got };
}

async function checkPrefill(c: PrefillCase): Promise<number> {
  return (await runPrefillCase(c)).relL2;
}

describe('attention prefill (KV write + causal flash attention)', () => {
  const worst = new WorstErrors();
  const HEADS = [[1, 1], [4, 2], [6, 2]];
  const LENGTHS = [1, 7, 37];
  const PAST = [0, 5];
  for (const D of [8, 64, 80]) {
    for (const [Hq, Hkv] of HEADS) {
      // T = 37 spans several query tiles (BQ 16 or 8) and key tiles (BK 16).
      for (const T of LENGTHS) {
        for (const past of PAST) {
          it(`D=${D} Hq/Hkv=${Hq}/${Hkv} T=${T} past=${past}`, async () => {
            for (const tier of tiers()) worst.record(`${tier} D=${D}`, await checkPrefill({ D, Hq, Hkv, T, past, tier }));
          });
        }
      }
    }
  }

  it('D=128 fits the adapter (Hq/Hkv=2/1, T=37, past=5)', async () => {
    for (const tier of tiers()) worst.record(`${tier} D=128`, await checkPrefill({ D: 128, Hq: 2, Hkv: 1, T: 37, past: 5, tier }));
  });

  it('reports its worst error: every case measured, all within the tolerance', () => {
    const perD = HEADS.length * LENGTHS.length * PAST.length;
    worst.expectMeasured(perTier({ 'D=8': perD, 'D=64': perD, 'D=80': perD, 'D=128': 1 }), TOLERANCE, 'attention prefill');
  });

  it('uses 16 KiB tiles where they fit and the adapter limit only beyond', () => {
    const tilesOf = (D: number, tier: Tier) => new PrefillAttention(gpu(), { Hq: 1, Hkv: 1, D, capacity: 4, kvBlocks: 1 }, {
      q: createStorage(gpu(), 'q', 64), kCache: createStorage(gpu(), 'k', 64 * D), vCache: createStorage(gpu(), 'v', 64 * D),
      blockTable: createStorage(gpu(), 't', 16), out: createStorage(gpu(), 'o', 64),
    }, { tier }).tiles;
    expect(tilesOf(64, 'baseline')).toMatchObject({ BQ: 16, BK: 16 });
    expect(tilesOf(80, 'baseline')).toMatchObject({ BQ: 8, BK: 16 });
    for (const tier of tiers()) {
      expect(tilesOf(80, tier).bytes).toBeLessThanOrEqual(16384);
      expect(tilesOf(128, tier).bytes).toBeLessThanOrEqual(gpu().limits.maxComputeWorkgroupStorageSize);
    }
    // The subgroup tier keeps a (BQ, D) accumulator in place of the (BQ, BK) score tiles: D=32 still
    // takes 16 queries in 16 KiB, D=64 (16.2 KiB at 16 queries) takes 8.
    if (tiers().includes('subgroup')) {
      expect(tilesOf(32, 'subgroup')).toMatchObject({ BQ: 16, BK: 16 });
      expect(tilesOf(64, 'subgroup')).toMatchObject({ BQ: 8, BK: 16 });
    }
  });

  it('picks the subgroup tier where the device has subgroups, else the baseline', () => {
    const b = () => ({
      q: createStorage(gpu(), 'q', 64), kCache: createStorage(gpu(), 'k', 512), vCache: createStorage(gpu(), 'v', 512),
      blockTable: createStorage(gpu(), 't', 16), out: createStorage(gpu(), 'o', 64), rowMeta: createStorage(gpu(), 'm', 64),
    });
    const shape = { Hq: 1, Hkv: 1, D: 8, capacity: 4, kvBlocks: 1 };
    const expected = gpu().features.has('subgroups') ? 'subgroup' : 'baseline';
    expect(kernelTiers(gpu()).attention).toBe(expected);
    expect(new PrefillAttention(gpu(), shape, b()).tier).toBe(expected);
    const decode = new DecodeAttention(gpu(), { ...shape, maxRows: 1 }, b());
    expect(decode.config.tier).toBe(expected);
    decode.destroy();
    const plain = withoutSubgroups(gpu());
    expect(new PrefillAttention(plain, shape, b()).tier).toBe('baseline');
    expect(() => new PrefillAttention(plain, shape, b(), { tier: 'subgroup' })).toThrow(
      /attention.prefill: the subgroup tier needs the device feature 'subgroups', which this adapter does not offer/,
    );
    expect(() => new DecodeAttention(plain, { ...shape, maxRows: 1, tier: 'subgroup' }, b())).toThrow(
      /attention.decode: the subgroup tier needs the device feature 'subgroups'/,
    );
    expect(() => new PrefillAttention(gpu(), shape, b(), { tier: 'f16' })).toThrow(/unknown tier f16/);
    // An f16 cache is read as array<f16> where the device has 'shader-f16' (the core adapter), else
    // unpacked from u32 pairs: the f16 cases below run each way on one adapter or the other.
    expect(kvVariant(gpu(), 'f16')).toBe(gpu().features.has('shader-f16') ? 'f16_native' : 'f16');
    expect(kvVariant(gpu(), 'q8_0')).toBe('q8_0');
  });
});

describe('attention prefill with a sliding window', () => {
  const worst = new WorstErrors();
  // D=64 runs 16-query tiles, D=80 8-query tiles (both 16-key tiles). Window 1 is the query's own
  // key only; 3 and 16 cut inside and at a key tile; 40 is larger than T but, after 5 past tokens,
  // still cuts the last queries' keys.
  const SHAPES = [[64, 4, 2], [80, 6, 2]];
  const LENGTHS = [1, 7, 37];
  const PAST = [0, 5];
  const WINDOWS = [1, 3, 16, 40];
  for (const [D, Hq, Hkv] of SHAPES) {
    for (const T of LENGTHS) {
      for (const past of PAST) {
        it(`D=${D} Hq/Hkv=${Hq}/${Hkv} T=${T} past=${past} windows ${WINDOWS.join(', ')}`, async () => {
          for (const tier of tiers()) {
            for (const window of WINDOWS) worst.record(`${tier} window=${window}`, await checkPrefill({ D, Hq, Hkv, T, past, window, tier }));
          }
        });
      }
    }
  }

  it('a window covering every key is bit-identical to no window (and to window 0)', async () => {
    for (const tier of tiers()) {
      const none = await runPrefillCase({ D: 64, Hq: 4, Hkv: 2, T: 37, past: 5, tier });
      const zero = await runPrefillCase({ D: 64, Hq: 4, Hkv: 2, T: 37, past: 5, window: 0, tier });
      const wide = await runPrefillCase({ D: 64, Hq: 4, Hkv: 2, T: 37, past: 5, window: 42, tier });
      const huge = await runPrefillCase({ D: 64, Hq: 4, Hkv: 2, T: 37, past: 5, window: 0xffffffff, tier });
      for (const [name, other] of [['window 0', zero], ['window 42', wide], ['window 2^32 - 1', huge]] as const) {
        expect(Buffer.from(other.out.buffer).equals(Buffer.from(none.out.buffer)), `${tier}: ${name} vs none`).toBe(true);
      }
      // ...while one key less changes the last query.
      const cut = await runPrefillCase({ D: 64, Hq: 4, Hkv: 2, T: 37, past: 5, window: 41, tier });
      expect(Buffer.from(cut.out.buffer).equals(Buffer.from(none.out.buffer))).toBe(false);
    }
  });

  it('reports its worst error: every case measured, all within the tolerance', () => {
    const perWindow = SHAPES.length * LENGTHS.length * PAST.length;
    worst.expectMeasured(perTier(Object.fromEntries(WINDOWS.map((w) => [`window=${w}`, perWindow]))), TOLERANCE, 'attention prefill (window)');
  });
});

// ---- decode ------------------------------------------------------------------------------------

interface DecodeCase {
  D: number;
  Hq: number;
  Hkv: number;
  lengths: number[];
  splitKeys?: number;
  maxSplits?: number;
  /** Pass a NaN-poisoned scratch buffer (checks every partial a run reads is written). */
  poisonScratch?: boolean;
  /** Sliding window (keys); omitted: the run passes none. */
  window?: number;
  /** Attention logit soft-cap (Gemma 2); omitted: none. */
  softcap?: number;
  tier: Tier;
  /** KV cache dtype (default f32). */
  dtype?: KvDtype;
}

async function checkDecode(c: DecodeCase): Promise<{ relL2: number; splits: number }> {
  const { D, Hq, Hkv, lengths, dtype = 'f32' } = c;
  const window = c.window ?? 0;
  const what = `decode ${c.tier} ${dtype} D=${D} Hq=${Hq} Hkv=${Hkv} lengths=${lengths.join(',')} window=${c.window ?? 'none'}`;
  const rows = lengths.length;
  const maxLen = Math.max(...lengths);
  // Rows use table rows 2, 0, 3, ... (row 1 belongs to a sequence that must stay untouched), so the
  // table row differs per batch row and is not in row order.
  const rowOf = (r: number) => [2, 0, 3, 4, 5][r];
  const tableRows = Math.max(...lengths.map((_, r) => rowOf(r))) + 1;
  const capacity = maxLen + 20;
  const { table, kvBlocks } = shuffledTable(tableRows, capacity, 5 * D + rows);
  const shape: AttentionShape = { Hq, Hkv, D, capacity, kvBlocks, dtype };
  const pool = new PoolMirror(shape, table, 7 * D + rows);
  // Positions from the new key on are NaN until written; keys before a row's window are never read:
  // NaN there would reach its scores.
  lengths.forEach((n, r) => {
    pool.poison(rowOf(r), n - 1, pool.width * 16);
    pool.poison(rowOf(r), 0, windowStart(n - 1, window));
  });
  const qkv = fusedQkv(shape, rows, 300 + D, 1, 5);
  const metaOffset = 4; // u32s before the first pair
  const writeMeta = new Uint32Array(metaOffset + 2 * rows);
  const readMeta = new Uint32Array(metaOffset + 4 * rows);
  lengths.forEach((n, r) => {
    writeMeta.set([rowOf(r), n - 1], metaOffset + 2 * r);
    readMeta.set([rowOf(r), n], metaOffset + 2 * rows + 2 * r);
  });
  const outOffset = 6;
  const outStride = Hq * D + 1;
  const width = Hq * D;

  const qkvBuffer = createStorage(gpu(), 'qkv', qkv.data);
  const b = poolBuffers(pool);
  const out = poisoned(gpu(), 'out', outOffset + rows * outStride + 3);
  const config = { ...shape, maxRows: rows + 1, splitKeys: c.splitKeys, maxSplits: c.maxSplits, tier: c.tier, softcap: c.softcap };
  const scratch = c.poisonScratch ? poisoned(gpu(), 'scratch', DecodeAttention.scratchBytes(config) / 4) : undefined;
  const write = new KvWrite(gpu(), shape, { k: qkvBuffer, v: qkvBuffer, rowMeta: createStorage(gpu(), 'writeMeta', writeMeta), ...b });
  const decode = new DecodeAttention(gpu(), config, { q: qkvBuffer, ...b, out, rowMeta: createStorage(gpu(), 'readMeta', readMeta), scratch });
  const scale = 0.7 / Math.sqrt(D); // a non-default scale
  await runPass(gpu(), (pass) => {
    write.encode(pass, {
      rows, kOffset: qkv.kAt(0, 0), kRowStride: qkv.stride, vOffset: qkv.vAt(0, 0), vRowStride: qkv.stride, metaOffset,
    });
    decode.encode(pass, {
      rows, maxLen, qOffset: qkv.qAt(0, 0), qRowStride: qkv.stride, outOffset, outRowStride: outStride,
      metaOffset: metaOffset + 2 * rows, scale, ...(c.window === undefined ? {} : { window }),
    });
  });

  lengths.forEach((n, r) => expectWrites(pool, qkv, r, rowOf(r), n - 1));
  await checkPools(pool, b, what);

  const want = new Float64Array(rows * width);
  const group = Hq / Hkv;
  lengths.forEach((n, r) => {
    for (let h = 0; h < Hq; h++) {
      const o = pool.attend(qkv.data, qkv.qAt(r, h), rowOf(r), Math.floor(h / group), n, scale, windowStart(n - 1, window), c.softcap);
      want.set(o, r * width + h * D);
    }
  });
  const all = await readF32(gpu(), out, outOffset + rows * outStride + 3);
  const { relL2 } = expectClose(gatherRows(all, outOffset, outStride, rows, width, what), want, TOLERANCE, what);
  decode.destroy();
  return { relL2, splits: decode.plan(maxLen, window).splits };
}

describe('attention decode (KV write + split-K flash-decoding)', () => {
  const worst = new WorstErrors();
  const record = (key: string, err: number) => worst.record(key, err);
  const HEADS = [[1, 1], [4, 2], [6, 2]];
  for (const D of [8, 64, 80]) {
    for (const [Hq, Hkv] of HEADS) {
      it(`D=${D} Hq/Hkv=${Hq}/${Hkv} lengths 1, 17, 300`, async () => {
        for (const tier of tiers()) {
          const { relL2, splits } = await checkDecode({ D, Hq, Hkv, lengths: [1, 17, 300], tier });
          expect(splits).toBe(3); // default 128 keys per split
          record(`${tier} D=${D}`, relL2);
        }
      });
    }
  }

  it('adapts the chunk to maxSplits (8 splits of 38 keys) and writes every partial it reads', async () => {
    for (const tier of tiers()) {
      const { relL2, splits } = await checkDecode({ D: 64, Hq: 4, Hkv: 2, lengths: [300, 1, 17], splitKeys: 16, maxSplits: 8, poisonScratch: true, tier });
      expect(splits).toBe(8);
      record(`${tier} adaptive`, relL2);
    }
  });

  // Keys that fit one split: pass 1 normalises and writes out itself and pass 2 is skipped. The
  // scratch is NaN-poisoned, so a skipped reduce that was still needed (or a reduce reading partials
  // the split no longer writes) shows up as NaN in out.
  it('one split: pass 1 alone writes the output (lengths 1, 17, 128; D 80 and 8, GQA)', async () => {
    for (const tier of tiers()) {
      for (const [D, Hq, Hkv] of [[80, 6, 2], [8, 4, 1]]) {
        const { relL2, splits } = await checkDecode({ D, Hq, Hkv, lengths: [1, 17, 128], poisonScratch: true, tier });
        expect(splits).toBe(1);
        record(`${tier} one split`, relL2);
      }
    }
  });

  it('one row, one key', async () => {
    for (const tier of tiers()) record(`${tier} single`, (await checkDecode({ D: 64, Hq: 4, Hkv: 2, lengths: [1], poisonScratch: true, tier })).relL2);
  });

  // Sliding windows on rows of 1, 17 and 300 keys with 16-key splits: without a window the 300-key
  // row takes 19 splits; a window of W keys needs ceil(min(300, W) / 16), the splits before the
  // window are never dispatched, and NaN in the keys before each row's window proves they are not read.
  const WINDOWS = [[1, 1], [5, 1], [16, 1], [17, 2], [40, 3], [299, 19], [300, 19], [1000, 19]];
  const WINDOW_SHAPES = [[8, 1, 1], [64, 4, 2], [80, 6, 2]];
  for (const [window, splits] of WINDOWS) {
    it(`window ${window}: lengths 1, 17, 300 in ${splits} splits`, async () => {
      for (const tier of tiers()) {
        for (const [D, Hq, Hkv] of WINDOW_SHAPES) {
          const r = await checkDecode({ D, Hq, Hkv, lengths: [1, 17, 300], splitKeys: 16, window, poisonScratch: true, tier });
          expect(r.splits).toBe(splits);
          record(`${tier} window=${window}`, r.relL2);
        }
      }
    });
  }

  it('window with the chunk adapted to maxSplits (a 100-key window in 8 splits of 13)', async () => {
    for (const tier of tiers()) {
      const { relL2, splits } = await checkDecode({ D: 64, Hq: 4, Hkv: 2, lengths: [300, 1, 17], splitKeys: 8, maxSplits: 8, window: 100, poisonScratch: true, tier });
      expect(splits).toBe(8); // chunk max(8, ceil(100 / 8)) = 13
      record(`${tier} window adaptive`, relL2);
    }
  });

  it('reports its worst error: every case measured, all within the tolerance', () => {
    worst.expectMeasured(
      perTier({
        ...Object.fromEntries([8, 64, 80].map((D) => [`D=${D}`, HEADS.length])),
        adaptive: 1,
        single: 1,
        'one split': 2,
        ...Object.fromEntries(WINDOWS.map(([w]) => [`window=${w}`, WINDOW_SHAPES.length])),
        'window adaptive': 1,
      }),
      TOLERANCE,
      'attention decode',
    );
  });

  it('plans splits from the longest row', () => {
    const make = (splitKeys?: number, maxSplits?: number) =>
      new DecodeAttention(gpu(), { Hq: 1, Hkv: 1, D: 8, capacity: 4096, kvBlocks: 1, maxRows: 1, splitKeys, maxSplits }, {
        q: createStorage(gpu(), 'q', 64), kCache: createStorage(gpu(), 'k', 512), vCache: createStorage(gpu(), 'v', 512),
        blockTable: createStorage(gpu(), 't', 16), out: createStorage(gpu(), 'o', 64), rowMeta: createStorage(gpu(), 'm', 64),
      });
    const op = make();
    expect(op.plan(1)).toEqual({ splits: 1, chunk: 128 });
    expect(op.plan(300)).toEqual({ splits: 3, chunk: 128 });
    expect(op.plan(4096)).toEqual({ splits: 32, chunk: 128 });
    expect(op.chunkMax).toBe(128);
    // A window bounds the plan: the splits cover min(maxLen, window) keys.
    expect(op.plan(4096, 4096)).toEqual({ splits: 32, chunk: 128 });
    expect(op.plan(4096, 300)).toEqual({ splits: 3, chunk: 128 });
    expect(op.plan(100, 300)).toEqual({ splits: 1, chunk: 128 });
    expect(op.plan(4096, 0)).toEqual(op.plan(4096));
    const wide = make(64, 16);
    expect(wide.plan(4096)).toEqual({ splits: 16, chunk: 256 });
    expect(wide.plan(4096, 1000)).toEqual({ splits: 16, chunk: 64 });
    expect(wide.chunkMax).toBe(256);
    op.destroy();
    wide.destroy();
  });
});

// ---- f16 and q8_0 KV caches -------------------------------------------------------------------

describe('attention over an f16 or q8_0 KV cache', () => {
  // The writers round (f16) or quantise (q8_0, D a multiple of 32) each row as it goes in; checkPools
  // bounds that rounding per element, and the reference then reads the stored values, so the
  // attention itself is held to TOLERANCE: reading the cache adds no error of its own.
  const worst = new WorstErrors();
  const CASES: Array<{ dtype: KvDtype; D: number; Hq: number; Hkv: number }> = [
    { dtype: 'f16', D: 80, Hq: 6, Hkv: 2 },
    { dtype: 'f16', D: 8, Hq: 4, Hkv: 1 },
    { dtype: 'q8_0', D: 64, Hq: 4, Hkv: 2 },
    { dtype: 'q8_0', D: 96, Hq: 3, Hkv: 1 },
  ];
  for (const { dtype, D, Hq, Hkv } of CASES) {
    it(`${dtype} D=${D} Hq/Hkv=${Hq}/${Hkv}: prefill T=37 past=5 (and window 20), decode lengths 1, 17, 300 (and window 40)`, async () => {
      for (const tier of tiers()) {
        worst.record(`${tier} ${dtype} prefill`, await checkPrefill({ D, Hq, Hkv, T: 37, past: 5, tier, dtype }));
        worst.record(`${tier} ${dtype} prefill`, await checkPrefill({ D, Hq, Hkv, T: 37, past: 5, window: 20, tier, dtype }));
        worst.record(`${tier} ${dtype} decode`, (await checkDecode({ D, Hq, Hkv, lengths: [1, 17, 300], poisonScratch: true, tier, dtype })).relL2);
        worst.record(`${tier} ${dtype} decode`, (await checkDecode({ D, Hq, Hkv, lengths: [300, 1, 17], splitKeys: 16, window: 40, poisonScratch: true, tier, dtype })).relL2);
      }
    });
  }

  it('reports its worst error: every case measured, all within the tolerance', () => {
    worst.expectMeasured(perTier({ 'f16 prefill': 4, 'f16 decode': 4, 'q8_0 prefill': 4, 'q8_0 decode': 4 }), TOLERANCE, 'attention (f16 / q8_0 KV)');
  });
});

// ---- prefill then decode == prefill of one more token -------------------------------------------

describe('attention consistency', () => {
  // No window (the run passes none), then windows cutting 9 keys and 24 keys off the decode row.
  for (const [window, splits] of [[undefined, 4], [21, 3], [6, 1]] as const) {
    it(`prefill of T tokens then decode of token T equals prefill of T + 1 tokens (window ${window ?? 'none'})`, async () => {
      for (const tier of tiers()) await checkConsistency(window, splits, tier);
    });
  }
});

/** Prefill T + 1 tokens in one step vs prefill T then decode one (splits of 8 keys), under `window`. */
async function checkConsistency(window: number | undefined, splits: number, tier: Tier): Promise<void> {
  const win = window === undefined ? {} : { window };
  const capacity = 40;
  // The sequence is table row 1 of 2, its blocks shuffled.
  const { table, kvBlocks } = shuffledTable(2, capacity, 91);
  const shape: AttentionShape = { Hq: 4, Hkv: 2, D: 64, capacity, kvBlocks };
  const row = 1;
  const T = 29;
  const width = shape.Hq * shape.D;
  const qkv = fusedQkv(shape, T + 1, 77);
  const qkvBuffer = createStorage(gpu(), 'qkv', qkv.data);
  const blockTable = createStorage(gpu(), 'blockTable', table);
  const words = poolWords({ ...shape, dtype: 'f32' });
  const metaAll = new Uint32Array(2 * (T + 1) + 2);
  for (let t = 0; t <= T; t++) metaAll.set([row, t], 2 * t);
  metaAll.set([row, T + 1], 2 * (T + 1)); // the decode row's (table_row, kv_len)
  const rowMeta = createStorage(gpu(), 'meta', metaAll);
  const outAll = poisoned(gpu(), 'outAll', (T + 1) * width);
  const outStep = poisoned(gpu(), 'outStep', T * width + width);

  // One pass: prefill T + 1 tokens at once.
  {
    const kCache = createStorage(gpu(), 'kCache', nanArray(words));
    const vCache = createStorage(gpu(), 'vCache', nanArray(words));
    const write = new KvWrite(gpu(), shape, { k: qkvBuffer, v: qkvBuffer, rowMeta, kCache, vCache, blockTable });
    const prefill = new PrefillAttention(gpu(), shape, { q: qkvBuffer, kCache, vCache, blockTable, out: outAll }, { tier });
    await runPass(gpu(), (pass) => {
      write.encode(pass, { rows: T + 1, kOffset: qkv.kAt(0, 0), kRowStride: qkv.stride, vOffset: qkv.vAt(0, 0), vRowStride: qkv.stride });
      prefill.encode(pass, { tokens: T + 1, pastLen: 0, tableRow: row, qOffset: qkv.qAt(0, 0), qRowStride: qkv.stride, ...win });
    });
  }
  // Two steps: prefill T tokens, then decode token T as a batch of one.
  {
    const kCache = createStorage(gpu(), 'kCache', nanArray(words));
    const vCache = createStorage(gpu(), 'vCache', nanArray(words));
    const write = new KvWrite(gpu(), shape, { k: qkvBuffer, v: qkvBuffer, rowMeta, kCache, vCache, blockTable });
    const prefill = new PrefillAttention(gpu(), shape, { q: qkvBuffer, kCache, vCache, blockTable, out: outStep }, { tier });
    await runPass(gpu(), (pass) => {
      write.encode(pass, { rows: T, kOffset: qkv.kAt(0, 0), kRowStride: qkv.stride, vOffset: qkv.vAt(0, 0), vRowStride: qkv.stride });
      prefill.encode(pass, { tokens: T, pastLen: 0, tableRow: row, qOffset: qkv.qAt(0, 0), qRowStride: qkv.stride, ...win });
    });
    const writeStep = new KvWrite(gpu(), shape, { k: qkvBuffer, v: qkvBuffer, rowMeta, kCache, vCache, blockTable });
    const decode = new DecodeAttention(gpu(), { ...shape, maxRows: 1, splitKeys: 8, tier }, { q: qkvBuffer, kCache, vCache, blockTable, out: outStep, rowMeta });
    expect(decode.plan(T + 1, window).splits).toBe(splits);
    await runPass(gpu(), (pass) => {
      writeStep.encode(pass, { rows: 1, kOffset: qkv.kAt(T, 0), vOffset: qkv.vAt(T, 0), metaOffset: 2 * T });
      decode.encode(pass, { rows: 1, maxLen: T + 1, qOffset: qkv.qAt(T, 0), outOffset: T * width, metaOffset: 2 * (T + 1), ...win });
    });
    decode.destroy();
  }
  const all = await readF32(gpu(), outAll, (T + 1) * width);
  const step = await readF32(gpu(), outStep, (T + 1) * width);
  const { relL2 } = expectClose(step, Array.from(all), 1e-5, `${tier}: prefill T + decode vs prefill T + 1 (window ${window ?? 'none'})`);
  console.log(`attention consistency (${tier}, window ${window ?? 'none'}) rel-L2: ${relL2.toExponential(3)}`);
}

// ---- guards the host cannot check (metadata lives on the GPU) -----------------------------------

describe('attention metadata guards', () => {
  // Two table rows of 2 entries (capacity 20); row 1's second entry names no block (an id past the pool).
  const shape: AttentionShape = { Hq: 2, Hkv: 2, D: 8, capacity: 20, kvBlocks: 5 };
  const table = Uint32Array.from([3, 0, 4, 9]);

  it('KvWrite drops rows past the capacity, past the table or without a block, writes the rest', async () => {
    const rows = 5;
    const width = shape.Hkv * shape.D;
    const k = randomF32(rows * width, 1);
    const v = randomF32(rows * width, 2);
    const pool = new PoolMirror(shape, table, 3);
    // (row 0, pos 0), (row 1, pos 15), (row 0, pos 32 = past its row: dropped), (row 1, pos 17: no
    // block: dropped), (row 2: past the table: dropped)
    const meta = new Uint32Array([0, 0, 1, 15, 0, 32, 1, 17, 2, 1]);
    const b = poolBuffers(pool);
    const write = new KvWrite(gpu(), shape, {
      k: createStorage(gpu(), 'k', k), v: createStorage(gpu(), 'v', v), rowMeta: createStorage(gpu(), 'meta', meta), ...b,
    });
    await runPass(gpu(), (pass) => write.encode(pass, { rows }));
    for (const [r, row, pos] of [[0, 0, 0], [1, 1, 15]]) {
      for (let h = 0; h < shape.Hkv; h++) {
        const at = r * width + h * shape.D;
        pool.expectWrite(row, pos, h, k.subarray(at, at + shape.D), v.subarray(at, at + shape.D));
      }
    }
    await checkPools(pool, b, 'kv_write guards');
  });

  it('decode: kv_len 0 and a row without blocks give 0; kv_len past capacity is clamped; keys without a block are skipped', async () => {
    const pool = new PoolMirror(shape, table, 5);
    const Hq = shape.Hq;
    const D = shape.D;
    const q = randomF32(4 * Hq * D, 7);
    // (row 0, 0 keys), (row 2 past the table, 5 keys), (row 0, capacity + 7 keys: clamped to its 32
    // positions), (row 1, 30 keys: positions 16.. have no block)
    const meta = new Uint32Array([0, 0, 2, 5, 0, shape.capacity + 7, 1, 30]);
    const out = poisoned(gpu(), 'out', q.length);
    const b = poolBuffers(pool);
    const decode = new DecodeAttention(gpu(), { ...shape, maxContext: shape.capacity, maxRows: 4, splitKeys: 4 }, {
      q: createStorage(gpu(), 'q', q), ...b, out, rowMeta: createStorage(gpu(), 'meta', meta),
    });
    await runPass(gpu(), (pass) => decode.encode(pass, { rows: 4, maxLen: shape.capacity }));
    const want = new Float64Array(q.length);
    for (let h = 0; h < Hq; h++) {
      const kvh = Math.floor(h / (Hq / shape.Hkv));
      // The splits cover maxLen (20) keys: row 2's clamped 32 keys are attended up to 20.
      want.set(pool.attend(q, 2 * Hq * D + h * D, 0, kvh, shape.capacity, 1 / Math.sqrt(D)), 2 * Hq * D + h * D);
      want.set(pool.attend(q, 3 * Hq * D + h * D, 1, kvh, 30, 1 / Math.sqrt(D)), 3 * Hq * D + h * D);
    }
    expectClose(await readF32(gpu(), out, q.length), want, 1e-5, 'decode guards');
    decode.destroy();
  });

  it('prefill: keys without a block are skipped, a query with none visible gets 0', async () => {
    const pool = new PoolMirror(shape, table, 9);
    const { Hq, D } = shape;
    const T = 4;
    // Row 1, positions 14..17: 14 and 15 see keys 0..15 (block 4); 16 and 17 also keys 16.. (no block).
    const q = randomF32(T * Hq * D, 11);
    const out = poisoned(gpu(), 'out', q.length);
    const b = poolBuffers(pool);
    const prefill = new PrefillAttention(gpu(), shape, { q: createStorage(gpu(), 'q', q), ...b, out });
    await runPass(gpu(), (pass) => prefill.encode(pass, { tokens: T, pastLen: 14, tableRow: 1, window: 2 }));
    const want = new Float64Array(q.length);
    for (let t = 0; t < T; t++) {
      for (let h = 0; h < Hq; h++) {
        const pos = 14 + t;
        want.set(pool.attend(q, (t * Hq + h) * D, 1, Math.floor(h / (Hq / shape.Hkv)), pos + 1, 1 / Math.sqrt(D), windowStart(pos, 2)), (t * Hq + h) * D);
      }
    }
    // Position 17 with window 2 sees keys 16 and 17, neither in a block: its output is 0.
    expect(Array.from(want.subarray(3 * Hq * D)).every((x) => x === 0)).toBe(true);
    expectClose(await readF32(gpu(), out, q.length), want, 1e-5, 'prefill guards');
  });
});

// ---- refusals ----------------------------------------------------------------------------------

describe('attention shape checks', () => {
  const small = () => ({
    q: createStorage(gpu(), 'q', 4096), kCache: createStorage(gpu(), 'k', 4096), vCache: createStorage(gpu(), 'v', 4096),
    blockTable: createStorage(gpu(), 't', 16), out: createStorage(gpu(), 'o', 4096), rowMeta: createStorage(gpu(), 'm', 64),
  });

  it('refuses a head dim whose tiles exceed maxComputeWorkgroupStorageSize', () => {
    expect(gpu().limits.maxComputeWorkgroupStorageSize).toBeLessThan(4 * (8 * 513 + 32 * 513 + 128));
    expect(() => new PrefillAttention(gpu(), { Hq: 1, Hkv: 1, D: 512, capacity: 4, kvBlocks: 1 }, small())).toThrow(
      expect.objectContaining({ name: 'ShapeError', message: expect.stringMatching(/D=512.*maxComputeWorkgroupStorageSize/) }),
    );
  });

  it('refuses Hq not a multiple of Hkv', () => {
    expect(() => new PrefillAttention(gpu(), { Hq: 6, Hkv: 4, D: 8, capacity: 4, kvBlocks: 1 }, small())).toThrow(/multiple of Hkv/);
    expect(() => new DecodeAttention(gpu(), { Hq: 3, Hkv: 2, D: 8, capacity: 4, kvBlocks: 1, maxRows: 1 }, small())).toThrow(ShapeError);
  });

  it('refuses a pool its buffers cannot hold, and a dtype the head dim cannot take', () => {
    // 4096 bytes hold 8 blocks of (1, 16, 8) f32 elements, 16 of f16.
    expect(() => new PrefillAttention(gpu(), { Hq: 1, Hkv: 1, D: 8, capacity: 4, kvBlocks: 9 }, small())).toThrow(/kCache needs/);
    expect(() => new PrefillAttention(gpu(), { Hq: 1, Hkv: 1, D: 8, capacity: 4, kvBlocks: 16, dtype: 'f16' }, small())).not.toThrow();
    expect(() => new DecodeAttention(gpu(), { Hq: 1, Hkv: 1, D: 8, capacity: 4, kvBlocks: 1, maxRows: 1, dtype: 'q8_0' }, small())).toThrow(
      /dtype q8_0 needs a head dim that is a multiple of 32, but this model's is 8/,
    );
    expect(() => new KvWrite(gpu(), { Hkv: 1, D: 7, capacity: 4, kvBlocks: 1, dtype: 'f16' }, { ...small(), k: small().q, v: small().q })).toThrow(
      /dtype f16 needs a head dim that is a multiple of 2/,
    );
    expect(() => new PrefillAttention(gpu(), { Hq: 1, Hkv: 1, D: 8, capacity: 4, kvBlocks: 1, dtype: 'bf16' as KvDtype }, small())).toThrow(
      /dtype must be one of f32, f16, q8_0 \(got bf16\)/,
    );
  });

  it('refuses runs that do not fit', () => {
    const b = small();
    const shape = { Hq: 2, Hkv: 1, D: 8, capacity: 10, kvBlocks: 2 };
    const prefill = new PrefillAttention(gpu(), shape, b);
    const decode = new DecodeAttention(gpu(), { ...shape, maxRows: 2 }, b);
    const write = new KvWrite(gpu(), shape, { k: b.q, v: b.q, rowMeta: b.rowMeta, kCache: b.kCache, vCache: b.vCache, blockTable: b.blockTable });
    const encoder = gpu().device.createCommandEncoder();
    const pass = encoder.beginComputePass();
    expect(() => prefill.encode(pass, { tokens: 6, pastLen: 5, tableRow: 0 })).toThrow(/exceeds the sequence capacity 10/);
    expect(() => prefill.encode(pass, { tokens: 2, pastLen: 0, tableRow: 4 })).toThrow(/blockTable needs/);
    expect(() => prefill.encode(pass, { tokens: 2, pastLen: 0, tableRow: 0, qRowStride: 15 })).toThrow(/qRowStride \(15\) must be >= 16/);
    expect(() => decode.encode(pass, { rows: 3, maxLen: 4 })).toThrow(/rows \(3\) exceeds maxRows \(2\)/);
    expect(() => decode.encode(pass, { rows: 1, maxLen: 11 })).toThrow(/maxLen \(11\) exceeds maxContext \(10\)/);
    expect(() => decode.encode(pass, { rows: 1, maxLen: 0 })).toThrow(/maxLen must be an integer >= 1/);
    expect(() => write.encode(pass, { rows: 9, metaOffset: 0 })).toThrow(/rowMeta needs/);
    for (const window of [-1, 1.5, NaN, 2 ** 32]) {
      expect(() => prefill.encode(pass, { tokens: 2, pastLen: 0, tableRow: 0, window })).toThrow(/window must be an integer in \[0, 4294967295\]/);
      expect(() => decode.encode(pass, { rows: 1, maxLen: 4, window })).toThrow(/window must be an integer in \[0, 4294967295\]/);
    }
    pass.end();
    encoder.finish();
    decode.destroy();
  });

  it('refuses an output that aliases an input', () => {
    const b = small();
    const shape = { Hkv: 1, D: 8, capacity: 4, kvBlocks: 1 };
    expect(() => new PrefillAttention(gpu(), { ...shape, Hq: 1 }, { ...b, out: b.q })).toThrow(/out must be a different buffer from q/);
    expect(() => new KvWrite(gpu(), shape, { k: b.kCache, v: b.q, rowMeta: b.rowMeta, kCache: b.kCache, vCache: b.vCache, blockTable: b.blockTable })).toThrow(
      /kCache must be a different buffer from k/,
    );
    expect(() => new PrefillAttention(gpu(), { ...shape, Hq: 1 }, { ...b, out: b.blockTable })).toThrow(/out must be a different buffer from blockTable/);
  });
});

// Gemma 2's attention logit soft-capping: scores s become c tanh(s / c) before the softmax. A cap of
// 0.3 is far below these scores' spread, so a kernel that skipped it would miss the reference by far.
describe('attention with a logit soft-cap', () => {
  it('prefill (D=80, GQA 4/2, T=37 after 5, with and without a window), every tier', async () => {
    for (const tier of tiers()) {
      await checkPrefill({ D: 80, Hq: 4, Hkv: 2, T: 37, past: 5, softcap: 0.3, tier });
      await checkPrefill({ D: 80, Hq: 4, Hkv: 2, T: 37, past: 5, softcap: 0.3, window: 9, tier });
    }
  });

  it('decode (lengths 1, 17, 300 in 16-key splits; one split), every tier', async () => {
    for (const tier of tiers()) {
      await checkDecode({ D: 64, Hq: 4, Hkv: 2, lengths: [1, 17, 300], splitKeys: 16, softcap: 0.3, poisonScratch: true, tier });
      await checkDecode({ D: 24, Hq: 2, Hkv: 1, lengths: [5, 40], softcap: 0.3, tier });
    }
  });

  it('the cap changes the output, and a bad cap is refused', async () => {
    const capped = await runPrefillCase({ D: 16, Hq: 2, Hkv: 1, T: 9, past: 0, softcap: 0.3, tier: 'baseline' });
    const plain = await runPrefillCase({ D: 16, Hq: 2, Hkv: 1, T: 9, past: 0, tier: 'baseline' });
    expect(compare(capped.out, plain.out).relL2).toBeGreaterThan(1e-2);
    const shape: AttentionShape = { Hq: 2, Hkv: 1, D: 16, capacity: 8, kvBlocks: 1 };
    const b = createStorage(gpu(), 'b', 1024 * 4);
    const out = createStorage(gpu(), 'o', 1024 * 4);
    const blockTable = createStorage(gpu(), 'table', 16);
    expect(() => new PrefillAttention(gpu(), shape, { q: b, kCache: b, vCache: b, blockTable, out }, { softcap: 0 })).toThrow(/softcap must be a finite number > 0/);
    expect(() => new DecodeAttention(gpu(), { ...shape, maxRows: 1, softcap: -1 }, { q: b, kCache: b, vCache: b, blockTable, out, rowMeta: b })).toThrow(/softcap/);
  });
});

// A host mirror of one layer's paged KV pool (kernels/attention.ts): the block table, the K and V
// pools as the GPU stores them (f32, f16 pairs, q8_0 blocks), and the float64 attention reference
// that reads keys and values through the table, the way the kernels must.
//
// The tests upload `words('k')` / `words('v')`, run a kernel, read the pools back and decode them
// (decodePool). Written rows are checked against the f32 values that went in, within the dtype's
// rounding (f32: exact; f16: one of the two neighbouring halves; q8_0: 0.6 quant steps, the step
// being the block's own stored scale), every other element bit for bit; the attention reference
// then reads the decoded pools, so its bound stays the f32 one whatever the dtype.
import { KV_BLOCK_TOKENS, kvTableWidth, type KvDtype } from '../../kernels/attention.ts';
import { f16BitsToF32, f32ToF16Bits } from '../../kernels/weights.ts';
import { randomF32, rng } from './reference.ts';

export interface PoolShape {
  Hkv: number;
  D: number;
  /** Most positions of one sequence (its table row has ceil(capacity / 16) entries). */
  capacity: number;
  kvBlocks: number;
  dtype: KvDtype;
}

/** f32 -> nearest f16 -> f32. */
export function roundF16(x: number): number {
  return f16BitsToF32(f32ToF16Bits(x));
}

/** ggml's Q8_0 of 32 values (quantize_row_q8_0_ref, in f32): the int8 quants and the f16-rounded scale. */
export function quantiseQ8(x: ArrayLike<number>): { q: Int8Array; d: number } {
  let amax = 0;
  let nan = false;
  for (let i = 0; i < 32; i++) {
    if (Number.isNaN(x[i])) nan = true;
    amax = Math.max(amax, Math.abs(x[i]));
  }
  const q = new Int8Array(32);
  // A NaN anywhere poisons the whole block (its scale), as the tests' NaN fills intend.
  if (nan) return { q, d: NaN };
  const d = Math.fround(amax / 127);
  const id = d !== 0 ? Math.fround(1 / d) : 0;
  for (let i = 0; i < 32; i++) {
    const v = Math.fround(x[i] * id);
    q[i] = Math.max(-127, Math.min(127, Math.sign(v) * Math.floor(Math.abs(v) + 0.5)));
  }
  return { q, d: roundF16(d) };
}

/** Elements of one block of one layer. */
export function blockElements(shape: Pick<PoolShape, 'Hkv' | 'D'>): number {
  return shape.Hkv * KV_BLOCK_TOKENS * shape.D;
}

/** u32 words of a pool of kvBlocks blocks as `dtype` stores it. */
export function poolWords(shape: PoolShape): number {
  const be = blockElements(shape);
  const perBlock = shape.dtype === 'f32' ? be : shape.dtype === 'f16' ? be / 2 : be / 4 + be / 32;
  return shape.kvBlocks * perBlock;
}

/** Encode a pool's logical (kvBlocks, Hkv, 16, D) f32 elements as the GPU stores them. */
export function encodePool(shape: PoolShape, values: Float32Array): Uint32Array {
  const words = new Uint32Array(poolWords(shape));
  if (shape.dtype === 'f32') {
    words.set(new Uint32Array(values.buffer, values.byteOffset, values.length));
    return words;
  }
  if (shape.dtype === 'f16') {
    for (let i = 0; i < values.length; i += 2) words[i / 2] = f32ToF16Bits(values[i]) | (f32ToF16Bits(values[i + 1]) << 16);
    return words;
  }
  const be = blockElements(shape);
  const perBlock = be / 4 + be / 32;
  const f32 = new Float32Array(1);
  const u32 = new Uint32Array(f32.buffer);
  for (let b = 0; b < shape.kvBlocks; b++) {
    for (let g = 0; g < be / 32; g++) {
      const { q, d } = quantiseQ8(values.subarray(b * be + 32 * g, b * be + 32 * g + 32));
      for (let w = 0; w < 8; w++) {
        words[b * perBlock + 8 * g + w] = (q[4 * w] & 0xff) | ((q[4 * w + 1] & 0xff) << 8) | ((q[4 * w + 2] & 0xff) << 16) | ((q[4 * w + 3] & 0xff) << 24);
      }
      f32[0] = d;
      words[b * perBlock + be / 4 + g] = u32[0];
    }
  }
  return words;
}

/** Decode pool words (a readback) into logical f32 elements. */
export function decodePool(shape: PoolShape, words: Uint32Array): Float32Array {
  const be = blockElements(shape);
  const out = new Float32Array(shape.kvBlocks * be);
  if (shape.dtype === 'f32') {
    out.set(new Float32Array(words.buffer, words.byteOffset, out.length));
    return out;
  }
  if (shape.dtype === 'f16') {
    for (let i = 0; i < out.length; i++) out[i] = f16BitsToF32((words[i >> 1] >>> ((i & 1) * 16)) & 0xffff);
    return out;
  }
  const perBlock = be / 4 + be / 32;
  const scales = new Float32Array(words.buffer, words.byteOffset, words.length);
  for (let b = 0; b < shape.kvBlocks; b++) {
    for (let e = 0; e < be; e++) {
      const byte = (words[b * perBlock + (e >> 2)] >>> ((e & 3) * 8)) & 0xff;
      out[b * be + e] = Math.fround(((byte << 24) >> 24) * scales[b * perBlock + be / 4 + (e >> 5)]);
    }
  }
  return out;
}

/**
 * A block table of `rows` rows whose entries are a shuffled permutation of the pool's blocks (so
 * consecutive positions of a sequence sit in scattered, out-of-order blocks), the pool holding
 * rows x width blocks plus `spare`.
 */
export function shuffledTable(rows: number, capacity: number, seed: number, spare = 3): { table: Uint32Array; width: number; kvBlocks: number } {
  const width = kvTableWidth(capacity);
  const kvBlocks = rows * width + spare;
  const ids = Array.from({ length: kvBlocks }, (_, i) => i);
  const next = rng(seed);
  for (let i = ids.length - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1));
    [ids[i], ids[j]] = [ids[j], ids[i]];
  }
  return { table: Uint32Array.from(ids.slice(0, rows * width)), width, kvBlocks };
}

export class PoolMirror {
  readonly shape: PoolShape;
  readonly table: Uint32Array;
  readonly width: number;
  /** Logical elements as stored (decoded), K and V. */
  readonly k: Float32Array;
  readonly v: Float32Array;
  /** (element index of (h, pos, 0), values written there) per written head row, K and V. */
  readonly #writes: Array<{ at: number; k: Float32Array; v: Float32Array }> = [];

  /** Random contents (the other sequences' data that must survive), as the dtype stores them. */
  constructor(shape: Omit<PoolShape, 'dtype'> & { dtype?: KvDtype }, table: Uint32Array, seed: number) {
    this.shape = { ...shape, dtype: shape.dtype ?? 'f32' };
    this.table = table;
    this.width = kvTableWidth(shape.capacity);
    const n = shape.kvBlocks * blockElements(shape);
    this.k = decodePool(this.shape, encodePool(this.shape, randomF32(n, seed)));
    this.v = decodePool(this.shape, encodePool(this.shape, randomF32(n, seed + 1)));
  }

  /** Element index of (head h, position pos, dim 0) for the sequence in table row `row`, or -1. */
  index(row: number, h: number, pos: number): number {
    const entry = row * this.width + Math.floor(pos / KV_BLOCK_TOKENS);
    if (pos >= this.width * KV_BLOCK_TOKENS || entry >= this.table.length) return -1;
    const block = this.table[entry];
    if (block >= this.shape.kvBlocks) return -1;
    return block * blockElements(this.shape) + (h * KV_BLOCK_TOKENS + (pos % KV_BLOCK_TOKENS)) * this.shape.D;
  }

  /** NaN over positions [from, to) of every head of the sequence in `row` (keys no query may read). */
  poison(row: number, from: number, to: number): void {
    const { Hkv, D } = this.shape;
    for (let pos = from; pos < to; pos++) {
      for (let h = 0; h < Hkv; h++) {
        const at = this.index(row, h, pos);
        if (at < 0) continue;
        this.k.fill(NaN, at, at + D);
        this.v.fill(NaN, at, at + D);
      }
    }
  }

  /** The pool as the GPU stores it, for upload. */
  words(which: 'k' | 'v'): Uint32Array {
    return encodePool(this.shape, which === 'k' ? this.k : this.v);
  }

  /** Record that (row, pos, h) should now hold these f32 key and value rows (D each). */
  expectWrite(row: number, pos: number, h: number, k: ArrayLike<number>, v: ArrayLike<number>): void {
    const at = this.index(row, h, pos);
    if (at < 0) throw new Error(`test bug: row ${row} position ${pos} has no block`);
    this.#writes.push({ at, k: Float32Array.from(k), v: Float32Array.from(v) });
  }

  /**
   * Check decoded readbacks of both pools: every recorded write holds its values within the dtype's
   * rounding, everything else is unchanged bit for bit. Then adopt the readback as the mirror.
   */
  check(kWords: Uint32Array, vWords: Uint32Array, what: string): void {
    const got = { k: decodePool(this.shape, kWords), v: decodePool(this.shape, vWords) };
    const written = new Uint8Array(this.k.length);
    for (const w of this.#writes) {
      for (const which of ['k', 'v'] as const) {
        const want = w[which];
        for (let d = 0; d < want.length; d++) {
          const g = got[which][w.at + d];
          written[w.at + d] = 1;
          if (!this.#close(g, want[d], got[which], w.at + d)) {
            throw new Error(`${what}: ${which} element ${w.at + d} is ${g}, want ${want[d]} as ${this.shape.dtype}`);
          }
        }
      }
    }
    for (const which of ['k', 'v'] as const) {
      const before = this[which];
      for (let i = 0; i < before.length; i++) {
        if (written[i]) continue;
        if (!Object.is(got[which][i], before[i]) && !(Number.isNaN(got[which][i]) && Number.isNaN(before[i]))) {
          throw new Error(`${what}: ${which} element ${i} (not written) is ${got[which][i]}, was ${before[i]}`);
        }
      }
      before.set(got[which]);
    }
    this.#writes.length = 0;
  }

  #close(got: number, want: number, pool: Float32Array, at: number): boolean {
    const { dtype } = this.shape;
    if (dtype === 'f32') return Object.is(got, want);
    if (dtype === 'f16') {
      // WGSL lets pack2x16float round either way: accept either neighbouring half.
      const near = roundF16(want);
      const ulp = Math.abs(roundF16(near * (1 + 2 ** -10)) - near) || 2 ** -24;
      return Math.abs(got - want) <= ulp;
    }
    // q8_0: within 0.6 of the block's step (0.5 from rounding, the rest from the scale's f16 rounding).
    const block = Math.floor(at / 32) * 32;
    let amax = 0;
    for (let i = block; i < block + 32; i++) amax = Math.max(amax, Math.abs(pool[i]));
    const step = amax / 127;
    return Math.abs(got - want) <= 0.6 * step + 1e-12;
  }

  /**
   * Float64 softmax attention of one query head (qv[qAt .. qAt + D)) over keys first .. nKeys - 1 of
   * kv head `kvh` of the sequence in table row `row`, read through the table; keys whose block the
   * table does not name are skipped.
   */
  attend(qv: ArrayLike<number>, qAt: number, row: number, kvh: number, nKeys: number, scale: number, first = 0, softcap = 0): Float64Array {
    const { D } = this.shape;
    const out = new Float64Array(D);
    const keys: number[] = [];
    for (let key = first; key < nKeys; key++) if (this.index(row, kvh, key) >= 0) keys.push(key);
    if (keys.length === 0) return out;
    const scores = keys.map((key) => {
      const at = this.index(row, kvh, key);
      let dot = 0;
      for (let d = 0; d < D; d++) dot += qv[qAt + d] * this.k[at + d];
      // Gemma 2's logit soft-cap, when given: c tanh(s / c).
      return softcap > 0 ? softcap * Math.tanh((dot * scale) / softcap) : dot * scale;
    });
    const max = Math.max(...scores);
    const e = scores.map((s) => Math.exp(s - max));
    const sum = e.reduce((a, b) => a + b, 0);
    keys.forEach((key, i) => {
      const at = this.index(row, kvh, key);
      for (let d = 0; d < D; d++) out[d] += (e[i] / sum) * this.v[at + d];
    });
    return out;
  }
}

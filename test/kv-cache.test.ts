// The engine's KV accounting (src/engine/kv-cache.ts), without a GPU: admission by promised blocks,
// tables set before the steps that write them, prefix sharing in the same turn (the sharer waits for
// the writer, or takes over when the writer ends first), copy-on-write of a cached tail, release,
// and a randomised run in which no admitted sequence ever finds the pool empty.
import { describe, expect, it } from 'vitest';
import { KvBlockPool } from '../src/engine/kv-blocks.ts';
import { KvCache, type KvSequence, type KvTarget } from '../src/engine/kv-cache.ts';
import { rng } from './support/reference.ts';

const B = 4;

/** Records what the model would be told; checks tables never point at a block the slot does not hold. */
class FakeTarget implements KvTarget {
  readonly tables = new Map<number, number[]>();
  readonly copies: Array<[number, number]> = [];
  setBlockTable(slot: number, blocks: readonly number[]): void {
    this.tables.set(slot, [...blocks]);
  }
  copyBlock(src: number, dst: number): void {
    this.copies.push([src, dst]);
  }
}

function setup(blocks: number, options: { slots?: number; capacity?: number; prefixCacheMin?: number; copyMin?: number } = {}) {
  const pool = new KvBlockPool(blocks, B);
  const target = new FakeTarget();
  const kv = new KvCache(pool, target, { slots: options.slots ?? 4, capacity: options.capacity ?? 16, prefixCacheMin: options.prefixCacheMin ?? 1, copyMin: options.copyMin });
  return { pool, target, kv };
}

const ids = (from: number, n: number) => Array.from({ length: n }, (_, i) => from + i);

/** Write the whole prompt (one prefill) as the engine would. */
function prefill(kv: KvCache, seq: KvSequence): void {
  expect(kv.ready(seq)).toBe(true);
  kv.prepare(seq, seq.ids.length);
  kv.wrote(seq, seq.ids.length);
}

describe('KvCache: admission', () => {
  it('admits while the pool can promise every block a sequence may need, then makes the next wait', () => {
    const { kv, target } = setup(8);
    const a = kv.admit(ids(0, 5), 16)!;
    expect(a.reused).toBe(0);
    expect(a.seq.blocks.length).toBe(2); // the prompt's blocks, taken at admission
    expect(target.tables.get(a.seq.slot)).toEqual(a.seq.blocks);
    expect(kv.stats()).toMatchObject({ used: 2, promised: 2, slotsUsed: 1 });
    const b = kv.admit(ids(100, 3), 16)!;
    expect(b).toBeDefined();
    expect(kv.stats()).toMatchObject({ used: 3, promised: 5 });
    // 8 blocks: a holds 2 + 2 promised, b 1 + 3: nothing is left for a third.
    expect(kv.admit(ids(200, 2), 8)).toBeUndefined();
    kv.release(a.seq);
    expect(kv.admit(ids(200, 2), 8)).toBeDefined();
  });

  it('caps the promise at the capacity and refuses a pool smaller than one full sequence', () => {
    const { kv } = setup(8, { capacity: 16 });
    const a = kv.admit(ids(0, 2), 1000)!;
    expect(a.seq.promised + a.seq.blocks.length).toBe(4);
    expect(() => new KvCache(new KvBlockPool(3, B), new FakeTarget(), { slots: 1, capacity: 16, prefixCacheMin: 0 })).toThrow(/pool of 3 blocks cannot hold one sequence of 16 tokens/);
  });

  it('waits for a slot (table row) as well as for blocks', () => {
    const { kv } = setup(64, { slots: 2 });
    const a = kv.admit(ids(0, 2), 4)!;
    kv.admit(ids(10, 2), 4);
    expect(kv.admit(ids(20, 2), 4)).toBeUndefined();
    kv.release(a.seq);
    expect(kv.admit(ids(20, 2), 4)!.seq.slot).toBe(a.seq.slot);
  });

  it('grows the table before the step that writes past it, and refuses to go past the promise', () => {
    const { kv, target } = setup(8);
    const { seq } = kv.admit(ids(0, 3), 9)!; // 9 positions: 3 blocks
    prefill(kv, seq);
    expect(target.tables.get(seq.slot)!.length).toBe(1);
    for (let p = 3; p < 9; p++) {
      seq.ids.push(50 + p);
      kv.prepare(seq, p + 1);
      expect(target.tables.get(seq.slot)!.length).toBe(Math.ceil((p + 1) / B));
      kv.wrote(seq, p + 1);
    }
    expect(seq.promised).toBe(0);
    seq.ids.push(99);
    expect(() => kv.prepare(seq, 13)).toThrow(/13 positions need 4 blocks; it holds 3 and was promised 0 more/);
  });
});

describe('KvCache: prefix sharing', () => {
  it('reuses the full blocks of a finished sequence; the last prompt token is always computed', () => {
    const { kv, pool } = setup(16);
    const a = kv.admit(ids(0, 10), 12)!;
    prefill(kv, a.seq);
    const written = [...a.seq.blocks];
    kv.release(a.seq);
    const b = kv.admit([...ids(0, 8), 77, 78], 12)!;
    expect(b.reused).toBe(8);
    expect(b.seq.blocks.slice(0, 2)).toEqual(written.slice(0, 2));
    expect(pool.stats().shared).toBe(0); // a is gone; b holds the cached blocks alone
    // A prompt equal to the cached 8: 7 reused (block 0 shared, 3 of block 1 copied).
    const c = kv.admit(ids(0, 8), 12)!;
    expect(c.reused).toBe(7);
    expect(pool.stats().shared).toBe(1);
  });

  it('two requests in the same turn share the prompt blocks; the second waits until they are written', () => {
    const { kv, pool } = setup(16);
    const a = kv.admit(ids(0, 10), 12)!;
    const b = kv.admit([...ids(0, 8), 55, 56, 57], 14)!;
    expect(b.reused).toBe(8);
    expect(b.seq.blocks.slice(0, 2)).toEqual(a.seq.blocks.slice(0, 2));
    expect(pool.stats().shared).toBe(2);
    expect(kv.ready(a.seq)).toBe(true);
    expect(kv.ready(b.seq)).toBe(false); // a has not written them yet
    kv.prepare(a.seq, 6);
    kv.wrote(a.seq, 6); // a chunk of a's prompt: block 0 full, block 1 half
    expect(kv.ready(b.seq)).toBe(false);
    kv.prepare(a.seq, 10);
    kv.wrote(a.seq, 10);
    expect(kv.ready(b.seq)).toBe(true);
    expect(b.seq.written).toBe(8);
    kv.release(a.seq);
    kv.release(b.seq);
    expect(pool.stats()).toMatchObject({ used: 0, shared: 0 });
  });

  it('a writer that ends before writing hands the shared blocks to the first sharer, from the first unwritten position', () => {
    const { kv } = setup(16);
    const a = kv.admit(ids(0, 10), 12)!;
    const b = kv.admit([...ids(0, 8), 55], 12)!;
    const c = kv.admit([...ids(0, 8), 66], 12)!;
    kv.prepare(a.seq, 6);
    kv.wrote(a.seq, 6);
    kv.release(a.seq); // cancelled mid-prompt
    expect(kv.ready(b.seq)).toBe(true);
    expect(b.seq.written).toBe(6); // block 1 is written up to position 6 only
    expect(kv.ready(c.seq)).toBe(false); // b writes block 1 now
    kv.prepare(b.seq, 9);
    kv.wrote(b.seq, 9);
    expect(kv.ready(c.seq)).toBe(true);
    expect(c.seq.written).toBe(8);
  });

  it('copies a cached tail that the prompt continues (copy-on-write) instead of recomputing it', () => {
    const { kv, target, pool } = setup(16);
    const a = kv.admit(ids(0, 6), 8)!;
    prefill(kv, a.seq);
    a.seq.ids.push(6);
    kv.prepare(a.seq, 7);
    kv.wrote(a.seq, 7); // one generated token fed back: the tail holds positions 4..6
    const tail = a.seq.blocks[1];
    kv.release(a.seq);
    expect(pool.isCached(tail)).toBe(true);
    const b = kv.admit([...ids(0, 7), 40, 41], 12)!;
    expect(b.reused).toBe(7);
    expect(target.copies).toEqual([[tail, b.seq.blocks[1]]]);
    expect(b.seq.blocks[1]).not.toBe(tail);
    expect(pool.filled(b.seq.blocks[1])).toBe(3);
    expect(kv.ready(b.seq)).toBe(true);
    // copyMin: fewer matching tokens than that are recomputed.
    const strict = setup(16, { copyMin: 4 });
    const x = strict.kv.admit(ids(0, 6), 8)!;
    prefill(strict.kv, x.seq);
    strict.kv.release(x.seq);
    expect(strict.kv.admit([...ids(0, 6), 9], 8)!.reused).toBe(4);
    expect(strict.target.copies).toEqual([]);
  });

  it('below prefixCacheMin nothing is reused; with 0 reuse is off', () => {
    for (const [min, want] of [[9, 0], [8, 8], [0, 0]] as const) {
      const { kv } = setup(16, { prefixCacheMin: min });
      const a = kv.admit(ids(0, 10), 12)!;
      prefill(kv, a.seq);
      kv.release(a.seq);
      expect(kv.admit([...ids(0, 8), 1], 10)!.reused, `prefixCacheMin ${min}`).toBe(want);
    }
  });

  it('a failed step: release without keeping, then forget the cache', () => {
    const { kv, pool } = setup(16);
    const a = kv.admit(ids(0, 6), 8)!;
    prefill(kv, a.seq);
    kv.release(a.seq, false);
    kv.forgetCached();
    expect(pool.stats()).toMatchObject({ used: 0, cached: 0, free: 16 });
    expect(kv.admit(ids(0, 6), 8)!.reused).toBe(0);
  });
});

describe('KvCache: randomised', () => {
  it('admitted sequences always find their blocks; pool and promises balance; tables hold what sequences hold', () => {
    const draw = rng(5);
    const pick = (n: number) => Math.floor(draw() * n);
    for (let round = 0; round < 10; round++) {
      const capacity = 8 + pick(16);
      const blocks = Math.ceil(capacity / B) + pick(12);
      const { kv, pool, target } = setup(blocks, { slots: 1 + pick(5), capacity, prefixCacheMin: pick(6) });
      const live: Array<{ seq: KvSequence; total: number }> = [];
      for (let step = 0; step < 400; step++) {
        const op = pick(4);
        if (op === 0) {
          const length = 1 + pick(capacity - 1);
          const prompt = Array.from({ length }, (_, i) => (i < 6 ? pick(2) : pick(5)));
          const total = Math.min(capacity - 1, length + pick(capacity));
          const admitted = kv.admit(prompt, total);
          if (admitted) live.push({ seq: admitted.seq, total });
        } else if (op < 3 && live.length > 0) {
          // One step of a random live sequence: a prefill chunk or a decoded token.
          const { seq, total } = live[pick(live.length)];
          if (!kv.ready(seq)) continue;
          let end = seq.written + 1 + pick(5);
          end = Math.min(end, total);
          if (end <= seq.written) continue;
          while (seq.ids.length < end) seq.ids.push(pick(5));
          kv.prepare(seq, end);
          expect(target.tables.get(seq.slot)!.slice(0, seq.blocks.length)).toEqual(seq.blocks);
          kv.wrote(seq, end);
        } else if (live.length > 0) {
          const [{ seq }] = live.splice(pick(live.length), 1);
          kv.release(seq, pick(5) > 0);
        }
        pool.checkInvariants();
        const s = kv.stats();
        expect(s.promised).toBe(live.reduce((sum, l) => sum + l.seq.promised, 0));
        expect(s.promised).toBeLessThanOrEqual(s.free + s.cached);
      }
      for (const { seq } of live) kv.release(seq);
      expect(kv.stats()).toMatchObject({ used: 0, promised: 0, slotsUsed: 0 });
    }
  });
});

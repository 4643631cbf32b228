// The KV block pool (src/engine/kv-blocks.ts), without a GPU: reference counts, the free / evictable /
// used states, the prefix index (hash chain compared by ids), eviction order, sharing between live
// sequences, copy-on-write candidates, and a randomised run against a plain model of the pool with the
// invariants checked after every operation.
import { describe, expect, it } from 'vitest';
import { KV_ROOT, KvBlockPool } from '../src/engine/kv-blocks.ts';
import { rng } from './support/reference.ts';

const B = 4;
const ids = (from: number, n: number) => Array.from({ length: n }, (_, i) => from + i);

/** Allocate blocks for `tokens`, index the full ones as a chain (and the tail when `tail`), mark them written. */
function store(pool: KvBlockPool, tokens: number[], tail = false): number[] {
  const blocks: number[] = [];
  let parent = KV_ROOT;
  for (let start = 0; start < tokens.length; start += B) {
    const piece = tokens.slice(start, start + B);
    const block = pool.allocate()!;
    expect(block).toBeDefined();
    pool.markFilled(block, piece.length);
    blocks.push(block);
    if (piece.length === B || tail) parent = pool.register(block, parent, piece);
  }
  pool.checkInvariants();
  return blocks;
}

describe('KvBlockPool: counts and states', () => {
  it('allocates every block once, then none; release makes them free again', () => {
    const pool = new KvBlockPool(5, B);
    const got = Array.from({ length: 5 }, () => pool.allocate());
    expect(got).toEqual([0, 1, 2, 3, 4]);
    expect(pool.allocate()).toBeUndefined();
    expect(pool.stats()).toEqual({ total: 5, used: 5, shared: 0, cached: 0, free: 0 });
    pool.release([2, 0]);
    pool.checkInvariants();
    expect(pool.stats()).toEqual({ total: 5, used: 3, shared: 0, cached: 0, free: 2 });
    expect(pool.available).toBe(2);
  });

  it('refuses to release a block more often than it is held, leaving the counts untouched', () => {
    const pool = new KvBlockPool(3, B);
    const a = pool.allocate()!;
    const b = pool.allocate()!;
    expect(() => pool.release([a, b, a])).toThrow(/released more often than held/);
    pool.checkInvariants();
    pool.release([a, b]);
    expect(() => pool.release([a])).toThrow(/block 0 released more often than held/);
    expect(pool.refs(a)).toBe(0);
    pool.checkInvariants();
  });

  it('names the bad argument', () => {
    expect(() => new KvBlockPool(0, B)).toThrow(/at least 1 block/);
    expect(() => new KvBlockPool(4, 0)).toThrow(/block size/);
    const pool = new KvBlockPool(2, B);
    expect(() => pool.refs(2)).toThrow(/KV block 2 out of range \(0\.\.1\)/);
    expect(() => pool.acquire(0)).toThrow(/free: allocate it/);
    expect(() => pool.markFilled(0, 1)).toThrow(/not held/);
    const a = pool.allocate()!;
    expect(() => pool.markFilled(a, B + 1)).toThrow(/5 positions written/);
    expect(() => pool.register(a, 1, ids(0, B))).toThrow(/parent 1 is not cached/);
    expect(() => pool.register(a, KV_ROOT, [])).toThrow(/0 token ids/);
  });

  it('marks writes as extending only', () => {
    const pool = new KvBlockPool(1, B);
    const a = pool.allocate()!;
    pool.markFilled(a, 3);
    pool.markFilled(a, 1);
    expect(pool.filled(a)).toBe(3);
  });
});

describe('KvBlockPool: prefix index', () => {
  it('finds the longest chain of full blocks, compared by ids, limited to `limit` tokens', () => {
    const pool = new KvBlockPool(8, B);
    const prompt = ids(100, 11); // 2 full blocks + a tail of 3
    const blocks = store(pool, prompt);
    expect(pool.match(prompt, prompt.length)).toEqual({ blocks: blocks.slice(0, 2), copy: undefined, tokens: 8 });
    // The limit (the last prompt token is always prefilled) cuts a block that would end past it.
    expect(pool.match(ids(100, 8), 7)).toEqual({ blocks: blocks.slice(0, 1), copy: { block: blocks[1], tokens: 3 }, tokens: 7 });
    // A different first block: nothing, even when the second block's ids match.
    const other = [999, ...prompt.slice(1)];
    expect(pool.match(other, other.length).tokens).toBe(0);
    // Same ids at the same depth under another parent are another prefix.
    expect(pool.match([...ids(0, 4), ...prompt.slice(4, 8)], 8).tokens).toBe(0);
  });

  it('offers a cached block continuing the prompt for copy-on-write, at least copyMin tokens, within what is written', () => {
    const pool = new KvBlockPool(8, B);
    const blocks = store(pool, ids(0, 8));
    // Prompt: block 0, then 3 of block 1's ids, then something else.
    const prompt = [...ids(0, 4), 4, 5, 6, 77, 78];
    expect(pool.match(prompt, prompt.length)).toEqual({ blocks: [blocks[0]], copy: { block: blocks[1], tokens: 3 }, tokens: 7 });
    expect(pool.match(prompt, prompt.length, 4)).toEqual({ blocks: [blocks[0]], copy: undefined, tokens: 4 });
    // A block indexed before it is written (a prompt's full block at admission) offers only its written part.
    const pending = new KvBlockPool(4, B);
    const first = pending.allocate()!;
    pending.register(first, KV_ROOT, ids(0, 4));
    expect(pending.match(ids(0, 3), 3)).toEqual({ blocks: [], copy: undefined, tokens: 0 });
    pending.markFilled(first, 2);
    expect(pending.match(ids(0, 3), 3)).toEqual({ blocks: [], copy: { block: first, tokens: 2 }, tokens: 2 });
  });

  it('indexes tails (partly filled last blocks): copied, never shared', () => {
    const pool = new KvBlockPool(8, B);
    const blocks = store(pool, ids(0, 6), true); // block 1 is a tail of 2
    pool.release(blocks);
    const m = pool.match(ids(0, 10), 10);
    expect(m).toEqual({ blocks: [blocks[0]], copy: { block: blocks[1], tokens: 2 }, tokens: 6 });
  });

  it('keeps one block per prefix: registering the same prefix again returns the first block', () => {
    const pool = new KvBlockPool(4, B);
    const [a] = store(pool, ids(0, 4));
    const b = pool.allocate()!;
    expect(pool.register(b, KV_ROOT, ids(0, 4))).toBe(a);
    expect(pool.isCached(b)).toBe(false);
    pool.release([b]);
    expect(pool.stats().free).toBe(3);
    pool.checkInvariants();
  });

  it('a hash collision is never a match: lookups compare the ids', () => {
    // A real 32-bit collision is too rare to construct here; ids that differ in any one position never match.
    const pool = new KvBlockPool(4, B);
    const [a] = store(pool, [1, 2, 3, 4]);
    for (let i = 0; i < B; i++) {
      const probe = [1, 2, 3, 4];
      probe[i] += 2 ** 8; // differs in a byte the hash sees, in each position
      expect(pool.match(probe, 4).blocks, `position ${i}`).toEqual([]);
    }
    expect(pool.match([1, 2, 3, 4], 4).blocks).toEqual([a]);
  });
});

describe('KvBlockPool: sharing, release and eviction', () => {
  it('two live sequences share a prefix; either may end first; the prefix stays cached after both', () => {
    for (const order of [['a', 'b'], ['b', 'a']] as const) {
      const pool = new KvBlockPool(10, B);
      const a = store(pool, ids(0, 10));
      const m = pool.match([...ids(0, 8), 50, 51, 52], 11);
      expect(m.blocks).toEqual(a.slice(0, 2));
      for (const block of m.blocks) pool.acquire(block);
      const own = pool.allocate()!;
      const b = [...m.blocks, own];
      pool.checkInvariants();
      expect(pool.stats()).toMatchObject({ used: 4, shared: 2 });
      expect(pool.refs(a[0])).toBe(2);
      const seqs = { a, b };
      pool.release(seqs[order[0]]);
      pool.checkInvariants();
      expect(pool.stats()).toMatchObject({ shared: 0, used: order[0] === 'a' ? 3 : 3 });
      pool.release(seqs[order[1]]);
      pool.checkInvariants();
      // The two full blocks stay cached; the tails were not registered, so they are free.
      expect(pool.stats()).toEqual({ total: 10, used: 0, shared: 0, cached: 2, free: 8 });
      expect(pool.match(ids(0, 9), 9).blocks).toEqual(a.slice(0, 2));
    }
  });

  it('evicts the least recently released cached block first, deepest block of a chain first', () => {
    const pool = new KvBlockPool(6, B);
    const x = store(pool, ids(0, 8)); // chain x0 -> x1
    const y = store(pool, ids(100, 8)); // chain y0 -> y1
    pool.release(x); // evictable order: x1, x0
    pool.release(y); // then y1, y0
    pool.checkInvariants();
    expect(pool.stats()).toMatchObject({ cached: 4, free: 2 });
    // Two free blocks go first, then x1, then x0.
    expect([pool.allocate(), pool.allocate()].sort()).toEqual([4, 5]);
    expect(pool.allocate()).toBe(x[1]);
    expect(pool.match(ids(0, 8), 8).blocks).toEqual([x[0]]);
    expect(pool.allocate()).toBe(x[0]);
    expect(pool.match(ids(0, 8), 8).tokens).toBe(0);
    expect(pool.match(ids(100, 8), 8).blocks).toEqual(y);
    pool.checkInvariants();
  });

  it('evicting a block drops the cached blocks below it (they can no longer be found)', () => {
    const pool = new KvBlockPool(3, B);
    const x = store(pool, ids(0, 8));
    // Release the parent before the child: parent is older in the LRU order.
    pool.release([x[1]]);
    pool.release([x[0]]);
    // Make x0 the oldest: release order was x1 then x0, so acquire+release x1 to refresh it.
    pool.acquire(x[1]);
    pool.release([x[1]]);
    const fresh = pool.allocate()!; // the one free block
    expect(fresh).toBe(2);
    expect(pool.allocate()).toBe(x[0]); // x0 evicted; x1 below it is no longer reachable and freed
    pool.checkInvariants();
    expect(pool.stats()).toEqual({ total: 3, used: 2, shared: 0, cached: 0, free: 1 });
    expect(pool.allocate()).toBe(x[1]);
  });

  it('a used block is never evicted; reacquiring a cached block takes it off the eviction list', () => {
    const pool = new KvBlockPool(2, B);
    const [a, b] = store(pool, ids(0, 8));
    pool.release([a, b]);
    pool.acquire(a);
    expect(pool.allocate()).toBe(b);
    expect(pool.allocate()).toBeUndefined();
    expect(pool.refs(a)).toBe(1);
    pool.checkInvariants();
  });

  it('forgetCached makes every unheld cached block free and leaves held ones held', () => {
    const pool = new KvBlockPool(4, B);
    const x = store(pool, ids(0, 8));
    pool.release([x[1]]);
    pool.forgetCached();
    pool.checkInvariants();
    expect(pool.stats()).toEqual({ total: 4, used: 1, shared: 0, cached: 0, free: 3 });
    expect(pool.isCached(x[0])).toBe(false);
    pool.release([x[0]]);
    expect(pool.stats().free).toBe(4);
  });
});

describe('KvBlockPool: randomised against a model', () => {
  it('refcounts never go negative, no block is both free and used, and sequences see their own prefixes', () => {
    const draw = rng(7);
    const pick = (n: number) => Math.floor(draw() * n);
    for (let round = 0; round < 20; round++) {
      const total = 4 + pick(20);
      const pool = new KvBlockPool(total, B);
      // A sequence: its tokens and blocks (shared prefix blocks, then its own).
      const live: Array<{ tokens: number[]; blocks: number[] }> = [];
      for (let step = 0; step < 300; step++) {
        const op = pick(3);
        if (op < 2) {
          // A new sequence over a small alphabet so that prefixes repeat.
          const length = 1 + pick(4 * B);
          const tokens = Array.from({ length }, (_, i) => (i < 2 * B ? pick(2) : pick(4)));
          const m = pool.match(tokens, length - 1, 1);
          const needed = Math.ceil(length / B) - m.blocks.length;
          const reachableFromEvictable = m.blocks.filter((b) => pool.refs(b) === 0).length;
          if (needed > pool.available - reachableFromEvictable) continue;
          for (const b of m.blocks) pool.acquire(b);
          const blocks = [...m.blocks];
          // Index this sequence's full blocks while its chain is cached (a duplicate prefix returns the indexed block).
          let parent: number | undefined = blocks.at(-1) ?? KV_ROOT;
          for (let i = blocks.length; i < Math.ceil(length / B); i++) {
            const block = pool.allocate();
            expect(block, `round ${round} step ${step}: allocation within the checked budget`).toBeDefined();
            const piece = tokens.slice(i * B, (i + 1) * B);
            pool.markFilled(block!, piece.length);
            blocks.push(block!);
            parent = piece.length === B && parent !== undefined && (parent === KV_ROOT || pool.isCached(parent)) ? pool.register(block!, parent, piece) : undefined;
          }
          live.push({ tokens, blocks });
        } else if (live.length > 0) {
          const [seq] = live.splice(pick(live.length), 1);
          pool.release(seq.blocks);
        }
        pool.checkInvariants();
        const s = pool.stats();
        expect(s.used + s.cached + s.free).toBe(total);
        const held = new Map<number, number>();
        for (const seq of live) for (const b of seq.blocks) held.set(b, (held.get(b) ?? 0) + 1);
        for (let b = 0; b < total; b++) expect(pool.refs(b), `block ${b}`).toBe(held.get(b) ?? 0);
      }
      for (const seq of live.splice(0)) pool.release(seq.blocks);
      pool.checkInvariants();
      expect(pool.stats().used).toBe(0);
    }
  });

  it('matches only prefixes that were stored: a shared block always carries the prompt ids', () => {
    const draw = rng(11);
    const pick = (n: number) => Math.floor(draw() * n);
    const pool = new KvBlockPool(64, B);
    const contents = new Map<number, number[]>();
    for (let i = 0; i < 200; i++) {
      const tokens = Array.from({ length: 1 + pick(5 * B) }, () => pick(3));
      const m = pool.match(tokens, tokens.length);
      m.blocks.forEach((b, j) => expect(contents.get(b), `block ${b}`).toEqual(tokens.slice(j * B, (j + 1) * B)));
      if (m.copy) expect(contents.get(m.copy.block)!.slice(0, m.copy.tokens)).toEqual(tokens.slice(m.blocks.length * B, m.tokens));
      if (pool.available < Math.ceil(tokens.length / B)) continue;
      const blocks = store(pool, tokens);
      blocks.forEach((b, j) => contents.set(b, tokens.slice(j * B, (j + 1) * B)));
      pool.release(blocks);
    }
  });
});

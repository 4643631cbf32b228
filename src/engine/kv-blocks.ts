// The KV block pool: reference-counted blocks of KV_BLOCK_TOKENS positions, and a prefix index over them.
//
// A sequence's K/V lives in the blocks of its block table (position p in table[p / B] at p % B, B the
// block size). Blocks are shared between sequences by reference counting: two sequences whose
// prompts begin with the same tokens hold the same blocks for that prefix. A block is in exactly one
// of three states:
//   used       refs > 0; held by one or more sequences' tables;
//   evictable  refs = 0 but it holds a cached prefix (it is in the index): kept until the pool needs
//              it, least recently released first;
//   free       refs = 0 and holds nothing anyone can find.
//
// The index maps (parent block, the block's token ids) to a block, so a block's key stands for the
// whole prefix up to its end (a hash chain). Lookups hash, then compare the parent and the ids: a
// hash collision is never taken for a match. FULL blocks are indexed as soon as their ids are known
// (a prompt's full blocks at admission, before they are written: a second request in the same turn
// shares them and waits for the writer; see `filled`). A sequence's last, partly filled block is
// indexed as a "tail" when the sequence ends: it cannot be shared (its owner would have written past
// it), but a later prompt that continues the same tokens copies it (copy-on-write) instead of
// prefilling them again.
//
// Evicting a block drops its index entry and the entries of every cached block below it (they can
// no longer be reached from the root), so an evictable block is always reachable by a lookup.

/** Per block: what the index knows of it. */
interface CachedBlock {
  /** Index key: hash over the parent's key and the token ids. */
  key: number;
  /** Parent block in the chain (-1: the first block of a sequence). */
  parent: number;
  /** The token ids at the block's positions (KV_BLOCK_TOKENS of them, fewer for a tail). */
  tokens: Int32Array;
  /** Cached blocks whose parent this is. */
  children: Set<number>;
}

export interface PrefixMatch {
  /** Full cached blocks to share, in order from position 0. */
  blocks: number[];
  /**
   * A cached block whose first `tokens` positions continue the prompt after `blocks`: copy it into a
   * fresh block rather than prefill those tokens again (absent when none matches well enough).
   */
  copy?: { block: number; tokens: number };
  /** Prompt tokens whose K/V the match provides: blocks.length * blockTokens + (copy?.tokens ?? 0). */
  tokens: number;
}

export interface KvBlockStats {
  total: number;
  /** Held by at least one sequence. */
  used: number;
  /** Held by two or more sequences. */
  shared: number;
  /** Not held, but holding a cached prefix: reused by a matching prompt or evicted when needed. */
  cached: number;
  /** Not held and holding nothing. */
  free: number;
}

const ROOT = -1;

export class KvBlockPool {
  readonly blockTokens: number;
  readonly total: number;
  readonly #refs: Int32Array;
  /** Positions written per block (the K/V at positions [0, filled) is valid). */
  readonly #filled: Int32Array;
  /** Blocks neither used nor cached, taken from the end. */
  readonly #free: number[];
  /** Cached blocks with refs = 0, least recently released first (Map keeps insertion order). */
  readonly #evictable = new Map<number, true>();
  /** key -> blocks with that key (usually one; more only on a hash collision). */
  readonly #index = new Map<number, number[]>();
  readonly #cached: Array<CachedBlock | undefined>;
  /** Children of the root (the first blocks of cached sequences). */
  readonly #roots = new Set<number>();
  #used = 0;
  #shared = 0;

  constructor(total: number, blockTokens: number) {
    if (!Number.isSafeInteger(total) || total < 1) throw new RangeError(`KV block pool needs at least 1 block (got ${total})`);
    if (!Number.isSafeInteger(blockTokens) || blockTokens < 1) throw new RangeError(`KV block size must be an integer >= 1 (got ${blockTokens})`);
    this.total = total;
    this.blockTokens = blockTokens;
    this.#refs = new Int32Array(total);
    this.#filled = new Int32Array(total);
    this.#cached = new Array(total).fill(undefined);
    // Handed out from the end: block 0 first.
    this.#free = Array.from({ length: total }, (_, i) => total - 1 - i);
  }

  stats(): KvBlockStats {
    return { total: this.total, used: this.#used, shared: this.#shared, cached: this.#evictable.size, free: this.#free.length };
  }

  /** Blocks a new sequence can take: free ones and evictable ones. */
  get available(): number {
    return this.#free.length + this.#evictable.size;
  }

  refs(block: number): number {
    return this.#refs[this.#check(block)];
  }

  /** Positions of `block` whose K/V has been written. */
  filled(block: number): number {
    return this.#filled[this.#check(block)];
  }

  /** Record that positions [0, positions) of `block` are written (writes only ever extend a block). */
  markFilled(block: number, positions: number): void {
    this.#check(block);
    if (!Number.isSafeInteger(positions) || positions < 0 || positions > this.blockTokens) {
      throw new RangeError(`block ${block}: ${positions} positions written (0..${this.blockTokens})`);
    }
    if (this.#refs[block] === 0) throw new RangeError(`block ${block} is not held: nothing may write it`);
    if (positions > this.#filled[block]) this.#filled[block] = positions;
  }

  isCached(block: number): boolean {
    return this.#cached[this.#check(block)] !== undefined;
  }

  /**
   * A fresh block (refs 1, nothing written): a free one, else the least recently released cached
   * one (evicted with the cached blocks below it). Undefined when every block is held.
   */
  allocate(): number | undefined {
    let block = this.#free.pop();
    if (block === undefined) {
      const lru = this.#evictable.keys().next();
      if (lru.done) return undefined;
      this.#uncache(lru.value);
      block = this.#free.pop()!;
    }
    this.#refs[block] = 1;
    this.#filled[block] = 0;
    this.#used++;
    return block;
  }

  /** One more holder for a used or evictable block (sharing a cached prefix). */
  acquire(block: number): void {
    this.#check(block);
    const refs = this.#refs[block];
    if (refs === 0) {
      if (!this.#evictable.delete(block)) throw new RangeError(`block ${block} is free: allocate it instead of acquiring it`);
      this.#used++;
    } else if (refs === 1) this.#shared++;
    this.#refs[block] = refs + 1;
  }

  /**
   * Drop one holder of each block, last block first: a chain's deeper blocks become evictable
   * before its shallower ones, so eviction takes a cached prefix from its end.
   */
  release(blocks: readonly number[]): void {
    const times = new Map<number, number>();
    for (const block of blocks) {
      this.#check(block);
      const n = (times.get(block) ?? 0) + 1;
      if (n > this.#refs[block]) throw new RangeError(`block ${block} released more often than held`);
      times.set(block, n);
    }
    for (let i = blocks.length - 1; i >= 0; i--) {
      const block = blocks[i];
      const refs = --this.#refs[block];
      if (refs === 1) this.#shared--;
      if (refs > 0) continue;
      this.#used--;
      if (this.#cached[block]) this.#evictable.set(block, true);
      else this.#free.push(block);
    }
  }

  /**
   * Index a held block under `parent` (ROOT = -1 for a sequence's first block) with the ids of its
   * positions: all blockTokens of them for a full block; fewer for a tail (only ever copied, never
   * shared). Returns the block the index holds for that prefix: `block` itself, or an earlier block
   * with the same parent and ids (the index keeps one block per prefix; the caller may share that
   * one instead).
   */
  register(block: number, parent: number, tokens: ArrayLike<number>): number {
    this.#check(block);
    if (parent !== ROOT && !this.#cached[this.#check(parent)]) throw new RangeError(`block ${block}: parent ${parent} is not cached`);
    if (this.#refs[block] === 0) throw new RangeError(`block ${block} is not held`);
    if (tokens.length < 1 || tokens.length > this.blockTokens) throw new RangeError(`block ${block}: ${tokens.length} token ids (1..${this.blockTokens})`);
    if (this.#cached[block]) throw new RangeError(`block ${block} is already cached`);
    const ids = Int32Array.from(tokens);
    const key = chainKey(parent === ROOT ? 0 : this.#cached[parent]!.key, ids);
    const existing = this.#find(key, parent, ids);
    if (existing !== undefined) return existing;
    this.#cached[block] = { key, parent, tokens: ids, children: new Set() };
    const bucket = this.#index.get(key);
    if (bucket) bucket.push(block);
    else this.#index.set(key, [block]);
    (parent === ROOT ? this.#roots : this.#cached[parent]!.children).add(block);
    return block;
  }

  /**
   * The longest cached prefix of `prompt`, limited to its first `limit` tokens: the full blocks
   * (shared as they are), then the cached block below them whose ids continue the prompt furthest
   * (at least `copyMin` tokens, within what that block has written) to copy. Nothing is acquired.
   */
  match(prompt: ArrayLike<number>, limit: number, copyMin = 1): PrefixMatch {
    const B = this.blockTokens;
    const blocks: number[] = [];
    let parent = ROOT;
    let parentKey = 0;
    const end = Math.min(limit, prompt.length);
    while ((blocks.length + 1) * B <= end) {
      const ids = Int32Array.from({ length: B }, (_, i) => prompt[blocks.length * B + i]);
      const key = chainKey(parentKey, ids);
      const block = this.#find(key, parent, ids);
      if (block === undefined) break;
      blocks.push(block);
      parent = block;
      parentKey = key;
    }
    const start = blocks.length * B;
    let copy: PrefixMatch['copy'];
    const candidates = parent === ROOT ? this.#roots : this.#cached[parent]!.children;
    for (const block of candidates) {
      const ids = this.#cached[block]!.tokens;
      const most = Math.min(ids.length, end - start, this.#filled[block]);
      let n = 0;
      while (n < most && ids[n] === prompt[start + n]) n++;
      if (n >= Math.max(copyMin, 1) && n > (copy?.tokens ?? 0)) copy = { block, tokens: n };
    }
    return { blocks, copy, tokens: start + (copy?.tokens ?? 0) };
  }

  /** Forget every cached prefix (the blocks' contents no longer match what the index says). */
  forgetCached(): void {
    for (const block of [...this.#roots]) this.#uncache(block);
  }

  /** Throws unless the pool's invariants hold (tests call it after every operation). */
  checkInvariants(): void {
    const seen = new Uint8Array(this.total);
    let used = 0;
    let shared = 0;
    for (let b = 0; b < this.total; b++) {
      const refs = this.#refs[b];
      if (refs < 0) throw new Error(`block ${b}: refs ${refs}`);
      if (refs > 0) used++;
      if (refs > 1) shared++;
    }
    for (const b of this.#free) {
      if (seen[b]++) throw new Error(`block ${b} is free twice`);
      if (this.#refs[b] !== 0) throw new Error(`block ${b} is free and used (refs ${this.#refs[b]})`);
      if (this.#cached[b]) throw new Error(`block ${b} is free and cached`);
    }
    for (const b of this.#evictable.keys()) {
      if (seen[b]++) throw new Error(`block ${b} is both free and evictable`);
      if (this.#refs[b] !== 0) throw new Error(`block ${b} is evictable and used`);
      if (!this.#cached[b]) throw new Error(`block ${b} is evictable but not cached`);
    }
    for (let b = 0; b < this.total; b++) {
      if (this.#refs[b] === 0 && !seen[b]) throw new Error(`block ${b} is lost (not held, free nor evictable)`);
      const c = this.#cached[b];
      if (!c) continue;
      if (!this.#index.get(c.key)?.includes(b)) throw new Error(`block ${b} is cached but not in the index`);
      const siblings = c.parent === ROOT ? this.#roots : this.#cached[c.parent]?.children;
      if (!siblings?.has(b)) throw new Error(`block ${b}: its parent ${c.parent} is not cached or does not list it`);
    }
    if (used !== this.#used || shared !== this.#shared) throw new Error(`counts: used ${this.#used}/${used}, shared ${this.#shared}/${shared}`);
  }

  #find(key: number, parent: number, ids: Int32Array): number | undefined {
    return this.#index.get(key)?.find((b) => {
      const c = this.#cached[b]!;
      return c.parent === parent && c.tokens.length === ids.length && c.tokens.every((t, i) => t === ids[i]);
    });
  }

  /** Drop `block` and every cached block below it from the index; unheld ones become free. */
  #uncache(block: number): void {
    const c = this.#cached[block]!;
    for (const child of [...c.children]) this.#uncache(child);
    this.#cached[block] = undefined;
    const bucket = this.#index.get(c.key)!;
    bucket.splice(bucket.indexOf(block), 1);
    if (bucket.length === 0) this.#index.delete(c.key);
    (c.parent === ROOT ? this.#roots : this.#cached[c.parent]!.children).delete(block);
    if (this.#evictable.delete(block)) this.#free.push(block);
  }

  #check(block: number): number {
    if (!Number.isSafeInteger(block) || block < 0 || block >= this.total) throw new RangeError(`KV block ${block} out of range (0..${this.total - 1})`);
    return block;
  }
}

/** FNV-1a (32-bit) over the parent's key and the ids: a prefix's key, compared by ids on lookup. */
function chainKey(parentKey: number, ids: Int32Array): number {
  let h = (0x811c9dc5 ^ parentKey) >>> 0;
  h = Math.imul(h, 0x01000193) >>> 0;
  h = (h ^ ids.length) >>> 0;
  for (const id of ids) {
    for (let s = 0; s < 32; s += 8) {
      h = (h ^ ((id >>> s) & 0xff)) >>> 0;
      h = Math.imul(h, 0x01000193) >>> 0;
    }
  }
  return h;
}

export const KV_ROOT = ROOT;

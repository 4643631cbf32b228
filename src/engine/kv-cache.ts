// The engine's KV accounting: which block-table row (slot) and which blocks each sequence holds,
// what it may still take, and what the GPU's block tables must say before a step runs.
//
// A sequence takes a slot (a row of the model's block table) and, at admission, the promise of every
// block it can need: ceil(min(prompt + max_tokens, capacity) / B). A request is admitted only when
// the free and evictable blocks cover that promise beside every other admitted sequence's, so a
// running sequence never finds the pool empty (nothing is preempted, nothing is truncated); blocks
// are then taken as the sequence grows (setBlockTable before the step that writes them) and given
// back when it ends.
//
// Prompt prefix reuse is block sharing: the full blocks of the longest cached prefix of the prompt
// (at most prompt - 1 tokens: the last prompt token is always computed, its logits give the first
// token) are shared as they are; a cached block continuing the prompt after them is copied into a
// fresh block (copy-on-write) for the tokens that match. A prompt's full blocks are indexed at
// admission, before they are written, so a request admitted in the same turn shares them too: it
// waits until they are written (`filled`) by the sequence that allocated them (the writer). If the
// writer ends first, the first waiting sharer writes them itself: every sharer holds the same ids at
// the same positions, so whoever writes a position writes the same K/V, and nobody has read it yet.
import { KV_ROOT, KvBlockPool, type KvBlockStats } from './kv-blocks.ts';

/** What the model must be told: implemented by the Transformer. */
export interface KvTarget {
  /** Set the first blocks.length entries of `slot`'s block table. */
  setBlockTable(slot: number, blocks: readonly number[]): void;
  /** Copy one block's K and V (all layers) from `src` to `dst`. */
  copyBlock(src: number, dst: number): void;
}

export interface KvSequence {
  readonly slot: number;
  /** The block table: position p lives in blocks[floor(p / B)]. */
  readonly blocks: number[];
  /** Token ids from position 0: the prompt, then each generated token fed back (ids.length >= written). */
  readonly ids: number[];
  /** Positions whose K/V is in the blocks (or will be, by a sharer's writer; see ready()). */
  written: number;
  /** Table entries this sequence may still take (promised at admission). */
  promised: number;
  /** The last block of this sequence's indexed chain; undefined once the chain is broken. */
  chain: number | undefined;
  /** Blocks of `blocks` indexed so far (the chain covers blocks[0 .. indexed - 1]). */
  indexed: number;
}

export interface KvAdmission {
  seq: KvSequence;
  /** Prompt tokens whose K/V the sequence starts with (shared or copied). */
  reused: number;
}

export interface KvCacheOptions {
  slots: number;
  /** Most tokens per sequence. */
  capacity: number;
  /** Shortest reuse worth taking (tokens); 0 disables reuse. */
  prefixCacheMin: number;
  /**
   * Fewest matching tokens for which a partly matching block is copied rather than recomputed.
   * Default 1: the copy moves one block of K/V per layer (16 tokens' worth, a few MiB at most),
   * while recomputing even one token reads every weight of the model.
   */
  copyMin?: number;
}

export interface KvCacheStats extends KvBlockStats {
  slots: number;
  slotsUsed: number;
  /** Blocks promised to admitted sequences and not yet taken. */
  promised: number;
}

export class KvCache {
  readonly pool: KvBlockPool;
  readonly #target: KvTarget;
  readonly #capacity: number;
  readonly #prefixCacheMin: number;
  readonly #copyMin: number;
  readonly #freeSlots: number[];
  readonly #slots: number;
  /** Sum of `promised` over the live sequences. */
  #promised = 0;
  /** Per block: the live sequence that writes its unwritten positions. */
  readonly #writer = new Map<number, KvSequence>();
  readonly #live = new Set<KvSequence>();

  constructor(pool: KvBlockPool, target: KvTarget, options: KvCacheOptions) {
    const { slots, capacity, prefixCacheMin, copyMin = 1 } = options;
    const perSequence = Math.ceil(capacity / pool.blockTokens);
    if (pool.total < perSequence) {
      throw new RangeError(`a KV pool of ${pool.total} blocks cannot hold one sequence of ${capacity} tokens (${perSequence} blocks of ${pool.blockTokens})`);
    }
    this.pool = pool;
    this.#target = target;
    this.#capacity = capacity;
    this.#prefixCacheMin = prefixCacheMin;
    this.#copyMin = copyMin;
    this.#slots = slots;
    this.#freeSlots = Array.from({ length: slots }, (_, i) => slots - 1 - i);
  }

  get blockTokens(): number {
    return this.pool.blockTokens;
  }

  stats(): KvCacheStats {
    return { ...this.pool.stats(), slots: this.#slots, slotsUsed: this.#slots - this.#freeSlots.length, promised: this.#promised };
  }

  /** Blocks a sequence of `tokens` positions needs (capped at the capacity). */
  blocksFor(tokens: number): number {
    return Math.ceil(Math.min(tokens, this.#capacity) / this.pool.blockTokens);
  }

  /**
   * Admit a sequence whose prompt is `prompt` and which may grow to `total` tokens, if a slot is free
   * and the pool can promise its blocks; undefined otherwise (it waits). `reuse` false computes
   * every prompt position (logits of every position are wanted).
   */
  admit(prompt: readonly number[], total: number, reuse = true): KvAdmission | undefined {
    if (this.#freeSlots.length === 0) return undefined;
    const B = this.pool.blockTokens;
    const need = this.blocksFor(Math.max(total, prompt.length));
    let match = reuse && this.#prefixCacheMin > 0 ? this.pool.match(prompt, prompt.length - 1, this.#copyMin) : undefined;
    if (match && match.tokens < this.#prefixCacheMin) match = undefined;
    const shared = match?.blocks ?? [];
    // Shared blocks nobody holds leave the evictable set when taken: they count against what is available.
    // So does an unheld copy source, held while the copy's own block is allocated.
    const unheld = shared.filter((b) => this.pool.refs(b) === 0).length + (match?.copy && this.pool.refs(match.copy.block) === 0 ? 1 : 0);
    if (need - shared.length + unheld > this.pool.available - this.#promised) return undefined;

    for (const b of shared) this.pool.acquire(b);
    const seq: KvSequence = { slot: this.#freeSlots.pop()!, blocks: [...shared], ids: [...prompt], written: shared.length * B, promised: need - shared.length, chain: shared.at(-1) ?? KV_ROOT, indexed: shared.length };
    this.#promised += seq.promised;
    this.#live.add(seq);
    if (match?.copy) {
      // Hold the source while the copy's block is allocated (allocation may evict an unheld block).
      const { block: src, tokens } = match.copy;
      this.pool.acquire(src);
      const dst = this.#take(seq);
      this.#target.copyBlock(src, dst);
      this.pool.markFilled(dst, tokens);
      this.pool.release([src]);
      seq.written += tokens;
    }
    // The prompt's full blocks are indexed now, before they are written: a request admitted in the
    // same turn with the same prefix shares them (and waits for them to be written).
    this.#grow(seq, prompt.length);
    this.#indexFull(seq, Math.floor(prompt.length / B));
    this.#target.setBlockTable(seq.slot, seq.blocks);
    return { seq, reused: seq.written };
  }

  /**
   * Whether `seq` can run from seq.written now: every position below it is written. When a shared
   * block's writer has ended without writing it, `seq` takes over and seq.written drops to the
   * first unwritten position (the caller recomputes from there). False while another live sequence
   * is still to write a shared block.
   */
  ready(seq: KvSequence): boolean {
    const B = this.pool.blockTokens;
    for (let i = 0; i * B < seq.written; i++) {
      const block = seq.blocks[i];
      const want = Math.min(B, seq.written - i * B);
      const filled = this.pool.filled(block);
      if (filled >= want) continue;
      const writer = this.#writer.get(block);
      if (writer && writer !== seq && this.#live.has(writer)) return false;
      seq.written = i * B + filled;
      for (let j = i; j < seq.blocks.length; j++) this.#writer.set(seq.blocks[j], seq);
      return true;
    }
    return true;
  }

  /** Make the table cover positions [0, end) (blocks taken from the promise), before the step that writes them. */
  prepare(seq: KvSequence, end: number): void {
    if (this.#grow(seq, end)) this.#target.setBlockTable(seq.slot, seq.blocks);
  }

  /**
   * After a step wrote positions [seq.written, end): record them, and index each block that became
   * full (its ids are seq.ids).
   */
  wrote(seq: KvSequence, end: number): void {
    const B = this.pool.blockTokens;
    if (end > seq.blocks.length * B || end > seq.ids.length) throw new RangeError(`wrote up to ${end}: the table covers ${seq.blocks.length * B}, the ids ${seq.ids.length}`);
    for (let i = Math.floor(seq.written / B); i * B < end; i++) this.pool.markFilled(seq.blocks[i], Math.min(B, end - i * B));
    seq.written = end;
    this.#indexFull(seq, Math.floor(end / B));
  }

  /**
   * The sequence ends: its slot and blocks go back. With `keep`, its written partly filled last
   * block is indexed as a tail first (a later prompt that continues these tokens copies it);
   * without (a failed step), nothing it wrote is trusted.
   */
  release(seq: KvSequence, keep = true): void {
    if (!this.#live.delete(seq)) throw new RangeError(`slot ${seq.slot}: sequence released twice`);
    const B = this.pool.blockTokens;
    if (keep) {
      const full = Math.floor(seq.written / B);
      const tail = seq.written - full * B;
      if (tail > 0 && seq.indexed === full && this.#chainIntact(seq) && this.pool.filled(seq.blocks[full]) >= tail && !this.pool.isCached(seq.blocks[full])) {
        this.pool.register(seq.blocks[full], seq.chain!, seq.ids.slice(full * B, seq.written));
      }
    }
    for (const b of seq.blocks) if (this.#writer.get(b) === seq) this.#writer.delete(b);
    this.pool.release(seq.blocks);
    this.#promised -= seq.promised;
    seq.promised = 0;
    seq.blocks.length = 0;
    this.#freeSlots.push(seq.slot);
  }

  /** Forget every cached prefix (after the blocks were written behind the cache's back, or a failed step). */
  forgetCached(): void {
    this.pool.forgetCached();
  }

  /** Take blocks from the promise until the table covers `end` positions; true if any was taken. */
  #grow(seq: KvSequence, end: number): boolean {
    const want = Math.ceil(end / this.pool.blockTokens);
    if (want > seq.blocks.length + seq.promised) {
      throw new RangeError(`slot ${seq.slot}: ${end} positions need ${want} blocks; it holds ${seq.blocks.length} and was promised ${seq.promised} more`);
    }
    let grew = false;
    while (seq.blocks.length < want) {
      this.#take(seq);
      grew = true;
    }
    return grew;
  }

  /** One promised block, appended to the table; `seq` writes it. */
  #take(seq: KvSequence): number {
    const block = this.pool.allocate();
    // Admission promised it: an empty pool here is an accounting bug, not a full server.
    if (block === undefined) throw new Error(`KV pool exhausted with ${this.#promised} blocks promised`);
    seq.blocks.push(block);
    seq.promised--;
    this.#promised--;
    this.#writer.set(block, seq);
    return block;
  }

  /** Index blocks [seq.indexed, upTo) as full blocks of the sequence's chain, while the chain holds. */
  #indexFull(seq: KvSequence, upTo: number): void {
    const B = this.pool.blockTokens;
    while (seq.indexed < upTo && seq.indexed < seq.blocks.length) {
      if (!this.#chainIntact(seq)) {
        seq.chain = undefined;
        return;
      }
      const i = seq.indexed;
      const block = seq.blocks[i];
      // A block already indexed (shared, or indexed by an earlier call) continues the chain as it is.
      seq.chain = this.pool.isCached(block) ? block : this.pool.register(block, seq.chain!, seq.ids.slice(i * B, (i + 1) * B));
      seq.indexed++;
    }
  }

  #chainIntact(seq: KvSequence): boolean {
    return seq.chain !== undefined && (seq.chain === KV_ROOT || this.pool.isCached(seq.chain));
  }
}

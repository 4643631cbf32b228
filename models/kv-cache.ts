// The paged KV cache of one model (the layout is kernels/attention.ts's): per layer a K and a V pool
// of kvBlocks blocks, KV_BLOCK_TOKENS positions each, stored as `dtype`; one block table of
// (slots, ceil(capacity / 16)) u32 ids shared by every layer, row s being slot s's sequence.
// At load row s maps blocks s * B .. s * B + B - 1 (B = ceil(capacity / 16)): every slot its own
// fixed reservation, as long as the pool has slots * B blocks; ids past the pool name no block
// (the kernels skip them). A block allocator changes rows with setBlockTable and copies a block
// (copy-on-write of a shared, partly filled one) with copyBlock; both are queue operations, ordered
// with the steps submitted around them.
import type { Gpu } from '../src/gpu/device.ts';
import type { BufferArena } from '../src/gpu/buffers.ts';
import { ShapeError } from '../src/errors.ts';
import { KV_BLOCK_TOKENS, checkKvDtype, kvBlockBytes, kvBytesPerToken, kvTableWidth, type KvDtype } from '../kernels/attention.ts';

export interface KvCacheShape {
  numLayers: number;
  numKvHeads: number;
  headDim: number;
  /** Rows of the block table (sequences held at once). */
  slots: number;
  /** Most tokens one sequence holds: each row has ceil(capacity / 16) entries. */
  capacity: number;
  /** Blocks in every layer's pool. Default slots x ceil(capacity / 16). */
  kvBlocks?: number;
  /** Default 'f16'. */
  dtype?: KvDtype;
}

export class KvCache {
  readonly dtype: KvDtype;
  readonly kvBlocks: number;
  /** Block-table entries per slot: ceil(capacity / 16). */
  readonly tableWidth: number;
  /** Bytes of one block of one layer's K (or V) pool. */
  readonly blockBytes: number;
  /** KV bytes one token of one sequence takes: every layer, K and V, as stored. */
  readonly bytesPerToken: number;
  /** (slots, tableWidth) u32 block ids. */
  readonly blockTable: GPUBuffer;
  /** Per layer: (K, V) pools, each (kvBlocks, Hkv, 16, D) as dtype stores it. */
  readonly pools: ReadonlyArray<readonly [GPUBuffer, GPUBuffer]>;
  readonly #gpu: Gpu;
  readonly #slots: number;
  /** One block's bytes: copyBlock stages through it (a copy may not read and write one buffer). */
  readonly #stage: GPUBuffer;
  /** setBlockTable's CPU copy of one row (writeBuffer copies it at once), reused: no allocation per call. */
  readonly #row: Uint32Array<ArrayBuffer>;

  /** Allocate the pools and the table from `arena` (which frees them) and write the default tables. */
  constructor(gpu: Gpu, arena: BufferArena, shape: KvCacheShape) {
    const { numLayers, numKvHeads: Hkv, headDim: D, slots, capacity } = shape;
    this.#gpu = gpu;
    this.#slots = slots;
    this.dtype = checkKvDtype(shape.dtype ?? 'f16', D, 'kvDtype');
    this.tableWidth = kvTableWidth(capacity);
    this.kvBlocks = shape.kvBlocks ?? slots * this.tableWidth;
    if (!Number.isSafeInteger(this.kvBlocks) || this.kvBlocks < 1) throw new ShapeError(`kvBlocks must be an integer >= 1 (got ${this.kvBlocks})`);
    this.blockBytes = kvBlockBytes(Hkv, D, this.dtype);
    this.bytesPerToken = kvBytesPerToken(shape, this.dtype);
    this.blockTable = arena.get('kv.blockTable', 4 * slots * this.tableWidth);
    this.#row = new Uint32Array(this.tableWidth);
    const identity = new Uint32Array(slots * this.tableWidth);
    for (let i = 0; i < identity.length; i++) identity[i] = i;
    gpu.device.queue.writeBuffer(this.blockTable, 0, identity);
    this.#stage = arena.get('kv.blockStage', this.blockBytes);
    const poolBytes = this.kvBlocks * this.blockBytes;
    this.pools = Array.from({ length: numLayers }, (_, l) => [arena.get(`blk.${l}.kCache`, poolBytes), arena.get(`blk.${l}.vCache`, poolBytes)] as const);
  }

  /** Bytes of every pool: all layers, K and V. */
  get bytes(): number {
    return 2 * this.pools.length * this.kvBlocks * this.blockBytes;
  }

  /** The block geometry every KV kernel of a layer takes. */
  get pool(): { kvBlocks: number; dtype: KvDtype } {
    return { kvBlocks: this.kvBlocks, dtype: this.dtype };
  }

  /**
   * Point the first blocks.length entries of `slot`'s row at pool blocks `blocks` (position p of the
   * slot's sequence then lives in block blocks[floor(p / 16)]). Entries past blocks.length keep their ids.
   */
  setBlockTable(slot: number, blocks: readonly number[]): void {
    if (!Number.isSafeInteger(slot) || slot < 0 || slot >= this.#slots) {
      throw new ShapeError(`setBlockTable: slot ${slot} out of range (0..${this.#slots - 1})`);
    }
    if (!Array.isArray(blocks) || blocks.length > this.tableWidth) {
      throw new ShapeError(`setBlockTable: ${Array.isArray(blocks) ? blocks.length : String(blocks)} blocks given, a slot's row holds at most ${this.tableWidth}`);
    }
    if (blocks.length === 0) return;
    const row = this.#row;
    blocks.forEach((block, i) => {
      if (!Number.isSafeInteger(block) || block < 0 || block >= this.kvBlocks) {
        throw new ShapeError(`setBlockTable: block id ${block} (entry ${i}) out of range (0..${this.kvBlocks - 1})`);
      }
      row[i] = block;
    });
    this.#gpu.device.queue.writeBuffer(this.blockTable, slot * this.tableWidth * 4, row, 0, blocks.length);
  }

  /**
   * Copy block `src` to block `dst` in every layer, K and V, in one command buffer. WebGPU forbids a
   * copy whose source and destination are one buffer, so each block goes through a one-block staging
   * buffer (the copies of one encoder run in order).
   */
  copyBlock(src: number, dst: number): void {
    for (const [name, block] of [['src', src], ['dst', dst]] as const) {
      if (!Number.isSafeInteger(block) || block < 0 || block >= this.kvBlocks) {
        throw new ShapeError(`copyBlock: ${name} block ${block} out of range (0..${this.kvBlocks - 1})`);
      }
    }
    if (src === dst) return;
    const bytes = this.blockBytes;
    const encoder = this.#gpu.device.createCommandEncoder({ label: 'kv.copyBlock' });
    for (const layer of this.pools) {
      for (const pool of layer) {
        encoder.copyBufferToBuffer(pool, src * bytes, this.#stage, 0, bytes);
        encoder.copyBufferToBuffer(this.#stage, 0, pool, dst * bytes, bytes);
      }
    }
    this.#gpu.device.queue.submit([encoder.finish()]);
  }

  /** What Transformer.stats reports of the cache. */
  stats(): { kvBytes: number; kvDtype: KvDtype; kvBlocks: number; kvBlockTokens: number; kvBytesPerToken: number } {
    return { kvBytes: this.bytes, kvDtype: this.dtype, kvBlocks: this.kvBlocks, kvBlockTokens: KV_BLOCK_TOKENS, kvBytesPerToken: this.bytesPerToken };
  }
}

// Attention and the KV cache writes. See shaders/attention*.wgsl.
//
//   KvWrite            copy a step's new K and V rows into the cache (per-row table row and position)
//   PrefillAttention   causal flash attention, T queries of one sequence (shaders/attention.wgsl)
//   DecodeAttention    split-K flash-decoding, one query token per row, rows of different sequences
//                      (shaders/attention_decode.wgsl: a split pass then a reduce pass)
//
// Both attention ops have two tiers with the same results (to f32 rounding), picked by kernelTiers()
// unless their tier option says which: the baseline above, which runs anywhere and is the reference,
// and the subgroup tier (needs the 'subgroups' feature): shaders/attention_subgroup.wgsl for prefill,
// shaders/attention_decode_subgroup.wgsl for decode's split pass (its reduce pass is the baseline's).
// The tiers of an op share everything but their reductions: shaders/attention_prefill_common.wgsl and
// shaders/attention_decode_common.wgsl hold the run contract and the steps both take.
//
// Layouts (activations f32, offsets and strides in elements so one buffer holds many tensors):
//   q, out        (T or R, rowStride) with (Hq, D) at offset: a fused QKV buffer
//                 (T, (Hq + 2 Hkv) D) is read in place with rowStride = (Hq + 2 Hkv) D.
//   new k, v      (T, rowStride) with (Hkv, D) at offset; k and v may be the same (fused) buffer.
//   kCache/vCache the paged KV cache of one layer: a pool of kvBlocks blocks each, a block holding
//                 KV_BLOCK_TOKENS (16) consecutive positions of one sequence for every kv head,
//                 (kvBlocks, Hkv, 16, D) in logical element order, so one block of one layer is
//                 contiguous (copying it is one copyBufferToBuffer per cache). Stored as `dtype`
//                 (shaders/kv_<dtype>.wgsl): f32; f16 packed two per u32 (element 2i low; read as
//                 array<f16> where the device has 'shader-f16', kv_f16_native.wgsl); q8_0 as
//                 ggml's 32-element blocks (D a multiple of 32), each block of the pool being its
//                 int8 quants, four per u32, then one f32 word per 32 elements holding the
//                 f16-rounded scale. kvBlockBytes gives a block's bytes.
//   blockTable    (rows, ceil(capacity / 16)) u32 block ids: position p of the sequence in table row r
//                 is in block blockTable[r * width + floor(p / 16)] at p % 16. An id >= kvBlocks (or
//                 past what the buffers hold) names no block: its keys are skipped by the attention
//                 ops and its rows dropped by the writers, never read or written out of bounds.
//   rowMeta       u32 pairs, one per row, starting at u32 index metaOffset:
//                   KvWrite:         (table_row, position)  position in tokens, < capacity
//                   DecodeAttention: (table_row, kv_len)    keys to attend, the row's own included
// Grouped-query attention: query head h reads kv head floor(h / (Hq / Hkv)); nothing is copied.
// Sliding window (both attention ops, run option `window`, in keys; 0 = unlimited): a query at position
// q sees key k iff k <= q and k > q - window, its own key included (Hugging Face transformers'
// masking_utils.sliding_window_overlay; llama.cpp's LLAMA_SWA_TYPE_STANDARD). Work outside the window
// is skipped, not masked: prefill starts each query tile at its first visible key tile, and decode
// splits only the window's keys, so a decode step costs O(window) per row whatever the context.
// Order within a step: KvWrite, then the attention that reads those rows (same pass is fine: each
// dispatch sees the writes of the ones before it).
import type { Gpu } from '../src/gpu/device.ts';
import { UniformLayout } from '../src/gpu/uniforms.ts';
import { createStorage } from '../src/gpu/buffers.ts';
import { ShapeError } from '../src/errors.ts';
import { composeShader, dispatchGrid } from './shader.ts';
import { Dispatch, checkFits, checkShape, checkWorkgroupSize } from './dispatch.ts';
import { kernelTiers, subgroupSizes, type Tier } from './tiers.ts';
import { placeholderStorage } from './matmul.ts';
import type { RopeMode } from './rope.ts';

/** Token positions in one KV block. */
export const KV_BLOCK_TOKENS = 16;

/** How the KV cache stores its elements. */
export type KvDtype = 'f32' | 'f16' | 'q8_0';
export const KV_DTYPES: readonly KvDtype[] = ['f32', 'f16', 'q8_0'];

/** Bytes one KV element takes as stored: q8_0 is one int8 plus a 4-byte scale word per 32. */
const KV_ELEMENT_BYTES: Record<KvDtype, number> = { f32: 4, f16: 2, q8_0: 1 + 4 / 32 };

/** Elements a KV dtype stores together: D must be a multiple of it. */
export const KV_GROUP: Record<KvDtype, number> = { f32: 1, f16: 2, q8_0: 32 };

/**
 * Throw unless `dtype` is a KV dtype that can store heads of D elements; `what` names the setting
 * in the message (a CLI flag, an option).
 */
export function checkKvDtype(dtype: string, D: number, what = 'kvDtype'): KvDtype {
  if (!(KV_DTYPES as readonly string[]).includes(dtype)) {
    throw new ShapeError(`${what} must be one of ${KV_DTYPES.join(', ')} (got ${String(dtype)})`);
  }
  const group = KV_GROUP[dtype as KvDtype];
  if (D % group !== 0) {
    throw new ShapeError(`${what} ${dtype} needs a head dim that is a multiple of ${group}, but this model's is ${D}`);
  }
  return dtype as KvDtype;
}

/** Bytes of one block of one layer's K (or V) pool: Hkv x 16 x D elements as `dtype` stores them. */
export function kvBlockBytes(Hkv: number, D: number, dtype: KvDtype): number {
  return Hkv * KV_BLOCK_TOKENS * D * KV_ELEMENT_BYTES[dtype];
}

/**
 * KV cache bytes per token of one sequence: every layer, K and V, as stored (q8_0 scales included).
 * Pure, so memory planning can use it without a GPU.
 */
export function kvBytesPerToken(config: { numLayers: number; numKvHeads: number; headDim: number }, dtype: KvDtype): number {
  return 2 * config.numLayers * config.numKvHeads * config.headDim * KV_ELEMENT_BYTES[dtype];
}

/** Block-table entries per sequence for a capacity in tokens. */
export function kvTableWidth(capacity: number): number {
  return Math.ceil(capacity / KV_BLOCK_TOKENS);
}

/**
 * The shader modules of a KV dtype: its layout and readers, and for writers its store. Readers of an
 * f16 cache on a device with 'shader-f16' bind it as array<f16> (kv_f16_native.wgsl: one f16 load an
 * element) instead of unpacking u32 pairs; the bits are the same.
 */
function kvModules(gpu: Gpu, dtype: KvDtype, store: boolean): string[] {
  if (store) return [`kv_${dtype}.wgsl`, `kv_${dtype}_store.wgsl`];
  if (dtype === 'f16' && gpu.features.has('shader-f16')) return ['f16_enable.wgsl', 'kv_f16_native.wgsl'];
  return [`kv_${dtype}.wgsl`];
}

/** The pipeline variant of a KV reader on this device: the dtype, and whether f16 is read natively ('f16_native'). */
export function kvVariant(gpu: Gpu, dtype: KvDtype): string {
  return dtype === 'f16' && gpu.features.has('shader-f16') ? 'f16_native' : dtype;
}

/** The paged pool every KV kernel of a layer sees. */
export interface KvPool {
  /** Blocks in each of kCache and vCache. */
  kvBlocks: number;
  /** Storage of the elements (default 'f32'). */
  dtype?: KvDtype;
}

/** Check a pool's shape and that kCache and vCache hold kvBlocks blocks; returns its dtype. */
function checkPool(label: string, pool: KvPool, Hkv: number, D: number, buffers: { kCache: GPUBuffer; vCache: GPUBuffer; blockTable: GPUBuffer }): KvDtype {
  checkShape(label, { kvBlocks: pool.kvBlocks });
  const dtype = checkKvDtype(pool.dtype ?? 'f32', D, `${label}: dtype`);
  const words = (pool.kvBlocks * kvBlockBytes(Hkv, D, dtype)) / 4;
  checkFits(label, 'kCache', buffers.kCache, 0, words);
  checkFits(label, 'vCache', buffers.vCache, 0, words);
  if (buffers.blockTable.size < 4) throw new ShapeError(`${label}: blockTable must hold at least one u32`);
  return dtype;
}

export const KvWriteParams = new UniformLayout('KvWriteParams', [
  ['rows', 'u32'],
  ['kv_heads', 'u32'],
  ['head_dim', 'u32'],
  ['table_width', 'u32'],
  ['kv_blocks', 'u32'],
  ['k_offset', 'u32'],
  ['k_row_stride', 'u32'],
  ['v_offset', 'u32'],
  ['v_row_stride', 'u32'],
  ['meta_offset', 'u32'],
] as const);

/**
 * The uniforms both attention ops take after their own leading four, in this order: the paged pool,
 * the heads and where q and out sit (the structs of attention_prefill_common.wgsl and
 * attention_decode_common.wgsl).
 */
const HEAD_FIELDS = [
  ['table_width', 'u32'],
  ['kv_blocks', 'u32'],
  ['q_heads', 'u32'],
  ['group', 'u32'],
  ['q_offset', 'u32'],
  ['q_row_stride', 'u32'],
  ['out_offset', 'u32'],
  ['out_row_stride', 'u32'],
] as const;

export const PrefillAttentionParams = new UniformLayout('PrefillAttentionParams', [
  ['tokens', 'u32'],
  ['past_len', 'u32'],
  ['window', 'u32'],
  ['table_row', 'u32'],
  ...HEAD_FIELDS,
  ['scale', 'f32'],
] as const);

export const DecodeAttentionParams = new UniformLayout('DecodeAttentionParams', [
  ['rows', 'u32'],
  ['splits', 'u32'],
  ['chunk', 'u32'],
  ['window', 'u32'],
  ...HEAD_FIELDS,
  ['meta_offset', 'u32'],
  ['scale', 'f32'],
  ['k_offset', 'u32'],
  ['v_offset', 'u32'],
] as const);

type Fields<L> = L extends UniformLayout<infer F> ? F : never;

/** Head counts, head dim, the most tokens one sequence holds, and the paged pool. */
export interface AttentionShape extends KvPool {
  /** Query heads. */
  Hq: number;
  /** Key/value heads; divides Hq. */
  Hkv: number;
  /** Head dimension (elements). */
  D: number;
  /** Most token positions of one sequence: its block-table row has ceil(capacity / 16) entries. */
  capacity: number;
}

function checkHeads(label: string, shape: AttentionShape): void {
  checkShape(label, { Hq: shape.Hq, Hkv: shape.Hkv, D: shape.D, capacity: shape.capacity });
  if (shape.Hq % shape.Hkv !== 0) {
    throw new ShapeError(`${label}: Hq (${shape.Hq}) must be a multiple of Hkv (${shape.Hkv})`);
  }
}

/** Throw unless (rows, rowStride) with `width` elements per row at `offset` fits `buffer`. */
function checkRows(label: string, name: string, buffer: GPUBuffer, offset: number, rowStride: number, rows: number, width: number): void {
  if (rowStride < width) {
    throw new ShapeError(`${label}: ${name}RowStride (${rowStride}) must be >= ${width} elements (heads x D)`);
  }
  checkFits(label, name, buffer, offset, (rows - 1) * rowStride + width);
}

function checkDistinct(label: string, written: Record<string, GPUBuffer>, read: Record<string, GPUBuffer | undefined>): void {
  for (const [w, wb] of Object.entries(written)) {
    for (const [r, rb] of Object.entries(read)) {
      if (wb === rb) throw new ShapeError(`${label}: ${w} must be a different buffer from ${r} (WebGPU forbids writing a buffer a dispatch also reads)`);
    }
  }
}

/**
 * Throw unless a row of rowStride elements holds its q heads (qWidth elements from qOffset) and its k
 * and v heads (kvWidth each, from kOffset and vOffset) apart, each within the row.
 */
export function checkHeadRanges(label: string, rowStride: number, qOffset: number, qWidth: number, kOffset: number, vOffset: number, kvWidth: number): void {
  const rowStart = Math.min(qOffset, kOffset, vOffset);
  headsFit(label, 'q', qOffset, qWidth, rowStart, rowStride);
  headsFit(label, 'k', kOffset, kvWidth, rowStart, rowStride);
  headsFit(label, 'v', vOffset, kvWidth, rowStart, rowStride);
  headsApart(label, 'q', qOffset, qWidth, 'k', kOffset, kvWidth);
  headsApart(label, 'q', qOffset, qWidth, 'v', vOffset, kvWidth);
  headsApart(label, 'k', kOffset, kvWidth, 'v', vOffset, kvWidth);
}

function headsFit(label: string, name: string, offset: number, width: number, rowStart: number, rowStride: number): void {
  if (offset + width > rowStride + rowStart) throw new ShapeError(`${label}: the ${name} heads (${width} elements from ${offset}) do not fit a row of ${rowStride}`);
}

function headsApart(label: string, a: string, offA: number, widthA: number, b: string, offB: number, widthB: number): void {
  if (offA < offB + widthB && offB < offA + widthA) throw new ShapeError(`${label}: the ${a} and ${b} heads overlap`);
}

/** The largest window a run may ask for (a u32 uniform). */
const MAX_WINDOW = 0xffffffff;

function checkWindow(label: string, window: number): void {
  if (!Number.isSafeInteger(window) || window < 0 || window > MAX_WINDOW) {
    throw new ShapeError(`${label}: window must be an integer in [0, ${MAX_WINDOW}] (0 = unlimited; got ${window})`);
  }
}

/** The SOFTCAP override (attention_common.wgsl) for a soft-cap c: none when c is absent, so uncapped pipelines stay as they were. */
function softcapConstant(label: string, softcap: number | undefined): { SOFTCAP?: number } {
  if (softcap === undefined) return {};
  if (!Number.isFinite(softcap) || softcap <= 0) throw new ShapeError(`${label}: softcap must be a finite number > 0 (got ${softcap})`);
  return { SOFTCAP: softcap };
}

function checkScale(label: string, scale: number): void {
  if (!Number.isFinite(scale)) throw new ShapeError(`${label}: scale must be a finite number (got ${scale})`);
}

/**
 * Throw unless `tier` is an attention tier this device can run; for the subgroup tier, return the
 * adapter's smallest subgroup size (which sizes the per-subgroup slots), else 0.
 */
function checkAttentionTier(gpu: Gpu, label: string, tier: Tier): number {
  if (tier !== 'baseline' && tier !== 'subgroup') throw new ShapeError(`${label}: unknown tier ${String(tier)}`);
  if (tier === 'baseline') return 0;
  if (!gpu.features.has('subgroups')) {
    throw new ShapeError(`${label}: the subgroup tier needs the device feature 'subgroups', which this adapter does not offer`);
  }
  return subgroupSizes(gpu).min;
}

// ---------------------------------------------------------------------------------------------
// KV write

export interface KvWriteConfig extends KvPool {
  Hkv: number;
  D: number;
  /** Most token positions of one sequence (its table row has ceil(capacity / 16) entries). */
  capacity: number;
  /** Invocations per workgroup (power of two). Default 256. */
  workgroupSize?: number;
}

export interface KvWriteBuffers {
  /** New keys: (rows, kRowStride) with (Hkv, D) at kOffset. */
  k: GPUBuffer;
  /** New values: (rows, vRowStride) with (Hkv, D) at vOffset; may be the same buffer as k. */
  v: GPUBuffer;
  /** u32 (table_row, position) per row, from u32 index metaOffset. */
  rowMeta: GPUBuffer;
  /** (kvBlocks, Hkv, 16, D) as dtype stores it. */
  kCache: GPUBuffer;
  vCache: GPUBuffer;
  /** (rows, ceil(capacity / 16)) u32 block ids. */
  blockTable: GPUBuffer;
}

export interface KvWriteRun {
  /** Rows (tokens) to write. */
  rows: number;
  kOffset?: number;
  /** Default Hkv * D. */
  kRowStride?: number;
  vOffset?: number;
  /** Default Hkv * D. */
  vRowStride?: number;
  /** u32 index of row 0's pair in rowMeta. Default 0. */
  metaOffset?: number;
}

/**
 * Copies `rows` new K and V rows into the caches (rounded or quantised to the pool's dtype): row r
 * goes to position meta[r].position of the sequence in table row meta[r].table_row. Rows whose
 * position is >= capacity, or whose block the table does not name (an id >= kvBlocks), are dropped
 * by the shader (it cannot report them; validate on the host).
 */
export class KvWrite {
  readonly config: Readonly<Required<KvWriteConfig>>;
  readonly #dispatch: Dispatch<Fields<typeof KvWriteParams>>;
  readonly #buffers: KvWriteBuffers;
  readonly #maxPerDimension: number;

  constructor(gpu: Gpu, config: KvWriteConfig, buffers: KvWriteBuffers) {
    const label = 'attention.kv_write';
    const { Hkv, D, capacity, kvBlocks, workgroupSize = 256 } = config;
    checkShape(label, { Hkv, D, capacity });
    const dtype = checkPool(label, config, Hkv, D, buffers);
    this.config = { Hkv, D, capacity, kvBlocks, dtype, workgroupSize: checkWorkgroupSize(gpu, workgroupSize, label) };
    checkDistinct(
      label,
      { kCache: buffers.kCache, vCache: buffers.vCache },
      { k: buffers.k, v: buffers.v, rowMeta: buffers.rowMeta, blockTable: buffers.blockTable },
    );
    if (buffers.kCache === buffers.vCache) throw new ShapeError(`${label}: kCache and vCache must be different buffers`);
    this.#buffers = buffers;
    this.#maxPerDimension = gpu.limits.maxComputeWorkgroupsPerDimension;
    this.#dispatch = new Dispatch(
      gpu,
      {
        name: 'attention', variant: `kv_write_${dtype}`, code: composeShader(...kvModules(gpu, dtype, true), 'attention_kv_write.wgsl'),
        entryPoint: 'kv_write', constants: { WG: workgroupSize },
      },
      KvWriteParams,
      [buffers.k, buffers.v, buffers.rowMeta, buffers.kCache, buffers.vCache, buffers.blockTable],
    );
  }

  encode(pass: GPUComputePassEncoder, run: KvWriteRun): void {
    const label = 'attention.kv_write';
    const { Hkv, D, capacity, kvBlocks, dtype, workgroupSize } = this.config;
    const width = Hkv * D;
    const { rows, kOffset = 0, kRowStride = width, vOffset = 0, vRowStride = width, metaOffset = 0 } = run;
    checkShape(label, { rows, kOffset, kRowStride, vOffset, vRowStride, metaOffset }, ['kOffset', 'vOffset', 'metaOffset']);
    checkRows(label, 'k', this.#buffers.k, kOffset, kRowStride, rows, width);
    checkRows(label, 'v', this.#buffers.v, vOffset, vRowStride, rows, width);
    checkFits(label, 'rowMeta', this.#buffers.rowMeta, metaOffset, 2 * rows);
    const [x, y] = dispatchGrid(Math.ceil((rows * width) / KV_GROUP[dtype] / workgroupSize), this.#maxPerDimension);
    this.#dispatch.encode(
      pass,
      {
        rows, kv_heads: Hkv, head_dim: D, table_width: kvTableWidth(capacity), kv_blocks: kvBlocks,
        k_offset: kOffset, k_row_stride: kRowStride, v_offset: vOffset, v_row_stride: vRowStride,
        meta_offset: metaOffset,
      },
      x,
      y,
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Prefill

/** Largest head dim prefill supports (output dims per invocation x key tile: ACC_MAX x BK in attention.wgsl). */
export const MAX_HEAD_DIM = 256;
const PREFILL_KEY_TILE = 16;
/** Workgroup memory we aim to stay within (the WebGPU default limit); larger tiles only if needed. */
const PREFERRED_WORKGROUP_BYTES = 16384;

/**
 * Workgroup memory of the prefill kernel for a (BQ queries, BK keys) tile at head dim D: Q, K and V
 * tiles padded to D + 1, then the baseline's score and probability tiles (BQ, BK), or the subgroup
 * tier's accumulator tile (BQ, D) and its leader bitmask for a workgroup of `workgroupSize`.
 */
export function prefillWorkgroupBytes(D: number, BQ: number, BK: number, tier: Tier = 'baseline', workgroupSize = 0): number {
  const tiles = BQ * (D + 1) + 2 * BK * (D + 1);
  return 4 * (tier === 'subgroup' ? tiles + BQ * D + Math.ceil(workgroupSize / 32) : tiles + 2 * BQ * BK);
}

/**
 * Tile sizes for head dim D: 16 queries x 16 keys when that fits 16 KiB of workgroup memory, else
 * 8 x 16 when that does, else the first of the two that fits the adapter's limit. `workgroupSize`
 * gives the subgroup tier's workgroup for BQ queries (the baseline's is BQ x BK).
 */
export function prefillTiles(
  D: number,
  limitBytes: number,
  tier: Tier = 'baseline',
  workgroupSize: (BQ: number) => number = (BQ) => BQ * PREFILL_KEY_TILE,
): { BQ: number; BK: number; bytes: number } | undefined {
  const candidates = [16, 8].map((BQ) => ({ BQ, BK: PREFILL_KEY_TILE, bytes: prefillWorkgroupBytes(D, BQ, PREFILL_KEY_TILE, tier, workgroupSize(BQ)) }));
  return (
    candidates.find((c) => c.bytes <= Math.min(PREFERRED_WORKGROUP_BYTES, limitBytes)) ??
    candidates.find((c) => c.bytes <= limitBytes)
  );
}

export interface PrefillAttentionOptions {
  /** Attention logit soft-capping (Gemma 2): scores s become c tanh(s / c) before the softmax. Default none. */
  softcap?: number;
  /**
   * Kernel variant (default kernelTiers(gpu).attention: 'subgroup' where the device has the
   * 'subgroups' feature). 'subgroup' on a device without that feature is a ShapeError.
   */
  tier?: Tier;
}

export interface PrefillAttentionBuffers {
  /** Queries: (T, qRowStride) with (Hq, D) at qOffset (a fused QKV buffer works). */
  q: GPUBuffer;
  /** (kvBlocks, Hkv, 16, D) as dtype stores it. */
  kCache: GPUBuffer;
  vCache: GPUBuffer;
  /** (rows, ceil(capacity / 16)) u32 block ids. */
  blockTable: GPUBuffer;
  /** Output: (T, outRowStride) with (Hq, D) at outOffset. Must not be q's buffer. */
  out: GPUBuffer;
}

export interface PrefillAttentionRun {
  /** T: query tokens of this step (>= 1). */
  tokens: number;
  /** Tokens already in the sequence's cache before this step; query t is at position pastLen + t. */
  pastLen: number;
  /** The sequence's row of the block table. */
  tableRow: number;
  qOffset?: number;
  /** Default Hq * D. */
  qRowStride?: number;
  outOffset?: number;
  /** Default Hq * D. */
  outRowStride?: number;
  /** Default 1 / sqrt(D). */
  scale?: number;
  /** Sliding window in keys, the query's own included (query q sees keys q - window + 1 ..= q). Default 0: none. */
  window?: number;
}

/**
 * Causal flash attention over one sequence: query t (position pastLen + t) attends keys
 * 0 ..= pastLen + t of the sequence in table row tableRow (with a window, only the last `window` of
 * them; keys whose block the table does not name are skipped), which
 * must already hold this step's K/V rows (encode KvWrite first). Workgroup tiles are sized from D;
 * D whose tiles do not fit the adapter's maxComputeWorkgroupStorageSize is refused at construction.
 */
export class PrefillAttention {
  readonly shape: Readonly<AttentionShape>;
  /** Queries per workgroup (BQ) and keys per tile (BK) chosen for this D and adapter. */
  readonly tiles: { readonly BQ: number; readonly BK: number; readonly bytes: number };
  /** The variant this instance runs. */
  readonly tier: Tier;
  /** Invocations per workgroup: BQ x BK on the baseline, BQ x the smallest subgroup on the subgroup tier. */
  readonly workgroupSize: number;
  readonly #dispatch: Dispatch<Fields<typeof PrefillAttentionParams>>;
  readonly #buffers: PrefillAttentionBuffers;

  constructor(gpu: Gpu, shape: AttentionShape, buffers: PrefillAttentionBuffers, options: PrefillAttentionOptions = {}) {
    const label = 'attention.prefill';
    checkHeads(label, shape);
    const { D } = shape;
    const tier = options.tier ?? kernelTiers(gpu).attention;
    const sgMin = checkAttentionTier(gpu, label, tier);
    const limits = gpu.limits;
    // Subgroup tier: one subgroup per query row when subgroups are their smallest (rows are shared
    // out among fewer, larger subgroups otherwise), within the adapter's workgroup limits.
    const workgroupSize = (BQ: number) =>
      sgMin ? Math.min(BQ * sgMin, limits.maxComputeInvocationsPerWorkgroup, limits.maxComputeWorkgroupSizeX) : BQ * PREFILL_KEY_TILE;
    const limit = limits.maxComputeWorkgroupStorageSize;
    const tiles = prefillTiles(D, limit, tier, workgroupSize);
    if (!tiles) {
      throw new ShapeError(
        `${label}: head dim D=${D} needs ${prefillWorkgroupBytes(D, 8, PREFILL_KEY_TILE, tier, workgroupSize(8))} bytes of workgroup memory ` +
          `but this adapter's maxComputeWorkgroupStorageSize is ${limit} bytes`,
      );
    }
    if (D > MAX_HEAD_DIM) throw new ShapeError(`${label}: head dim D=${D} exceeds the supported maximum ${MAX_HEAD_DIM}`);
    const wg = checkWorkgroupSize(gpu, workgroupSize(tiles.BQ), label);
    const dtype = checkPool(label, shape, shape.Hkv, D, buffers);
    checkDistinct(label, { out: buffers.out }, { q: buffers.q, kCache: buffers.kCache, vCache: buffers.vCache, blockTable: buffers.blockTable });
    this.shape = { ...shape, dtype };
    this.tiles = tiles;
    this.tier = tier;
    this.workgroupSize = wg;
    this.#buffers = buffers;
    const constants = { D, BQ: tiles.BQ, BK: tiles.BK, ...softcapConstant(label, options.softcap) };
    const kv = kvModules(gpu, dtype, false);
    this.#dispatch = new Dispatch(
      gpu,
      sgMin
        ? {
            name: 'attention', variant: `prefill_${kvVariant(gpu, dtype)}`, code: composeShader('subgroups_enable.wgsl', ...kv, 'attention_subgroup.wgsl'),
            entryPoint: 'prefill_subgroup', constants: { ...constants, WG: wg, SG_MIN: sgMin },
          }
        : { name: 'attention', variant: `prefill_${kvVariant(gpu, dtype)}`, code: composeShader(...kv, 'attention.wgsl'), entryPoint: 'prefill', constants },
      PrefillAttentionParams,
      [buffers.q, buffers.kCache, buffers.vCache, buffers.out, buffers.blockTable],
    );
  }

  encode(pass: GPUComputePassEncoder, run: PrefillAttentionRun): void {
    const label = 'attention.prefill';
    const { Hq, Hkv, D, capacity, kvBlocks } = this.shape;
    const width = Hq * D;
    const { tokens, pastLen, tableRow, qOffset = 0, qRowStride = width, outOffset = 0, outRowStride = width, scale = 1 / Math.sqrt(D), window = 0 } = run;
    checkShape(label, { tokens, pastLen, tableRow, qOffset, qRowStride, outOffset, outRowStride }, ['pastLen', 'tableRow', 'qOffset', 'outOffset']);
    checkScale(label, scale);
    checkWindow(label, window);
    if (pastLen + tokens > capacity) {
      throw new ShapeError(`${label}: pastLen + tokens (${pastLen} + ${tokens}) exceeds the sequence capacity ${capacity}`);
    }
    checkRows(label, 'q', this.#buffers.q, qOffset, qRowStride, tokens, width);
    checkRows(label, 'out', this.#buffers.out, outOffset, outRowStride, tokens, width);
    const tableWidth = kvTableWidth(capacity);
    checkFits(label, 'blockTable', this.#buffers.blockTable, tableRow * tableWidth, tableWidth);
    this.#dispatch.encode(
      pass,
      {
        tokens, past_len: pastLen, window, table_row: tableRow, table_width: tableWidth, kv_blocks: kvBlocks, q_heads: Hq, group: Hq / Hkv,
        q_offset: qOffset, q_row_stride: qRowStride, out_offset: outOffset, out_row_stride: outRowStride, scale,
      },
      Math.ceil(tokens / this.tiles.BQ),
      Hq,
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Decode

export interface DecodeAttentionConfig extends AttentionShape {
  /** Most rows (sequences) one run may carry. */
  maxRows: number;
  /** Longest kv_len a run may see (<= capacity). Default capacity. */
  maxContext?: number;
  /** Fewest keys per split (more keys per split once maxLen / maxSplits exceeds it). Default 128. */
  splitKeys?: number;
  /** Most splits per (row, head). Default 32. */
  maxSplits?: number;
  /** Invocations per workgroup (power of two). Default 64. */
  workgroupSize?: number;
  /**
   * Kernel variant of the split pass (default kernelTiers(gpu).attention: 'subgroup' where the device
   * has the 'subgroups' feature). 'subgroup' on a device without that feature is a ShapeError.
   */
  tier?: Tier;
  /** Attention logit soft-capping (Gemma 2): scores s become c tanh(s / c) before the softmax. Default none. */
  softcap?: number;
  /**
   * Fold the step's RoPE and KV-cache write into the split pass (shaders/attention_decode_new_kv.wgsl),
   * in place of a RopeKvWrite (or, with rotaryDims 0, a KvWrite) dispatch before each run: q then holds
   * the step's projection rows unrotated, with the key and value heads at the run's kOffset and
   * vOffset, and each row's query and key are rotated to position kv_len - 1 (by buffers.ropeTable,
   * pairs as `mode` says; with headNorm, RMS-normalised first as RopeKvWrite's headNorm does), the key
   * and value stored in the caches there, and attended as the caches keep them. Outputs and caches are those of RopeKvWrite (or KvWrite) then this op without the fold, as
   * long as no row's step position is a key another row of the run attends (rows of distinct
   * sequences: a block being written belongs to one).
   */
  newKv?: NewKv;
}

/** DecodeAttentionConfig.newKv: the step's RoPE (rotaryDims 0: none) and head norm, folded into decode attention. */
export interface NewKv {
  rotaryDims: number;
  mode: RopeMode;
  /** Qwen3, Gemma 3: RMSNorm of each query and key head before RoPE; eps is added to its mean square. */
  headNorm?: { eps: number };
}

export interface DecodeAttentionBuffers {
  /** Queries: (rows, qRowStride) with (Hq, D) at qOffset (a fused QKV buffer works). */
  q: GPUBuffer;
  /** (kvBlocks, Hkv, 16, D) as dtype stores it. */
  kCache: GPUBuffer;
  vCache: GPUBuffer;
  /** (rows, ceil(capacity / 16)) u32 block ids. */
  blockTable: GPUBuffer;
  /** Output: (rows, outRowStride) with (Hq, D) at outOffset. Must not be q's buffer. */
  out: GPUBuffer;
  /** u32 (table_row, kv_len) per row, from u32 index metaOffset. */
  rowMeta: GPUBuffer;
  /**
   * Partials, at least DecodeAttention.scratchBytes(config) bytes. Optional: by default the op
   * creates and owns one. Layers run one after another, so every layer's op may share one.
   */
  scratch?: GPUBuffer;
  /**
   * With config.newKv and rotaryDims > 0: the inverse frequencies (rotaryDims / 2 f32, see
   * ropeInverseFrequencies), then with newKv.headNorm the query heads' norm weight (D f32) and the
   * key heads' (D f32).
   */
  ropeTable?: GPUBuffer;
}

export interface DecodeAttentionRun {
  /** Query rows (sequences) in this batch, <= maxRows. */
  rows: number;
  /**
   * The largest kv_len in rowMeta for these rows (<= maxContext). It sets the split plan; keys of a
   * row past splits * chunk (a row longer than maxLen) are not attended.
   */
  maxLen: number;
  qOffset?: number;
  /** Default Hq * D. */
  qRowStride?: number;
  outOffset?: number;
  /** Default Hq * D. */
  outRowStride?: number;
  /** u32 index of row 0's pair in rowMeta. Default 0. */
  metaOffset?: number;
  /** Default 1 / sqrt(D). */
  scale?: number;
  /**
   * Sliding window in keys, the query's own included: a row of kv_len keys attends keys
   * kv_len - window .. kv_len - 1. The splits cover min(maxLen, window) keys. Default 0: unlimited.
   */
  window?: number;
  /** With config.newKv: the first element of row 0's key heads and value heads in q (rows qRowStride apart). */
  kOffset?: number;
  vOffset?: number;
}

/** Check DecodeAttentionConfig.newKv against D and the buffers it reads and writes. */
function checkNewKv(label: string, newKv: NewKv, D: number, buffers: DecodeAttentionBuffers): void {
  const { rotaryDims, mode, headNorm } = newKv;
  if (mode !== 'half' && mode !== 'interleaved') throw new ShapeError(`${label}: newKv.mode must be "half" or "interleaved" (got "${mode}")`);
  if (!Number.isSafeInteger(rotaryDims) || rotaryDims < 0 || rotaryDims % 2 !== 0 || rotaryDims > D) {
    throw new ShapeError(`${label}: newKv.rotaryDims must be even and 0..D = ${D} (got ${rotaryDims})`);
  }
  if ((rotaryDims > 0) !== (buffers.ropeTable !== undefined)) {
    throw new ShapeError(`${label}: newKv.rotaryDims > 0 and buffers.ropeTable go together (got ${rotaryDims} and ${buffers.ropeTable ? 'a buffer' : 'none'})`);
  }
  if (headNorm && rotaryDims === 0) throw new ShapeError(`${label}: newKv.headNorm needs RoPE (rotaryDims > 0)`);
  if (headNorm && !(Number.isFinite(headNorm.eps) && headNorm.eps >= 0)) throw new ShapeError(`${label}: newKv.headNorm.eps must be a finite number >= 0 (got ${headNorm.eps})`);
  if (buffers.ropeTable) checkFits(label, 'ropeTable', buffers.ropeTable, 0, rotaryDims / 2 + (headNorm ? 2 * D : 0));
  // The split pass writes the caches: they may alias nothing it reads.
  checkDistinct(label, { kCache: buffers.kCache, vCache: buffers.vCache }, {
    q: buffers.q, rowMeta: buffers.rowMeta, blockTable: buffers.blockTable, ropeTable: buffers.ropeTable, scratch: buffers.scratch,
  });
  if (buffers.kCache === buffers.vCache) throw new ShapeError(`${label}: kCache and vCache must be different buffers`);
}

/** Defaults of the DecodeAttention options. */
export const DECODE_DEFAULTS = { splitKeys: 128, maxSplits: 32, workgroupSize: 64 } as const;

/**
 * How one run divides each row's visible keys: split s covers keys w0 + s * chunk .. w0 + (s + 1) * chunk - 1,
 * w0 being the row's first visible key (kv_len - window with a window, else 0).
 */
export interface SplitPlan {
  splits: number;
  chunk: number;
}

/**
 * Flash-decoding: row r's single query (all Hq heads) attends keys 0 .. kv_len - 1 of the sequence in
 * table row meta[r].table_row (with a window, only the last `window` of them). Pass 1 writes per-split
 * partials to the scratch buffer, pass 2 combines them into out; a run whose keys fit one split
 * (plan().splits === 1) is pass 1 alone, writing out directly. Rows with kv_len 0 get a zero output;
 * kv_len is clamped to the table row's 16 x width positions; keys whose block the table does not
 * name are skipped (a row with none left gets a zero output).
 */
export class DecodeAttention {
  readonly config: Readonly<Required<Omit<DecodeAttentionConfig, 'softcap' | 'newKv'>>>;
  /** The step's RoPE and KV write, when the split pass folds them in (DecodeAttentionConfig.newKv). */
  readonly newKv?: Readonly<NewKv>;
  /** Longest split the kernel holds in workgroup memory: max(splitKeys, ceil(maxContext / maxSplits)). */
  readonly chunkMax: number;
  readonly scratch: GPUBuffer;
  readonly #ownsScratch: boolean;
  readonly #split: Dispatch<Fields<typeof DecodeAttentionParams>>;
  readonly #reduce: Dispatch<Fields<typeof DecodeAttentionParams>>;
  readonly #buffers: DecodeAttentionBuffers;

  /** Bytes of scratch the op needs: maxRows x Hq x maxSplits x (D + 2) f32. */
  static scratchBytes(config: Pick<DecodeAttentionConfig, 'maxRows' | 'Hq' | 'D' | 'maxSplits'>): number {
    return 4 * config.maxRows * config.Hq * (config.maxSplits ?? DECODE_DEFAULTS.maxSplits) * (config.D + 2);
  }

  constructor(gpu: Gpu, config: DecodeAttentionConfig, buffers: DecodeAttentionBuffers) {
    const label = 'attention.decode';
    checkHeads(label, config);
    const {
      Hq, Hkv, D, capacity, maxRows, maxContext = capacity,
      splitKeys = DECODE_DEFAULTS.splitKeys, maxSplits = DECODE_DEFAULTS.maxSplits, workgroupSize = DECODE_DEFAULTS.workgroupSize,
      tier = kernelTiers(gpu).attention, newKv,
    } = config;
    checkShape(label, { maxRows, maxContext, splitKeys, maxSplits });
    if (maxContext > capacity) throw new ShapeError(`${label}: maxContext (${maxContext}) exceeds capacity (${capacity})`);
    checkWorkgroupSize(gpu, workgroupSize, label);
    const sgMin = checkAttentionTier(gpu, label, tier);
    const dtype = checkPool(label, config, Hkv, D, buffers);
    this.config = { Hq, Hkv, D, capacity, kvBlocks: config.kvBlocks, dtype, maxRows, maxContext, splitKeys, maxSplits, workgroupSize, tier };
    this.chunkMax = Math.max(splitKeys, Math.ceil(maxContext / maxSplits));
    if (newKv) checkNewKv(label, newKv, D, buffers);
    this.newKv = newKv && { rotaryDims: newKv.rotaryDims, mode: newKv.mode, ...(newKv.headNorm ? { headNorm: { eps: newKv.headNorm.eps } } : {}) };
    // q_s (D), scores (chunkMax), the step's key and value with newKv (2 D) and the head norm's sums
    // (WG), then the reduction scratch: a WG tree on the baseline, the leader bitmask and two slots per
    // subgroup on the subgroup tier.
    const scratch = sgMin ? Math.ceil(workgroupSize / 32) + 2 * Math.ceil(workgroupSize / sgMin) : workgroupSize;
    const bytes = 4 * (D + this.chunkMax + (newKv ? 2 * D : 0) + (newKv?.headNorm ? workgroupSize : 0) + scratch);
    const limit = gpu.limits.maxComputeWorkgroupStorageSize;
    if (bytes > limit) {
      throw new ShapeError(
        `${label}: splits of up to ${this.chunkMax} keys at D=${D} need ${bytes} bytes of workgroup memory but this ` +
          `adapter's maxComputeWorkgroupStorageSize is ${limit} bytes (raise maxSplits or lower splitKeys)`,
      );
    }
    checkDistinct(label, { out: buffers.out }, { q: buffers.q, kCache: buffers.kCache, vCache: buffers.vCache, rowMeta: buffers.rowMeta, blockTable: buffers.blockTable });
    const scratchBytes = DecodeAttention.scratchBytes(this.config);
    if (buffers.scratch) {
      if (buffers.scratch.size < scratchBytes) {
        throw new ShapeError(`${label}: scratch needs ${scratchBytes} bytes but its buffer has ${buffers.scratch.size}`);
      }
      checkDistinct(label, { scratch: buffers.scratch }, {
        q: buffers.q, out: buffers.out, kCache: buffers.kCache, vCache: buffers.vCache, rowMeta: buffers.rowMeta, blockTable: buffers.blockTable,
      });
    }
    this.scratch = buffers.scratch ?? createStorage(gpu, `${label}.partials`, scratchBytes);
    this.#ownsScratch = !buffers.scratch;
    this.#buffers = buffers;
    // With newKv the split pass also stores into the caches and stages the step's key and value as
    // they are stored: the dtype's writer and stage modules (and packed f16 reads).
    const kv = newKv ? [...kvModules(gpu, dtype, true), `kv_${dtype}_stage.wgsl`] : kvModules(gpu, dtype, false);
    const keys = newKv
      ? [newKv.headNorm ? 'attention_decode_new_kv_head_norm.wgsl' : 'attention_decode_new_kv_plain.wgsl', 'attention_decode_new_kv.wgsl']
      : ['attention_decode_cached.wgsl'];
    const variant = newKv ? `decode_new_kv_${newKv.mode}_${dtype}${newKv.headNorm ? '_head_norm' : ''}` : `decode_${kvVariant(gpu, dtype)}`;
    const constants = {
      D, WG: workgroupSize, CHUNK_MAX: this.chunkMax, ...softcapConstant(label, config.softcap),
      ...(sgMin ? { SG_MIN: sgMin } : {}),
      ...(newKv ? { ROTARY_DIMS: newKv.rotaryDims, INTERLEAVED: newKv.mode === 'interleaved' ? 1 : 0 } : {}),
      ...(newKv?.headNorm ? { HEAD_NORM_EPS: newKv.headNorm.eps } : {}),
    };
    this.#split = new Dispatch(
      gpu,
      sgMin
        ? { name: 'attention', variant, code: composeShader('subgroups_enable.wgsl', ...kv, ...keys, 'attention_decode_subgroup.wgsl'), entryPoint: 'decode_split_subgroup', constants }
        : { name: 'attention', variant, code: composeShader(...kv, ...keys, 'attention_decode.wgsl'), entryPoint: 'decode_split', constants },
      DecodeAttentionParams,
      [buffers.q, buffers.rowMeta, buffers.kCache, buffers.vCache, this.scratch, buffers.out, buffers.blockTable, newKv ? (buffers.ropeTable ?? placeholderStorage(gpu)) : undefined],
    );
    this.#reduce = new Dispatch(
      gpu,
      // Pass 2 reads only the partials; its module is the f32 one whatever the pool's dtype.
      {
        name: 'attention', variant: 'decode_f32', code: composeShader('kv_f32.wgsl', 'attention_decode_cached.wgsl', 'attention_decode.wgsl'),
        entryPoint: 'decode_reduce', constants: { D, WG: workgroupSize },
      },
      DecodeAttentionParams,
      [undefined, undefined, undefined, undefined, this.scratch, buffers.out],
    );
  }

  /**
   * The split plan for a run whose longest row has maxLen keys, under a sliding window of `window`
   * keys (0 = unlimited): the splits cover the keys one query sees, min(maxLen, window).
   */
  plan(maxLen: number, window = 0): SplitPlan {
    const span = window > 0 ? Math.min(maxLen, window) : maxLen;
    const chunk = Math.max(this.config.splitKeys, Math.ceil(span / this.config.maxSplits));
    return { chunk, splits: Math.max(1, Math.ceil(span / chunk)) };
  }

  encode(pass: GPUComputePassEncoder, run: DecodeAttentionRun): void {
    const label = 'attention.decode';
    const { Hq, Hkv, D, capacity, kvBlocks, maxRows, maxContext } = this.config;
    const width = Hq * D;
    const {
      rows, maxLen, qOffset = 0, qRowStride = width, outOffset = 0, outRowStride = width,
      metaOffset = 0, scale = 1 / Math.sqrt(D), window = 0,
    } = run;
    checkShape(label, { rows, maxLen, qOffset, qRowStride, outOffset, outRowStride, metaOffset }, ['qOffset', 'outOffset', 'metaOffset']);
    checkScale(label, scale);
    checkWindow(label, window);
    if (rows > maxRows) throw new ShapeError(`${label}: rows (${rows}) exceeds maxRows (${maxRows})`);
    if (maxLen > maxContext) throw new ShapeError(`${label}: maxLen (${maxLen}) exceeds maxContext (${maxContext})`);
    checkRows(label, 'q', this.#buffers.q, qOffset, qRowStride, rows, width);
    checkRows(label, 'out', this.#buffers.out, outOffset, outRowStride, rows, width);
    checkFits(label, 'rowMeta', this.#buffers.rowMeta, metaOffset, 2 * rows);
    const { kOffset = 0, vOffset = 0 } = run;
    if (this.newKv) {
      if (run.kOffset === undefined || run.vOffset === undefined) throw new ShapeError(`${label}: a run with newKv needs kOffset and vOffset`);
      checkShape(label, { kOffset, vOffset }, ['kOffset', 'vOffset']);
      checkHeadRanges(label, qRowStride, qOffset, width, kOffset, vOffset, Hkv * D);
      checkRows(label, 'q', this.#buffers.q, kOffset, qRowStride, rows, Hkv * D);
      checkRows(label, 'q', this.#buffers.q, vOffset, qRowStride, rows, Hkv * D);
    }
    const { splits, chunk } = this.plan(maxLen, window);
    const values = {
      rows, splits, chunk, window, table_width: kvTableWidth(capacity), kv_blocks: kvBlocks, q_heads: Hq, group: Hq / Hkv,
      q_offset: qOffset, q_row_stride: qRowStride, out_offset: outOffset, out_row_stride: outRowStride,
      meta_offset: metaOffset, scale, k_offset: kOffset, v_offset: vOffset,
    };
    this.#split.encode(pass, values, splits, Hq, rows);
    // One split writes the normalised output itself (attention_decode_common.wgsl): no reduce pass.
    if (splits > 1) this.#reduce.encode(pass, values, Hq, rows);
  }

  /** Free the scratch buffer if this op created it. */
  destroy(): void {
    if (this.#ownsScratch) this.scratch.destroy();
  }
}

// Packed planes to GPU buffers: one storage buffer per plane, or row chunks of a weight whose planes
// exceed one storage binding.
import type { Gpu } from '../src/gpu/device.ts';
import { createStorage, type BufferArena } from '../src/gpu/buffers.ts';
import { ShapeError } from '../src/errors.ts';
import { checkDims, planeNames, planeWords, sliceWeightRows, weightBytes, type HostWeight, type PackedWeight, type WeightDtype } from './weights.ts';

/**
 * Throw ShapeError unless every plane fits one storage binding and one buffer on this adapter.
 * Needs only `gpu.limits`, so it can run before anything is allocated.
 */
export function checkWeightFits(gpu: Pick<Gpu, 'limits'>, label: string, weight: HostWeight): void {
  const limit = Math.min(gpu.limits.maxStorageBufferBindingSize, gpu.limits.maxBufferSize);
  planeNames(weight.dtype).forEach((name, i) => {
    const bytes = Math.max(16, weight.planes[i].byteLength);
    if (bytes > limit) {
      throw new ShapeError(
        `weight "${label}" (${weight.rows}x${weight.cols} ${weight.dtype}): its ${name} plane is ${bytes} bytes, ` +
          `over this adapter's limit of ${limit} bytes per storage binding (uploadWeightChunks splits such a weight into row chunks)`,
      );
    }
  });
}

/** Throw ShapeError unless the weight's dims are valid and each plane has the words its dtype needs. */
function checkPlanes(label: string, weight: HostWeight): void {
  checkDims(`weight "${label}"`, weight.dtype, weight.rows, weight.cols);
  const names = planeNames(weight.dtype);
  if (weight.planes.length !== names.length) {
    throw new ShapeError(`weight "${label}": ${weight.dtype} has ${names.length} plane(s), got ${weight.planes.length}`);
  }
  const want = planeWords(weight.dtype, weight.rows, weight.cols);
  weight.planes.forEach((plane, i) => {
    if (plane.length !== want[i]) {
      throw new ShapeError(`weight "${label}": ${names[i]} plane has ${plane.length} words, expected ${want[i]}`);
    }
  });
}

/**
 * Create the GPU buffers for a packed weight (named `${label}.${plane}`), through `arena` when given.
 * Refuses (ShapeError naming the tensor) a plane larger than maxStorageBufferBindingSize: a weight
 * that may be that large goes through uploadWeightChunks.
 */
export function uploadWeight(gpu: Gpu, label: string, weight: HostWeight, arena?: BufferArena): PackedWeight {
  checkPlanes(label, weight);
  checkWeightFits(gpu, label, weight);
  const names = planeNames(weight.dtype);
  const planes = weight.planes.map((plane, i) => {
    const name = `${label}.${names[i]}`;
    return arena ? arena.upload(name, plane) : createStorage(gpu, name, plane);
  });
  const { dtype, rows, cols } = weight;
  return { label, dtype, rows, cols, planes, bytes: weightBytes(weight) };
}

// ---- row chunks -----------------------------------------------------------------------------
//
// A weight whose planes exceed one storage binding (a 7B model's f16 LM head, a 128k-vocabulary
// embedding) is split at load into row chunks, each its own PackedWeight with its own buffers, and
// Linear / Embed record one dispatch per chunk. Rows are independent in every dtype: each plane is
// (N, words per row) row-major, except the f16 block scales of Q8_0 / Q4_0 / Q5_0, which pack two
// blocks per u32 across row boundaries (block b = row * K/32 + k/32 is half b % 2). A chunk whose
// first block is odd would start mid-word there, so chunk scales are repacked to start at half 0.

/** Rows firstRow .. firstRow + weight.rows - 1 of a chunked weight, uploaded as one PackedWeight. */
export interface WeightChunk {
  readonly firstRow: number;
  readonly weight: PackedWeight;
}

/** A (rows, cols) weight on the GPU as row chunks in row order (one chunk when it fits one binding). */
export interface ChunkedWeight {
  readonly label: string;
  readonly dtype: WeightDtype;
  readonly rows: number;
  readonly cols: number;
  readonly chunks: readonly WeightChunk[];
  /** Bytes of all planes of all chunks (as packed). */
  readonly bytes: number;
}

export interface UploadChunksOptions {
  /** Allocate the buffers through this arena (named `${chunk label}.${plane}`). */
  arena?: BufferArena;
  /**
   * Most bytes per plane of one chunk, below the adapter's limit (tests force small chunks with it).
   * Default: min(maxStorageBufferBindingSize, maxBufferSize).
   */
  maxChunkBytes?: number;
  /** Every chunk holds a multiple of this many rows (2 keeps interleaveRowPairs' pairs whole); default 1. */
  rowMultiple?: number;
}

/** A single-chunk view of a PackedWeight; a ChunkedWeight is returned as is. */
export function asChunked(weight: PackedWeight | ChunkedWeight): ChunkedWeight {
  if ('chunks' in weight) return weight;
  const { label, dtype, rows, cols, bytes } = weight;
  return { label, dtype, rows, cols, bytes, chunks: [{ firstRow: 0, weight }] };
}

/** Bytes of the largest plane of a (rows, cols) weight of `dtype`, as its buffer would be (>= 16). */
function largestPlaneBytes(dtype: WeightDtype, rows: number, cols: number): number {
  return Math.max(16, ...planeWords(dtype, rows, cols).map((words) => words * 4));
}

/**
 * Row counts of the chunks of a (rows, cols) `dtype` weight whose planes must each stay within
 * `limitBytes`: as few chunks as possible, balanced (sizes differ by at most one row, larger first).
 * ShapeError when not even one row fits.
 */
export function chunkRows(label: string, dtype: WeightDtype, rows: number, cols: number, limitBytes: number, rowMultiple = 1): number[] {
  checkDims(`weight "${label}"`, dtype, rows, cols);
  if (!Number.isSafeInteger(limitBytes) || limitBytes < 1) {
    throw new ShapeError(`weight "${label}": chunk limit must be an integer >= 1 byte (got ${limitBytes})`);
  }
  if (!Number.isSafeInteger(rowMultiple) || rowMultiple < 1 || rows % rowMultiple !== 0) {
    throw new ShapeError(`weight "${label}": ${rows} rows are not a whole number of groups of ${rowMultiple} rows`);
  }
  const unit = rowMultiple;
  if (largestPlaneBytes(dtype, unit, cols) > limitBytes) {
    throw new ShapeError(
      `weight "${label}" (${rows}x${cols} ${dtype}): ${unit === 1 ? 'one row needs' : `${unit} rows need`} ` +
        `${largestPlaneBytes(dtype, unit, cols)} bytes in a plane, over the limit of ${limitBytes} bytes per storage binding`,
    );
  }
  // Largest count of row groups that fits (plane sizes grow with rows; binary search keeps this exact
  // for the rounded-up scale planes too).
  const groups = rows / unit;
  let lo = 1;
  let hi = groups;
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (largestPlaneBytes(dtype, mid * unit, cols) <= limitBytes) lo = mid;
    else hi = mid - 1;
  }
  const count = Math.ceil(groups / lo);
  const base = Math.floor(groups / count);
  return Array.from({ length: count }, (_, i) => (base + (i < groups % count ? 1 : 0)) * unit);
}

/**
 * Upload a host weight as row chunks small enough for one storage binding each (see chunkRows):
 * one chunk labelled `label` when it fits (buffers named as uploadWeight names them), else chunks
 * labelled `${label}#0`, `${label}#1`, ...
 */
export function uploadWeightChunks(gpu: Gpu, label: string, weight: HostWeight, options: UploadChunksOptions = {}): ChunkedWeight {
  const { arena, maxChunkBytes, rowMultiple = 1 } = options;
  const adapterLimit = Math.min(gpu.limits.maxStorageBufferBindingSize, gpu.limits.maxBufferSize);
  if (maxChunkBytes !== undefined && (!Number.isSafeInteger(maxChunkBytes) || maxChunkBytes < 1)) {
    throw new ShapeError(`weight "${label}": maxChunkBytes must be an integer >= 1 (got ${maxChunkBytes})`);
  }
  const limit = Math.min(adapterLimit, maxChunkBytes ?? adapterLimit);
  checkPlanes(label, weight);
  const sizes = chunkRows(label, weight.dtype, weight.rows, weight.cols, limit, rowMultiple);
  if (sizes.length === 1) return asChunked(uploadWeight(gpu, label, weight, arena));
  const chunks: WeightChunk[] = [];
  let firstRow = 0;
  for (const [i, rows] of sizes.entries()) {
    const part = sliceWeightRows(weight, firstRow, rows);
    chunks.push({ firstRow, weight: uploadWeight(gpu, `${label}#${i}`, part, arena) });
    firstRow += rows;
  }
  const { dtype, rows, cols } = weight;
  return { label, dtype, rows, cols, chunks, bytes: chunks.reduce((sum, c) => sum + c.weight.bytes, 0) };
}

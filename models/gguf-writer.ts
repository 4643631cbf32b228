// Writing GGUF v3 files: typed metadata values, the header (metadata and tensor table), the data
// section's layout, and a streaming writer that asks for one tensor's bytes at a time, writes them
// and lets them go, so that a file of any size is written with one tensor in memory (a 7B Q4_0
// model is ~3.8 GB; its largest tensor, the token embedding, ~74 MB).
// Layout as llama.cpp's gguf writer makes it: magic "GGUF", u32 version, u64 tensor count, u64
// metadata count, metadata (u64-length key, u32 type, value), tensor infos (name, u32 n_dims,
// u64 ne[], u32 ggml type, u64 offset), zero padding to the alignment, then each tensor's bytes
// padded to the alignment, in table order.
import { open, rm } from 'node:fs/promises';
import { GgufValueType, type GgufMetadataEntry, type GgufValue, type GgufValueTypeId } from './gguf.ts';
import { ggmlByteLength } from './ggml.ts';

export const GGUF_DEFAULT_ALIGNMENT = 32;

// Constructors for typed metadata values.
const scalar = (type: GgufValueTypeId) => (value: number): GgufMetadataEntry => ({ type, value });
export const gguf = {
  u8: scalar(GgufValueType.UINT8),
  i8: scalar(GgufValueType.INT8),
  u16: scalar(GgufValueType.UINT16),
  i16: scalar(GgufValueType.INT16),
  u32: scalar(GgufValueType.UINT32),
  i32: scalar(GgufValueType.INT32),
  f32: scalar(GgufValueType.FLOAT32),
  f64: scalar(GgufValueType.FLOAT64),
  u64: (value: number | bigint): GgufMetadataEntry => ({ type: GgufValueType.UINT64, value: BigInt(value) }),
  i64: (value: number | bigint): GgufMetadataEntry => ({ type: GgufValueType.INT64, value: BigInt(value) }),
  bool: (value: boolean): GgufMetadataEntry => ({ type: GgufValueType.BOOL, value }),
  string: (value: string): GgufMetadataEntry => ({ type: GgufValueType.STRING, value }),
  strings: (value: string[]): GgufMetadataEntry => ({ type: GgufValueType.ARRAY, itemType: GgufValueType.STRING, value }),
  f32s: (value: ArrayLike<number>): GgufMetadataEntry => ({
    type: GgufValueType.ARRAY,
    itemType: GgufValueType.FLOAT32,
    value: Float32Array.from(value),
  }),
  i32s: (value: ArrayLike<number>): GgufMetadataEntry => ({
    type: GgufValueType.ARRAY,
    itemType: GgufValueType.INT32,
    value: Int32Array.from(value),
  }),
  array: (itemType: GgufValueTypeId, value: GgufValue): GgufMetadataEntry => ({ type: GgufValueType.ARRAY, itemType, value }),
};

/** Collects the header's little-endian fields as chunks. */
class HeaderBytes {
  chunks: Buffer[] = [];
  length = 0;
  push(b: Buffer): void {
    this.chunks.push(b);
    this.length += b.length;
  }
  u32(v: number): void {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v);
    this.push(b);
  }
  u64(v: number | bigint): void {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(v));
    this.push(b);
  }
  string(s: string): void {
    const bytes = Buffer.from(s, 'utf8');
    this.u64(bytes.length);
    this.push(bytes);
  }
  scalar(type: number, v: GgufValue): void {
    const b = Buffer.alloc(type === GgufValueType.UINT64 || type === GgufValueType.INT64 || type === GgufValueType.FLOAT64 ? 8 : 4);
    switch (type) {
      case GgufValueType.UINT8:
        return this.push(Buffer.from([Number(v) & 0xff]));
      case GgufValueType.INT8:
        return this.push(Buffer.from([Number(v) & 0xff]));
      case GgufValueType.BOOL:
        return this.push(Buffer.from([v ? 1 : 0]));
      case GgufValueType.UINT16: {
        const h = Buffer.alloc(2);
        h.writeUInt16LE(Number(v));
        return this.push(h);
      }
      case GgufValueType.INT16: {
        const h = Buffer.alloc(2);
        h.writeInt16LE(Number(v));
        return this.push(h);
      }
      case GgufValueType.UINT32:
        b.writeUInt32LE(Number(v));
        break;
      case GgufValueType.INT32:
        b.writeInt32LE(Number(v));
        break;
      case GgufValueType.FLOAT32:
        b.writeFloatLE(Number(v));
        break;
      case GgufValueType.UINT64:
        b.writeBigUInt64LE(BigInt(v as bigint));
        break;
      case GgufValueType.INT64:
        b.writeBigInt64LE(BigInt(v as bigint));
        break;
      case GgufValueType.FLOAT64:
        b.writeDoubleLE(Number(v));
        break;
      default:
        throw new RangeError(`GGUF: ${type} is not a scalar value type`);
    }
    this.push(b);
  }
  value(type: number, itemType: number | undefined, v: GgufValue): void {
    if (type === GgufValueType.STRING) return this.string(v as string);
    if (type !== GgufValueType.ARRAY) return this.scalar(type, v);
    if (itemType === undefined) throw new RangeError('GGUF: an array value needs an item type');
    const items = Array.from(v as ArrayLike<GgufValue>);
    this.u32(itemType);
    this.u64(items.length);
    for (const item of items) {
      if (itemType === GgufValueType.ARRAY) {
        // A nested array: its own item type is taken from its JS type (string[] or number[]).
        const inner = item as GgufValue[];
        const innerType = typeof inner[0] === 'string' ? GgufValueType.STRING : GgufValueType.INT32;
        this.value(GgufValueType.ARRAY, innerType, inner);
      } else this.value(itemType, undefined, item);
    }
  }
}

/** One row of the tensor table. */
export interface GgufTensorEntry {
  name: string;
  /** ggml_type id (GgmlType.*). */
  type: number;
  /** Dimensions, fastest-varying first. */
  ne: number[];
  /** Offset within the data section. */
  offset: number;
}

export interface GgufHeaderOptions {
  metadata: Iterable<[string, GgufMetadataEntry]>;
  tensors: readonly GgufTensorEntry[];
  /** Written as general.alignment when not 32 (and the key is not given); the default is 32. */
  alignment?: number;
  version?: number;
}

/** The header's bytes, zero-padded to the alignment: the data section starts right after them. */
export function encodeGgufHeader(options: GgufHeaderOptions): Buffer {
  const alignment = options.alignment ?? GGUF_DEFAULT_ALIGNMENT;
  const metadata = new Map(options.metadata);
  if (alignment !== GGUF_DEFAULT_ALIGNMENT && !metadata.has('general.alignment')) metadata.set('general.alignment', gguf.u32(alignment));
  const out = new HeaderBytes();
  out.push(Buffer.from('GGUF', 'latin1'));
  out.u32(options.version ?? 3);
  out.u64(options.tensors.length);
  out.u64(metadata.size);
  for (const [key, entry] of metadata) {
    out.string(key);
    out.u32(entry.type);
    out.value(entry.type, entry.itemType, entry.value);
  }
  for (const t of options.tensors) {
    out.string(t.name);
    out.u32(t.ne.length);
    for (const n of t.ne) out.u64(n);
    out.u32(t.type);
    out.u64(t.offset);
  }
  out.push(Buffer.alloc(alignUp(out.length, alignment) - out.length));
  return Buffer.concat(out.chunks);
}

export function alignUp(offset: number, alignment: number): number {
  return Math.ceil(offset / alignment) * alignment;
}

/** Offsets of tensors of these byte lengths laid one after the other, each padded to the alignment, and the section's size. */
export function ggufDataLayout(byteLengths: readonly number[], alignment = GGUF_DEFAULT_ALIGNMENT): { offsets: number[]; dataBytes: number } {
  let next = 0;
  const offsets = byteLengths.map((length) => {
    const offset = next;
    next = alignUp(offset + length, alignment);
    return offset;
  });
  return { offsets, dataBytes: next };
}

// ---- streaming --------------------------------------------------------------------------------

/** A tensor whose bytes are made only when the writer reaches it. */
export interface GgufLazyTensor {
  name: string;
  type: number;
  ne: number[];
  /** Its bytes (exactly ne's element count in `type`); called once, just before they are written. */
  bytes(): Uint8Array | Promise<Uint8Array>;
}

/** Where streamed bytes go: a file (writeGgufFile) or anything else that takes them in order. */
export interface GgufByteTarget {
  write(bytes: Uint8Array): Promise<void>;
}

export interface GgufStreamOptions {
  metadata: Iterable<[string, GgufMetadataEntry]>;
  alignment?: number;
  version?: number;
  /** Called after each tensor is written (index in table order, bytes of the file so far). */
  onTensor?: (index: number, tensor: GgufLazyTensor, bytesWritten: number) => void;
}

export interface GgufStreamResult {
  /** Bytes of the whole file. */
  bytes: number;
  tensors: number;
}

/**
 * Write a GGUF file to `target`: the header (the layout is known from each tensor's type and ne),
 * then each tensor's bytes as its bytes() makes them, then its padding. No tensor's bytes are held
 * once written, so memory stays at the largest tensor however large the file.
 */
export async function writeGgufStream(target: GgufByteTarget, options: GgufStreamOptions, tensors: readonly GgufLazyTensor[]): Promise<GgufStreamResult> {
  const alignment = options.alignment ?? GGUF_DEFAULT_ALIGNMENT;
  const lengths = tensors.map((t) => {
    const count = t.ne.reduce((a, b) => a * b, 1);
    if (!t.ne.every((n) => Number.isSafeInteger(n) && n > 0)) throw new RangeError(`GGUF: tensor "${t.name}" has dimensions [${t.ne.join(', ')}]; each must be a positive integer`);
    return ggmlByteLength(t.type, count);
  });
  const { offsets } = ggufDataLayout(lengths, alignment);
  const header = encodeGgufHeader({
    metadata: options.metadata,
    tensors: tensors.map((t, i) => ({ name: t.name, type: t.type, ne: t.ne, offset: offsets[i] })),
    alignment,
    version: options.version,
  });
  await target.write(header);
  let written = header.length;
  for (let i = 0; i < tensors.length; i++) {
    const bytes = await tensors[i].bytes();
    if (bytes.byteLength !== lengths[i]) {
      throw new RangeError(`GGUF: tensor "${tensors[i].name}" made ${bytes.byteLength} bytes; its type and dimensions need ${lengths[i]}`);
    }
    await target.write(bytes);
    const padding = alignUp(lengths[i], alignment) - lengths[i];
    if (padding > 0) await target.write(new Uint8Array(padding));
    written += lengths[i] + padding;
    options.onTensor?.(i, tensors[i], written);
  }
  return { bytes: written, tensors: tensors.length };
}

/** writeGgufStream into a file at `path` (replaced if it exists; removed again if writing fails). */
export async function writeGgufFile(path: string, options: GgufStreamOptions, tensors: readonly GgufLazyTensor[]): Promise<GgufStreamResult> {
  const file = await open(path, 'w');
  let position = 0;
  const target: GgufByteTarget = {
    async write(bytes) {
      // FileHandle.write may write less than asked: loop until every byte is down.
      let done = 0;
      while (done < bytes.byteLength) {
        const { bytesWritten } = await file.write(bytes, done, bytes.byteLength - done, position + done);
        done += bytesWritten;
      }
      position += bytes.byteLength;
    },
  };
  try {
    const result = await writeGgufStream(target, options, tensors);
    await file.close();
    return result;
  } catch (err) {
    await file.close();
    await rm(path, { force: true });
    throw err;
  }
}

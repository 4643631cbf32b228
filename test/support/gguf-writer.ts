// A GGUF v3 writer for tests: metadata of every value type, tensors of any ggml type from bytes the
// caller made (models/ggml.ts encodes F32/F16/BF16/Q8_0/Q4_0). Tensor offsets are laid out the way
// llama.cpp's gguf writer does (each tensor padded to the alignment, in order) unless a test asks for
// a specific, possibly broken, offset.
import { writeFileSync } from 'node:fs';
import { GgufValueType, type GgufMetadataEntry, type GgufValue, type GgufValueTypeId } from '../../models/gguf.ts';

export interface GgufWriteTensor {
  name: string;
  /** ggml_type id (GgmlType.*). */
  type: number;
  /** Dimensions, fastest-varying first. */
  ne: number[];
  data: Uint8Array;
  /** Offset within the data section; by default the next aligned position. */
  offset?: number;
}

export interface GgufWriteOptions {
  metadata: Iterable<[string, GgufMetadataEntry]>;
  tensors?: GgufWriteTensor[];
  /** Written as general.alignment when not 32; the default is 32. */
  alignment?: number;
  version?: number;
}

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

class ByteSink {
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
        throw new Error(`not a scalar type: ${type}`);
    }
    this.push(b);
  }
  value(type: number, itemType: number | undefined, v: GgufValue): void {
    if (type === GgufValueType.STRING) return this.string(v as string);
    if (type !== GgufValueType.ARRAY) return this.scalar(type, v);
    if (itemType === undefined) throw new Error('array without an item type');
    const items = Array.from(v as ArrayLike<GgufValue>);
    this.u32(itemType);
    this.u64(items.length);
    for (const item of items) {
      if (itemType === GgufValueType.ARRAY) {
        // A nested array: its own item type is taken from its JS type (tests use string[] or number[] only).
        const inner = item as GgufValue[];
        const innerType = typeof inner[0] === 'string' ? GgufValueType.STRING : GgufValueType.INT32;
        this.value(GgufValueType.ARRAY, innerType, inner);
      } else this.value(itemType, undefined, item);
    }
  }
}

/** The bytes of a GGUF file. */
export function encodeGguf(options: GgufWriteOptions): Buffer {
  const alignment = options.alignment ?? 32;
  const metadata = new Map(options.metadata);
  if (alignment !== 32 && !metadata.has('general.alignment')) metadata.set('general.alignment', gguf.u32(alignment));
  const tensors = options.tensors ?? [];
  const sink = new ByteSink();
  sink.push(Buffer.from('GGUF', 'latin1'));
  sink.u32(options.version ?? 3);
  sink.u64(tensors.length);
  sink.u64(metadata.size);
  for (const [key, entry] of metadata) {
    sink.string(key);
    sink.u32(entry.type);
    sink.value(entry.type, entry.itemType, entry.value);
  }
  // Default offsets follow each other, padded to the alignment. An explicit offset is written as
  // given and does not grow the data section: a test can point a tensor outside the file.
  let next = 0;
  const offsets = tensors.map((t) => {
    if (t.offset !== undefined) return t.offset;
    const offset = next;
    next = Math.ceil((offset + t.data.length) / alignment) * alignment;
    return offset;
  });
  tensors.forEach((t, i) => {
    sink.string(t.name);
    sink.u32(t.ne.length);
    for (const n of t.ne) sink.u64(n);
    sink.u32(t.type);
    sink.u64(offsets[i]);
  });
  const dataStart = Math.ceil(sink.length / alignment) * alignment;
  sink.push(Buffer.alloc(dataStart - sink.length));
  const data = Buffer.alloc(next);
  tensors.forEach((t, i) => {
    if (offsets[i] + t.data.length <= data.length) data.set(t.data, offsets[i]);
  });
  sink.push(data);
  return Buffer.concat(sink.chunks);
}

export function writeGguf(path: string, options: GgufWriteOptions): void {
  writeFileSync(path, encodeGguf(options));
}

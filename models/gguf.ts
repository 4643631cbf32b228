// GGUF reader (versions 2 and 3; llama.cpp writes 3). Opening a file parses the header, the metadata
// and the tensor table, reading only as many bytes as they take; tensor data is read later, one tensor
// at a time, into a buffer sized for that tensor, so a multi-GB file never sits in the JS heap.
// Every count, length and offset is checked against the bytes that are really there before anything
// is allocated for it; a bad file fails with a ModelFormatError that names the file, the key or
// tensor, and the problem.
//
// Layout (little-endian): "GGUF", u32 version, u64 tensor count, u64 kv count; kv = (string key,
// u32 value type, value); tensor info = (string name, u32 n_dims, u64 ne[n_dims], u32 ggml type,
// u64 offset); then padding to general.alignment (default 32) and the data section. Strings are a
// u64 byte length and UTF-8 bytes. ne[0] is the fastest-varying axis: a row-major [rows, cols]
// matrix has ne = [cols, rows].
import { open, type FileHandle } from 'node:fs/promises';
import { ModelFormatError } from '../src/errors.ts';
import { decodeGgml, ggmlTypeInfo, isSupportedGgmlType, SUPPORTED_GGML_TYPES, type GgmlTypeName } from './ggml.ts';

/** GGUF metadata value types (gguf.h). */
export const GgufValueType = {
  UINT8: 0,
  INT8: 1,
  UINT16: 2,
  INT16: 3,
  UINT32: 4,
  INT32: 5,
  FLOAT32: 6,
  BOOL: 7,
  STRING: 8,
  ARRAY: 9,
  UINT64: 10,
  INT64: 11,
  FLOAT64: 12,
} as const;
export type GgufValueTypeId = (typeof GgufValueType)[keyof typeof GgufValueType];

const VALUE_TYPE_NAMES = Object.fromEntries(Object.entries(GgufValueType).map(([k, v]) => [v, k])) as Record<number, string>;

/**
 * A metadata value as read. Scalars: number (8-32 bit ints, floats), bigint (u64, i64), boolean,
 * string. Arrays of numbers come back as the matching typed array (u64/i64 as BigUint64Array /
 * BigInt64Array), arrays of bools and strings as plain arrays, arrays of arrays as nested arrays.
 */
export type GgufValue =
  | number
  | bigint
  | boolean
  | string
  | Uint8Array
  | Int8Array
  | Uint16Array
  | Int16Array
  | Uint32Array
  | Int32Array
  | Float32Array
  | Float64Array
  | BigUint64Array
  | BigInt64Array
  | boolean[]
  | string[]
  | GgufValue[];

export interface GgufMetadataEntry {
  type: GgufValueTypeId;
  /** Element type, for arrays. */
  itemType?: GgufValueTypeId;
  value: GgufValue;
}

export interface GgufTensorInfo {
  name: string;
  /** ggml_type id. */
  type: number;
  typeName: GgmlTypeName;
  /** Dimensions, fastest-varying first (GGUF order). */
  ne: number[];
  /** Dimensions, row-major (PyTorch order): ne reversed. */
  shape: number[];
  elements: number;
  byteLength: number;
  /** Absolute byte offset of the tensor's data in the file. */
  fileOffset: number;
  /** Whether this runtime can read the type (SUPPORTED_GGML_TYPES). */
  supported: boolean;
}

export interface GgufTensorData {
  info: GgufTensorInfo;
  /** The tensor's raw bytes, in a buffer of their own (offset 0, so typed views are aligned). */
  bytes: Uint8Array;
}

const MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
const DEFAULT_ALIGNMENT = 32;
const MAX_DIMS = 4; // GGML_MAX_DIMS
const FIRST_HEADER_READ = 1 << 20;
/** The header (metadata + tensor table) may not exceed this; real ones are a few MB. */
export const MAX_GGUF_HEADER_BYTES = 1 << 30;
/** One fs.read call moves at most this much (Node caps a single read below 2 GiB). */
const READ_CHUNK = 1 << 30;

class NeedMoreBytes extends Error {}

const SCALAR_SIZE: Partial<Record<number, number>> = {
  [GgufValueType.UINT8]: 1,
  [GgufValueType.INT8]: 1,
  [GgufValueType.UINT16]: 2,
  [GgufValueType.INT16]: 2,
  [GgufValueType.UINT32]: 4,
  [GgufValueType.INT32]: 4,
  [GgufValueType.FLOAT32]: 4,
  [GgufValueType.BOOL]: 1,
  [GgufValueType.UINT64]: 8,
  [GgufValueType.INT64]: 8,
  [GgufValueType.FLOAT64]: 8,
};

/** Smallest encoding of one value of a type: lets counts be checked against the bytes left. */
function minValueBytes(type: number): number {
  if (type === GgufValueType.STRING) return 8;
  if (type === GgufValueType.ARRAY) return 12;
  return SCALAR_SIZE[type] ?? 1;
}

/** Reads the header from a prefix of the file; throws NeedMoreBytes when the prefix is too short. */
class Cursor {
  pos = 0;
  /** What is being read, for error messages. */
  what = 'the header';
  readonly #view: DataView;

  constructor(
    readonly buf: Buffer,
    readonly fileSize: number,
    readonly path: string,
  ) {
    this.#view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  fail(problem: string): never {
    throw new ModelFormatError(`${this.path}: ${problem}`);
  }

  need(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    if (this.pos + n > MAX_GGUF_HEADER_BYTES && this.pos + n <= this.fileSize) {
      this.fail(`${this.what} would take the header past ${MAX_GGUF_HEADER_BYTES} bytes (corrupt length?)`);
    }
    if (this.buf.length < this.fileSize) throw new NeedMoreBytes();
    this.fail(`file is truncated: it ends at byte ${this.fileSize} while reading ${this.what} (${n} bytes needed at ${this.pos})`);
  }

  /** Bytes from the cursor to the end of the file. */
  get left(): number {
    return this.fileSize - this.pos;
  }

  u8(): number {
    this.need(1);
    return this.#view.getUint8(this.pos++);
  }
  u32(): number {
    this.need(4);
    const v = this.#view.getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }
  /** A u64 that must fit a safe integer (counts, lengths, offsets, dims). */
  u64(): number {
    this.need(8);
    const v = this.#view.getBigUint64(this.pos, true);
    this.pos += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) this.fail(`${this.what}: value ${v} is too large`);
    return Number(v);
  }

  string(): string {
    const length = this.u64();
    if (length > this.left) this.fail(`${this.what}: string length ${length} runs past the end of the file (truncated or corrupt)`);
    this.need(length);
    const s = this.buf.toString('utf8', this.pos, this.pos + length);
    this.pos += length;
    return s;
  }

  scalar(type: number): number | bigint | boolean {
    const size = SCALAR_SIZE[type]!;
    this.need(size);
    const v = this.#view;
    const p = this.pos;
    this.pos += size;
    switch (type) {
      case GgufValueType.UINT8:
        return v.getUint8(p);
      case GgufValueType.INT8:
        return v.getInt8(p);
      case GgufValueType.UINT16:
        return v.getUint16(p, true);
      case GgufValueType.INT16:
        return v.getInt16(p, true);
      case GgufValueType.UINT32:
        return v.getUint32(p, true);
      case GgufValueType.INT32:
        return v.getInt32(p, true);
      case GgufValueType.FLOAT32:
        return v.getFloat32(p, true);
      case GgufValueType.BOOL: {
        const b = v.getUint8(p);
        if (b > 1) this.fail(`${this.what}: bool value ${b} is neither 0 nor 1`);
        return b === 1;
      }
      case GgufValueType.UINT64:
        return v.getBigUint64(p, true);
      case GgufValueType.INT64:
        return v.getBigInt64(p, true);
      case GgufValueType.FLOAT64:
        return v.getFloat64(p, true);
    }
    throw new Error('unreachable');
  }

  valueType(): GgufValueTypeId {
    const type = this.u32();
    if (VALUE_TYPE_NAMES[type] === undefined) this.fail(`${this.what}: unknown value type ${type}`);
    return type as GgufValueTypeId;
  }

  value(type: GgufValueTypeId, depth = 0): { value: GgufValue; itemType?: GgufValueTypeId } {
    if (type === GgufValueType.STRING) return { value: this.string() };
    if (type !== GgufValueType.ARRAY) return { value: this.scalar(type) as GgufValue };
    const itemType = this.valueType();
    const count = this.u64();
    if (count * minValueBytes(itemType) > this.left) {
      this.fail(`${this.what}: array of ${count} ${VALUE_TYPE_NAMES[itemType]} runs past the end of the file (truncated or corrupt)`);
    }
    if (itemType === GgufValueType.ARRAY && depth >= 8) this.fail(`${this.what}: arrays nested too deeply`);
    const size = SCALAR_SIZE[itemType];
    if (size !== undefined && itemType !== GgufValueType.BOOL) {
      this.need(count * size);
      const bytes = this.buf.buffer.slice(this.buf.byteOffset + this.pos, this.buf.byteOffset + this.pos + count * size);
      this.pos += count * size;
      return { itemType, value: typedArray(itemType, bytes as ArrayBuffer) };
    }
    const items: GgufValue[] = [];
    // Nested arrays carry their own element type and count but no ARRAY tag of their own.
    for (let i = 0; i < count; i++) items.push(this.value(itemType, depth + 1).value);
    return { itemType, value: items };
  }
}

function typedArray(type: number, bytes: ArrayBuffer): GgufValue {
  switch (type) {
    case GgufValueType.UINT8:
      return new Uint8Array(bytes);
    case GgufValueType.INT8:
      return new Int8Array(bytes);
    case GgufValueType.UINT16:
      return new Uint16Array(bytes);
    case GgufValueType.INT16:
      return new Int16Array(bytes);
    case GgufValueType.UINT32:
      return new Uint32Array(bytes);
    case GgufValueType.INT32:
      return new Int32Array(bytes);
    case GgufValueType.FLOAT32:
      return new Float32Array(bytes);
    case GgufValueType.UINT64:
      return new BigUint64Array(bytes);
    case GgufValueType.INT64:
      return new BigInt64Array(bytes);
    case GgufValueType.FLOAT64:
      return new Float64Array(bytes);
  }
  throw new Error('unreachable');
}

interface ParsedHeader {
  version: number;
  metadata: Map<string, GgufMetadataEntry>;
  tensors: Map<string, GgufTensorInfo>;
  alignment: number;
  dataOffset: number;
}

/** Parse a GGUF header from `buf`, the first bytes of a file of `fileSize` bytes. */
function parseHeader(buf: Buffer, fileSize: number, path: string): ParsedHeader {
  const c: Cursor = new Cursor(buf, fileSize, path);
  c.what = 'the magic number';
  if (fileSize < 4) c.fail(`file is truncated: ${fileSize} bytes is too short to be a GGUF file`);
  const magic = c.u32();
  if (magic !== MAGIC) {
    const shown = buf.subarray(0, 4).toString('latin1').replace(/[^\x20-\x7e]/g, '?');
    c.fail(`bad magic "${shown}" (0x${magic.toString(16).padStart(8, '0')}): not a GGUF file`);
  }
  c.what = 'the version';
  const version = c.u32();
  if (version === 0x03000000 || version === 0x02000000) c.fail('big-endian GGUF files are not supported');
  if (version !== 2 && version !== 3) c.fail(`GGUF version ${version} is not supported (supported: 2, 3)`);
  c.what = 'the tensor count';
  const tensorCount = c.u64();
  c.what = 'the metadata count';
  const kvCount = c.u64();
  // Each tensor info takes at least 32 bytes and each kv at least 13; a count the rest of the file
  // cannot hold is reported as such rather than as whatever the bytes after the last entry parse to.
  if (tensorCount * 32 + kvCount * 13 > c.left) {
    c.fail(`file is truncated or corrupt: ${kvCount} metadata entries and ${tensorCount} tensor infos cannot fit in the ${c.left} bytes left`);
  }

  const metadata = new Map<string, GgufMetadataEntry>();
  for (let i = 0; i < kvCount; i++) {
    c.what = `metadata key #${i}`;
    const key = c.string();
    c.what = `metadata key "${key}"`;
    if (metadata.has(key)) c.fail(`metadata key "${key}" appears twice`);
    const type = c.valueType();
    const { value, itemType } = c.value(type);
    metadata.set(key, itemType === undefined ? { type, value } : { type, itemType, value });
  }

  let alignment = DEFAULT_ALIGNMENT;
  const alignEntry = metadata.get('general.alignment');
  if (alignEntry) {
    const a = alignEntry.value;
    if (alignEntry.type !== GgufValueType.UINT32 || typeof a !== 'number' || a === 0 || (a & (a - 1)) !== 0) {
      c.fail(`metadata key "general.alignment" must be a u32 power of two (got ${String(a)} of type ${VALUE_TYPE_NAMES[alignEntry.type]})`);
    }
    alignment = a;
  }

  const raw: Array<{ name: string; ne: number[]; type: number; offset: number }> = [];
  const names = new Set<string>();
  for (let i = 0; i < tensorCount; i++) {
    c.what = `tensor info #${i}`;
    const name = c.string();
    c.what = `tensor "${name}"`;
    if (names.has(name)) c.fail(`tensor "${name}" appears twice`);
    names.add(name);
    const nDims = c.u32();
    if (nDims < 1 || nDims > MAX_DIMS) c.fail(`tensor "${name}": ${nDims} dimensions (must be 1..${MAX_DIMS})`);
    const ne: number[] = [];
    for (let d = 0; d < nDims; d++) ne.push(c.u64());
    const type = c.u32();
    const offset = c.u64();
    raw.push({ name, ne, type, offset });
  }
  const dataOffset = Math.ceil(c.pos / alignment) * alignment;

  const tensors = new Map<string, GgufTensorInfo>();
  for (const { name, ne, type, offset } of raw) {
    const info = ggmlTypeInfo(type);
    if (!info) c.fail(`tensor "${name}": unknown ggml type ${type}`);
    let elements = 1;
    for (const n of ne) {
      elements *= n;
      if (!Number.isSafeInteger(elements)) c.fail(`tensor "${name}": dimensions [${ne.join(', ')}] overflow`);
    }
    if (ne[0] % info.blockSize !== 0) {
      c.fail(`tensor "${name}": ne[0] = ${ne[0]} is not a multiple of the ${info.name} block size ${info.blockSize}`);
    }
    const byteLength = (elements / info.blockSize) * info.blockBytes;
    if (offset % alignment !== 0) c.fail(`tensor "${name}": data offset ${offset} is not a multiple of the alignment ${alignment}`);
    const fileOffset = dataOffset + offset;
    if (fileOffset + byteLength > fileSize) {
      c.fail(
        `tensor "${name}" (${info.name} [${ne.join(', ')}], ${byteLength} bytes) lies outside the file: ` +
          `its data would end at byte ${fileOffset + byteLength} but the file has ${fileSize} bytes`,
      );
    }
    tensors.set(name, {
      name,
      type,
      typeName: info.name,
      ne,
      shape: [...ne].reverse(),
      elements,
      byteLength,
      fileOffset,
      supported: isSupportedGgmlType(type),
    });
  }
  const sorted = [...tensors.values()].sort((a, b) => a.fileOffset - b.fileOffset);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1];
    if (sorted[i].fileOffset < prev.fileOffset + prev.byteLength) {
      c.fail(`tensors "${prev.name}" and "${sorted[i].name}" overlap in the data section`);
    }
  }
  return { version, metadata, tensors, alignment, dataOffset };
}

/** Read exactly `target.length` bytes at `position`, in chunks Node accepts. */
async function readExactly(fh: FileHandle, target: Uint8Array, position: number, path: string, what: string): Promise<void> {
  let done = 0;
  while (done < target.length) {
    const length = Math.min(READ_CHUNK, target.length - done);
    const { bytesRead } = await fh.read(target, done, length, position + done);
    if (bytesRead === 0) {
      throw new ModelFormatError(`${path}: file ended at byte ${position + done} while reading ${what} (was it truncated after opening?)`);
    }
    done += bytesRead;
  }
}

export class GgufFile {
  readonly path: string;
  readonly version: number;
  readonly fileSize: number;
  readonly alignment: number;
  /** Byte offset where the data section starts. */
  readonly dataOffset: number;
  readonly metadata: ReadonlyMap<string, GgufMetadataEntry>;
  /** Tensor infos in file order. */
  readonly tensors: ReadonlyMap<string, GgufTensorInfo>;
  readonly #fh: FileHandle;

  private constructor(path: string, fh: FileHandle, fileSize: number, header: ParsedHeader) {
    this.path = path;
    this.#fh = fh;
    this.fileSize = fileSize;
    this.version = header.version;
    this.alignment = header.alignment;
    this.dataOffset = header.dataOffset;
    this.metadata = header.metadata;
    this.tensors = header.tensors;
  }

  /** Open and validate a GGUF file; tensor data stays on disk until read. Call close() when done. */
  static async open(path: string): Promise<GgufFile> {
    let fh: FileHandle;
    try {
      fh = await open(path, 'r');
    } catch (err) {
      throw new ModelFormatError(`${path}: cannot open GGUF file: ${(err as Error).message}`, { cause: err });
    }
    try {
      const fileSize = (await fh.stat()).size;
      let length = Math.min(fileSize, FIRST_HEADER_READ);
      for (;;) {
        const buf = Buffer.allocUnsafe(length);
        await readExactly(fh, buf, 0, path, 'the header');
        try {
          return new GgufFile(path, fh, fileSize, parseHeader(buf, fileSize, path));
        } catch (err) {
          if (!(err instanceof NeedMoreBytes)) throw err;
        }
        if (length >= MAX_GGUF_HEADER_BYTES) {
          throw new ModelFormatError(`${path}: metadata and tensor table exceed ${MAX_GGUF_HEADER_BYTES} bytes`);
        }
        length = Math.min(fileSize, length * 4, MAX_GGUF_HEADER_BYTES);
      }
    } catch (err) {
      await fh.close();
      throw err;
    }
  }

  async close(): Promise<void> {
    await this.#fh.close();
  }

  /** The raw metadata value, or undefined when the key is absent. */
  get(key: string): GgufValue | undefined {
    return this.metadata.get(key)?.value;
  }

  #typeError(key: string, expected: string): never {
    const entry = this.metadata.get(key)!;
    const type = VALUE_TYPE_NAMES[entry.type] + (entry.itemType !== undefined ? ` of ${VALUE_TYPE_NAMES[entry.itemType]}` : '');
    throw new ModelFormatError(`${this.path}: metadata key "${key}" should be ${expected} but is ${type}`);
  }

  #missing(key: string, expected: string): never {
    throw new ModelFormatError(`${this.path}: metadata key "${key}" (${expected}) is missing`);
  }

  /** A string value; without a fallback, a missing key is an error. */
  string(key: string, fallback?: string): string {
    const v = this.get(key);
    if (v === undefined) return fallback ?? this.#missing(key, 'a string');
    if (typeof v !== 'string') this.#typeError(key, 'a string');
    return v;
  }

  /** Any numeric scalar as a number (u64/i64 must be safe integers). */
  number(key: string, fallback?: number): number {
    const v = this.get(key);
    if (v === undefined) return fallback ?? this.#missing(key, 'a number');
    if (typeof v === 'number') return v;
    if (typeof v === 'bigint') {
      if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER)) {
        throw new ModelFormatError(`${this.path}: metadata key "${key}" = ${v} does not fit a safe integer`);
      }
      return Number(v);
    }
    this.#typeError(key, 'a number');
  }

  /** A non-negative integer scalar. */
  integer(key: string, fallback?: number): number {
    const v = this.number(key, fallback);
    if (!Number.isSafeInteger(v) || v < 0) {
      throw new ModelFormatError(`${this.path}: metadata key "${key}" should be a non-negative integer but is ${v}`);
    }
    return v;
  }

  boolean(key: string, fallback?: boolean): boolean {
    const v = this.get(key);
    if (v === undefined) return fallback ?? this.#missing(key, 'a bool');
    if (typeof v !== 'boolean') this.#typeError(key, 'a bool');
    return v;
  }

  /** An array of strings. */
  strings(key: string): string[] | undefined {
    const entry = this.metadata.get(key);
    if (!entry) return undefined;
    if (entry.itemType !== GgufValueType.STRING) this.#typeError(key, 'an array of strings');
    return entry.value as string[];
  }

  /** A numeric array as numbers (any element type but u64/i64/bool/string). */
  numbers(key: string): ArrayLike<number> | undefined {
    const entry = this.metadata.get(key);
    if (!entry) return undefined;
    const v = entry.value;
    if (!ArrayBuffer.isView(v) || v instanceof BigInt64Array || v instanceof BigUint64Array) this.#typeError(key, 'a numeric array');
    return v as ArrayLike<number>;
  }

  tensor(name: string): GgufTensorInfo {
    const info = this.tensors.get(name);
    if (!info) throw new ModelFormatError(`${this.path}: tensor "${name}" is missing`);
    return info;
  }

  #checkSupported(info: GgufTensorInfo): void {
    if (!info.supported) {
      throw new ModelFormatError(
        `${this.path}: tensor "${info.name}" has type ${info.typeName}, which is not supported yet ` +
          `(supported: ${SUPPORTED_GGML_TYPES.join(', ')})`,
      );
    }
  }

  /**
   * Read one tensor's raw bytes. With `into`, the bytes land there (it must be exactly the
   * tensor's size); otherwise in a new buffer of that size.
   */
  async readTensor(name: string, into?: Uint8Array): Promise<GgufTensorData> {
    const info = this.tensor(name);
    this.#checkSupported(info);
    if (into && into.byteLength !== info.byteLength) {
      throw new RangeError(`${this.path}: tensor "${name}" has ${info.byteLength} bytes, the target holds ${into.byteLength}`);
    }
    const bytes = into ?? new Uint8Array(info.byteLength);
    await readExactly(this.#fh, bytes, info.fileOffset, this.path, `tensor "${name}"`);
    return { info, bytes };
  }

  /** Read one tensor and convert it to f32 (dequantising the block types, widening F16/BF16). */
  async readTensorF32(name: string): Promise<Float32Array> {
    const { info, bytes } = await this.readTensor(name);
    return decodeGgml(info.type, bytes, info.elements);
  }
}

/** Open a GGUF file (see GgufFile.open). */
export function openGguf(path: string): Promise<GgufFile> {
  return GgufFile.open(path);
}

/** A value type's name as gguf.h spells it (UINT32, STRING, ...). */
export function ggufValueTypeName(type: number): string {
  return VALUE_TYPE_NAMES[type] ?? `unknown(${type})`;
}

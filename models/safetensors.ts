// safetensors reader: one file, or a sharded model (model-0000N-of-0000M.safetensors listed by
// model.safetensors.index.json). Opening reads and validates only the JSON headers; tensors are
// read one at a time into a buffer of their own size. F32 comes back as Float32Array; F16 and BF16
// either widened to f32 or kept as their raw u16 bits for the GPU to unpack.
//
// Layout: u64 little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets:
// [begin, end]}, "__metadata__"?: {string: string}}, then the data; offsets count from the byte
// after the header.
import { open, readFile, stat, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { ModelFormatError } from '../src/errors.ts';
import { bf16ArrayToF32, f16ArrayToF32 } from './ggml.ts';

/** Bytes per element of every dtype the format defines. */
const DTYPE_BYTES = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
  F8_E8M0: 1,
} as const;
export type SafetensorsDtype = keyof typeof DTYPE_BYTES;
/** The dtypes a model's weights may have here. */
export const SUPPORTED_SAFETENSORS_DTYPES: readonly SafetensorsDtype[] = ['F32', 'F16', 'BF16'];

/** The safetensors library refuses headers above 100 MB; so does this reader. */
export const MAX_SAFETENSORS_HEADER_BYTES = 100_000_000;
const MAX_INDEX_BYTES = 64 << 20;
const READ_CHUNK = 1 << 30;

export interface SafetensorsTensorInfo {
  name: string;
  dtype: SafetensorsDtype;
  /** Row-major dimensions. */
  shape: number[];
  elements: number;
  byteLength: number;
  /** The file holding the tensor and the absolute offset of its data there. */
  file: string;
  fileOffset: number;
}

/** A tensor read as f32, or in its own 16-bit encoding (raw bits). */
export type SafetensorsTensor =
  | { name: string; dtype: 'F32'; shape: number[]; data: Float32Array }
  | { name: string; dtype: 'F16' | 'BF16'; shape: number[]; data: Uint16Array };

/** 'f32': every float dtype widened to Float32Array. 'native': F16/BF16 kept as u16 bits. */
export type SafetensorsReadMode = 'f32' | 'native';

interface Shard {
  path: string;
  fh: FileHandle;
  metadata: Record<string, string>;
  tensors: Map<string, SafetensorsTensorInfo>;
}

function isSafeCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

async function readExactly(fh: FileHandle, target: Uint8Array, position: number, path: string, what: string): Promise<void> {
  let done = 0;
  while (done < target.length) {
    const { bytesRead } = await fh.read(target, done, Math.min(READ_CHUNK, target.length - done), position + done);
    if (bytesRead === 0) {
      throw new ModelFormatError(`${path}: file ended at byte ${position + done} while reading ${what} (was it truncated after opening?)`);
    }
    done += bytesRead;
  }
}

/** Parse and validate one file's header; the tensor table comes back with absolute offsets. */
async function openShard(path: string): Promise<Shard> {
  let fh: FileHandle;
  try {
    fh = await open(path, 'r');
  } catch (err) {
    throw new ModelFormatError(`${path}: cannot open safetensors file: ${(err as Error).message}`, { cause: err });
  }
  try {
    const fail: (problem: string) => never = (problem) => {
      throw new ModelFormatError(`${path}: ${problem}`);
    };
    const fileSize = (await fh.stat()).size;
    if (fileSize < 8) fail(`file is truncated: ${fileSize} bytes cannot hold the 8-byte header length`);
    const lengthBytes = new Uint8Array(8);
    await readExactly(fh, lengthBytes, 0, path, 'the header length');
    const headerLength = new DataView(lengthBytes.buffer).getBigUint64(0, true);
    if (headerLength > BigInt(MAX_SAFETENSORS_HEADER_BYTES)) {
      fail(`header length ${headerLength} exceeds the ${MAX_SAFETENSORS_HEADER_BYTES}-byte limit (not a safetensors file?)`);
    }
    const n = Number(headerLength);
    if (8 + n > fileSize) fail(`file is truncated: the header claims ${n} bytes but only ${fileSize - 8} follow`);
    const headerBytes = Buffer.alloc(n);
    await readExactly(fh, headerBytes, 8, path, 'the header');
    let header: unknown;
    try {
      header = JSON.parse(headerBytes.toString('utf8'));
    } catch (err) {
      fail(`header is not valid JSON: ${(err as Error).message}`);
    }
    if (typeof header !== 'object' || header === null || Array.isArray(header)) fail('header is not a JSON object');
    const dataStart = 8 + n;
    const dataSize = fileSize - dataStart;
    let metadata: Record<string, string> = {};
    const tensors = new Map<string, SafetensorsTensorInfo>();
    for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
      if (name === '__metadata__') {
        if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) fail('"__metadata__" is not an object');
        metadata = raw as Record<string, string>;
        continue;
      }
      const where = `tensor "${name}"`;
      if (typeof raw !== 'object' || raw === null) fail(`${where}: entry is not an object`);
      const { dtype, shape, data_offsets: offsets } = raw as Record<string, unknown>;
      if (typeof dtype !== 'string' || !(dtype in DTYPE_BYTES)) fail(`${where}: unknown dtype ${JSON.stringify(dtype)}`);
      if (!Array.isArray(shape) || !shape.every(isSafeCount)) fail(`${where}: shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
      if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isSafeCount) || offsets[0] > offsets[1]) {
        fail(`${where}: data_offsets ${JSON.stringify(offsets)} is not [begin, end] with begin <= end`);
      }
      const [begin, end] = offsets as [number, number];
      const shp = shape as number[];
      let elements = 1;
      for (const d of shp) {
        elements *= d;
        if (!Number.isSafeInteger(elements)) fail(`${where}: shape [${shp.join(', ')}] overflows`);
      }
      const byteLength = elements * DTYPE_BYTES[dtype as SafetensorsDtype];
      if (end - begin !== byteLength) {
        fail(`${where}: ${dtype} [${shp.join(', ')}] needs ${byteLength} bytes but data_offsets [${begin}, ${end}] span ${end - begin}`);
      }
      if (end > dataSize) {
        fail(`${where}: data [${begin}, ${end}) lies outside the file (the data section has ${dataSize} bytes)`);
      }
      tensors.set(name, {
        name,
        dtype: dtype as SafetensorsDtype,
        shape: shp,
        elements,
        byteLength,
        file: path,
        fileOffset: dataStart + begin,
      });
    }
    const sorted = [...tensors.values()].sort((a, b) => a.fileOffset - b.fileOffset);
    for (let i = 1; i < sorted.length; i++) {
      const prev = sorted[i - 1];
      if (sorted[i].fileOffset < prev.fileOffset + prev.byteLength) {
        fail(`tensors "${prev.name}" and "${sorted[i].name}" overlap in the data section`);
      }
    }
    return { path, fh, metadata, tensors };
  } catch (err) {
    await fh.close();
    throw err;
  }
}

/** A shard file name from an index: a plain name in the index's folder, nothing that climbs out. */
function shardPath(dir: string, file: unknown, indexPath: string, tensor: string): string {
  if (typeof file !== 'string' || file === '' || file !== basename(file) || file === '..' || file === '.') {
    throw new ModelFormatError(`${indexPath}: weight_map entry for "${tensor}" names ${JSON.stringify(file)}, not a file in the same folder`);
  }
  return join(dir, file);
}

export class SafetensorsModel {
  /** Where the model came from (a file, an index, or a folder). */
  readonly source: string;
  readonly files: readonly string[];
  /** __metadata__ of the single file, or the index's "metadata" for a sharded model. */
  readonly metadata: Readonly<Record<string, unknown>>;
  readonly tensors: ReadonlyMap<string, SafetensorsTensorInfo>;
  readonly #shards: Map<string, Shard>;

  private constructor(source: string, shards: Shard[], tensors: Map<string, SafetensorsTensorInfo>, metadata: Record<string, unknown>) {
    this.source = source;
    this.#shards = new Map(shards.map((s) => [s.path, s]));
    this.files = shards.map((s) => s.path);
    this.tensors = tensors;
    this.metadata = metadata;
  }

  /**
   * Open a .safetensors file, a model.safetensors.index.json, or a folder holding either
   * (the index wins when both are there). Call close() when done.
   */
  static async open(path: string): Promise<SafetensorsModel> {
    let info;
    try {
      info = await stat(path);
    } catch (err) {
      throw new ModelFormatError(`${path}: cannot open: ${(err as Error).message}`, { cause: err });
    }
    if (info.isDirectory()) {
      const index = join(path, 'model.safetensors.index.json');
      if (await exists(index)) return SafetensorsModel.#openIndex(index);
      const single = join(path, 'model.safetensors');
      if (await exists(single)) return SafetensorsModel.#openSingle(single);
      throw new ModelFormatError(`${path}: no model.safetensors or model.safetensors.index.json in this folder`);
    }
    if (path.endsWith('.json')) return SafetensorsModel.#openIndex(path);
    return SafetensorsModel.#openSingle(path);
  }

  static async #openSingle(path: string): Promise<SafetensorsModel> {
    const shard = await openShard(path);
    return new SafetensorsModel(path, [shard], shard.tensors, shard.metadata);
  }

  static async #openIndex(indexPath: string): Promise<SafetensorsModel> {
    const fail: (problem: string) => never = (problem) => {
      throw new ModelFormatError(`${indexPath}: ${problem}`);
    };
    const size = (await stat(indexPath)).size;
    if (size > MAX_INDEX_BYTES) fail(`index is ${size} bytes, over the ${MAX_INDEX_BYTES}-byte limit`);
    let index: unknown;
    try {
      index = JSON.parse(await readFile(indexPath, 'utf8'));
    } catch (err) {
      fail(`index is not valid JSON: ${(err as Error).message}`);
    }
    const weightMap = (index as { weight_map?: unknown } | null)?.weight_map;
    if (typeof weightMap !== 'object' || weightMap === null || Array.isArray(weightMap)) fail('index has no "weight_map" object');
    const dir = dirname(indexPath);
    const byFile = new Map<string, string[]>();
    for (const [name, file] of Object.entries(weightMap as Record<string, unknown>)) {
      const path = shardPath(dir, file, indexPath, name);
      byFile.set(path, [...(byFile.get(path) ?? []), name]);
    }
    const shards: Shard[] = [];
    try {
      for (const path of byFile.keys()) shards.push(await openShard(path));
      const tensors = new Map<string, SafetensorsTensorInfo>();
      for (const shard of shards) {
        for (const name of byFile.get(shard.path)!) {
          const t = shard.tensors.get(name);
          if (!t) fail(`weight_map puts tensor "${name}" in ${basename(shard.path)}, which has no such tensor`);
          tensors.set(name, t);
        }
      }
      const metadata = (index as { metadata?: unknown }).metadata;
      return new SafetensorsModel(indexPath, shards, tensors, typeof metadata === 'object' && metadata ? (metadata as Record<string, unknown>) : {});
    } catch (err) {
      await Promise.all(shards.map((s) => s.fh.close()));
      throw err;
    }
  }

  async close(): Promise<void> {
    await Promise.all([...this.#shards.values()].map((s) => s.fh.close()));
  }

  tensor(name: string): SafetensorsTensorInfo {
    const info = this.tensors.get(name);
    if (!info) throw new ModelFormatError(`${this.source}: tensor "${name}" is missing`);
    return info;
  }

  /** One tensor's raw bytes, into `into` (exactly its size) or a new buffer of its own. */
  async readBytes(name: string, into?: Uint8Array): Promise<{ info: SafetensorsTensorInfo; bytes: Uint8Array }> {
    const info = this.tensor(name);
    if (into && into.byteLength !== info.byteLength) {
      throw new RangeError(`${info.file}: tensor "${name}" has ${info.byteLength} bytes, the target holds ${into.byteLength}`);
    }
    const bytes = into ?? new Uint8Array(info.byteLength);
    await readExactly(this.#shards.get(info.file)!.fh, bytes, info.fileOffset, info.file, `tensor "${name}"`);
    return { info, bytes };
  }

  /** One tensor as f32, or with mode 'native' F16/BF16 as raw u16 bits. */
  async read(name: string, mode: SafetensorsReadMode = 'f32'): Promise<SafetensorsTensor> {
    const info = this.tensor(name);
    if (!SUPPORTED_SAFETENSORS_DTYPES.includes(info.dtype)) {
      throw new ModelFormatError(
        `${info.file}: tensor "${name}" has dtype ${info.dtype}, which is not supported yet (supported: ${SUPPORTED_SAFETENSORS_DTYPES.join(', ')})`,
      );
    }
    const { bytes } = await this.readBytes(name);
    const { shape } = info;
    if (info.dtype === 'F32') return { name, dtype: 'F32', shape, data: new Float32Array(bytes.buffer, 0, info.elements) };
    const bits = new Uint16Array(bytes.buffer, 0, info.elements);
    if (mode === 'native') return { name, dtype: info.dtype as 'F16' | 'BF16', shape, data: bits };
    return { name, dtype: 'F32', shape, data: info.dtype === 'F16' ? f16ArrayToF32(bits) : bf16ArrayToF32(bits) };
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/** Open safetensors weights (see SafetensorsModel.open). */
export function openSafetensors(path: string): Promise<SafetensorsModel> {
  return SafetensorsModel.open(path);
}

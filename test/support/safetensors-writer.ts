// A safetensors writer for tests: single files, and sharded models with an index, the way
// huggingface_hub's split_torch_state_dict_into_shards lays them out.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { f32ArrayToBf16, f32ArrayToF16 } from '../../models/ggml.ts';

export type WriteDtype = 'F32' | 'F16' | 'BF16';

export interface SafetensorsWriteTensor {
  name: string;
  dtype: string;
  shape: number[];
  /** Raw little-endian bytes of the tensor. */
  data: Uint8Array;
}

/** Encode f32 values as a dtype's bytes. */
export function encodeFloats(values: ArrayLike<number>, dtype: WriteDtype): Uint8Array {
  if (dtype === 'F32') return new Uint8Array(Float32Array.from(values).buffer);
  return new Uint8Array((dtype === 'F16' ? f32ArrayToF16(values) : f32ArrayToBf16(values)).buffer);
}

/** The bytes of a .safetensors file; the header is padded with spaces to a multiple of 8. */
export function encodeSafetensors(tensors: SafetensorsWriteTensor[], metadata?: Record<string, string>): Buffer {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.data.length] };
    offset += t.data.length;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const headerBytes = Buffer.from(json, 'utf8');
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(headerBytes.length));
  return Buffer.concat([length, headerBytes, ...tensors.map((t) => Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength))]);
}

export function writeSafetensors(path: string, tensors: SafetensorsWriteTensor[], metadata?: Record<string, string>): void {
  writeFileSync(path, encodeSafetensors(tensors, metadata));
}

/**
 * Write `tensors` as `shards` files model-0000N-of-0000M.safetensors plus
 * model.safetensors.index.json in `dir`; tensors are dealt out in order, evenly by count.
 */
export function writeShardedSafetensors(dir: string, tensors: SafetensorsWriteTensor[], shards: number): string[] {
  const weightMap: Record<string, string> = {};
  const files: string[] = [];
  let totalSize = 0;
  for (let s = 0; s < shards; s++) {
    const file = `model-${String(s + 1).padStart(5, '0')}-of-${String(shards).padStart(5, '0')}.safetensors`;
    const part = tensors.filter((_, i) => Math.floor((i * shards) / tensors.length) === s);
    writeSafetensors(join(dir, file), part, { format: 'pt' });
    for (const t of part) {
      weightMap[t.name] = file;
      totalSize += t.data.length;
    }
    files.push(file);
  }
  writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: totalSize }, weight_map: weightMap }, null, 2));
  return files;
}

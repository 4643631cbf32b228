// Buffer helpers and the arena that owns every long-lived buffer.
//
// The engine allocates its buffers once (weights, activations, KV cache, uniforms) through an
// arena and reuses them; nothing on the per-token path creates a buffer.
import { gpuFailure, type Gpu } from './device.ts';
import { ShapeError } from '../errors.ts';

// GPUBufferUsage is a global that exists only once src/gpu/device.ts has installed Dawn's globals.
export function storageUsage(): number {
  return GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
}

/** Round up to a multiple of 4 bytes (writeBuffer and copies work in 4-byte units). */
export function align4(bytes: number): number {
  return Math.ceil(bytes / 4) * 4;
}

export function checkBindingSize(gpu: Gpu, bytes: number, label: string): void {
  if (bytes > gpu.limits.maxStorageBufferBindingSize) {
    throw new ShapeError(
      `${label}: ${bytes} bytes exceeds this adapter's maxStorageBufferBindingSize ` +
        `(${gpu.limits.maxStorageBufferBindingSize} bytes)`,
    );
  }
}

/** Create a storage buffer holding `data` (or `bytes` zeroed bytes). */
export function createStorage(gpu: Gpu, label: string, data: ArrayBufferView | number): GPUBuffer {
  const bytes = typeof data === 'number' ? data : data.byteLength;
  const size = Math.max(16, align4(bytes));
  checkBindingSize(gpu, size, label);
  const buffer = gpu.device.createBuffer({ label, size, usage: storageUsage(), mappedAtCreation: typeof data !== 'number' });
  if (typeof data !== 'number') {
    new Uint8Array(buffer.getMappedRange()).set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    buffer.unmap();
  }
  return buffer;
}

/**
 * Map a MAP_READ buffer (`bytes` at `offset`; default all of it). On a lost device it fails with the
 * loss (gpuFailure), not Dawn's bare AbortError: every read-back goes through here.
 */
export async function mapForRead(gpu: Gpu, buffer: GPUBuffer, offset?: number, bytes?: number): Promise<void> {
  try {
    await buffer.mapAsync(GPUMapMode.READ, offset, bytes);
  } catch (err) {
    throw await gpuFailure(gpu, err);
  }
}

/** Copy `bytes` bytes from `buffer` (at `offset`) back to the CPU. */
export async function readBuffer(gpu: Gpu, buffer: GPUBuffer, bytes = buffer.size, offset = 0): Promise<ArrayBuffer> {
  const size = align4(bytes);
  const staging = gpu.device.createBuffer({ size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const encoder = gpu.device.createCommandEncoder();
  encoder.copyBufferToBuffer(buffer, offset, staging, 0, size);
  gpu.device.queue.submit([encoder.finish()]);
  try {
    await mapForRead(gpu, staging);
    return staging.getMappedRange().slice(0, bytes);
  } finally {
    staging.destroy();
  }
}

export async function readF32(gpu: Gpu, buffer: GPUBuffer, count: number, offsetElements = 0): Promise<Float32Array> {
  return new Float32Array(await readBuffer(gpu, buffer, count * 4, offsetElements * 4));
}

export async function readU32(gpu: Gpu, buffer: GPUBuffer, count: number, offsetElements = 0): Promise<Uint32Array> {
  return new Uint32Array(await readBuffer(gpu, buffer, count * 4, offsetElements * 4));
}

/**
 * Owns named long-lived buffers. `get` returns the same buffer for the same name as long as it is
 * large enough, so callers can ask for what they need without tracking creation themselves.
 */
export class BufferArena {
  readonly #gpu: Gpu;
  readonly #buffers = new Map<string, GPUBuffer>();
  #bytes = 0;

  constructor(gpu: Gpu) {
    this.#gpu = gpu;
  }

  /** A storage buffer of at least `bytes` bytes, created on first request and reused after. */
  get(name: string, bytes: number): GPUBuffer {
    const existing = this.#buffers.get(name);
    if (existing && existing.size >= bytes) return existing;
    if (existing) {
      this.#bytes -= existing.size;
      existing.destroy();
    }
    const buffer = createStorage(this.#gpu, name, bytes);
    this.#buffers.set(name, buffer);
    this.#bytes += buffer.size;
    return buffer;
  }

  /** Upload `data` into a new buffer named `name` (weights: uploaded once). */
  upload(name: string, data: ArrayBufferView): GPUBuffer {
    if (this.#buffers.has(name)) throw new ShapeError(`buffer "${name}" was already uploaded`);
    const buffer = createStorage(this.#gpu, name, data);
    this.#buffers.set(name, buffer);
    this.#bytes += buffer.size;
    return buffer;
  }

  /** Total bytes this arena holds on the GPU. */
  get bytes(): number {
    return this.#bytes;
  }

  destroy(): void {
    for (const buffer of this.#buffers.values()) buffer.destroy();
    this.#buffers.clear();
    this.#bytes = 0;
  }
}

// Uniform layouts, defined once in TypeScript and mirrored by a `struct` in the WGSL source.
// A test (test/uniforms.test.ts) parses each shader's struct and checks it against this layout.
//
// Every kernel's uniforms live in one arena per device: each Dispatch owns a fixed slice of a shared
// uniform buffer (aligned to the device's minUniformBufferOffsetAlignment, bound at that offset by
// its bind group, made once), and writes its values into the CPU copy of that buffer. Before each
// queue.submit the arena uploads what changed since the last one with a single writeBuffer per
// buffer (one for any model below some four thousand dispatches). The arena wraps its device's
// queue.submit to do so, so no submit can go out with stale uniforms, whoever calls it.

export type ScalarType = 'u32' | 'i32' | 'f32';

// Bit patterns of f32 values, without allocating: store as f32, read back as u32.
const f32Bits = new Float32Array(1);
const f32Word = new Uint32Array(f32Bits.buffer);

export class UniformLayout<F extends string> {
  readonly structName: string;
  readonly fields: ReadonlyArray<readonly [F, ScalarType]>;
  /** Byte size rounded up to 16, as WGSL requires for a uniform struct of 4-byte scalars. */
  readonly byteSize: number;
  readonly #names: F[];
  readonly #types: ScalarType[];
  /** The words of the last values converted (reused: conversion is synchronous). */
  readonly #words: Uint32Array;

  constructor(structName: string, fields: ReadonlyArray<readonly [F, ScalarType]>) {
    this.structName = structName;
    this.fields = fields;
    this.byteSize = Math.max(16, Math.ceil((fields.length * 4) / 16) * 16);
    this.#names = fields.map(([name]) => name);
    this.#types = fields.map(([, type]) => type);
    this.#words = new Uint32Array(fields.length);
  }

  /**
   * Check every value and convert it to its 32-bit word (little-endian, as the GPU reads it); every
   * field must be given (a missing one is a bug, not a zero). The returned array is this layout's
   * own and is overwritten by the next call.
   */
  words(values: Record<F, number>): Uint32Array {
    const words = this.#words;
    const names = this.#names;
    const types = this.#types;
    for (let i = 0; i < names.length; i++) {
      const value = values[names[i]];
      if (typeof value !== 'number' || Number.isNaN(value)) {
        throw new TypeError(`uniform ${this.structName}.${names[i]} must be a number (got ${value})`);
      }
      const type = types[i];
      if (type === 'f32') {
        f32Bits[0] = value;
        words[i] = f32Word[0];
      } else if (type === 'i32') {
        words[i] = (value | 0) >>> 0;
      } else {
        if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) {
          throw new RangeError(`uniform ${this.structName}.${names[i]} must be a u32 (got ${value})`);
        }
        words[i] = value;
      }
    }
    return words;
  }

  /** Pack values in field order into a new buffer of byteSize bytes. */
  pack(values: Record<F, number>): ArrayBuffer {
    const data = new ArrayBuffer(this.byteSize);
    new Uint32Array(data).set(this.words(values));
    return data;
  }
}

/** Bytes of one arena buffer: room for 4096 slices at the usual 256-byte alignment. */
export const UNIFORM_PAGE_BYTES = 1 << 20;

/** One uniform buffer of the arena and its CPU copy, with the byte range changed since the last upload. */
export interface UniformPage {
  readonly buffer: GPUBuffer;
  readonly data: ArrayBuffer;
  readonly words: Uint32Array;
  used: number;
  dirtyFrom: number;
  dirtyTo: number;
}

const arenas = new WeakMap<GPUDevice, UniformArena>();

/**
 * The uniform arena of one device. Slices are handed out once (at kernel construction) and kept for
 * the device's life; the CPU copy is uploaded before every submit, changed bytes only.
 */
export class UniformArena {
  /** Byte alignment of every slice: the device's minUniformBufferOffsetAlignment. */
  readonly alignment: number;
  readonly #device: GPUDevice;
  readonly #pages: UniformPage[] = [];
  #epoch = 0;
  #writes = 0;

  /** The device's arena, created (and its queue.submit wrapped) on first use. */
  static of(device: GPUDevice): UniformArena {
    let arena = arenas.get(device);
    if (!arena) {
      arena = new UniformArena(device);
      arenas.set(device, arena);
    }
    return arena;
  }

  private constructor(device: GPUDevice) {
    this.#device = device;
    this.alignment = device.limits.minUniformBufferOffsetAlignment;
    const queue = device.queue;
    const submit = queue.submit;
    const flush = () => this.flush();
    // Every submit on this device uploads the uniforms first (the wrapper is the queue's own property).
    Object.defineProperty(queue, 'submit', {
      configurable: true,
      writable: true,
      value: function submitWithUniforms(this: GPUQueue, commandBuffers: Iterable<GPUCommandBuffer>): undefined {
        flush();
        return submit.call(this, commandBuffers);
      },
    });
  }

  /** A slice of `byteSize` bytes (<= UNIFORM_PAGE_BYTES), zero until written. */
  allocate(byteSize: number, label: string): UniformSlice {
    const size = Math.ceil(byteSize / this.alignment) * this.alignment;
    if (!Number.isSafeInteger(byteSize) || byteSize < 4 || size > UNIFORM_PAGE_BYTES) {
      throw new RangeError(`${label}: a uniform slice must hold 4..${UNIFORM_PAGE_BYTES} bytes (got ${byteSize})`);
    }
    let page = this.#pages[this.#pages.length - 1];
    if (!page || page.used + size > UNIFORM_PAGE_BYTES) {
      const data = new ArrayBuffer(UNIFORM_PAGE_BYTES);
      page = {
        buffer: this.#device.createBuffer({
          label: `uniforms.${this.#pages.length}`,
          size: UNIFORM_PAGE_BYTES,
          // COPY_SRC: so the uploaded values can be read back (tests, debugging).
          usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC,
        }),
        data,
        words: new Uint32Array(data),
        used: 0,
        dirtyFrom: UNIFORM_PAGE_BYTES,
        dirtyTo: 0,
      };
      this.#pages.push(page);
    }
    const offset = page.used;
    page.used += size;
    return new UniformSlice(this, page, offset, byteSize);
  }

  /**
   * Upload every byte changed since the last flush: one writeBuffer per arena buffer that changed.
   * Runs before every submit on this device; returns the writes made.
   */
  flush(): number {
    let writes = 0;
    for (const page of this.#pages) {
      if (page.dirtyTo > page.dirtyFrom) {
        this.#device.queue.writeBuffer(page.buffer, page.dirtyFrom, page.data, page.dirtyFrom, page.dirtyTo - page.dirtyFrom);
        page.dirtyFrom = UNIFORM_PAGE_BYTES;
        page.dirtyTo = 0;
        writes++;
      }
    }
    this.#epoch++;
    this.#writes += writes;
    return writes;
  }

  /**
   * Forget which slices were written since the last flush without uploading anything yet (their
   * values still go out with the next flush). For a caller that abandons recorded commands instead of
   * submitting them (an error part-way through recording), so the next recording is not refused.
   */
  abandon(): void {
    this.#epoch++;
  }

  /** Counts up at every flush: a slice written twice within one epoch goes out in one submit. */
  get epoch(): number {
    return this.#epoch;
  }

  /** writeBuffer calls made by flushes so far. */
  get writes(): number {
    return this.#writes;
  }

  /** Arena buffers and the bytes handed out. */
  get usage(): { buffers: number; bytes: number } {
    return { buffers: this.#pages.length, bytes: this.#pages.reduce((n, p) => n + p.used, 0) };
  }
}

/** Mark bytes [from, to) of `page` for the next upload. */
function markDirty(page: UniformPage, from: number, to: number): void {
  if (from < page.dirtyFrom) page.dirtyFrom = from;
  if (to > page.dirtyTo) page.dirtyTo = to;
}

/** One owner's slice of the arena: its buffer and offset to bind, and its words in the CPU copy. */
export class UniformSlice {
  readonly arena: UniformArena;
  readonly buffer: GPUBuffer;
  /** Byte offset in `buffer` (a multiple of the arena's alignment). */
  readonly offset: number;
  /** Bytes bound (the layout's size; the slice reserves up to the next alignment). */
  readonly size: number;
  readonly #page: UniformPage;
  readonly #base: number;
  /** The arena epoch of the last write (-1: never). */
  #writtenIn = -1;

  constructor(arena: UniformArena, page: UniformPage, offset: number, size: number) {
    this.arena = arena;
    this.#page = page;
    this.buffer = page.buffer;
    this.offset = offset;
    this.size = size;
    this.#base = offset / 4;
  }

  /** The slice's current words in the CPU copy (a view: read it, do not keep it). */
  view(): Uint32Array {
    return this.#page.words.subarray(this.#base, this.#base + this.size / 4);
  }

  /**
   * Set the slice's words for the next submit; unchanged words cost no upload. Returns whether any
   * word changed. Throws if the slice already took other values since the last submit: both uses
   * would read the later values, as a uniform holds one value per submit.
   */
  write(words: ArrayLike<number>, label: string): boolean {
    const all = this.#page.words;
    const base = this.#base;
    let first = -1;
    for (let i = 0; i < words.length; i++) {
      if (all[base + i] !== words[i]) {
        first = i;
        break;
      }
    }
    const epoch = this.arena.epoch;
    if (first < 0) {
      this.#writtenIn = epoch;
      return false;
    }
    if (this.#writtenIn === epoch) {
      throw new Error(
        `${label}: encoded again with different uniforms before the previous values were submitted; ` +
          'a kernel runs with one set of uniforms per submit (use one kernel object per use, or submit in between)',
      );
    }
    for (let i = first; i < words.length; i++) all[base + i] = words[i];
    this.#writtenIn = epoch;
    markDirty(this.#page, this.offset + first * 4, this.offset + words.length * 4);
    return true;
  }
}

/** A kernel's uniforms: its layout and its slice of the device's arena. */
export class Uniforms<F extends string> {
  readonly layout: UniformLayout<F>;
  readonly slice: UniformSlice;
  readonly #label: string;

  constructor(device: GPUDevice, layout: UniformLayout<F>, label: string) {
    this.layout = layout;
    this.#label = label;
    this.slice = UniformArena.of(device).allocate(layout.byteSize, `${label}.uniforms`);
  }

  /** The buffer binding of these uniforms (the arena buffer, at this slice's offset). */
  get binding(): GPUBufferBinding {
    return { buffer: this.slice.buffer, offset: this.slice.offset, size: this.slice.size };
  }

  /** Set the values for the next submit (uploaded by the arena just before it). */
  write(values: Record<F, number>): void {
    this.slice.write(this.layout.words(values), this.#label);
  }
}

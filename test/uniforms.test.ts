// Each uniform layout is defined once in TypeScript (kernels/*.ts) and mirrored by a WGSL struct.
// This test parses every shader's structs and checks that each exported layout matches one of
// them field by field, and that the byte size follows WGSL's rules for a struct of 4-byte scalars.
// Then the packing (u32, i32, f32 words) and the uniform arena.
import { readdirSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { UNIFORM_PAGE_BYTES, UniformArena, UniformLayout, Uniforms } from '../src/gpu/uniforms.ts';
import { readBuffer } from '../src/gpu/buffers.ts';
import { runPass } from '../kernels/dispatch.ts';
import { Elementwise } from '../kernels/elementwise.ts';
import { createStorage, readF32, useGpu } from './support/gpu.ts';

const KERNELS = new URL('../kernels/', import.meta.url);
const SHADERS = new URL('../shaders/', import.meta.url);

function structsOf(code: string): Map<string, Array<[string, string]>[]> {
  const structs = new Map<string, Array<[string, string]>[]>();
  for (const match of code.matchAll(/struct\s+(\w+)\s*\{([^}]*)\}/g)) {
    const body = match[2].replace(/\/\/[^\n]*/g, '');
    const fields = body
      .split(',')
      .map((f) => f.trim())
      .filter((f) => f.length > 0)
      .map((f) => f.split(':').map((s) => s.trim()) as [string, string]);
    const list = structs.get(match[1]) ?? [];
    list.push(fields);
    structs.set(match[1], list);
  }
  return structs;
}

const shaderFiles = readdirSync(SHADERS).filter((f) => f.endsWith('.wgsl'));
const kernelModules = readdirSync(KERNELS).filter((f) => f.endsWith('.ts'));

describe('uniform layouts match their WGSL structs', () => {
  it('finds layouts to check', async () => {
    let count = 0;
    for (const file of kernelModules) {
      const module = await import(new URL(file, KERNELS).href);
      count += Object.values(module).filter((v) => v instanceof UniformLayout).length;
    }
    expect(count).toBeGreaterThan(0);
  });

  for (const file of kernelModules) {
    it(file, async () => {
      const module = await import(new URL(file, KERNELS).href);
      const family = file.replace(/\.ts$/, '');
      const code = shaderFiles
        .filter((s) => s.startsWith(family))
        .map((s) => readFileSync(new URL(s, SHADERS), 'utf8'))
        .join('\n');
      const structs = structsOf(code);
      for (const [exportName, value] of Object.entries(module)) {
        if (!(value instanceof UniformLayout)) continue;
        const layout = value as UniformLayout<string>;
        const candidates = structs.get(layout.structName) ?? [];
        const want = layout.fields.map(([name, type]) => [name, type]);
        const match = candidates.some((fields) => JSON.stringify(fields) === JSON.stringify(want));
        expect(match, `${file} ${exportName}: no struct ${layout.structName} in shaders/${family}*.wgsl with fields ${JSON.stringify(want)}`).toBe(true);
        expect(layout.byteSize % 16).toBe(0);
        expect(layout.byteSize).toBeGreaterThanOrEqual(layout.fields.length * 4);
        expect(layout.byteSize - layout.fields.length * 4).toBeLessThan(16);
      }
    });
  }
});

// The uniform arena (src/gpu/uniforms.ts): every kernel's uniforms in slices of shared buffers,
// uploaded once per submit. Checked on the device: offsets, the bytes that reach the GPU, how many
// writes a flush makes, and what happens when one kernel is recorded twice before a submit.
describe('uniform arena', () => {
  const gpu = useGpu();
  const Layout = new UniformLayout('Params', [
    ['count', 'u32'],
    ['shift', 'i32'],
    ['scale', 'f32'],
    ['offset', 'u32'],
    ['extra', 'u32'],
  ] as const);
  const values = (count: number) => ({ count, shift: -3, scale: 0.1, offset: 7, extra: 0xffffffff });

  /** Count queue.writeBuffer calls while `run` runs. */
  function writesDuring(run: () => void): number {
    const queue = gpu().device.queue;
    const writeBuffer = queue.writeBuffer;
    let writes = 0;
    queue.writeBuffer = function (this: GPUQueue, ...args: Parameters<GPUQueue['writeBuffer']>) {
      writes++;
      return writeBuffer.apply(this, args);
    };
    try {
      run();
    } finally {
      delete (queue as Partial<GPUQueue>).writeBuffer;
    }
    return writes;
  }

  it('hands out slices at the device alignment, one after another in a shared buffer', () => {
    const arena = UniformArena.of(gpu().device);
    expect(UniformArena.of(gpu().device)).toBe(arena);
    expect(arena.alignment).toBe(gpu().device.limits.minUniformBufferOffsetAlignment);
    const slices = [16, 48, 20, arena.alignment + 4, 16].map((bytes) => arena.allocate(bytes, 'test'));
    for (const [i, slice] of slices.entries()) {
      expect(slice.offset % arena.alignment).toBe(0);
      if (i > 0 && slice.buffer === slices[i - 1].buffer) {
        const previous = slices[i - 1];
        expect(slice.offset).toBe(previous.offset + Math.ceil(previous.size / arena.alignment) * arena.alignment);
      }
    }
    expect(slices.slice(1).every((s) => s.buffer === slices[0].buffer)).toBe(true);
    const uniforms = new Uniforms(gpu().device, Layout, 'test');
    expect(uniforms.binding.size).toBe(Layout.byteSize);
    expect(uniforms.binding.offset! % arena.alignment).toBe(0);
    expect(() => arena.allocate(UNIFORM_PAGE_BYTES + 1, 'test')).toThrow(RangeError);
  });

  it('flush uploads exactly the packed values, in one writeBuffer, and nothing when nothing changed', async () => {
    const arena = UniformArena.of(gpu().device);
    const a = new Uniforms(gpu().device, Layout, 'a');
    const b = new Uniforms(gpu().device, Layout, 'b');
    arena.flush();
    a.write(values(5));
    b.write(values(9));
    expect(writesDuring(() => arena.flush())).toBe(1);
    for (const [uniforms, count] of [[a, 5], [b, 9]] as const) {
      const bytes = await readBuffer(gpu(), uniforms.slice.buffer, Layout.byteSize, uniforms.slice.offset);
      expect([...new Uint8Array(bytes)]).toEqual([...new Uint8Array(Layout.pack(values(count)))]);
      expect([...uniforms.slice.view()]).toEqual([...new Uint32Array(Layout.pack(values(count)))]);
    }
    // The same values again: nothing to upload.
    a.write(values(5));
    expect(writesDuring(() => arena.flush())).toBe(0);
    // One changed: one write, and the GPU copy follows.
    a.write(values(6));
    expect(writesDuring(() => arena.flush())).toBe(1);
    const bytes = await readBuffer(gpu(), a.slice.buffer, Layout.byteSize, a.slice.offset);
    expect([...new Uint8Array(bytes)]).toEqual([...new Uint8Array(Layout.pack(values(6)))]);
  });

  it('every queue.submit flushes first, so no submit carries stale uniforms', async () => {
    const a = new Uniforms(gpu().device, Layout, 'a');
    a.write(values(41));
    const writes = writesDuring(() => gpu().device.queue.submit([gpu().device.createCommandEncoder().finish()]));
    expect(writes).toBe(1);
    const bytes = await readBuffer(gpu(), a.slice.buffer, Layout.byteSize, a.slice.offset);
    expect(new Uint32Array(bytes)[0]).toBe(41);
  });

  it('refuses other values for a slice already written since the last submit; the same values pass', () => {
    const arena = UniformArena.of(gpu().device);
    const a = new Uniforms(gpu().device, Layout, 'twice');
    arena.flush();
    a.write(values(1));
    a.write(values(1)); // a timing loop repeating one kernel: same values, fine
    expect(() => a.write(values(2))).toThrow(/twice: encoded again with different uniforms/);
    expect([...a.slice.view()].slice(0, 1)).toEqual([1]); // the refused values were not stored
    arena.flush();
    a.write(values(2));
    arena.abandon(); // commands recorded with 2 were dropped, not submitted
    a.write(values(3));
    // A slice first written with unchanged values in this epoch still counts as used.
    arena.flush();
    a.write(values(3));
    expect(() => a.write(values(4))).toThrow(/encoded again/);
    arena.abandon();
  });

  it('a Dispatch encoded twice in one submit with different values throws; with the same values runs twice', async () => {
    const n = 64;
    const x = createStorage(gpu(), 'x', Float32Array.from({ length: n }, (_, i) => i));
    const y = createStorage(gpu(), 'y', new Float32Array(n));
    const add = new Elementwise(gpu(), 'add', { a: x, b: x, out: y });
    await runPass(gpu(), (pass) => {
      add.encode(pass, { count: n });
      add.encode(pass, { count: n });
    });
    expect([...(await readF32(gpu(), y, n))]).toEqual(Array.from({ length: n }, (_, i) => 2 * i));
    const encoder = gpu().device.createCommandEncoder();
    const pass = encoder.beginComputePass();
    add.encode(pass, { count: 8 });
    expect(() => add.encode(pass, { count: 16 })).toThrow(/encoded again with different uniforms/);
    pass.end();
    UniformArena.of(gpu().device).abandon();
    // Separate submits may differ: each sees its own values.
    const z = createStorage(gpu(), 'z', new Float32Array(n).fill(-1));
    const sum = new Elementwise(gpu(), 'add', { a: x, b: x, out: z });
    await runPass(gpu(), (p) => sum.encode(p, { count: 8 }));
    await runPass(gpu(), (p) => sum.encode(p, { count: 4, aOffset: 16, bOffset: 16, outOffset: 16 }));
    const out = await readF32(gpu(), z, n);
    expect([...out.subarray(0, 8)]).toEqual([0, 2, 4, 6, 8, 10, 12, 14]);
    expect([...out.subarray(8, 16)]).toEqual(new Array(8).fill(-1));
    expect([...out.subarray(16, 20)]).toEqual([32, 34, 36, 38]);
  });
});

describe('UniformLayout packing', () => {
  const Layout = new UniformLayout('Params', [['u', 'u32'], ['i', 'i32'], ['f', 'f32']] as const);

  it('packs little-endian words as DataView would, and refuses what is not a value of its type', () => {
    for (const [u, i, f] of [[0, 0, 0], [0xffffffff, -1, -0], [123456, -2147483648, 1e-40], [1, 2147483647, Infinity], [7, 3.7, 0.1]]) {
      const want = new DataView(new ArrayBuffer(16));
      want.setUint32(0, u, true);
      want.setInt32(4, i, true);
      want.setFloat32(8, f, true);
      expect([...new Uint8Array(Layout.pack({ u, i, f }))]).toEqual([...new Uint8Array(want.buffer)]);
    }
    expect(() => Layout.pack({ u: -1, i: 0, f: 0 })).toThrow(RangeError);
    expect(() => Layout.pack({ u: 1.5, i: 0, f: 0 })).toThrow(RangeError);
    expect(() => Layout.pack({ u: 2 ** 32, i: 0, f: 0 })).toThrow(RangeError);
    expect(() => Layout.pack({ u: 0, i: 0, f: NaN })).toThrow(TypeError);
    expect(() => Layout.pack({ u: 0, i: 0 } as unknown as { u: number; i: number; f: number })).toThrow(/Params\.f must be a number/);
  });
});

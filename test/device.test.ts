import { describe, expect, it } from 'vitest';
import { acquireGpu } from '../src/gpu/device.ts';
import { BufferArena, createStorage, readF32 } from '../src/gpu/buffers.ts';
import { PipelineCache, pipelineKey } from '../src/gpu/pipelines.ts';
import { GpuError, NoAdapterError, OptionError } from '../src/errors.ts';
import { useGpu } from './support/gpu.ts';

const gpu = useGpu();

describe('device', () => {
  it('acquires an adapter and requests the limits kernels need', () => {
    const { info, limits } = gpu();
    expect(info.backend).toMatch(/vulkan|metal|d3d12|opengles/);
    // The device must carry the adapter's real limits, not the spec defaults (256 invocations).
    expect(limits.maxComputeInvocationsPerWorkgroup).toBe(gpu().adapter.limits.maxComputeInvocationsPerWorkgroup);
    expect(limits.maxStorageBufferBindingSize).toBe(gpu().adapter.limits.maxStorageBufferBindingSize);
    expect(limits.maxComputeWorkgroupStorageSize).toBeGreaterThanOrEqual(16384);
  });

  it('rejects an unknown adapter choice with a clear message', async () => {
    await expect(acquireGpu({ adapter: 'cuda' })).rejects.toThrow(OptionError);
    await expect(acquireGpu({ adapter: 'cuda' })).rejects.toThrow(/auto, gpu, software/);
  });

  it('--adapter gpu gives a hardware adapter or a NoAdapterError that names the fix', async () => {
    try {
      const hardware = await acquireGpu({ adapter: 'gpu' });
      expect(hardware.info.isSoftware).toBe(false);
      hardware.destroy();
    } catch (err) {
      expect(err).toBeInstanceOf(NoAdapterError);
      expect((err as Error).message).toMatch(/Vulkan/);
      expect((err as Error).message).toMatch(/--adapter software/);
    }
  });

  it('turns a validation error into a thrown GpuError at the next sync', async () => {
    // A dispatch with no pipeline set is a validation error that the device reports asynchronously.
    const encoder = gpu().device.createCommandEncoder();
    const pass = encoder.beginComputePass();
    pass.dispatchWorkgroups(1);
    pass.end();
    gpu().device.queue.submit([encoder.finish()]);
    await expect(gpu().sync()).rejects.toThrow(GpuError);
    // The error is consumed: the device keeps working afterwards.
    await expect(gpu().sync()).resolves.toBeUndefined();
  });

  it('reports a WGSL compile error naming the pipeline', async () => {
    const cache = new PipelineCache(gpu());
    cache.get({ name: 'broken', variant: 'x', code: '@compute @workgroup_size(1) fn main() { let a: u32 = 1.5; }', entryPoint: 'main' });
    await expect(gpu().sync()).rejects.toThrow(/broken/);
  });
});

describe('pipeline cache', () => {
  it('keys pipelines by name, variant, entry point and sorted overrides', () => {
    expect(pipelineKey({ name: 'matvec', variant: 'q4_0', entryPoint: 'main', constants: { WG: 64, A: 1 } })).toBe('matvec:q4_0:main:A=1,WG=64');
    expect(pipelineKey({ name: 'softmax', variant: '', entryPoint: 'main' })).toBe('softmax:main');
  });

  it('compiles each variant once', async () => {
    const cache = new PipelineCache(gpu());
    const code = 'override WG: u32 = 1; @compute @workgroup_size(WG) fn main() {}';
    const a = cache.get({ name: 'noop', variant: '', code, entryPoint: 'main', constants: { WG: 4 } });
    const b = cache.get({ name: 'noop', variant: '', code, entryPoint: 'main', constants: { WG: 4 } });
    const c = cache.get({ name: 'noop', variant: '', code, entryPoint: 'main', constants: { WG: 8 } });
    expect(a).toBe(b);
    expect(c).not.toBe(a);
    expect(cache.size).toBe(2);
    await gpu().sync();
  });
});

describe('buffers', () => {
  it('round-trips data and reads at an element offset', async () => {
    const data = new Float32Array([1, 2, 3, 4, 5]);
    const buffer = createStorage(gpu(), 'data', data);
    expect(Array.from(await readF32(gpu(), buffer, 3, 2))).toEqual([3, 4, 5]);
  });

  it('arena reuses a buffer that is large enough and counts bytes', () => {
    const arena = new BufferArena(gpu());
    const a = arena.get('act', 1024);
    expect(arena.get('act', 512)).toBe(a);
    const grown = arena.get('act', 4096);
    expect(grown).not.toBe(a);
    expect(arena.bytes).toBe(4096);
    arena.upload('w', new Float32Array(8));
    expect(arena.bytes).toBe(4096 + 32);
    expect(() => arena.upload('w', new Float32Array(8))).toThrow(/already uploaded/);
    arena.destroy();
    expect(arena.bytes).toBe(0);
  });

  it('refuses a buffer larger than the storage binding limit', () => {
    expect(() => createStorage(gpu(), 'huge', gpu().limits.maxStorageBufferBindingSize + 4)).toThrow(/maxStorageBufferBindingSize/);
  });
});

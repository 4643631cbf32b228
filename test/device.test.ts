import { afterEach, describe, expect, it, vi } from 'vitest';
import { acquireGpu, type Gpu } from '../src/gpu/device.ts';
import { BufferArena, createStorage, readF32, readU32 } from '../src/gpu/buffers.ts';
import { PipelineCache, pipelineKey } from '../src/gpu/pipelines.ts';
import { GpuError, NoAdapterError, OptionError } from '../src/errors.ts';
import { useGpu } from './support/gpu.ts';

const gpu = useGpu();

describe('device', () => {
  it('acquires an adapter and requests the limits kernels need', () => {
    const { info, limits } = gpu();
    expect(info.backend).toMatch(/vulkan|metal|d3d12|opengles/);
    // OpenGL ES runs in compatibility mode, every other backend at core.
    expect(info.featureLevel).toBe(info.backend === 'opengles' ? 'compatibility' : 'core');
    // The device must carry the adapter's real limits, not the spec defaults (256 invocations).
    expect(limits.maxComputeInvocationsPerWorkgroup).toBe(gpu().adapter.limits.maxComputeInvocationsPerWorkgroup);
    expect(limits.maxStorageBufferBindingSize).toBe(gpu().adapter.limits.maxStorageBufferBindingSize);
    expect(limits.maxComputeWorkgroupStorageSize).toBeGreaterThanOrEqual(16384);
  });

  it('rejects an unknown adapter choice with a clear message', async () => {
    await expect(acquireGpu({ adapter: 'cuda' })).rejects.toThrow(OptionError);
    await expect(acquireGpu({ adapter: 'cuda' })).rejects.toThrow(/auto, gpu, software/);
  });

  it('gives the adapter this environment asks for', () => {
    const { info } = gpu();
    // WEBGPU_MINER_ADAPTER picks it (the test projects set it; unset means auto).
    switch (process.env.WEBGPU_MINER_ADAPTER ?? 'auto') {
      case 'gpu':
        expect(info).toMatchObject({ isSoftware: false, featureLevel: 'core' });
        break;
      case 'software-core':
        expect(info).toMatchObject({ isSoftware: true, backend: 'vulkan', featureLevel: 'core' });
        break;
      case 'software-compat':
        expect(info).toMatchObject({ isSoftware: true, backend: 'opengles', featureLevel: 'compatibility' });
        break;
      case 'software':
        expect(info.isSoftware).toBe(true);
        break;
      default:
        // auto: a software adapter only where no hardware one works, so a hardware one is never refused.
        if (info.isSoftware) expect(info.backend).toMatch(/vulkan|opengles/);
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

  it('names a lost device in `lost`, `lostError` and every later sync; closing it with destroy() is no loss', async () => {
    const lostOne = await acquireGpu();
    const buffer = createStorage(lostOne, 'x', new Float32Array([1, 2, 3]));
    expect(lostOne.lostError).toBeUndefined();
    lostOne.device.destroy(); // the device goes away under the Gpu, as in a driver reset
    const error = await lostOne.lost;
    expect(error).toBeInstanceOf(GpuError);
    expect(error.message).toMatch(/^the GPU device was lost \(destroyed.*restart it/);
    expect(lostOne.lostError).toBe(error);
    await expect(lostOne.sync()).rejects.toBe(error);
    // A read back fails with the loss, not Dawn's bare AbortError.
    await expect(readF32(lostOne, buffer, 3)).rejects.toBe(error);
    // A Gpu closed on purpose: its device's loss settles (the spec's 'destroyed'), `lost` does not.
    const closed = await acquireGpu();
    let reported = false;
    void closed.lost.then(() => (reported = true));
    closed.destroy();
    await closed.device.lost;
    await new Promise((resolve) => setImmediate(resolve));
    expect(reported).toBe(false);
    expect(closed.lostError).toBeUndefined();
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

  it('leaves workgroup memory unfilled (disable_workgroup_init): a workgroup sees what earlier ones wrote', async () => {
    // Kernels must write workgroup memory before reading it. That the suite would catch one that does
    // not rests on this: on the software adapters, workgroup memory keeps earlier workgroups' values.
    const { device, info } = gpu();
    const kernel = (body: string) => device.createComputePipeline({
      layout: 'auto',
      compute: {
        entryPoint: 'main',
        module: device.createShaderModule({
          code: `var<workgroup> mem: array<u32, 256>;
            @group(0) @binding(0) var<storage, read_write> out: array<u32>;
            @compute @workgroup_size(64) fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) { ${body} }`,
        }),
      },
    });
    const write = kernel('for (var i = lid; i < 256u; i += 64u) { mem[i] = 0x5eed0000u + i; } workgroupBarrier(); if (lid == 0u) { out[wid.x] = 0u; }');
    // Each workgroup of the second kernel counts the cells it finds non-zero before writing any.
    const read = kernel('var seen = 0u; for (var i = 0u; i < 256u; i++) { seen += select(0u, 1u, mem[i] != 0u); } if (lid == 0u) { out[wid.x] = seen; }');
    // Several rounds of the pair, each reader writing its own 256 bytes (the offset alignment): the
    // software adapters' workgroups usually reuse a thread's memory, but not every time.
    const rounds = 8;
    const out = createStorage(gpu(), 'workgroup-init.out', rounds * 256);
    const encoder = device.createCommandEncoder();
    const pass = encoder.beginComputePass();
    for (let round = 0; round < rounds; round++) {
      for (const pipeline of [write, read]) {
        pass.setPipeline(pipeline);
        pass.setBindGroup(0, device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer: out, offset: round * 256, size: 256 } }] }));
        pass.dispatchWorkgroups(64);
      }
    }
    pass.end();
    device.queue.submit([encoder.finish()]);
    const seen = await readU32(gpu(), out, rounds * 64);
    out.destroy();
    // A GPU may hand a workgroup fresh memory; the software adapters reuse their threads' memory.
    if (info.isSoftware) expect(Math.max(...seen)).toBeGreaterThan(0);
  });

  it('refuses a buffer larger than the storage binding limit', () => {
    expect(() => createStorage(gpu(), 'huge', gpu().limits.maxStorageBufferBindingSize + 4)).toThrow(/maxStorageBufferBindingSize/);
  });
});

// The no-adapter paths, on an injected Dawn (the 'webgpu' module mocked for a fresh copy of device.ts):
// no adapter at all, only a CPU adapter offered as 'core', or a requestAdapter that throws.
describe('device acquisition without a usable adapter', () => {
  afterEach(() => {
    vi.doUnmock('webgpu');
    vi.resetModules();
  });

  /** device.ts (and its errors) loaded against a Dawn whose every requestAdapter runs `requestAdapter`. */
  async function withDawn(requestAdapter: (options: string[]) => Promise<GPUAdapter | null>) {
    const created: string[][] = [];
    vi.resetModules();
    vi.doMock('webgpu', async (importOriginal) => ({
      ...(await importOriginal<typeof import('webgpu')>()),
      create: (options: string[]) => {
        created.push(options);
        return { requestAdapter: () => requestAdapter(options) } as unknown as GPU;
      },
    }));
    const device = await import('../src/gpu/device.ts');
    const errors = await import('../src/errors.ts');
    return { acquire: (adapter: string) => device.acquireGpu({ adapter }), NoAdapterError: errors.NoAdapterError, created };
  }

  /** The error acquiring `adapter` rejects with (fails if it resolves). */
  async function failure(acquire: (adapter: string) => Promise<Gpu>, adapter: string): Promise<Error> {
    return acquire(adapter).then(
      (gpu) => {
        gpu.destroy();
        throw new Error(`--adapter ${adapter} found ${gpu.info.description}`);
      },
      (err: unknown) => err as Error,
    );
  }

  it('WEBGPU_MINER_DAWN_TOGGLES reaches every Dawn instance beside the defaults, -name drops one; a malformed list is refused before any', async () => {
    vi.stubEnv('WEBGPU_MINER_DAWN_TOGGLES', ' skip_validation, disable_robustness,');
    try {
      const { acquire, created } = await withDawn(async () => null);
      await failure(acquire, 'auto');
      expect(created).toEqual([
        ['enable-dawn-features=vulkan_enable_f16_on_nvidia,disable_workgroup_init,skip_validation,disable_robustness'],
        ['backend=vulkan', 'adapter=llvmpipe', 'enable-dawn-features=disable_workgroup_init,skip_validation,disable_robustness'],
        ['backend=opengles', 'enable-dawn-features=disable_workgroup_init,skip_validation,disable_robustness'],
      ]);
      // A leading - drops a default.
      vi.stubEnv('WEBGPU_MINER_DAWN_TOGGLES', '-disable_workgroup_init');
      const dropped = await withDawn(async () => null);
      await failure(dropped.acquire, 'auto');
      expect(dropped.created).toEqual([
        ['enable-dawn-features=vulkan_enable_f16_on_nvidia'],
        ['backend=vulkan', 'adapter=llvmpipe'],
        ['backend=opengles'],
      ]);
      vi.stubEnv('WEBGPU_MINER_DAWN_TOGGLES', 'skip validation');
      const bad = await withDawn(async () => null);
      const err = await failure(bad.acquire, 'gpu');
      expect(err.message).toMatch(/WEBGPU_MINER_DAWN_TOGGLES: 'skip validation' is not a Dawn toggle name/);
      expect(bad.created).toEqual([]);
    } finally {
      vi.unstubAllEnvs();
    }
  });

  it('no adapter: --adapter gpu fails with a NoAdapterError that names the fix', async () => {
    const { acquire, NoAdapterError, created } = await withDawn(async () => null);
    const err = await failure(acquire, 'gpu');
    expect(err).toBeInstanceOf(NoAdapterError);
    expect(err.message).toMatch(/no hardware adapter/);
    expect(err.message).toMatch(/Vulkan/);
    expect(err.message).toMatch(/--adapter software/);
    expect(created.length).toBeGreaterThan(0); // the injected Dawn was asked
  });

  it('no adapter: auto tries every kind and names the software packages', async () => {
    const { acquire, NoAdapterError } = await withDawn(async () => null);
    const err = await failure(acquire, 'auto');
    expect(err).toBeInstanceOf(NoAdapterError);
    expect(err.message).toMatch(/no hardware adapter/);
    expect(err.message).toMatch(/OpenGL ES/);
    expect(err.message).toContain('libgles2');
  });

  it('a CPU rasteriser offered at featureLevel core is not taken for a GPU', async () => {
    const lavapipe = { info: { vendor: 'mesa', architecture: '', device: '', description: 'llvmpipe (LLVM 15.0.7, 256 bits)' }, features: new Set(), limits: {} };
    const { acquire, NoAdapterError } = await withDawn(async () => lavapipe as unknown as GPUAdapter);
    const err = await failure(acquire, 'gpu');
    expect(err).toBeInstanceOf(NoAdapterError);
    expect(err.message).toMatch(/no hardware adapter/);
  });

  it('a requestAdapter that throws becomes a NoAdapterError carrying its message', async () => {
    const { acquire, NoAdapterError } = await withDawn(async () => {
      throw new Error('driver exploded');
    });
    const err = await failure(acquire, 'gpu');
    expect(err).toBeInstanceOf(NoAdapterError);
    expect(err.message).toMatch(/hardware adapter.*driver exploded/);
  });
});

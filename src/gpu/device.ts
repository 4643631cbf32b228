// Adapter and device acquisition.
//
// Order: a real GPU at featureLevel 'core' (Vulkan, Metal or D3D12), else the software adapter
// (Dawn's OpenGL ES backend on Mesa llvmpipe, compatibility mode). `--adapter gpu|software|auto`
// on the CLI or WEBGPU_MINER_ADAPTER in the environment forces a choice.
import { create, globals } from 'webgpu';
import { GpuError, NoAdapterError, OptionError } from '../errors.ts';

// WebGPU's constants (GPUBufferUsage, GPUMapMode, ...) are globals in browsers; Dawn provides them.
Object.assign(globalThis, globals);

export type AdapterChoice = 'auto' | 'gpu' | 'software';

export interface AdapterDescription {
  vendor: string;
  architecture: string;
  device: string;
  description: string;
  /** Dawn backend, e.g. 'vulkan', 'metal', 'd3d12', 'opengles'. */
  backend: string;
  featureLevel: 'core' | 'compatibility';
  /** True for the CPU rasteriser (llvmpipe, lavapipe, SwiftShader): correct but slow. */
  isSoftware: boolean;
}

/** Optional features we use as faster tiers when present. */
const OPTIONAL_FEATURES = ['shader-f16', 'subgroups', 'timestamp-query'] as const;
export type OptionalFeature = (typeof OPTIONAL_FEATURES)[number];

/** Limits kernels depend on; we request the adapter's values, not the spec defaults. */
const REQUESTED_LIMITS = [
  'maxComputeInvocationsPerWorkgroup',
  'maxComputeWorkgroupSizeX',
  'maxComputeWorkgroupSizeY',
  'maxComputeWorkgroupStorageSize',
  'maxStorageBufferBindingSize',
  'maxBufferSize',
  'maxStorageBuffersPerShaderStage',
  'maxComputeWorkgroupsPerDimension',
] as const;

export const SOFTWARE_PACKAGES = 'libegl1 libegl-mesa0 libgles2 libgl1-mesa-dri';

export interface Gpu {
  readonly device: GPUDevice;
  readonly adapter: GPUAdapter;
  readonly info: AdapterDescription;
  readonly features: ReadonlySet<OptionalFeature>;
  readonly limits: GPUSupportedLimits;
  /**
   * Resolves when all submitted work is done and throws if the device reported any error since
   * the last call (validation errors must never pass silently).
   */
  sync(): Promise<void>;
  /** Errors reported by the device and not yet consumed by sync(). */
  readonly pendingErrors: readonly string[];
  destroy(): void;
}

function parseChoice(value: string | undefined): AdapterChoice {
  const choice = (value ?? 'auto').toLowerCase();
  if (choice === 'auto' || choice === 'gpu' || choice === 'software') return choice;
  throw new OptionError(`adapter must be one of auto, gpu, software (got "${value}")`);
}

function describe(adapter: GPUAdapter, backend: string, featureLevel: 'core' | 'compatibility'): AdapterDescription {
  const info = adapter.info;
  const text = `${info.vendor} ${info.architecture} ${info.device} ${info.description}`.toLowerCase();
  return {
    vendor: info.vendor,
    architecture: info.architecture,
    device: info.device,
    description: info.description,
    backend,
    featureLevel,
    isSoftware: backend === 'opengles' || /llvmpipe|lavapipe|swiftshader|software/.test(text),
  };
}

// Dawn keeps the GPU instance alive as long as a reference exists; we hold one per process.
let instances: Map<string, GPU> | undefined;
function instance(options: string[]): GPU {
  instances ??= new Map();
  const key = options.join(' ');
  let gpu = instances.get(key);
  if (!gpu) {
    gpu = create(options);
    instances.set(key, gpu);
  }
  return gpu;
}

/** Prepare the process environment for the OpenGL ES backend; must run before the first create(). */
function prepareSoftwareEnvironment(): void {
  // Without EGL_PLATFORM=surfaceless, eglInitialize fails on a machine with no display.
  process.env.EGL_PLATFORM ??= 'surfaceless';
  process.env.XDG_RUNTIME_DIR ??= '/tmp';
}

async function tryGpu(): Promise<{ adapter: GPUAdapter; backend: string } | undefined> {
  const adapter = await instance([]).requestAdapter({ featureLevel: 'core', powerPreference: 'high-performance' });
  if (!adapter) return undefined;
  const backend = backendOf(adapter);
  // Dawn may hand back its own CPU Vulkan (lavapipe/SwiftShader) as 'core': that is not a real GPU.
  if (describe(adapter, backend, 'core').isSoftware) return undefined;
  return { adapter, backend };
}

async function trySoftware(): Promise<{ adapter: GPUAdapter; backend: string } | undefined> {
  prepareSoftwareEnvironment();
  const adapter = await instance(['backend=opengles']).requestAdapter({ featureLevel: 'compatibility' });
  return adapter ? { adapter, backend: 'opengles' } : undefined;
}

function backendOf(adapter: GPUAdapter): string {
  // The standard API does not expose the backend; Dawn puts it in info.description or we infer it.
  const text = `${adapter.info.description} ${adapter.info.architecture}`.toLowerCase();
  for (const name of ['vulkan', 'metal', 'd3d12', 'd3d11', 'opengles', 'opengl']) {
    if (text.includes(name)) return name;
  }
  return process.platform === 'darwin' ? 'metal' : process.platform === 'win32' ? 'd3d12' : 'vulkan';
}

export interface AcquireOptions {
  /** Overrides WEBGPU_MINER_ADAPTER. */
  adapter?: AdapterChoice | string;
}

export async function acquireGpu(options: AcquireOptions = {}): Promise<Gpu> {
  const choice = parseChoice(options.adapter ?? process.env.WEBGPU_MINER_ADAPTER);
  // The software backend needs EGL_PLATFORM in the C environment before Dawn starts.
  if (choice !== 'gpu') prepareSoftwareEnvironment();
  let found: { adapter: GPUAdapter; backend: string } | undefined;
  let featureLevel: 'core' | 'compatibility' = 'core';
  const failures: string[] = [];
  if (choice !== 'software') {
    try {
      found = await tryGpu();
      if (!found) failures.push('no hardware adapter at featureLevel core');
    } catch (err) {
      failures.push(`hardware adapter: ${(err as Error).message}`);
    }
  }
  if (!found && choice !== 'gpu') {
    try {
      found = await trySoftware();
      featureLevel = 'compatibility';
      if (!found) failures.push('no OpenGL ES adapter (software)');
    } catch (err) {
      failures.push(`software adapter: ${(err as Error).message}`);
    }
  }
  if (!found) {
    const fix =
      choice === 'gpu'
        ? 'Install your GPU driver with Vulkan (Linux/Windows) or use macOS with Metal, or run with --adapter software.'
        : `Install a GPU driver with Vulkan, or the software adapter's packages: ` +
          `sudo apt-get install -y ${SOFTWARE_PACKAGES} (or run "npm run setup").`;
    throw new NoAdapterError(`No WebGPU adapter found (${failures.join('; ')}). ${fix}`);
  }
  return openDevice(found.adapter, found.backend, featureLevel);
}

async function openDevice(adapter: GPUAdapter, backend: string, featureLevel: 'core' | 'compatibility'): Promise<Gpu> {
  const requiredFeatures = OPTIONAL_FEATURES.filter((f) => adapter.features.has(f));
  const requiredLimits: Record<string, number> = {};
  for (const name of REQUESTED_LIMITS) requiredLimits[name] = adapter.limits[name];
  const device = await adapter.requestDevice({
    label: 'webgpu-miner',
    requiredFeatures: requiredFeatures as GPUFeatureName[],
    requiredLimits,
  });

  const pendingErrors: string[] = [];
  let lostReason: string | undefined;
  let destroyed = false;
  device.addEventListener('uncapturederror', (event) => {
    pendingErrors.push((event as GPUUncapturedErrorEvent).error.message);
  });
  void device.lost.then((info) => {
    if (!destroyed) lostReason = `device lost (${info.reason}): ${info.message}`;
  });

  const gpu: Gpu = {
    device,
    adapter,
    info: describe(adapter, backend, featureLevel),
    features: new Set(requiredFeatures),
    limits: device.limits,
    pendingErrors,
    async sync() {
      await device.queue.onSubmittedWorkDone();
      if (lostReason) throw new GpuError(lostReason);
      if (pendingErrors.length > 0) {
        const messages = pendingErrors.splice(0);
        throw new GpuError(`GPU reported ${messages.length} error(s): ${messages.join(' | ')}`);
      }
    },
    destroy() {
      destroyed = true;
      device.destroy();
    },
  };
  return gpu;
}

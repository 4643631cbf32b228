// Adapter and device acquisition.
//
// Order: a real GPU at featureLevel 'core' (Vulkan, Metal or D3D12), else a software adapter: first
// Dawn's Vulkan backend on Mesa's lavapipe (featureLevel core, with shader-f16 and subgroups from Mesa
// 25 on; Mesa 22's lavapipe is refused by Dawn), then Dawn's OpenGL ES backend on Mesa's llvmpipe
// (compatibility: no f16, no subgroups). `--adapter` on the CLI or WEBGPU_MINER_ADAPTER in the
// environment forces a choice: gpu, software (the first software adapter that works), software-core
// (lavapipe only) or software-compat (llvmpipe GLES only). `auto` never takes a software adapter while
// a hardware one works.
import { create, globals } from 'webgpu';
import { GpuError, NoAdapterError, OptionError } from '../errors.ts';

// WebGPU's constants (GPUBufferUsage, GPUMapMode, ...) are globals in browsers; Dawn provides them.
Object.assign(globalThis, globals);

export const ADAPTER_CHOICES = ['auto', 'gpu', 'software', 'software-core', 'software-compat'] as const;
export type AdapterChoice = (typeof ADAPTER_CHOICES)[number];

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

/** Debian packages of the compatibility software adapter (OpenGL ES on llvmpipe). */
export const SOFTWARE_PACKAGES = 'libegl1 libegl-mesa0 libgles2 libgl1-mesa-dri';
/** Debian packages of the core software adapter (Vulkan on lavapipe); Mesa 25 from bookworm-backports on Debian 12. */
export const SOFTWARE_CORE_PACKAGES = 'mesa-vulkan-drivers libvulkan1';

export interface Gpu {
  readonly device: GPUDevice;
  readonly adapter: GPUAdapter;
  readonly info: AdapterDescription;
  readonly features: ReadonlySet<OptionalFeature>;
  /**
   * The WGSL language features the instance offers (navigator.gpu.wgslLanguageFeatures in a browser),
   * e.g. 'packed_4x8_integer_dot_product' for dot4I8Packed.
   */
  readonly wgslLanguageFeatures: ReadonlySet<string>;
  readonly limits: GPUSupportedLimits;
  /**
   * Resolves when all submitted work is done and throws if the device reported any error since
   * the last call (validation errors must never pass silently).
   */
  sync(): Promise<void>;
  /** Errors reported by the device and not yet consumed by sync(). */
  readonly pendingErrors: readonly string[];
  /**
   * Resolves (never rejects) when the device is lost other than by destroy(): a driver reset, a hung
   * or removed GPU. Nothing on the device works again in this process; the error says so.
   */
  readonly lost: Promise<GpuError>;
  /** The loss, once `lost` has resolved; undefined while the device works. */
  readonly lostError: GpuError | undefined;
  destroy(): void;
}

/**
 * What to throw for `err`, a GPU call's failure: the device's loss where it is lost. A call that was
 * waiting on a lost device (mapAsync, say) fails with a bare AbortError, sometimes a moment before
 * Dawn reports the loss itself: such an error waits up to 100 ms for it.
 */
export async function gpuFailure(gpu: Pick<Gpu, 'lost' | 'lostError'>, err: unknown): Promise<unknown> {
  if (!gpu.lostError && err instanceof DOMException && err.name === 'AbortError') {
    await Promise.race([gpu.lost, new Promise((resolve) => setTimeout(resolve, 100))]);
  }
  return gpu.lostError ?? err;
}

/**
 * Run `allocate` (buffer creation and uploads, all synchronous) and return its value with the device's
 * out-of-memory error from it, if any: WebGPU reports no memory size, so an allocation past the GPU's
 * memory is known only from this. The error scope is popped whatever happens.
 */
export async function outOfMemoryIn<T>(gpu: Pick<Gpu, 'device'>, allocate: () => T): Promise<[T, GPUError | null]> {
  gpu.device.pushErrorScope('out-of-memory');
  let value: T;
  try {
    value = allocate();
  } catch (err) {
    await gpu.device.popErrorScope();
    throw err;
  }
  return [value, await gpu.device.popErrorScope()];
}

function parseChoice(value: string | undefined): AdapterChoice {
  const choice = (value ?? 'auto').toLowerCase();
  if ((ADAPTER_CHOICES as readonly string[]).includes(choice)) return choice as AdapterChoice;
  throw new OptionError(`adapter must be one of ${ADAPTER_CHOICES.join(', ')} (got "${value}")`);
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

// Dawn withholds 'shader-f16' from NVIDIA GPUs on Vulkan unless this adapter toggle is on: a guard
// against f16 conformance failures in NVIDIA's drivers (crbug.com/42251215), not a hardware limit. It is
// safe for our kernels because they use f16 only as storage: the f16 matmul tier converts f32 values
// to f16 into workgroup memory and back to f32 before any arithmetic (products and sums are f32), and
// its test checks the results against a float64 reference at the bound f16 storage allows, on the
// adapter it runs on. A driver that rounded those conversions wrongly would fail that test, and
// kernelTiers({ baselineOnly }) / a Matmul's tier option keep such a device on the f32 baseline.
const HARDWARE_TOGGLES = ['vulkan_enable_f16_on_nvidia'];

// Toggles on for every Dawn instance, software adapters included, so that the test suite runs the
// kernels as a GPU runs them. disable_workgroup_init: WGSL zero-fills a kernel's workgroup memory
// before its first invocation runs, which Dawn does with stores and a barrier in every workgroup.
// Every kernel here writes workgroup memory before reading it, so that work is skipped. Without the
// fill, workgroup memory starts with what earlier workgroups left there (test/device.test.ts shows
// it on both software adapters), so a kernel that read it unwritten fails its float64 tests there.
const KERNEL_TOGGLES = ['disable_workgroup_init'];

/**
 * The Dawn toggles to enable: `base` (the adapter's own), KERNEL_TOGGLES, and those named in
 * WEBGPU_MINER_DAWN_TOGGLES (comma-separated), where `-name` drops a default instead (to time it, or
 * rule it out). README.md ("Dawn toggles") gives the figures and reasons; none of these is on by default:
 *   skip_validation       no host time saved on Dawn's Vulkan backend, and validation is what turns a
 *                         bad dispatch into a clear error instead of a lost device;
 *   disable_robustness    no kernel time saved on lavapipe; it removes the bounds clamping that keeps a
 *                         wrong index from reading another allocation.
 */
function dawnToggles(base: string[] = []): string[] {
  const asked = (process.env.WEBGPU_MINER_DAWN_TOGGLES ?? '').split(',').map((t) => t.trim()).filter(Boolean);
  for (const toggle of asked) {
    if (!/^-?[a-z0-9_]+$/.test(toggle)) throw new OptionError(`WEBGPU_MINER_DAWN_TOGGLES: '${toggle}' is not a Dawn toggle name (lower-case letters, digits, _; a leading - drops a default)`);
  }
  const dropped = new Set(asked.filter((t) => t.startsWith('-')).map((t) => t.slice(1)));
  const all = [...new Set([...base, ...KERNEL_TOGGLES, ...asked.filter((t) => !t.startsWith('-'))])].filter((t) => !dropped.has(t));
  return all.length > 0 ? [`enable-dawn-features=${all.join(',')}`] : [];
}

async function tryGpu(): Promise<Found | undefined> {
  const gpu = instance(dawnToggles(HARDWARE_TOGGLES));
  const adapter = await gpu.requestAdapter({ featureLevel: 'core', powerPreference: 'high-performance' });
  if (!adapter) return undefined;
  const backend = backendOf(adapter);
  // Dawn may hand back its own CPU Vulkan (lavapipe/SwiftShader) as 'core': that is not a real GPU.
  if (describe(adapter, backend, 'core').isSoftware) return undefined;
  return { adapter, backend, featureLevel: 'core', wgsl: languageFeatures(gpu) };
}

interface Found {
  adapter: GPUAdapter;
  backend: string;
  featureLevel: 'core' | 'compatibility';
  /** The instance's WGSL language features. */
  wgsl: ReadonlySet<string>;
}

function languageFeatures(gpu: GPU): ReadonlySet<string> {
  // Older Dawn builds (and some browsers) lack the attribute: then no optional language feature is used.
  const features = (gpu as { wgslLanguageFeatures?: Iterable<string> }).wgslLanguageFeatures;
  return new Set(features ?? []);
}

async function trySoftwareCore(): Promise<Found | undefined> {
  // Dawn's `adapter=` flag picks the Vulkan device by name (lavapipe calls itself "llvmpipe (LLVM ...)"),
  // so a hardware Vulkan device on the same machine is skipped; Dawn throws when there is none.
  const gpu = instance(['backend=vulkan', 'adapter=llvmpipe', ...dawnToggles()]);
  const adapter = await gpu.requestAdapter({ featureLevel: 'core' });
  if (!adapter || !describe(adapter, 'vulkan', 'core').isSoftware) return undefined;
  return { adapter, backend: 'vulkan', featureLevel: 'core', wgsl: languageFeatures(gpu) };
}

async function trySoftwareCompat(): Promise<Found | undefined> {
  prepareSoftwareEnvironment();
  const gpu = instance(['backend=opengles', ...dawnToggles()]);
  const adapter = await gpu.requestAdapter({ featureLevel: 'compatibility' });
  return adapter ? { adapter, backend: 'opengles', featureLevel: 'compatibility', wgsl: languageFeatures(gpu) } : undefined;
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
  dawnToggles(); // a malformed WEBGPU_MINER_DAWN_TOGGLES is the user's error, not a missing adapter
  // The GLES backend needs EGL_PLATFORM in the C environment before Dawn starts.
  if (choice === 'auto' || choice === 'software' || choice === 'software-compat') prepareSoftwareEnvironment();
  const attempts: Array<[string, () => Promise<Found | undefined>]> = [];
  if (choice === 'auto' || choice === 'gpu') attempts.push(['hardware adapter at featureLevel core', tryGpu]);
  if (choice === 'auto' || choice === 'software' || choice === 'software-core') attempts.push(['Vulkan software adapter (lavapipe)', trySoftwareCore]);
  if (choice === 'auto' || choice === 'software' || choice === 'software-compat') attempts.push(['OpenGL ES software adapter (llvmpipe)', trySoftwareCompat]);
  const failures: string[] = [];
  for (const [name, attempt] of attempts) {
    try {
      const found = await attempt();
      if (found) return openDevice(found);
      failures.push(`no ${name}`);
    } catch (err) {
      failures.push(`${name}: ${(err as Error).message}`);
    }
  }
  throw new NoAdapterError(`No WebGPU adapter found (${failures.join('; ')}). ${noAdapterFix(choice)}`);
}

function noAdapterFix(choice: AdapterChoice): string {
  const core = `the core software adapter's packages (on Debian 12 from bookworm-backports: apt-get install -t bookworm-backports ${SOFTWARE_CORE_PACKAGES})`;
  const compat = `the compatibility software adapter's packages (apt-get install ${SOFTWARE_PACKAGES})`;
  switch (choice) {
    case 'gpu':
      return 'Install your GPU driver with Vulkan (Linux/Windows) or use macOS with Metal, or run with --adapter software.';
    case 'software-core':
      return `Install ${core}, or "npm run setup" does it.`;
    case 'software-compat':
      return `Install ${compat}, or "npm run setup" does it.`;
    default:
      return `Install a GPU driver with Vulkan, or ${core} or ${compat}; "npm run setup" installs both.`;
  }
}

async function openDevice({ adapter, backend, featureLevel, wgsl }: Found): Promise<Gpu> {
  const requiredFeatures = OPTIONAL_FEATURES.filter((f) => adapter.features.has(f));
  const requiredLimits: Record<string, number> = {};
  for (const name of REQUESTED_LIMITS) requiredLimits[name] = adapter.limits[name];
  const device = await adapter.requestDevice({
    label: 'webgpu-miner',
    requiredFeatures: requiredFeatures as GPUFeatureName[],
    requiredLimits,
  });

  const pendingErrors: string[] = [];
  let lostError: GpuError | undefined;
  let destroyed = false;
  device.addEventListener('uncapturederror', (event) => {
    pendingErrors.push((event as GPUUncapturedErrorEvent).error.message);
  });
  // Dawn ends every later call on a lost device with a bare AbortError or nothing at all: this names
  // what happened instead.
  const lost = new Promise<GpuError>((resolve) => {
    void device.lost.then((info) => {
      if (destroyed) return;
      lostError = new GpuError(
        `the GPU device was lost (${info.reason}${info.message ? `: ${info.message}` : ''}); ` +
          'nothing can run on it again in this process: restart it (a driver reset or a hung GPU does this; if it recurs, see the system log)',
      );
      resolve(lostError);
    });
  });

  const gpu: Gpu = {
    device,
    adapter,
    info: describe(adapter, backend, featureLevel),
    features: new Set(requiredFeatures),
    wgslLanguageFeatures: wgsl,
    limits: device.limits,
    pendingErrors,
    lost,
    get lostError() {
      return lostError;
    },
    async sync() {
      await device.queue.onSubmittedWorkDone();
      if (lostError) throw lostError;
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

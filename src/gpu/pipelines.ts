// Pipeline cache: one compiled pipeline per (name, variant, override constants).
// The key doubles as the pipeline label, so validation errors and profiles name the variant.
import type { Gpu } from './device.ts';

export interface PipelineSpec {
  /** Kernel family and entry point, e.g. 'matvec'. */
  name: string;
  /** Structural variant, e.g. the weight dtype 'q4_0'; '' when there is none. */
  variant: string;
  /** Complete WGSL source (already composed from its modules). */
  code: string;
  entryPoint: string;
  /** WGSL `override` constants (numeric tuning: workgroup size, tiles). */
  constants?: Record<string, number>;
}

export function pipelineKey(spec: Omit<PipelineSpec, 'code'>): string {
  const overrides = Object.entries(spec.constants ?? {})
    .sort(([a], [b]) => (a < b ? -1 : 1))
    .map(([k, v]) => `${k}=${v}`)
    .join(',');
  return [spec.name, spec.variant, spec.entryPoint, overrides].filter((part) => part !== '').join(':');
}

export class PipelineCache {
  readonly #gpu: Gpu;
  readonly #pipelines = new Map<string, GPUComputePipeline>();
  readonly #modules = new Map<string, GPUShaderModule>();

  constructor(gpu: Gpu) {
    this.#gpu = gpu;
  }

  get(spec: PipelineSpec): GPUComputePipeline {
    const key = pipelineKey(spec);
    let pipeline = this.#pipelines.get(key);
    if (!pipeline) {
      let module = this.#modules.get(spec.code);
      if (!module) {
        module = this.#gpu.device.createShaderModule({ label: `${spec.name}:${spec.variant}`, code: spec.code });
        this.#modules.set(spec.code, module);
      }
      pipeline = this.#gpu.device.createComputePipeline({
        label: key,
        layout: 'auto',
        compute: { module, entryPoint: spec.entryPoint, constants: spec.constants },
      });
      this.#pipelines.set(key, pipeline);
    }
    return pipeline;
  }

  get size(): number {
    return this.#pipelines.size;
  }
}

/** One cache per device, shared by every kernel module. */
const caches = new WeakMap<Gpu, PipelineCache>();
export function pipelineCache(gpu: Gpu): PipelineCache {
  let cache = caches.get(gpu);
  if (!cache) {
    cache = new PipelineCache(gpu);
    caches.set(gpu, cache);
  }
  return cache;
}

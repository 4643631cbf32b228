// The piece every kernel module shares: a pipeline, its uniform buffer and one bind group, created
// once for a fixed set of buffers, then encoded as many times as the engine runs a step.
//
// Binding convention for every shader: @binding(0) is the uniform struct, @binding(1..n) are the
// storage buffers in the order the kernel module lists them. An entry point that does not use a
// binding gets `undefined` in that slot (layout 'auto' drops unused bindings).
//
// Uniforms are written with queue.writeBuffer, which takes effect before the next submit. So one
// Dispatch may be encoded at most once per submit; a step that runs the same kernel twice (each
// layer, say) creates one Dispatch per use.
import type { Gpu } from '../src/gpu/device.ts';
import { pipelineCache, type PipelineSpec } from '../src/gpu/pipelines.ts';
import { Uniforms, type UniformLayout } from '../src/gpu/uniforms.ts';
import { ShapeError } from '../src/errors.ts';

export class Dispatch<F extends string> {
  readonly pipeline: GPUComputePipeline;
  readonly uniforms: Uniforms<F>;
  readonly bindGroup: GPUBindGroup;
  readonly label: string;
  readonly #maxPerDimension: number;

  constructor(gpu: Gpu, spec: PipelineSpec, layout: UniformLayout<F>, buffers: Array<GPUBuffer | undefined>) {
    this.pipeline = pipelineCache(gpu).get(spec);
    this.label = this.pipeline.label;
    this.uniforms = new Uniforms(gpu.device, layout, this.label);
    this.#maxPerDimension = gpu.limits.maxComputeWorkgroupsPerDimension;
    this.bindGroup = gpu.device.createBindGroup({
      label: this.label,
      layout: this.pipeline.getBindGroupLayout(0),
      entries: [this.uniforms.buffer, ...buffers].flatMap((buffer, binding) =>
        buffer ? [{ binding, resource: { buffer } }] : [],
      ),
    });
  }

  /** Write the uniforms and record the dispatch. */
  encode(pass: GPUComputePassEncoder, values: Record<F, number>, x: number, y = 1, z = 1): void {
    if (x > this.#maxPerDimension || y > this.#maxPerDimension || z > this.#maxPerDimension) {
      throw new ShapeError(`${this.label}: dispatch ${x}x${y}x${z} exceeds ${this.#maxPerDimension} per dimension`);
    }
    if (x === 0 || y === 0 || z === 0) return;
    this.uniforms.write(values);
    pass.setPipeline(this.pipeline);
    pass.setBindGroup(0, this.bindGroup);
    pass.dispatchWorkgroups(x, y, z);
  }
}

/** Record `record` into one compute pass, submit it, and wait (throwing on any device error). */
export async function runPass(gpu: Gpu, record: (pass: GPUComputePassEncoder) => void): Promise<void> {
  const encoder = gpu.device.createCommandEncoder();
  const pass = encoder.beginComputePass();
  record(pass);
  pass.end();
  gpu.device.queue.submit([encoder.finish()]);
  await gpu.sync();
}

/** Validate a workgroup size override: a power of two within the adapter's limit. */
export function checkWorkgroupSize(gpu: Gpu, size: number, label: string): number {
  if (!Number.isSafeInteger(size) || size < 1 || (size & (size - 1)) !== 0) {
    throw new ShapeError(`${label}: workgroup size must be a power of two (got ${size})`);
  }
  if (size > gpu.limits.maxComputeInvocationsPerWorkgroup || size > gpu.limits.maxComputeWorkgroupSizeX) {
    throw new ShapeError(`${label}: workgroup size ${size} exceeds this adapter's limit`);
  }
  return size;
}

/** Throw unless every value is a positive safe integer (shapes) or non-negative (offsets). */
export function checkShape(label: string, dims: Record<string, number>, allowZero: string[] = []): void {
  for (const [name, value] of Object.entries(dims)) {
    const min = allowZero.includes(name) ? 0 : 1;
    if (!Number.isSafeInteger(value) || value < min) {
      throw new ShapeError(`${label}: ${name} must be an integer >= ${min} (got ${value})`);
    }
  }
}

/** Throw unless `buffer` holds `elements` 4-byte elements starting at element `offset`. */
export function checkFits(label: string, name: string, buffer: GPUBuffer, offset: number, elements: number): void {
  const needed = (offset + elements) * 4;
  if (needed > buffer.size) {
    throw new ShapeError(`${label}: ${name} needs ${needed} bytes but its buffer has ${buffer.size}`);
  }
}

// The piece every kernel module shares: a pipeline, its uniform buffer and one bind group, created
// once for a fixed set of buffers, then encoded as many times as the engine runs a step.
//
// Binding convention for every shader: @binding(0) is the uniform struct, @binding(1..n) are the
// storage buffers in the order the kernel module lists them. An entry point that does not use a
// binding gets `undefined` in that slot (layout 'auto' drops unused bindings).
//
// Uniforms: each Dispatch owns a fixed slice of its device's uniform arena (src/gpu/uniforms.ts),
// bound at that offset by its bind group. encode() writes the values into the arena's CPU copy; the
// arena uploads what changed with one writeBuffer just before the next queue.submit (it wraps the
// queue's submit, so every submit site gets this, runPass or not). A uniform holds one value per
// submit, so a Dispatch may be encoded several times in one submit only with the same values (a
// timing loop repeating one kernel); encoding it with other values before the submit throws. A step
// that runs the same kernel with different values (each layer, say) creates one Dispatch per use.
//
// Recording is the per-token path: no allocation per dispatch, and setPipeline / setBindGroup are
// skipped when the pass already has that pipeline / bind group from the previous Dispatch recorded
// into it. That bookkeeping assumes a pass's pipeline and bind group are set only through Dispatch.
import type { Gpu } from '../src/gpu/device.ts';
import { pipelineCache, type PipelineSpec } from '../src/gpu/pipelines.ts';
import { Uniforms, type UniformLayout } from '../src/gpu/uniforms.ts';
import { ShapeError } from '../src/errors.ts';

// The pass last recorded into through a Dispatch, and the state it was left with.
let currentPass: GPUComputePassEncoder | undefined;
let currentPipeline: GPUComputePipeline | undefined;
let currentBindGroup: GPUBindGroup | undefined;

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
      entries: [
        { binding: 0, resource: this.uniforms.binding },
        ...buffers.flatMap((buffer, i) => (buffer ? [{ binding: i + 1, resource: { buffer } }] : [])),
      ],
    });
  }

  /** Write the uniforms and record the dispatch. */
  encode(pass: GPUComputePassEncoder, values: Record<F, number>, x: number, y = 1, z = 1): void {
    if (x > this.#maxPerDimension || y > this.#maxPerDimension || z > this.#maxPerDimension) {
      throw new ShapeError(`${this.label}: dispatch ${x}x${y}x${z} exceeds ${this.#maxPerDimension} per dimension`);
    }
    if (x === 0 || y === 0 || z === 0) return;
    this.uniforms.write(values);
    if (pass !== currentPass) {
      currentPass = pass;
      currentPipeline = undefined;
      currentBindGroup = undefined;
    }
    if (currentPipeline !== this.pipeline) {
      pass.setPipeline(this.pipeline);
      currentPipeline = this.pipeline;
    }
    if (currentBindGroup !== this.bindGroup) {
      pass.setBindGroup(0, this.bindGroup);
      currentBindGroup = this.bindGroup;
    }
    pass.dispatchWorkgroups(x, y, z);
  }
}

/** Record `record` into one compute pass, submit it (uniforms go first), and wait (throwing on any device error). */
export async function runPass(gpu: Gpu, record: (pass: GPUComputePassEncoder) => void): Promise<void> {
  const encoder = gpu.device.createCommandEncoder();
  const pass = encoder.beginComputePass();
  record(pass);
  pass.end();
  gpu.device.queue.submit([encoder.finish()]);
  await gpu.sync();
}

const NONE: readonly string[] = [];

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
export function checkShape(label: string, dims: Record<string, number>, allowZero: readonly string[] = NONE): void {
  for (const name in dims) {
    const value = dims[name];
    const min = allowZero.length > 0 && allowZero.includes(name) ? 0 : 1;
    if (!Number.isSafeInteger(value) || value < min) {
      throw new ShapeError(`${label}: ${name} must be an integer >= ${min} (got ${value})`);
    }
  }
}

// A buffer's size never changes, and reading GPUBuffer.size crosses into native code (a few
// hundred nanoseconds, several times per dispatch): read it once per buffer.
const bufferSizes = new WeakMap<GPUBuffer, number>();
function sizeOf(buffer: GPUBuffer): number {
  let size = bufferSizes.get(buffer);
  if (size === undefined) {
    size = buffer.size;
    bufferSizes.set(buffer, size);
  }
  return size;
}

/** Throw unless `buffer` holds `elements` 4-byte elements starting at element `offset`. */
export function checkFits(label: string, name: string, buffer: GPUBuffer, offset: number, elements: number): void {
  const needed = (offset + elements) * 4;
  const size = sizeOf(buffer);
  if (needed > size) {
    throw new ShapeError(`${label}: ${name} needs ${needed} bytes but its buffer has ${size}`);
  }
}

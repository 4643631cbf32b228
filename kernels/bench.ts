// Roofline probes for bench/: a large buffer copy (memory bandwidth) and an FMA loop (arithmetic
// peak). They compute nothing a model needs; they measure what this adapter can do at best, so the
// bench can report each real kernel as a share of it. See shaders/bench_copy.wgsl, bench_fma.wgsl.
import type { Gpu } from '../src/gpu/device.ts';
import { UniformLayout } from '../src/gpu/uniforms.ts';
import { ShapeError } from '../src/errors.ts';
import { composeShader, dispatchGrid } from './shader.ts';
import { Dispatch, checkFits, checkShape, checkWorkgroupSize } from './dispatch.ts';

export const CopyParams = new UniformLayout('CopyParams', [['count', 'u32']] as const);

export const FmaParams = new UniformLayout('FmaParams', [
  ['iterations', 'u32'],
  ['count', 'u32'],
  ['mul', 'f32'],
  ['add', 'f32'],
] as const);

/** FLOP of one trip of the FMA loop: 32 vec4 FMAs x 4 lanes x 2. */
export const FMA_FLOP_PER_ITERATION = 256;

export interface CopyBuffers {
  /** (n) vec4<f32>, read. */
  src: GPUBuffer;
  /** (n) vec4<f32>, written; a different buffer from src. */
  dst: GPUBuffer;
}

/** dst = src over `count` vec4<f32> elements: 32 bytes moved per element (16 read, 16 written). */
export class CopyProbe {
  readonly #dispatch: Dispatch<(typeof CopyParams.fields)[number][0]>;
  readonly #buffers: CopyBuffers;
  readonly #wg: number;
  readonly #maxPerDimension: number;

  constructor(gpu: Gpu, buffers: CopyBuffers, workgroupSize = 256) {
    const label = 'bench.copy';
    if (buffers.src === buffers.dst) throw new ShapeError(`${label}: src and dst must be different buffers`);
    this.#wg = checkWorkgroupSize(gpu, workgroupSize, label);
    this.#buffers = buffers;
    this.#maxPerDimension = gpu.limits.maxComputeWorkgroupsPerDimension;
    this.#dispatch = new Dispatch(
      gpu,
      { name: 'bench', variant: 'copy', code: composeShader('bench_copy.wgsl'), entryPoint: 'copy', constants: { WG: this.#wg } },
      CopyParams,
      [buffers.src, buffers.dst],
    );
  }

  /** Bytes read plus bytes written by a copy of `count` vec4 elements. */
  static bytes(count: number): number {
    return 32 * count;
  }

  /** Copy `count` vec4 elements (about one per invocation, grid-strided beyond 64 Mi invocations). */
  encode(pass: GPUComputePassEncoder, run: { count: number }): void {
    const label = 'bench.copy';
    checkShape(label, { count: run.count });
    checkFits(label, 'src', this.#buffers.src, 0, 4 * run.count);
    checkFits(label, 'dst', this.#buffers.dst, 0, 4 * run.count);
    const groups = Math.min(Math.ceil(run.count / this.#wg), 1 << 18);
    const [x, y] = dispatchGrid(groups, this.#maxPerDimension);
    this.#dispatch.encode(pass, { count: run.count }, x, y);
  }
}

/** An FMA-bound loop: `workgroups` x WG invocations, each `iterations` x 256 FLOP. */
export class FmaProbe {
  readonly workgroupSize: number;
  readonly #dispatch: Dispatch<(typeof FmaParams.fields)[number][0]>;
  readonly #sink: GPUBuffer;
  readonly #maxPerDimension: number;

  /** `sink` receives one f32 per invocation: at least workgroups x workgroupSize x 4 bytes. */
  constructor(gpu: Gpu, sink: GPUBuffer, workgroupSize = 256) {
    const label = 'bench.fma';
    this.workgroupSize = checkWorkgroupSize(gpu, workgroupSize, label);
    this.#sink = sink;
    this.#maxPerDimension = gpu.limits.maxComputeWorkgroupsPerDimension;
    this.#dispatch = new Dispatch(
      gpu,
      { name: 'bench', variant: 'fma', code: composeShader('bench_fma.wgsl'), entryPoint: 'fma_peak', constants: { WG: this.workgroupSize } },
      FmaParams,
      [sink],
    );
  }

  /** FLOP of one run. */
  flops(run: { workgroups: number; iterations: number }): number {
    return run.workgroups * this.workgroupSize * run.iterations * FMA_FLOP_PER_ITERATION;
  }

  encode(pass: GPUComputePassEncoder, run: { workgroups: number; iterations: number }): void {
    const label = 'bench.fma';
    checkShape(label, run);
    const count = run.workgroups * this.workgroupSize;
    checkFits(label, 'sink', this.#sink, 0, count);
    const [x, y] = dispatchGrid(run.workgroups, this.#maxPerDimension);
    this.#dispatch.encode(pass, { iterations: run.iterations, count, mul: 0.999999, add: 1e-6 }, x, y);
  }
}

// Embedding gather: out[t, :] = table[ids[t], :], table any weight dtype. See shaders/embed.wgsl.
// Ids must be validated (< table rows) by the caller; the shader clamps only to stay in bounds.
import type { Gpu } from '../src/gpu/device.ts';
import { UniformLayout } from '../src/gpu/uniforms.ts';
import { composeShader, dispatchGrid } from './shader.ts';
import { Dispatch, checkFits, checkShape, checkWorkgroupSize } from './dispatch.ts';
import { ShapeError } from '../src/errors.ts';
import { weightBindings, weightShader, type PackedWeight } from './weights.ts';

export const EmbedParams = new UniformLayout('Params', [
  ['count', 'u32'],
  ['rows', 'u32'],
  ['cols', 'u32'],
  ['ids_offset', 'u32'],
  ['out_offset', 'u32'],
  ['out_stride', 'u32'],
] as const);

export interface EmbedBuffers {
  /** (V, D) table, uploaded. */
  table: PackedWeight;
  /** (T) u32 token ids. */
  ids: GPUBuffer;
  /** (T, D) f32 rows. */
  output: GPUBuffer;
}

/** Offsets and strides in elements. */
export interface EmbedRun {
  /** Tokens T. */
  count: number;
  /** First id; default 0. */
  idsOffset?: number;
  /** First output element; default 0. */
  outputOffset?: number;
  /** Elements between output rows; default D. */
  outputRowStride?: number;
}

export class Embed {
  readonly table: PackedWeight;
  readonly #buffers: EmbedBuffers;
  readonly #dispatch: Dispatch<(typeof EmbedParams.fields)[number][0]>;
  readonly #maxPerDimension: number;

  constructor(gpu: Gpu, buffers: EmbedBuffers, workgroupSize = 64) {
    const label = `embed(${buffers.table.label})`;
    const wg = checkWorkgroupSize(gpu, workgroupSize, label);
    this.table = buffers.table;
    this.#buffers = buffers;
    this.#maxPerDimension = gpu.limits.maxComputeWorkgroupsPerDimension;
    this.#dispatch = new Dispatch(
      gpu,
      {
        name: 'embed',
        variant: buffers.table.dtype,
        code: composeShader(weightShader(buffers.table.dtype), 'embed.wgsl'),
        entryPoint: 'embed',
        constants: { WG: wg },
      },
      EmbedParams,
      [...weightBindings(buffers.table), buffers.ids, buffers.output],
    );
  }

  encode(pass: GPUComputePassEncoder, run: EmbedRun): void {
    const label = `embed(${this.table.label})`;
    const { rows, cols } = this.table;
    const { count, idsOffset = 0, outputOffset = 0, outputRowStride = cols } = run;
    checkShape(label, { count, idsOffset, outputOffset, outputRowStride }, ['idsOffset', 'outputOffset']);
    if (outputRowStride < cols) throw new ShapeError(`${label}: outputRowStride ${outputRowStride} < D = ${cols}`);
    checkFits(label, 'ids', this.#buffers.ids, idsOffset, count);
    checkFits(label, 'output', this.#buffers.output, outputOffset, (count - 1) * outputRowStride + cols);
    const [x, y] = dispatchGrid(count, this.#maxPerDimension);
    this.#dispatch.encode(
      pass,
      { count, rows, cols, ids_offset: idsOffset, out_offset: outputOffset, out_stride: outputRowStride },
      x,
      y,
    );
  }
}

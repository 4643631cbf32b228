// Embedding gather: out[t, :] = table[ids[t], :] * scale, table any weight dtype (scale: Gemma's
// sqrt(hidden), applied here so a tied LM head keeps the unscaled table). See shaders/embed.wgsl.
// Ids must be validated (< table rows) by the caller; the shader clamps only to stay in bounds.
// A table uploaded in row chunks (uploadWeightChunks) gets one dispatch per chunk; each writes only
// the rows of tokens whose id falls in its chunk.
import type { Gpu } from '../src/gpu/device.ts';
import { UniformLayout } from '../src/gpu/uniforms.ts';
import { composeShader, dispatchGrid } from './shader.ts';
import { Dispatch, checkFits, checkShape, checkWorkgroupSize } from './dispatch.ts';
import { ShapeError } from '../src/errors.ts';
import { weightBindings, weightShader, type PackedWeight } from './weights.ts';
import { asChunked, type ChunkedWeight } from './weights-upload.ts';

export const EmbedParams = new UniformLayout('Params', [
  ['count', 'u32'],
  ['rows', 'u32'],
  ['cols', 'u32'],
  ['ids_offset', 'u32'],
  ['out_offset', 'u32'],
  ['out_stride', 'u32'],
  ['first_row', 'u32'],
  ['table_rows', 'u32'],
  ['scale', 'f32'],
] as const);

export interface EmbedBuffers {
  /** (V, D) table, uploaded whole or in row chunks. */
  table: PackedWeight | ChunkedWeight;
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
  /** Every gathered value is multiplied by it (Gemma: sqrt(hidden)); default 1. */
  scale?: number;
}

type EmbedField = (typeof EmbedParams.fields)[number][0];

export class Embed {
  readonly table: ChunkedWeight;
  readonly #buffers: EmbedBuffers;
  /** One per row chunk of the table, in row order. */
  readonly #dispatches: Array<{ firstRow: number; rows: number; dispatch: Dispatch<EmbedField> }>;
  readonly #maxPerDimension: number;

  constructor(gpu: Gpu, buffers: EmbedBuffers, workgroupSize = 64) {
    const table = asChunked(buffers.table);
    const label = `embed(${table.label})`;
    const wg = checkWorkgroupSize(gpu, workgroupSize, label);
    this.table = table;
    this.#buffers = buffers;
    this.#maxPerDimension = gpu.limits.maxComputeWorkgroupsPerDimension;
    this.#dispatches = table.chunks.map(({ firstRow, weight }) => ({
      firstRow,
      rows: weight.rows,
      dispatch: new Dispatch(
        gpu,
        {
          name: 'embed',
          variant: weight.dtype,
          code: composeShader(weightShader(weight.dtype), 'embed.wgsl'),
          entryPoint: 'embed',
          constants: { WG: wg },
        },
        EmbedParams,
        [...weightBindings(weight), buffers.ids, buffers.output],
      ),
    }));
  }

  encode(pass: GPUComputePassEncoder, run: EmbedRun): void {
    const label = `embed(${this.table.label})`;
    const { rows: tableRows, cols } = this.table;
    const { count, idsOffset = 0, outputOffset = 0, outputRowStride = cols, scale = 1 } = run;
    if (!Number.isFinite(scale)) throw new ShapeError(`${label}: scale must be finite (got ${scale})`);
    checkShape(label, { count, idsOffset, outputOffset, outputRowStride }, ['idsOffset', 'outputOffset']);
    if (outputRowStride < cols) throw new ShapeError(`${label}: outputRowStride ${outputRowStride} < D = ${cols}`);
    checkFits(label, 'ids', this.#buffers.ids, idsOffset, count);
    checkFits(label, 'output', this.#buffers.output, outputOffset, (count - 1) * outputRowStride + cols);
    const [x, y] = dispatchGrid(count, this.#maxPerDimension);
    for (const { firstRow, rows, dispatch } of this.#dispatches) {
      dispatch.encode(
        pass,
        {
          count,
          rows,
          cols,
          ids_offset: idsOffset,
          out_offset: outputOffset,
          out_stride: outputRowStride,
          first_row: firstRow,
          table_rows: tableRows,
          scale,
        },
        x,
        y,
      );
    }
  }
}

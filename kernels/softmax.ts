// Softmax and log-softmax over rows, in place or out of place. See shaders/softmax.wgsl.
import type { Gpu } from '../src/gpu/device.ts';
import { UniformLayout } from '../src/gpu/uniforms.ts';
import { ShapeError } from '../src/errors.ts';
import { composeShader, dispatchGrid } from './shader.ts';
import { Dispatch, checkFits, checkShape, checkWorkgroupSize } from './dispatch.ts';

export const SoftmaxParams = new UniformLayout('Params', [
  ['rows', 'u32'],
  ['cols', 'u32'],
  ['in_offset', 'u32'],
  ['out_offset', 'u32'],
] as const);

export type SoftmaxOp = 'softmax' | 'log_softmax';

export interface SoftmaxBuffers {
  /** Input rows (M, C) f32. */
  x: GPUBuffer;
  /** Output rows (M, C) f32; the same buffer as `x` runs in place. */
  out: GPUBuffer;
}

export interface SoftmaxRun {
  /** M: rows, one workgroup each. */
  rows: number;
  /** C: elements per row. */
  cols: number;
  /** First element of the input (elements). */
  inOffset?: number;
  /** First element of the output (elements). */
  outOffset?: number;
}

/**
 * Row-wise softmax or log-softmax of (M, C) f32 rows, numerically stable (the row maximum is
 * subtracted). -inf entries get probability 0 (log-probability -inf); a row of only -inf gives all
 * zeros (softmax) or stays all -inf (log-softmax). When `x` and `out` are one buffer the op runs in
 * place; the input and output ranges must then be identical or disjoint.
 */
export class Softmax {
  readonly op: SoftmaxOp;
  readonly inPlace: boolean;
  readonly #dispatch: Dispatch<(typeof SoftmaxParams.fields)[number][0]>;
  readonly #buffers: SoftmaxBuffers;
  readonly #maxPerDimension: number;

  constructor(gpu: Gpu, op: SoftmaxOp, buffers: SoftmaxBuffers, workgroupSize = 256) {
    if (op !== 'softmax' && op !== 'log_softmax') throw new TypeError(`softmax: unknown op "${op}"`);
    this.op = op;
    this.inPlace = buffers.x === buffers.out;
    const wg = checkWorkgroupSize(gpu, workgroupSize, op);
    this.#maxPerDimension = gpu.limits.maxComputeWorkgroupsPerDimension;
    this.#buffers = buffers;
    this.#dispatch = new Dispatch(
      gpu,
      {
        name: 'softmax',
        variant: op,
        code: composeShader('softmax.wgsl'),
        entryPoint: this.inPlace ? 'in_place' : 'main',
        constants: { WG: wg, LOG: op === 'log_softmax' ? 1 : 0 },
      },
      SoftmaxParams,
      this.inPlace ? [undefined, buffers.out] : [buffers.x, buffers.out],
    );
  }

  encode(pass: GPUComputePassEncoder, run: SoftmaxRun): void {
    const { rows, cols, inOffset = 0, outOffset = 0 } = run;
    const label = this.op;
    checkShape(label, { rows, cols, inOffset, outOffset }, ['inOffset', 'outOffset']);
    const count = rows * cols;
    checkFits(label, 'x', this.#buffers.x, inOffset, count);
    checkFits(label, 'out', this.#buffers.out, outOffset, count);
    if (this.inPlace && inOffset !== outOffset && inOffset < outOffset + count && outOffset < inOffset + count) {
      throw new ShapeError(
        `${label}: in place, input [${inOffset}, ${inOffset + count}) and output [${outOffset}, ${outOffset + count}) ` +
          `must be the same range or disjoint`,
      );
    }
    const [x, y] = dispatchGrid(rows, this.#maxPerDimension);
    this.#dispatch.encode(pass, { rows, cols, in_offset: inOffset, out_offset: outOffset }, x, y);
  }
}

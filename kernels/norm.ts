// RMSNorm and LayerNorm over rows. See shaders/norm.wgsl.
import type { Gpu } from '../src/gpu/device.ts';
import { UniformLayout } from '../src/gpu/uniforms.ts';
import { ShapeError } from '../src/errors.ts';
import { composeShader, dispatchGrid } from './shader.ts';
import { Dispatch, checkFits, checkShape, checkWorkgroupSize } from './dispatch.ts';

export const NormParams = new UniformLayout('Params', [
  ['rows', 'u32'],
  ['cols', 'u32'],
  ['x_offset', 'u32'],
  ['weight_offset', 'u32'],
  ['bias_offset', 'u32'],
  ['out_offset', 'u32'],
  ['eps', 'f32'],
  ['residual_offset', 'u32'],
] as const);

/** 'rms': x / sqrt(mean(x^2) + eps) * w. 'layer': (x - mean) / sqrt(var + eps) * w + b. */
export type NormKind = 'rms' | 'layer';
const ENTRY: Record<NormKind, string> = { rms: 'rms_norm', layer: 'layer_norm' };

export interface NormBuffers {
  /** Input rows (M, C) f32. */
  x: GPUBuffer;
  /** Scale (C) f32. */
  weight: GPUBuffer;
  /** Shift (C) f32; LayerNorm only. */
  bias?: GPUBuffer;
  /** Output rows (M, C) f32; a different buffer from x. */
  out: GPUBuffer;
  /**
   * Rows (M, C) f32 added to the normalised rows (RMSNorm only): out = residual + norm(x), Gemma's
   * post-attention and post-MLP norms. A different buffer from out.
   */
  residual?: GPUBuffer;
  /**
   * With a residual: the sum normalised again, RMSNorm with `weight` (C, from element 0), into `out`
   * (rows at the run's outOffset): Gemma's post-norm and residual add, then the next sublayer's
   * pre-norm, in one dispatch. A buffer of its own, neither x, out nor the residual.
   */
  next?: { weight: GPUBuffer; out: GPUBuffer };
}

export interface NormOptions {
  /** Added to the mean square (RMSNorm) or variance (LayerNorm); a finite number >= 0. */
  eps: number;
  /** Power of two; default 256. */
  workgroupSize?: number;
}

export interface NormRun {
  /** M: rows, one workgroup each. */
  rows: number;
  /** C: elements per row (the weight's length). */
  cols: number;
  xOffset?: number;
  weightOffset?: number;
  biasOffset?: number;
  outOffset?: number;
  /** First element of the residual rows (with a residual buffer only). */
  residualOffset?: number;
}

/** RMSNorm or LayerNorm of (M, C) f32 rows, out of place. */
export class Norm {
  readonly kind: NormKind;
  readonly eps: number;
  readonly #dispatch: Dispatch<(typeof NormParams.fields)[number][0]>;
  readonly #buffers: NormBuffers;
  readonly #maxPerDimension: number;

  constructor(gpu: Gpu, kind: NormKind, buffers: NormBuffers, options: NormOptions) {
    if (kind !== 'rms' && kind !== 'layer') throw new TypeError(`norm: unknown kind "${kind}"`);
    this.kind = kind;
    const label = ENTRY[kind];
    if (typeof options.eps !== 'number' || !Number.isFinite(options.eps) || options.eps < 0) {
      throw new TypeError(`${label}: eps must be a finite number >= 0 (got ${options.eps})`);
    }
    this.eps = options.eps;
    if ((kind === 'layer') !== (buffers.bias !== undefined)) {
      throw new TypeError(`${label}: ${kind === 'layer' ? 'needs' : 'takes no'} bias`);
    }
    if (buffers.out === buffers.x) throw new TypeError(`${label}: out must be a different buffer from x`);
    if (buffers.residual && kind !== 'rms') throw new TypeError(`${label}: a residual is supported with RMSNorm only`);
    if (buffers.residual === buffers.out) throw new TypeError(`${label}: residual must be a different buffer from out`);
    const next = buffers.next;
    if (next && !buffers.residual) throw new TypeError(`${label}: a next norm follows a residual add only`);
    if (next && [buffers.x, buffers.out, buffers.residual].includes(next.out)) {
      throw new TypeError(`${label}: the next norm's out must be a buffer of its own`);
    }
    const wg = checkWorkgroupSize(gpu, options.workgroupSize ?? 256, label);
    this.#maxPerDimension = gpu.limits.maxComputeWorkgroupsPerDimension;
    this.#buffers = buffers;
    this.#dispatch = new Dispatch(
      gpu,
      {
        name: 'norm',
        variant: next ? `${kind}_add_norm` : buffers.residual ? `${kind}_add` : kind,
        code: composeShader('norm.wgsl'),
        entryPoint: next ? 'rms_norm_add_norm' : buffers.residual ? 'rms_norm_add' : ENTRY[kind],
        constants: { WG: wg },
      },
      NormParams,
      [buffers.x, buffers.weight, buffers.bias, buffers.out, buffers.residual, next?.weight, next?.out],
    );
  }

  encode(pass: GPUComputePassEncoder, run: NormRun): void {
    const { rows, cols, xOffset = 0, weightOffset = 0, biasOffset = 0, outOffset = 0, residualOffset = 0 } = run;
    const label = ENTRY[this.kind];
    checkShape(label, { rows, cols, xOffset, weightOffset, biasOffset, outOffset, residualOffset }, [
      'xOffset',
      'weightOffset',
      'biasOffset',
      'outOffset',
      'residualOffset',
    ]);
    if (this.#buffers.residual) checkFits(label, 'residual', this.#buffers.residual, residualOffset, rows * cols);
    else if (residualOffset !== 0) throw new ShapeError(`${label}: residualOffset given but this norm has no residual`);
    checkFits(label, 'x', this.#buffers.x, xOffset, rows * cols);
    checkFits(label, 'weight', this.#buffers.weight, weightOffset, cols);
    if (this.#buffers.bias) checkFits(label, 'bias', this.#buffers.bias, biasOffset, cols);
    else if (biasOffset !== 0) throw new ShapeError(`${label}: biasOffset given but this norm has no bias`);
    checkFits(label, 'out', this.#buffers.out, outOffset, rows * cols);
    if (this.#buffers.next) {
      checkFits(label, 'next weight', this.#buffers.next.weight, 0, cols);
      checkFits(label, 'next out', this.#buffers.next.out, outOffset, rows * cols);
    }
    const [x, y] = dispatchGrid(rows, this.#maxPerDimension);
    this.#dispatch.encode(
      pass,
      {
        rows,
        cols,
        x_offset: xOffset,
        weight_offset: weightOffset,
        bias_offset: biasOffset,
        out_offset: outOffset,
        eps: this.eps,
        residual_offset: residualOffset,
      },
      x,
      y,
    );
  }
}

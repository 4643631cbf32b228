// Element-wise kernels: residual add, SwiGLU gate, SiLU, GELU (tanh). See shaders/elementwise.wgsl.
import type { Gpu } from '../src/gpu/device.ts';
import { UniformLayout } from '../src/gpu/uniforms.ts';
import { composeShader, dispatchGrid } from './shader.ts';
import { ShapeError } from '../src/errors.ts';
import { Dispatch, checkFits, checkShape, checkWorkgroupSize } from './dispatch.ts';

export const ElementwiseParams = new UniformLayout('Params', [
  ['count', 'u32'],
  ['a_offset', 'u32'],
  ['b_offset', 'u32'],
  ['out_offset', 'u32'],
] as const);

export type BinaryOp = 'add' | 'swiglu';
/**
 * Unary ops over `a`. 'swiglu_pairs': out[i] = silu(a[2i]) * a[2i + 1], SwiGLU over a projection with
 * interleaved gate and up rows (count = outputs; `a` holds 2 * count elements from an even aOffset);
 * 'geglu_pairs' the same with the tanh GELU (Gemma).
 */
export type UnaryOp = 'silu' | 'gelu' | 'swiglu_pairs' | 'geglu_pairs' | 'softcap';
const ENTRY: Record<BinaryOp | UnaryOp, string> = {
  add: 'add',
  swiglu: 'swiglu',
  silu: 'silu_op',
  gelu: 'gelu',
  swiglu_pairs: 'swiglu_pairs',
  geglu_pairs: 'geglu_pairs',
  softcap: 'softcap',
};
const PAIRS: ReadonlySet<BinaryOp | UnaryOp> = new Set(['swiglu_pairs', 'geglu_pairs']);

export interface ElementwiseRun {
  count: number;
  aOffset?: number;
  bOffset?: number;
  outOffset?: number;
}

export interface ElementwiseBuffers {
  a: GPUBuffer;
  /** Second operand; binary ops only. */
  b?: GPUBuffer;
  out: GPUBuffer;
}

/** out = op(a[, b]) over `count` elements. `out` may be the same buffer as `a` (in place), except for swiglu_pairs. */
export class Elementwise {
  readonly op: BinaryOp | UnaryOp;
  readonly #dispatch: Dispatch<(typeof ElementwiseParams.fields)[number][0]>;
  readonly #buffers: ElementwiseBuffers;
  readonly #wg: number;
  readonly #maxPerDimension: number;

  /** `cap`: softcap's c, out = c tanh(a / c) (a finite number > 0; softcap only). */
  constructor(gpu: Gpu, op: BinaryOp | UnaryOp, buffers: ElementwiseBuffers, workgroupSize = 256, cap?: number) {
    this.op = op;
    this.#wg = checkWorkgroupSize(gpu, workgroupSize, `elementwise.${op}`);
    this.#maxPerDimension = gpu.limits.maxComputeWorkgroupsPerDimension;
    const binary = op === 'add' || op === 'swiglu';
    if (binary !== (buffers.b !== undefined)) {
      throw new TypeError(`elementwise.${op}: ${binary ? 'needs' : 'takes no'} second operand b`);
    }
    if (PAIRS.has(op) && buffers.out === buffers.a) {
      throw new ShapeError(`elementwise.${op}: out must be a different buffer from a (it reads two elements per output)`);
    }
    if ((op === 'softcap') !== (cap !== undefined) || (cap !== undefined && !(Number.isFinite(cap) && cap > 0))) {
      throw new ShapeError(`elementwise.${op}: ${op === 'softcap' ? 'needs a cap, a finite number > 0' : 'takes no cap'} (got ${cap})`);
    }
    this.#buffers = buffers;
    const storage = [buffers.a, buffers.b, buffers.out];
    this.#dispatch = new Dispatch(
      gpu,
      { name: 'elementwise', variant: op, code: composeShader('elementwise.wgsl'), entryPoint: ENTRY[op], constants: { WG: this.#wg, ...(cap === undefined ? {} : { SOFTCAP: cap }) } },
      ElementwiseParams,
      storage,
    );
  }

  encode(pass: GPUComputePassEncoder, run: ElementwiseRun): void {
    const { count, aOffset = 0, bOffset = 0, outOffset = 0 } = run;
    const label = `elementwise.${this.op}`;
    checkShape(label, { count, aOffset, bOffset, outOffset }, ['aOffset', 'bOffset', 'outOffset']);
    const pairs = PAIRS.has(this.op);
    if (pairs && aOffset % 2 !== 0) throw new ShapeError(`${label}: aOffset must be even (got ${aOffset})`);
    checkFits(label, 'a', this.#buffers.a, aOffset, pairs ? 2 * count : count);
    if (this.#buffers.b) checkFits(label, 'b', this.#buffers.b, bOffset, count);
    checkFits(label, 'out', this.#buffers.out, outOffset, count);
    const [x, y] = dispatchGrid(Math.ceil(count / this.#wg), this.#maxPerDimension);
    this.#dispatch.encode(pass, { count, a_offset: aOffset, b_offset: bOffset, out_offset: outOffset }, x, y);
  }
}

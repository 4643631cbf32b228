// The activation step of the matvec's q8 tier: each activation row quantised to int8 once per step,
// in blocks of 32 columns with an f32 scale (ggml's Q8_0 rule, d = amax / 127), optionally normalised
// first (the fused norm of a MatvecFusion moves here, once per step rather than once per matvec
// workgroup). See shaders/matvec_quantise_q8.wgsl; the matvec side is shaders/matvec_sums_q8.wgsl.
import type { Gpu } from '../src/gpu/device.ts';
import { createStorage } from '../src/gpu/buffers.ts';
import { ShapeError } from '../src/errors.ts';
import { composeShader } from './shader.ts';
import { Dispatch, checkWorkgroupSize } from './dispatch.ts';
import { MatmulParams, placeholderStorage, type ProjectionField } from './matmul.ts';
import type { NormKind } from './norm.ts';

/** The WGSL language feature the q8 tier needs (dot4I8Packed, pack4xI8). */
export const PACKED_DOT_FEATURE = 'packed_4x8_integer_dot_product';

/** Columns per activation block (one f32 scale each). */
export const Q8_ACTIVATION_BLOCK = 32;

/** True when the device's WGSL offers dot4I8Packed. */
export function hasPackedDot(gpu: Pick<Gpu, 'wgslLanguageFeatures'>): boolean {
  return gpu.wgslLanguageFeatures.has(PACKED_DOT_FEATURE);
}

/** Quantised activation rows: quants (maxRows, K / 4) int8 x4 per u32, scales (maxRows, K / 32) f32. */
export interface Q8Activations {
  quants: GPUBuffer;
  scales: GPUBuffer;
}

export interface QuantiseQ8Options {
  norm?: { kind: NormKind; weight: GPUBuffer; bias?: GPUBuffer; eps: number };
  workgroupSize?: number;
}

const NORM_CODE = { rms: 1, layer: 2 } as const;

// Quantised rows are written and read within one step: every quantise step writes its rows just
// before its matvec reads them, and a pass runs dispatches in order, so all matvecs of one K on a
// device share one pair of buffers (a model's worth of matvecs costs a few KiB, not one pair each).
const scratch = new WeakMap<Gpu, Map<string, Q8Activations>>();
function q8Scratch(gpu: Gpu, cols: number, maxRows: number): Q8Activations {
  let byShape = scratch.get(gpu);
  if (!byShape) {
    byShape = new Map();
    scratch.set(gpu, byShape);
  }
  const key = `${maxRows}x${cols}`;
  let buffers = byShape.get(key);
  if (!buffers) {
    buffers = {
      quants: createStorage(gpu, `q8.rows(${key})`, maxRows * cols),
      scales: createStorage(gpu, `q8.scales(${key})`, (maxRows * cols) / 8),
    };
    byShape.set(key, buffers);
  }
  return buffers;
}

/** Quantises (and optionally normalises) up to `maxRows` rows of K activations into its own buffers. */
export class QuantiseQ8 {
  readonly output: Q8Activations;
  readonly cols: number;
  readonly #dispatch: Dispatch<ProjectionField>;
  readonly #wg: number;

  constructor(gpu: Gpu, label: string, input: GPUBuffer, cols: number, maxRows: number, options: QuantiseQ8Options = {}) {
    if (!hasPackedDot(gpu)) throw new ShapeError(`${label}: q8 activations need the WGSL language feature ${PACKED_DOT_FEATURE}`);
    if (!Number.isSafeInteger(cols) || cols < Q8_ACTIVATION_BLOCK || cols % Q8_ACTIVATION_BLOCK !== 0) {
      throw new ShapeError(`${label}: q8 activations need K to be a multiple of ${Q8_ACTIVATION_BLOCK} (got ${cols})`);
    }
    const wg = checkWorkgroupSize(gpu, options.workgroupSize ?? 64, label);
    this.#wg = wg;
    this.cols = cols;
    this.output = q8Scratch(gpu, cols, maxRows);
    const norm = options.norm;
    this.#dispatch = new Dispatch(
      gpu,
      {
        name: 'matvec_quantise',
        variant: 'q8',
        code: composeShader('matvec_q8_requires.wgsl', 'matvec_quantise_q8.wgsl'),
        entryPoint: 'quantise_q8',
        constants: { WG: wg, NORM: norm ? NORM_CODE[norm.kind] : 0, NORM_EPS: norm?.eps ?? 0 },
      },
      MatmulParams,
      // Bindings as the matvec's (shaders/matmul_projection.wgsl): a at 3, the norm at 7-8, the q8 rows at 9-10.
      [
        undefined, undefined, input, undefined, undefined, undefined,
        norm?.weight ?? placeholderStorage(gpu),
        norm?.bias ?? placeholderStorage(gpu),
        this.output.quants,
        this.output.scales,
      ],
    );
  }

  /** Record the quantisation of the run's M rows (values as the matvec's, from matvecValues). */
  encode(pass: GPUComputePassEncoder, values: Record<ProjectionField, number>): void {
    this.#dispatch.encode(pass, values, Math.ceil(this.cols / Q8_ACTIVATION_BLOCK / this.#wg), values.m);
  }
}

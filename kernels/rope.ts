// Rotary position embedding (in place) and the CPU-side inverse frequencies. See shaders/rope.wgsl.
import type { Gpu } from '../src/gpu/device.ts';
import { UniformLayout } from '../src/gpu/uniforms.ts';
import { OptionError, ShapeError } from '../src/errors.ts';
import { composeShader, dispatchGrid } from './shader.ts';
import { Dispatch, checkFits, checkShape, checkWorkgroupSize } from './dispatch.ts';
import { KV_GROUP as KV_GROUP_OF, checkHeadRanges, checkKvDtype, kvBlockBytes, kvTableWidth, type KvPool } from './attention.ts';

export const RopeParams = new UniformLayout('Params', [
  ['tokens', 'u32'],
  ['heads', 'u32'],
  ['head_dim', 'u32'],
  ['rotary_dims', 'u32'],
  ['offset', 'u32'],
  ['row_stride', 'u32'],
  ['positions_offset', 'u32'],
  ['inv_freq_offset', 'u32'],
] as const);

/**
 * 'half': HF rotate_half (GPT-NeoX), pairs (i, i + R/2).
 * 'interleaved': llama.cpp / GGUF (GPT-J), pairs (2i, 2i + 1).
 */
export type RopeMode = 'half' | 'interleaved';
const ENTRY: Record<RopeMode, string> = { half: 'rope_half', interleaved: 'rope_interleaved' };

export interface RopeBuffers {
  /** Activations, rotated in place: T rows `rowStride` elements apart, each with H heads of D f32 from `offset`. */
  x: GPUBuffer;
  /** Token positions (T) u32, one per row (prefill: p0..p0+T-1; batched decode: each sequence's own). */
  positions: GPUBuffer;
  /** Inverse frequencies (R/2) f32, radians per position, >= 0: see ropeInverseFrequencies. */
  invFreq: GPUBuffer;
}

export interface RopeRun {
  /** T: token rows. */
  tokens: number;
  /** H: heads to rotate in each row (Hq + Hkv rotates Q and K of a fused QKV row at once). */
  heads: number;
  /** D: elements per head. */
  headDim: number;
  /** R: rotated elements per head, even, <= D; default D. Elements [R, D) stay as they are. */
  rotaryDims?: number;
  /** First element of head 0 of token 0 in x (elements); default 0. */
  offset?: number;
  /** Elements from one token row to the next, >= H * D; default H * D. */
  rowStride?: number;
  /** First entry of positions (elements); default 0. */
  positionsOffset?: number;
  /** First entry of invFreq (elements); default 0. */
  invFreqOffset?: number;
}

/** RoPE over T rows of H heads, in place. angle = position * invFreq[i] in f32; cos and sin in f32. */
export class Rope {
  readonly mode: RopeMode;
  readonly #dispatch: Dispatch<(typeof RopeParams.fields)[number][0]>;
  readonly #buffers: RopeBuffers;
  readonly #wg: number;
  readonly #maxPerDimension: number;

  constructor(gpu: Gpu, mode: RopeMode, buffers: RopeBuffers, workgroupSize = 64) {
    if (mode !== 'half' && mode !== 'interleaved') throw new TypeError(`rope: unknown mode "${mode}"`);
    this.mode = mode;
    this.#wg = checkWorkgroupSize(gpu, workgroupSize, ENTRY[mode]);
    this.#maxPerDimension = gpu.limits.maxComputeWorkgroupsPerDimension;
    this.#buffers = buffers;
    this.#dispatch = new Dispatch(
      gpu,
      { name: 'rope', variant: mode, code: composeShader('rope.wgsl'), entryPoint: ENTRY[mode], constants: { WG: this.#wg } },
      RopeParams,
      [buffers.x, buffers.positions, buffers.invFreq],
    );
  }

  encode(pass: GPUComputePassEncoder, run: RopeRun): void {
    const { tokens, heads, headDim } = run;
    const { rotaryDims = headDim, offset = 0, rowStride = heads * headDim, positionsOffset = 0, invFreqOffset = 0 } = run;
    const label = ENTRY[this.mode];
    checkShape(label, { tokens, heads, headDim, rotaryDims, offset, rowStride, positionsOffset, invFreqOffset }, [
      'offset',
      'positionsOffset',
      'invFreqOffset',
    ]);
    if (rotaryDims % 2 !== 0 || rotaryDims > headDim) {
      throw new ShapeError(`${label}: rotaryDims must be even and <= headDim ${headDim} (got ${rotaryDims})`);
    }
    if (rowStride < heads * headDim) {
      throw new ShapeError(`${label}: rowStride ${rowStride} is less than heads * headDim = ${heads * headDim}`);
    }
    checkFits(label, 'x', this.#buffers.x, offset, (tokens - 1) * rowStride + heads * headDim);
    checkFits(label, 'positions', this.#buffers.positions, positionsOffset, tokens);
    checkFits(label, 'invFreq', this.#buffers.invFreq, invFreqOffset, rotaryDims / 2);
    const pairs = tokens * heads * (rotaryDims / 2);
    const [x, y] = dispatchGrid(Math.ceil(pairs / this.#wg), this.#maxPerDimension);
    this.#dispatch.encode(
      pass,
      {
        tokens,
        heads,
        head_dim: headDim,
        rotary_dims: rotaryDims,
        offset,
        row_stride: rowStride,
        positions_offset: positionsOffset,
        inv_freq_offset: invFreqOffset,
      },
      x,
      y,
    );
  }
}

/** Rope scaling as HF config.json spells it (`rope_scaling`); the caller maps other names onto these. */
export type RopeScaling =
  | { type: 'linear'; factor: number }
  | {
      type: 'llama3';
      factor: number;
      low_freq_factor: number;
      high_freq_factor: number;
      original_max_position_embeddings: number;
    };

function checkPositive(name: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) {
    throw new OptionError(`rope: ${name} must be a finite number > 0 (got ${value})`);
  }
  return value;
}

/**
 * inv_freq[i] = 1 / theta^(2i / rotaryDims) for i < rotaryDims / 2, then scaled as HF transformers
 * does (modeling_rope_utils): 'linear' divides every frequency by `factor`; 'llama3' divides the
 * low frequencies (wavelength > original_max_position_embeddings / low_freq_factor) by `factor`,
 * keeps the high ones (wavelength < original / high_freq_factor), and interpolates in between with
 * smooth = (original / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor).
 * Computed in float64 and rounded to f32 once (HF computes in f32: the two can differ by an ulp).
 */
export function ropeInverseFrequencies(rotaryDims: number, theta: number, scaling?: RopeScaling): Float32Array {
  if (!Number.isSafeInteger(rotaryDims) || rotaryDims < 2 || rotaryDims % 2 !== 0) {
    throw new ShapeError(`rope: rotaryDims must be an even integer >= 2 (got ${rotaryDims})`);
  }
  checkPositive('theta', theta);
  const half = rotaryDims / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / theta ** ((2 * i) / rotaryDims);
  if (scaling?.type === 'linear') {
    const factor = checkPositive('rope_scaling.factor', scaling.factor);
    for (let i = 0; i < half; i++) inv[i] /= factor;
  } else if (scaling?.type === 'llama3') {
    const factor = checkPositive('rope_scaling.factor', scaling.factor);
    const low = checkPositive('rope_scaling.low_freq_factor', scaling.low_freq_factor);
    const high = checkPositive('rope_scaling.high_freq_factor', scaling.high_freq_factor);
    const original = checkPositive('rope_scaling.original_max_position_embeddings', scaling.original_max_position_embeddings);
    if (!(high > low)) {
      throw new OptionError(`rope: rope_scaling.high_freq_factor (${high}) must exceed low_freq_factor (${low})`);
    }
    const lowFreqWavelen = original / low;
    const highFreqWavelen = original / high;
    for (let i = 0; i < half; i++) {
      const wavelen = (2 * Math.PI) / inv[i];
      if (wavelen > lowFreqWavelen) {
        inv[i] /= factor;
      } else if (wavelen >= highFreqWavelen) {
        const smooth = (original / wavelen - low) / (high - low);
        inv[i] = ((1 - smooth) * inv[i]) / factor + smooth * inv[i];
      }
    }
  } else if (scaling !== undefined) {
    throw new OptionError(`rope: unsupported rope_scaling type "${(scaling as { type: unknown }).type}"`);
  }
  return Float32Array.from(inv);
}

export const RopeKvWriteParams = new UniformLayout('RopeKvWriteParams', [
  ['rows', 'u32'],
  ['q_heads', 'u32'],
  ['kv_heads', 'u32'],
  ['head_dim', 'u32'],
  ['rotary_dims', 'u32'],
  ['table_width', 'u32'],
  ['kv_blocks', 'u32'],
  ['row_stride', 'u32'],
  ['q_offset', 'u32'],
  ['k_offset', 'u32'],
  ['v_offset', 'u32'],
  ['meta_offset', 'u32'],
] as const);

export interface RopeKvWriteConfig extends KvPool {
  /** Hq: query heads per row. */
  Hq: number;
  /** Hkv: key / value heads per row. */
  Hkv: number;
  /** D: elements per head. */
  D: number;
  /** Rd: rotated elements per head, even, <= D. */
  rotaryDims: number;
  /** Most token positions of one sequence (the paged KV cache layout of kernels/attention.ts). */
  capacity: number;
  /**
   * Qwen3, Gemma 3: RMSNorm of each query and key head before it is rotated (x / sqrt(mean(x^2) + eps)
   * times the weights in buffers.headNormWeight); eps is added to the head's mean square, a finite number >= 0.
   */
  headNorm?: { eps: number };
  /** Power of two; default 64. With headNorm, one workgroup runs each head. */
  workgroupSize?: number;
}

export interface RopeKvWriteBuffers {
  /** Fused projection rows (R, rowStride): queries rotated in place; keys and values read. */
  qkv: GPUBuffer;
  /** Per row (table_row, position) u32 pairs: where the row's key and value go, and its position. */
  rowMeta: GPUBuffer;
  /** Inverse frequencies (Rd/2) f32: see ropeInverseFrequencies. */
  invFreq: GPUBuffer;
  /** (kvBlocks, Hkv, 16, D) as dtype stores it. */
  kCache: GPUBuffer;
  vCache: GPUBuffer;
  /** (rows, ceil(capacity / 16)) u32 block ids. */
  blockTable: GPUBuffer;
  /** (2, D) f32, with config.headNorm only: the query heads' weight (q_norm), then the key heads' (k_norm). */
  headNormWeight?: GPUBuffer;
}

export interface RopeKvWriteRun {
  /** R: token rows. */
  rows: number;
  /** Elements from one row of qkv to the next (>= (Hq + 2 Hkv) D). */
  rowStride: number;
  /** First element of row 0's query heads, key heads and value heads in qkv. */
  qOffset: number;
  kOffset: number;
  vOffset: number;
  /** u32 index of row 0's (table_row, position) pair in rowMeta; default 0. */
  metaOffset?: number;
}

/**
 * RoPE of the queries (in place) and of the keys on their way into the KV cache, with the values
 * copied beside them: Rope then KvWrite in one dispatch; with config.headNorm, an RMSNorm of each query
 * and key head first, in the same dispatch. See shaders/rope_kv_write.wgsl.
 */
export class RopeKvWrite {
  readonly mode: RopeMode;
  readonly config: Readonly<Required<Omit<RopeKvWriteConfig, 'headNorm'>> & Pick<RopeKvWriteConfig, 'headNorm'>>;
  readonly #dispatch: Dispatch<(typeof RopeKvWriteParams.fields)[number][0]>;
  readonly #buffers: RopeKvWriteBuffers;
  readonly #maxPerDimension: number;

  constructor(gpu: Gpu, mode: RopeMode, config: RopeKvWriteConfig, buffers: RopeKvWriteBuffers) {
    if (mode !== 'half' && mode !== 'interleaved') throw new TypeError(`rope_kv_write: unknown mode "${mode}"`);
    const label = `rope_kv_write_${mode}`;
    const { Hq, Hkv, D, rotaryDims, capacity, kvBlocks, workgroupSize = 64 } = config;
    checkShape(label, { Hq, Hkv, D, rotaryDims, capacity, kvBlocks });
    if (rotaryDims % 2 !== 0 || rotaryDims > D) throw new ShapeError(`${label}: rotaryDims must be even and <= D = ${D} (got ${rotaryDims})`);
    const dtype = checkKvDtype(config.dtype ?? 'f32', D, `${label}: dtype`);
    const poolWords = (kvBlocks * kvBlockBytes(Hkv, D, dtype)) / 4;
    checkFits(label, 'kCache', buffers.kCache, 0, poolWords);
    checkFits(label, 'vCache', buffers.vCache, 0, poolWords);
    const { headNorm } = config;
    if ((headNorm !== undefined) !== (buffers.headNormWeight !== undefined)) {
      throw new TypeError(`${label}: headNorm and buffers.headNormWeight go together (got ${headNorm ? 'no weight' : 'a weight without headNorm'})`);
    }
    if (headNorm && (typeof headNorm.eps !== 'number' || !Number.isFinite(headNorm.eps) || headNorm.eps < 0)) {
      throw new TypeError(`${label}: headNorm.eps must be a finite number >= 0 (got ${headNorm.eps})`);
    }
    if (buffers.headNormWeight) checkFits(label, 'headNormWeight', buffers.headNormWeight, 0, 2 * D);
    const distinct = {
      qkv: buffers.qkv, rowMeta: buffers.rowMeta, invFreq: buffers.invFreq, kCache: buffers.kCache, vCache: buffers.vCache, blockTable: buffers.blockTable,
      ...(buffers.headNormWeight ? { headNormWeight: buffers.headNormWeight } : {}),
    };
    const names = Object.keys(distinct) as Array<keyof typeof distinct>;
    for (const [i, a] of names.entries()) {
      for (const b of names.slice(i + 1)) {
        if (distinct[a] === distinct[b]) throw new ShapeError(`${label}: ${a} and ${b} must be different buffers`);
      }
    }
    checkFits(label, 'invFreq', buffers.invFreq, 0, rotaryDims / 2);
    this.mode = mode;
    this.config = { Hq, Hkv, D, rotaryDims, capacity, kvBlocks, dtype, workgroupSize: checkWorkgroupSize(gpu, workgroupSize, label), headNorm };
    this.#buffers = buffers;
    this.#maxPerDimension = gpu.limits.maxComputeWorkgroupsPerDimension;
    this.#dispatch = new Dispatch(
      gpu,
      {
        name: 'rope_kv_write', variant: `${mode}_${dtype}${headNorm ? '_head_norm' : ''}`,
        // The variant module: a plain shader carries none of the head norm's code (nor its binding).
        code: composeShader(`kv_${dtype}.wgsl`, `kv_${dtype}_store.wgsl`, 'rope_kv_write.wgsl', headNorm ? 'rope_kv_write_head_norm.wgsl' : 'rope_kv_write_plain.wgsl'),
        entryPoint: label,
        constants: headNorm ? { WG: workgroupSize, HEAD_NORM_EPS: headNorm.eps } : { WG: workgroupSize },
      },
      RopeKvWriteParams,
      [buffers.qkv, buffers.rowMeta, buffers.invFreq, buffers.kCache, buffers.vCache, buffers.blockTable, buffers.headNormWeight],
    );
  }

  encode(pass: GPUComputePassEncoder, run: RopeKvWriteRun): void {
    const label = `rope_kv_write_${this.mode}`;
    const { Hq, Hkv, D, rotaryDims, capacity, kvBlocks, dtype, workgroupSize } = this.config;
    const { rows, rowStride, qOffset, kOffset, vOffset, metaOffset = 0 } = run;
    checkShape(label, { rows, rowStride, qOffset, kOffset, vOffset, metaOffset }, ['qOffset', 'kOffset', 'vOffset', 'metaOffset']);
    checkHeadRanges(label, rowStride, qOffset, Hq * D, kOffset, vOffset, Hkv * D);
    checkFits(label, 'qkv', this.#buffers.qkv, qOffset, (rows - 1) * rowStride + Hq * D);
    checkFits(label, 'qkv', this.#buffers.qkv, kOffset, (rows - 1) * rowStride + Hkv * D);
    checkFits(label, 'qkv', this.#buffers.qkv, vOffset, (rows - 1) * rowStride + Hkv * D);
    checkFits(label, 'rowMeta', this.#buffers.rowMeta, metaOffset, 2 * rows);
    const items = rows * (Hq * (rotaryDims / 2) + (Hkv * D) / KV_GROUP_OF[dtype]);
    // With the head norm, one workgroup per head of each row; otherwise one invocation per item.
    const groups = this.config.headNorm ? rows * (Hq + Hkv) : Math.ceil(items / workgroupSize);
    const [x, y] = dispatchGrid(groups, this.#maxPerDimension);
    this.#dispatch.encode(
      pass,
      {
        rows, q_heads: Hq, kv_heads: Hkv, head_dim: D, rotary_dims: rotaryDims, table_width: kvTableWidth(capacity), kv_blocks: kvBlocks,
        row_stride: rowStride, q_offset: qOffset, k_offset: kOffset, v_offset: vOffset, meta_offset: metaOffset,
      },
      x,
      y,
    );
  }
}

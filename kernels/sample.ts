// Sampling helpers on the GPU: argmax and top-k (with the row's log-sum-exp) over rows of logits,
// so the CPU reads k entries per row instead of a whole vocabulary. See shaders/sample.wgsl.
import type { Gpu } from '../src/gpu/device.ts';
import { createStorage } from '../src/gpu/buffers.ts';
import { UniformLayout } from '../src/gpu/uniforms.ts';
import { ShapeError } from '../src/errors.ts';
import { composeShader, dispatchGrid } from './shader.ts';
import { Dispatch, checkFits, checkShape, checkWorkgroupSize } from './dispatch.ts';

export const SampleParams = new UniformLayout('Params', [
  ['rows', 'u32'],
  ['cols', 'u32'],
  ['k', 'u32'],
  ['chunks', 'u32'],
  ['logits_offset', 'u32'],
  ['values_offset', 'u32'],
  ['indices_offset', 'u32'],
  ['lse_offset', 'u32'],
] as const);

type SampleField = (typeof SampleParams.fields)[number][0];

/** The largest k TopK accepts. */
export const TOPK_MAX_K = 64;

export interface SampleOptions {
  /** Most rows (M) a run may have: sizes the op's scratch buffers. */
  maxRows: number;
  /** Most entries per row (V) a run may have: sizes the op's scratch buffers. */
  maxCols: number;
  /** Power of two; default 256. */
  workgroupSize?: number;
  /** Entries of a row per first-pass workgroup; default 4096 (argmax) or 2048 (top-k, staged in workgroup memory). */
  chunk?: number;
}

export interface ArgmaxBuffers {
  /** Logits (M, V) f32. */
  logits: GPUBuffer;
  /** Result (M) u32: the column of each row's largest logit (ties: the lowest column). */
  indices: GPUBuffer;
}

export interface ArgmaxRun {
  /** M: rows. */
  rows: number;
  /** V: entries per row. */
  cols: number;
  logitsOffset?: number;
  indicesOffset?: number;
}

function checkCapacity(label: string, options: SampleOptions): void {
  checkShape(label, { maxRows: options.maxRows, maxCols: options.maxCols });
}

function checkRun(label: string, rows: number, cols: number, options: SampleOptions): void {
  if (rows > options.maxRows) throw new ShapeError(`${label}: rows ${rows} exceeds maxRows ${options.maxRows}`);
  if (cols > options.maxCols) throw new ShapeError(`${label}: cols ${cols} exceeds maxCols ${options.maxCols}`);
}

/**
 * Greedy pick: indices[r] = argmax over columns of logits[r] (ties to the lowest column; -inf
 * entries count as values, so a row of only -inf gives 0). Two passes: chunk winners, then rows.
 * The op owns its scratch (maxRows * ceil(maxCols / chunk) candidates), created here.
 */
export class Argmax {
  readonly chunk: number;
  readonly #options: SampleOptions;
  readonly #buffers: ArgmaxBuffers;
  readonly #scratch: GPUBuffer[];
  readonly #chunks: Dispatch<SampleField>;
  readonly #rows: Dispatch<SampleField>;
  readonly #maxPerDimension: number;

  constructor(gpu: Gpu, buffers: ArgmaxBuffers, options: SampleOptions) {
    const label = 'argmax';
    checkCapacity(label, options);
    const wg = checkWorkgroupSize(gpu, options.workgroupSize ?? 256, label);
    this.chunk = options.chunk ?? 4096;
    checkShape(label, { chunk: this.chunk });
    this.#options = { ...options };
    this.#buffers = buffers;
    this.#maxPerDimension = gpu.limits.maxComputeWorkgroupsPerDimension;
    const candidates = options.maxRows * Math.ceil(options.maxCols / this.chunk);
    const candValues = createStorage(gpu, 'argmax.cand_values', candidates * 4);
    const candIndices = createStorage(gpu, 'argmax.cand_indices', candidates * 4);
    this.#scratch = [candValues, candIndices];
    const code = composeShader('sample.wgsl');
    const constants = { WG: wg, CHUNK: this.chunk };
    this.#chunks = new Dispatch(gpu, { name: 'sample', variant: '', code, entryPoint: 'argmax_chunks', constants }, SampleParams, [
      buffers.logits,
      candValues,
      candIndices,
    ]);
    this.#rows = new Dispatch(gpu, { name: 'sample', variant: '', code, entryPoint: 'argmax_rows', constants }, SampleParams, [
      undefined,
      candValues,
      candIndices,
      undefined,
      undefined,
      buffers.indices,
    ]);
  }

  encode(pass: GPUComputePassEncoder, run: ArgmaxRun): void {
    const { rows, cols, logitsOffset = 0, indicesOffset = 0 } = run;
    const label = 'argmax';
    checkShape(label, { rows, cols, logitsOffset, indicesOffset }, ['logitsOffset', 'indicesOffset']);
    checkRun(label, rows, cols, this.#options);
    checkFits(label, 'logits', this.#buffers.logits, logitsOffset, rows * cols);
    checkFits(label, 'indices', this.#buffers.indices, indicesOffset, rows);
    const chunks = Math.ceil(cols / this.chunk);
    const values = {
      rows,
      cols,
      k: 1,
      chunks,
      logits_offset: logitsOffset,
      values_offset: 0,
      indices_offset: indicesOffset,
      lse_offset: 0,
    };
    this.#chunks.encode(pass, values, chunks, rows);
    const [x, y] = dispatchGrid(rows, this.#maxPerDimension);
    this.#rows.encode(pass, values, x, y);
  }

  /** Free the scratch buffers (the caller's buffers stay). */
  destroy(): void {
    for (const buffer of this.#scratch) buffer.destroy();
  }
}

export interface TopKBuffers {
  /** Logits (M, V) f32. */
  logits: GPUBuffer;
  /** Result (M, k) f32: each row's k largest logits, largest first. */
  values: GPUBuffer;
  /** Result (M, k) u32: their columns (equal logits: lower column first). */
  indices: GPUBuffer;
  /** Result (M) f32: log(sum(exp(logits[r]))) over the whole row (-inf for a row of only -inf). Optional. */
  logSumExp?: GPUBuffer;
}

export interface TopKOptions extends SampleOptions {
  /** Largest k a run may ask for, <= TOPK_MAX_K; default TOPK_MAX_K. Sizes the scratch. */
  maxK?: number;
}

export interface TopKRun {
  /** M: rows. */
  rows: number;
  /** V: entries per row. */
  cols: number;
  /** Entries kept per row: 1 <= k <= min(V, maxK). */
  k: number;
  logitsOffset?: number;
  valuesOffset?: number;
  indicesOffset?: number;
  logSumExpOffset?: number;
}

/**
 * values[r, :k], indices[r, :k] = the k largest logits of row r, sorted descending (equal logits:
 * lower column first; -inf entries order after every finite one), and logSumExp[r] for logprobs.
 * Pass 1: each chunk of a row writes its own top k (and softmax statistics) to scratch; pass 2
 * merges a row's chunks. The op owns its scratch (maxRows * ceil(maxCols / chunk) * maxK
 * candidates), created here.
 */
export class TopK {
  readonly chunk: number;
  readonly maxK: number;
  readonly #options: SampleOptions;
  readonly #buffers: TopKBuffers;
  readonly #scratch: GPUBuffer[];
  readonly #chunks: Dispatch<SampleField>;
  readonly #rows: Dispatch<SampleField>;
  readonly #maxPerDimension: number;

  constructor(gpu: Gpu, buffers: TopKBuffers, options: TopKOptions) {
    const label = 'topk';
    checkCapacity(label, options);
    const wg = checkWorkgroupSize(gpu, options.workgroupSize ?? 256, label);
    this.chunk = options.chunk ?? 2048;
    this.maxK = options.maxK ?? TOPK_MAX_K;
    checkShape(label, { chunk: this.chunk, maxK: this.maxK });
    if (this.maxK > TOPK_MAX_K) throw new ShapeError(`${label}: maxK ${this.maxK} exceeds ${TOPK_MAX_K}`);
    const workgroupBytes = this.chunk * 4 + wg * 8;
    if (workgroupBytes > gpu.limits.maxComputeWorkgroupStorageSize) {
      throw new ShapeError(
        `${label}: chunk ${this.chunk} with workgroup size ${wg} needs ${workgroupBytes} bytes of workgroup memory; ` +
          `this adapter has ${gpu.limits.maxComputeWorkgroupStorageSize}`,
      );
    }
    this.#options = { ...options };
    this.#buffers = buffers;
    this.#maxPerDimension = gpu.limits.maxComputeWorkgroupsPerDimension;
    const slots = options.maxRows * Math.ceil(options.maxCols / this.chunk);
    const candValues = createStorage(gpu, 'topk.cand_values', slots * this.maxK * 4);
    const candIndices = createStorage(gpu, 'topk.cand_indices', slots * this.maxK * 4);
    const candStats = createStorage(gpu, 'topk.cand_stats', slots * 2 * 4);
    const logSumExp = buffers.logSumExp ?? createStorage(gpu, 'topk.lse', options.maxRows * 4);
    this.#scratch = buffers.logSumExp ? [candValues, candIndices, candStats] : [candValues, candIndices, candStats, logSumExp];
    const code = composeShader('sample.wgsl');
    const constants = { WG: wg, CHUNK: this.chunk };
    this.#chunks = new Dispatch(gpu, { name: 'sample', variant: '', code, entryPoint: 'topk_chunks', constants }, SampleParams, [
      buffers.logits,
      candValues,
      candIndices,
      candStats,
    ]);
    this.#rows = new Dispatch(gpu, { name: 'sample', variant: '', code, entryPoint: 'topk_rows', constants }, SampleParams, [
      undefined,
      candValues,
      candIndices,
      candStats,
      buffers.values,
      buffers.indices,
      logSumExp,
    ]);
  }

  encode(pass: GPUComputePassEncoder, run: TopKRun): void {
    const { rows, cols, k, logitsOffset = 0, valuesOffset = 0, indicesOffset = 0, logSumExpOffset = 0 } = run;
    const label = 'topk';
    checkShape(label, { rows, cols, k, logitsOffset, valuesOffset, indicesOffset, logSumExpOffset }, [
      'logitsOffset',
      'valuesOffset',
      'indicesOffset',
      'logSumExpOffset',
    ]);
    if (k > TOPK_MAX_K) throw new ShapeError(`${label}: k ${k} exceeds ${TOPK_MAX_K}`);
    if (k > this.maxK) throw new ShapeError(`${label}: k ${k} exceeds this op's maxK ${this.maxK}`);
    if (k > cols) throw new ShapeError(`${label}: k ${k} exceeds the row length ${cols}`);
    checkRun(label, rows, cols, this.#options);
    checkFits(label, 'logits', this.#buffers.logits, logitsOffset, rows * cols);
    checkFits(label, 'values', this.#buffers.values, valuesOffset, rows * k);
    checkFits(label, 'indices', this.#buffers.indices, indicesOffset, rows * k);
    if (this.#buffers.logSumExp) checkFits(label, 'logSumExp', this.#buffers.logSumExp, logSumExpOffset, rows);
    else if (logSumExpOffset !== 0) throw new ShapeError(`${label}: logSumExpOffset given but no logSumExp buffer`);
    const chunks = Math.ceil(cols / this.chunk);
    const values = {
      rows,
      cols,
      k,
      chunks,
      logits_offset: logitsOffset,
      values_offset: valuesOffset,
      indices_offset: indicesOffset,
      lse_offset: logSumExpOffset,
    };
    this.#chunks.encode(pass, values, chunks, rows);
    const [x, y] = dispatchGrid(rows, this.#maxPerDimension);
    this.#rows.encode(pass, values, x, y);
  }

  /** Free the scratch buffers (the caller's buffers stay). */
  destroy(): void {
    for (const buffer of this.#scratch) buffer.destroy();
  }
}

export const PickParams = new UniformLayout('Params', [
  ['rows', 'u32'],
  ['k', 'u32'],
  ['sampling_offset', 'u32'],
  ['picked_offset', 'u32'],
  ['seen_words', 'u32'],
] as const);

/** u32 words of one row's sampling parameters in PickBuffers.sampling (see writeRowSampling). */
export const ROW_SAMPLING_WORDS = 7;

/** u32 words of one slot's row of seen tokens (a bit per token of a `vocab`-token vocabulary). */
export function seenWords(vocab: number): number {
  return Math.ceil(vocab / 32);
}

/** How one row's next token is picked from its candidates (the CPU sampler's parameters). */
export interface RowSampling {
  /** 0: greedy (the first candidate). */
  temperature: number;
  /** Keep the first topK candidates (0: all). */
  topK: number;
  /** Keep the shortest prefix whose probability reaches topP (1: off). */
  topP: number;
  /** Keep candidates with probability >= minP * p(best) (0: off). */
  minP: number;
  /** The draw, uniform in [0, 1) (ignored when greedy). */
  uniform: number;
  /**
   * HF-style: candidates the sequence has seen score logit / p when positive, logit * p when not
   * (1: off). The seen tokens are the bits of the row's slot in PickBuffers.seen.
   */
  repetitionPenalty: number;
}

/**
 * Write `rows`' sampling parameters at word `offset` of `words` (ROW_SAMPLING_WORDS a row), as
 * PickToken reads them; `slots[r]` is row r's row of seen tokens.
 */
export function writeRowSampling(words: Uint32Array, offset: number, rows: readonly RowSampling[], slots: readonly number[]): void {
  const floats = new Float32Array(words.buffer, words.byteOffset, words.length);
  rows.forEach((row, r) => {
    const at = offset + ROW_SAMPLING_WORDS * r;
    floats[at] = row.temperature;
    words[at + 1] = row.topK;
    floats[at + 2] = row.topP;
    floats[at + 3] = row.minP;
    floats[at + 4] = row.uniform;
    floats[at + 5] = row.repetitionPenalty;
    words[at + 6] = slots[r];
  });
}

export interface PickBuffers {
  /** (M, k) f32: each row's candidate logits, best first (TopK's values). */
  values: GPUBuffer;
  /** (M, k) u32: their token ids (TopK's indices). */
  indices: GPUBuffer;
  /** u32 words: each row's RowSampling (writeRowSampling). */
  sampling: GPUBuffer;
  /** (M) u32 result: each row's picked token id. */
  picked: GPUBuffer;
  /**
   * (slots, seenWords(vocab)) u32: bit t of a slot's row is set once token t is in its sequence (the
   * repetition penalty's history; the host writes a sequence's prompt there, the kernel adds each pick).
   */
  seen: GPUBuffer;
}

export interface PickRun {
  rows: number;
  /** Candidates per row in values / indices (1..TOPK_MAX_K), from element 0. */
  k: number;
  samplingOffset?: number;
  pickedOffset?: number;
  /** u32 words of one slot's row in `seen`. */
  seenWords: number;
}

/**
 * picked[r] = the token row r's sampling parameters pick from its top-k candidates (its slot's
 * seen tokens penalised), on the GPU, so that the next decode step can take it as its input
 * without the host in between (shaders/sample_pick.wgsl). One invocation per row; the penalised
 * rows of a run must hold different slots (each adds its pick to its slot's seen tokens).
 */
export class PickToken {
  readonly #buffers: PickBuffers;
  readonly #dispatch: Dispatch<(typeof PickParams.fields)[number][0]>;

  constructor(gpu: Gpu, buffers: PickBuffers) {
    this.#buffers = buffers;
    this.#dispatch = new Dispatch(gpu, { name: 'sample_pick', variant: '', code: composeShader('sample_pick.wgsl'), entryPoint: 'pick', constants: {} }, PickParams, [
      buffers.values,
      buffers.indices,
      buffers.sampling,
      buffers.picked,
      buffers.seen,
    ]);
  }

  encode(pass: GPUComputePassEncoder, run: PickRun): void {
    const { rows, k, samplingOffset = 0, pickedOffset = 0, seenWords } = run;
    const label = 'pick';
    checkShape(label, { rows, k, samplingOffset, pickedOffset, seenWords }, ['samplingOffset', 'pickedOffset']);
    if (k > TOPK_MAX_K) throw new ShapeError(`${label}: k ${k} exceeds ${TOPK_MAX_K}`);
    checkFits(label, 'values', this.#buffers.values, 0, rows * k);
    checkFits(label, 'indices', this.#buffers.indices, 0, rows * k);
    checkFits(label, 'sampling', this.#buffers.sampling, samplingOffset, rows * ROW_SAMPLING_WORDS);
    checkFits(label, 'picked', this.#buffers.picked, pickedOffset, rows);
    this.#dispatch.encode(pass, { rows, k, sampling_offset: samplingOffset, picked_offset: pickedOffset, seen_words: seenWords }, Math.ceil(rows / 64));
  }
}

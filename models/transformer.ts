// The decoder-only transformer on the GPU: Llama (Llama 2/3, TinyLlama, Mistral), Qwen2, Qwen3, Phi-3, Gemma 2,
// Gemma 3 and GPT-2.
//
// One forward pass serves them all; they differ in a few places, each a plain branch below:
// the norm (RMSNorm vs LayerNorm with bias), positions (RoPE vs a learned table), the MLP
// (SwiGLU, GeGLU or GELU), Qwen3's and Gemma 3's RMSNorm of each query and key head before RoPE, and
// Gemma's scaled embeddings, attention scale, norms after the attention and the MLP (before their
// residual adds), Gemma 3's local RoPE base on its sliding layers and Gemma 2's soft-capped attention
// scores and logits. A layer with a sliding window (Mistral 7B v0.1, Qwen2's sliding layers) passes it
// to its attention ops, which skip the keys outside it. Everything is allocated when the model is built: weights, activations, the
// KV cache and every kernel's bind group. A step records one compute pass and submits once;
// the only read back is the sampler's candidates (top-k logits, their ids, the log-sum-exp, and in
// decode steps the token the GPU picked from them). A decode step records the next one while the GPU
// runs it (DecodeOptions.recordNext), and a prefill step the decode step after it when told its shape
// (PrefillBatchOptions.nextDecode), so that the host's recording time overlaps the GPU's work instead
// of adding to it; and a decode step may take the last step's picks as its tokens on the GPU
// (DecodeOptions.tokensFromPicks), so that it is submitted before that step is read back.
// Decode-sized steps (at most 8 rows, the matvec's) run each layer as five steps: norm + q/k/v
// projection, attention with the head norm (if any), RoPE and KV write folded in, o-projection +
// residual, norm + gate/up + activation, down-projection + residual (the adapter's autotune may keep
// a norm or the RoPE + KV write as its own kernel where that runs faster there); longer (prefill)
// steps run the norms and activations as their own kernels around the tiled matmuls, over the same
// weights, and RoPE + KV write before attention.
// A step's inputs (token ids, positions, the KV rows' metadata) go up in one writeBuffer, and the
// kernels' uniforms in at most one more (the device's uniform arena, flushed by the submit).
// The KV cache is paged (models/kv-cache.ts, kernels/attention.ts): each layer has a K and a V pool of
// kvBlocks blocks of KV_BLOCK_TOKENS positions, stored as kvDtype, and slot s reaches its blocks
// through row s of one block table shared by every layer. At load row s maps s * B .. s * B + B - 1
// (one fixed reservation per slot, as long as the pool has slots * B blocks); setBlockTable and
// copyBlock let a block allocator share and copy blocks between slots.
// The kernels a step runs are built at load by models/layers.ts; this module owns the buffers,
// loads the weights and records the steps.
//
// Legend: R = rows in a step (the prompt tokens of one or more sequences laid end to end, or one
// token per decoding sequence), C = hidden size, Hq/Hkv = query/key-value heads, D = head size, W = (Hq + 2 Hkv) D,
// F = MLP size, V = vocabulary, S = KV slots (sequences held at once), P = slot capacity (tokens),
// N = KV blocks in each pool, B = ceil(P / 16) block-table entries per slot.
import { outOfMemoryIn, type Gpu } from '../src/gpu/device.ts';
import { BufferArena, mapForRead, readF32 } from '../src/gpu/buffers.ts';
import { UniformArena } from '../src/gpu/uniforms.ts';
import { GpuMemoryError, ShapeError } from '../src/errors.ts';
import type { Norm } from '../kernels/norm.ts';
import type { Linear } from '../kernels/linear.ts';
import { DECODE_DEFAULTS, KV_BLOCK_TOKENS, checkKvDtype, type KvDtype } from '../kernels/attention.ts';
import { ROW_SAMPLING_WORDS, TOPK_MAX_K, seenWords, writeRowSampling, type RowSampling } from '../kernels/sample.ts';
import type { HostWeight } from '../kernels/weights.ts';
import { uploadWeightChunks, type ChunkedWeight } from '../kernels/weights-upload.ts';
import { autotuneMatvecs, autotuneRopeKvFold, autotuneSetting, type AutotuneOptions, type DecodeTuning, type MatvecTunings } from '../kernels/autotune.ts';
import type { ModelConfig } from './config.ts';
import { WeightsDigest, type ModelSource } from './source.ts';
import { KvCache } from './kv-cache.ts';
import { buildForwardOps, type ForwardOps, type LayerOps, type StepBuffers } from './layers.ts';
import { planMatrix, planVector, tensorPlan } from './tensor-plan.ts';
import { estimateWeightBytes, fmtBytes } from './memory-plan.ts';

export interface TransformerOptions {
  /** Sequences whose KV cache is held at once (decode batch size; rows of the block table). */
  slots: number;
  /** Most tokens one slot's sequence can hold (prompt + completion): its table row has ceil(capacity / 16) entries. */
  capacity: number;
  /**
   * KV blocks (KV_BLOCK_TOKENS positions each) in every layer's pool, shared by all slots through
   * their block tables. Default slots x ceil(capacity / 16): every slot's whole capacity reserved.
   */
  kvBlocks?: number;
  /** How the KV cache stores keys and values (default 'f16'; 'q8_0' needs a head dim multiple of 32). */
  kvDtype?: KvDtype;
  /** Most prompt tokens one prefill step processes; longer prompts take several steps. */
  prefillChunk: number;
  /**
   * Most sequences (pieces) one prefill step carries (default 8; at most `slots` are used, as the
   * pieces of a step hold different slots). Each costs one attention op per layer, built at load.
   */
  maxPrefillPieces?: number;
  /** Called after each tensor is uploaded (for a progress bar). */
  onProgress?: (done: number, total: number, name: string) => void;
  /**
   * Most bytes per plane of one weight chunk (default: the adapter's storage binding limit). A
   * matrix over the limit is uploaded in row chunks; tests set a small value to force chunking.
   */
  maxWeightChunkBytes?: number;
  /**
   * Decode matvec variants and folds tuned for this adapter at load (kernels/autotune.ts; the object
   * sets the cache file), or false: the static defaults. Default on, unless WEBGPU_MINER_AUTOTUNE=off.
   */
  autotune?: boolean | AutotuneOptions;
  /** The matvec variant per weight dtype, as given (tests force each candidate); their autotune is then skipped. */
  matvecTunings?: MatvecTunings;
  /**
   * Whether decode attention folds in the step's RoPE and KV write (DecodeAttentionConfig.newKv), as
   * given; its autotune is then skipped. Default: autotuned, else true.
   */
  ropeKvFold?: boolean;
}

/** The sampler's view of one row's logits. */
export interface RowCandidates {
  ids: Uint32Array;
  logits: Float32Array;
  logSumExp: number;
  /** Index in `ids` of the token the GPU picked (DecodeOptions.sample). */
  picked?: number;
}

export interface PrefillOptions {
  /** Also return every position's full logits row. */
  allLogits?: boolean;
  /** Candidates to return for the next token (default 64); 0 skips the LM head. */
  candidates?: number;
}

/** One sequence's share of a batched prefill step. */
export interface PrefillPiece {
  /** KV slot of the sequence; the pieces of one step hold different slots. */
  slot: number;
  /** Prompt tokens to run (>= 1). */
  tokens: number[];
  /** Position of tokens[0] (= tokens of this sequence already in the slot's cache). */
  start: number;
  /** Candidates to return for the token after the piece's last one (1..64); 0 or absent: none. */
  candidates?: number;
}

export interface DecodeOptions {
  /**
   * After submitting this step, record the next one for the same rows one position on (default
   * true), so that a following decode() of that shape only uploads its inputs and submits: the
   * recording, most of a step's host time, runs while the GPU works on this step. Pass false when
   * the next call will be of another shape (rows joining or leaving, a prefill in between): the
   * recording would be thrown away.
   */
  recordNext?: boolean;
  /**
   * Also pick each row's next token on the GPU from its candidates (one RowSampling per row), so
   * that the next step can take it as its input (tokensFromPicks); each row's RowCandidates.picked
   * says which candidate it was.
   */
  sample?: RowSampling[];
  /**
   * The rows' tokens are those the last submitted step picked on the GPU for the same slots (a
   * decode step with `sample`; each row's slot one of its rows', one position on, in any order, a
   * row of it left out where its sequence ended): this step can be submitted before that one's
   * candidates are read back, so that the GPU always has the next step queued. The rows' `token`
   * is not read.
   */
  tokensFromPicks?: boolean;
  /** With recordNext and sample: record the next step as taking its tokens from this one's picks. */
  nextTokensFromPicks?: boolean;
}

/** The shape of a decode step: what its recording depends on (see Transformer.#recorded). */
export interface DecodeShape {
  rows: number;
  /** Keys the longest row attends to: its position + 1. */
  maxLen: number;
  /** Candidates taken per row. */
  candidates: number;
  /** Whether the step picks tokens on the GPU (DecodeOptions.sample). */
  sample?: boolean;
}

/** A decode step's shape as recorded: what its commands depend on. */
interface StepShape {
  rows: number;
  maxLen: number;
  k: number;
  sample: boolean;
  /** With tokensFromPicks: for each row, the row of the last step whose pick it takes. */
  fromRows?: number[];
}

export interface PrefillBatchOptions {
  /**
   * After submitting, record the decode step of this shape while the GPU runs the prefill, for the
   * decode() that follows (the engine's turn: a prefill step, then a decode step of the sequences
   * decoding and those whose prompt this step completes).
   */
  nextDecode?: DecodeShape;
}

export interface DecodeRow {
  slot: number;
  /** Not read with DecodeOptions.tokensFromPicks. */
  token: number;
  /** Position of `token` in its sequence (= tokens already in the slot's cache). */
  position: number;
}

export class Transformer {
  readonly config: ModelConfig;
  readonly id: string;
  readonly options: TransformerOptions;
  /** What decode runs on this adapter: the matvec variant per weight dtype (none: the static defaults) and the RoPE + KV-write fold. */
  readonly decodeTuning: DecodeTuning;
  /** sha256 over the weights as uploaded. */
  readonly weightsDigest: string;
  /** Parameters and bytes on the GPU, by tensor class. */
  readonly stats: {
    parameters: number;
    weightBytes: number;
    /** Bytes of the KV pools (every layer, K and V). */
    kvBytes: number;
    kvDtype: KvDtype;
    kvBlocks: number;
    kvBlockTokens: number;
    /** KV bytes one token of one sequence takes: every layer, K and V, as stored. */
    kvBytesPerToken: number;
    activationBytes: number;
    dtypes: Record<string, string>;
  };
  readonly #gpu: Gpu;
  readonly #arena: BufferArena;
  readonly #maxRows: number;
  /** The step buffers; a step of R rows keeps its inputs at 0, R, 2R, 4R and 6R in `inputs` (see inputOffsets). */
  readonly #buf: StepBuffers;
  /**
   * Where steps copy their candidates for the host, used in turn: a step copies into one while the
   * host may still be mapping the other (two decode steps in flight, DecodeOptions.tokensFromPicks).
   */
  readonly #readbacks: [GPUBuffer, GPUBuffer];
  /** Index in #readbacks of the buffer the last submitted step copied into. */
  #lastReadback = 1;
  /** Readback buffers submitted and not yet read back. */
  readonly #reading = new Set<GPUBuffer>();
  /** The rows of the last submitted step if it picked tokens on the GPU: the rows a step with tokensFromPicks must follow. */
  #picks?: { slots: number[]; positions: number[] };
  /** The kernels of the forward pass (models/layers.ts). */
  readonly #ops: ForwardOps;
  readonly #maxPieces: number;
  readonly #kv: KvCache;
  /** Rows of logits computed per submit (the logits buffer holds this many rows of V). */
  readonly #logitRows: number;
  /** CPU copy of a step's inputs, filled and uploaded once per step. */
  readonly #inputs: Uint32Array<ArrayBuffer>;
  readonly #uniforms: UniformArena;
  /**
   * The next decode step, recorded while the GPU ran the last step (DecodeOptions.recordNext,
   * PrefillBatchOptions.nextDecode). A decode step's commands depend only on its row count, its
   * longest row and the candidates taken (everything per row is in the inputs buffer, uploaded at
   * submit), so this is its key. Its kernels' uniforms sit in the arena's CPU copy until the submit
   * uploads them: any other recording on this model drops it first (#dropRecorded).
   */
  #recorded?: { commands: GPUCommandBuffer; shape: StepShape; readback: GPUBuffer };
  /** Decode steps submitted from a recording made ahead (#recorded), since load. */
  #decodeStepsRecordedAhead = 0;
  /** Decode steps that took their tokens from the step before's picks (tokensFromPicks), since load. */
  #decodeStepsFromPicks = 0;
  /** Per slot, the last decode step (numbered by #decodeStamp) that had a row in it: one row a slot per step. */
  #slotStamps?: Uint32Array;
  #decodeStamp = 0;

  private constructor(gpu: Gpu, source: ModelSource, options: TransformerOptions, weights: Map<string, ChunkedWeight | GPUBuffer>, arena: BufferArena, digest: string, stats: Transformer['stats']) {
    this.#gpu = gpu;
    this.#arena = arena;
    this.config = source.config;
    this.id = source.id;
    this.options = options;
    this.decodeTuning = { matvecs: options.matvecTunings ?? {}, ropeKvFold: options.ropeKvFold ?? true };
    this.weightsDigest = digest;
    const cfg = source.config;
    const { hiddenSize: C, numHeads: Hq, numKvHeads: Hkv, headDim: D, intermediateSize: F, vocabSize: V } = cfg;
    const W = (Hq + 2 * Hkv) * D;
    const R = Math.max(options.prefillChunk, options.slots);
    this.#maxRows = R;
    this.#logitRows = Math.max(options.slots, 1);
    this.#maxPieces = Math.min(options.maxPrefillPieces ?? 8, options.slots);
    this.#uniforms = UniformArena.of(gpu.device);
    // Prefill: ids, positions and KV-write metadata of up to prefillChunk rows (4 words a row);
    // decode: those, the attention metadata and the GPU sampler's parameters of up to `slots` rows.
    this.#inputs = new Uint32Array(Math.max(4 * options.prefillChunk, (6 + ROW_SAMPLING_WORDS) * options.slots));
    const f32 = (name: string, elements: number) => arena.get(name, elements * 4);
    const kv = new KvCache(gpu, arena, { ...cfg, slots: options.slots, capacity: options.capacity, kvBlocks: options.kvBlocks, dtype: options.kvDtype });
    this.#kv = kv;
    this.#buf = {
      inputs: f32('inputs', this.#inputs.length),
      x: f32('x', R * C),
      x2: f32('x2', R * C),
      h: f32('h', R * C),
      // Post-norm models: the attention's or MLP's output before its norm and residual add.
      sublayer: f32('sublayer', cfg.postNorms ? R * C : 1),
      qkv: f32('qkv', R * W),
      attn: f32('attn', R * Hq * D),
      // The MLP's input projections before the activation (matmul-sized runs, and gate apart from
      // up): (R, 2F) of interleaved (gate, up) pairs, or gate at 0 and up at R F.
      mlp: f32('mlp', 2 * R * F),
      act: f32('act', R * F),
      logits: f32('logits', this.#logitRows * V),
      topValues: f32('topValues', this.#logitRows * TOPK_MAX_K),
      topIds: f32('topIds', this.#logitRows * TOPK_MAX_K),
      lse: f32('lse', this.#logitRows),
      picked: f32('picked', this.#logitRows),
      seen: f32('seen', options.slots * seenWords(V)),
      headRows: f32('headRows', this.#logitRows * C),
    };
    // Per row: the top k values and ids, the log-sum-exp and the GPU's pick.
    const readback = (i: number) => gpu.device.createBuffer({
      label: `candidates.readback.${i}`,
      size: this.#logitRows * (2 * TOPK_MAX_K + 2) * 4,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    this.#readbacks = [readback(0), readback(1)];

    this.#ops = buildForwardOps(gpu, source, weights, arena, kv, this.#buf, {
      rows: R, logitRows: this.#logitRows, slots: options.slots, capacity: options.capacity, maxPieces: this.#maxPieces,
      matvecTunings: options.matvecTunings, ropeKvFold: this.decodeTuning.ropeKvFold,
    });
    this.stats = { ...stats, ...kv.stats(), activationBytes: arena.bytes - stats.weightBytes };
  }

  /** Load every tensor from `source`, upload it once, and build the kernels. */
  static async load(gpu: Gpu, source: ModelSource, options: TransformerOptions): Promise<Transformer> {
    const cfg = source.config;
    const sizes = {
      slots: options.slots, capacity: options.capacity, prefillChunk: options.prefillChunk, maxPrefillPieces: options.maxPrefillPieces ?? 8,
      kvBlocks: options.kvBlocks ?? 1,
    };
    for (const [name, value] of Object.entries(sizes)) {
      if (!Number.isSafeInteger(value) || value < 1) throw new ShapeError(`${name} must be an integer >= 1 (got ${value})`);
    }
    checkKvDtype(options.kvDtype ?? 'f16', cfg.headDim, 'kvDtype');
    const arena = new BufferArena(gpu);
    const digest = new WeightsDigest();
    const weights = new Map<string, ChunkedWeight | GPUBuffer>();
    const dtypes: Record<string, string> = {};
    let parameters = 0;
    const plan = tensorPlan(cfg, source);
    let done = 0;
    let model: Transformer | undefined;
    // Each tensor is uploaded in an out-of-memory error scope: a GPU too small for the weights is
    // named at the tensor where it ran out (WebGPU reports no memory size to check against first).
    const upload = async <T>(name: string, bytes: number, allocate: () => T): Promise<T> => {
      const before = arena.bytes;
      const [value, outOfMemory] = await outOfMemoryIn(gpu, allocate);
      if (outOfMemory) {
        const total = estimateWeightBytes(cfg, (tensor) => source.dtypeOf(tensor));
        throw new GpuMemoryError(
          `out of GPU memory uploading tensor "${name}" (${fmtBytes(bytes)}), with ${fmtBytes(before)} of the model's ${fmtBytes(total)} of weights ` +
            `on the GPU (${outOfMemory.message}): this GPU cannot hold them; take a smaller quantisation or model, or free its memory from other programs`,
          'weights',
        );
      }
      return value;
    };
    // A load that fails part-way (a bad tensor, an oversized row, no memory left) frees what it already uploaded.
    try {
      for (const item of plan) {
        if (item.kind === 'vector') {
          const data = await planVector(source, item);
          digest.add(item.name, data);
          weights.set(item.name, await upload(item.name, data.byteLength, () => arena.upload(item.name, data)));
          parameters += data.length;
        } else {
          const host = await planMatrix(source, item);
          host.planes.forEach((plane) => digest.add(item.name, plane));
          const rowMultiple = item.interleave ? 2 : 1; // row chunks keep (gate, up) pairs whole
          const bytes = host.planes.reduce((sum, plane) => sum + plane.byteLength, 0);
          weights.set(item.name, await upload(item.name, bytes, () => uploadWeightChunks(gpu, item.name, host, { arena, maxChunkBytes: options.maxWeightChunkBytes, rowMultiple })));
          parameters += host.rows * host.cols;
          // Each upload goes through a staging copy that the device frees only once the copy has
          // run: wait for it, so the host holds one tensor (and its staging) at a time, not the model.
          await gpu.device.queue.onSubmittedWorkDone();
          const role = item.name.replace(/^blk\.\d+\./, '').replace(/\.weight$/, '');
          dtypes[role] = host.dtype;
        }
        options.onProgress?.(++done, plan.length, item.name);
      }
      const weightBytes = arena.bytes;
      const tuning = autotuneSetting(options.autotune);
      const matvecTunings = options.matvecTunings ?? (tuning && (await autotuneMatvecs(gpu, {
        dtypes: [...new Set(Object.values(dtypes))] as HostWeight['dtype'][],
        shapes: [{ N: cfg.hiddenSize, K: cfg.hiddenSize }, { N: cfg.intermediateSize, K: cfg.hiddenSize }],
        postNorms: cfg.postNorms,
      }, tuning)).tunings);
      // Timed at a one-split context and an eight-split one, where the capacity allows.
      const splitKeys = DECODE_DEFAULTS.splitKeys;
      const ropeKvFold = options.ropeKvFold ?? (tuning && (await autotuneRopeKvFold(gpu, {
        Hq: cfg.numHeads, Hkv: cfg.numKvHeads, D: cfg.headDim, kvDtype: options.kvDtype ?? 'f16',
        rotaryDims: cfg.rope?.dims ?? 0, mode: source.ropeMode, headNorm: cfg.qkNorm === true,
        capacity: options.capacity, lengths: [...new Set([splitKeys, 8 * splitKeys].map((L) => Math.min(L, options.capacity)))],
      }, tuning)).tuning.fold);
      const [built, outOfMemory] = await outOfMemoryIn(gpu, () => new Transformer(gpu, source, { ...options, matvecTunings, ropeKvFold }, weights, arena, digest.hex(), {
        parameters,
        weightBytes,
        kvBytes: 0,
        kvDtype: options.kvDtype ?? 'f16',
        kvBlocks: 0,
        kvBlockTokens: KV_BLOCK_TOKENS,
        kvBytesPerToken: 0,
        activationBytes: 0,
        dtypes,
      }));
      model = built;
      if (outOfMemory) {
        // stats.activationBytes counts the KV pool too.
        const { activationBytes, kvBytes, kvBlocks, kvDtype } = model.stats;
        throw new GpuMemoryError(
          `out of GPU memory allocating the activations (${fmtBytes(activationBytes - kvBytes)}) and the KV pool (${fmtBytes(kvBytes)}: ${kvBlocks} blocks of ` +
            `${KV_BLOCK_TOKENS} tokens, ${kvDtype}) after ${fmtBytes(weightBytes)} of weights (${outOfMemory.message}): this GPU cannot hold a pool that size`,
          'kv',
        );
      }
      await gpu.sync();
      return model;
    } catch (err) {
      if (model) model.destroy();
      else arena.destroy();
      throw err;
    }
  }

  get maxRows(): number {
    return this.#maxRows;
  }

  /**
   * Point the first blocks.length entries of `slot`'s block-table row at pool blocks `blocks`
   * (position p of the slot's sequence then lives in block blocks[floor(p / 16)]). The write is queued
   * before the next step's submit, so that step sees it. Entries past blocks.length keep their ids.
   */
  setBlockTable(slot: number, blocks: readonly number[]): void {
    this.#kv.setBlockTable(slot, blocks);
  }

  /**
   * The tokens `slot`'s sequence has seen so far (its prompt and output), for the repetition penalty
   * of the GPU's picks (DecodeOptions.sample): each pick adds its token after this. The write is
   * queued before the next step's submit.
   */
  setSeenTokens(slot: number, tokens: Iterable<number>): void {
    this.#checkSlot(slot, 0);
    const words = new Uint32Array(seenWords(this.config.vocabSize));
    for (const t of tokens) {
      this.#checkToken(t);
      words[t >>> 5] |= 1 << (t & 31);
    }
    this.#gpu.device.queue.writeBuffer(this.#buf.seen, slot * words.byteLength, words);
  }

  /**
   * Copy pool block `src` to block `dst` in every layer, K and V (copy-on-write of a partly filled
   * block a sequence shares): one command buffer, ordered on the queue with the steps around it.
   */
  copyBlock(src: number, dst: number): void {
    this.#kv.copyBlock(src, dst);
  }

  /** Most pieces one prefillBatch step takes: maxPrefillPieces, at most slots. */
  get maxPrefillPieces(): number {
    return this.#maxPieces;
  }

  /**
   * Run `tokens` (positions start..start+T-1) of the sequence in `slot` through the model, writing
   * their keys and values into the slot's cache, prefillChunk tokens per step. Returns the
   * candidates for the token after the last one (none when `candidates` is 0: a middle piece of a
   * long prompt needs no LM head); with `allLogits`, also every position's full logits row (for
   * comparisons, not serving).
   */
  async prefill(slot: number, tokens: number[], start: number, options: PrefillOptions = {}): Promise<{ candidates?: RowCandidates; logits?: Float32Array[] }> {
    const { allLogits = false, candidates: candidateCount = TOPK_MAX_K } = options;
    this.#checkSlot(slot, start + tokens.length);
    if (tokens.length === 0) throw new ShapeError('prefill needs at least one token');
    const all: Float32Array[] = [];
    let candidates: RowCandidates | undefined;
    for (let offset = 0; offset < tokens.length; offset += this.options.prefillChunk) {
      const chunk = tokens.slice(offset, offset + this.options.prefillChunk);
      const last = offset + chunk.length >= tokens.length;
      if (!allLogits) {
        [candidates] = await this.prefillBatch([{ slot, tokens: chunk, start: start + offset, candidates: last ? candidateCount : 0 }]);
        continue;
      }
      // Every position's logits: the chunk's rows lie contiguous in x, and the head reads them in
      // place, #logitRows rows per submit (the logits buffer holds that many rows of V).
      const piece = { slot, tokens: chunk, start: start + offset };
      const firstRows = this.#checkPieces([piece]);
      this.#submit('prefill', (encoder) => this.#encodePrefill(encoder, [piece], firstRows));
      for (let first = 0; first < chunk.length; first += this.#logitRows) {
        const count = Math.min(this.#logitRows, chunk.length - first);
        const result = await this.#head(first, count, true, Math.max(1, candidateCount));
        all.push(...result.logits!);
        candidates = result.candidates[count - 1];
      }
    }
    await this.#gpu.sync();
    return { candidates, logits: allLogits ? all : undefined };
  }

  /**
   * One prefill step over several sequences: the pieces' tokens are laid end to end as the rows of
   * one forward pass (at most prefillChunk rows and maxPrefillPieces pieces, each in its own slot).
   * Norms, projections, RoPE and the KV writes run once over all rows; causal attention runs per
   * piece over its slot's cache (positions start.. follow what the slot already holds). Then the
   * last rows of the pieces that ask for candidates are gathered and go through the LM head
   * together, in the same submit. Returns, per piece, the candidates for the token after its last
   * one (undefined where it asked for none).
   */
  async prefillBatch(pieces: PrefillPiece[], options: PrefillBatchOptions = {}): Promise<Array<RowCandidates | undefined>> {
    const firstRows = this.#checkPieces(pieces);
    const next = options.nextDecode && this.#checkDecodeShape(options.nextDecode);
    const C = this.config.hiddenSize;
    const wanted = pieces.flatMap((p, i) => ((p.candidates ?? 0) > 0 ? [i] : []));
    const result: Array<RowCandidates | undefined> = pieces.map(() => undefined);
    if (wanted.length === 0) {
      this.#submit('prefill', (encoder) => this.#encodePrefill(encoder, pieces, firstRows));
      if (next) this.#recordAhead(next);
      await this.#gpu.sync();
      return result;
    }
    const V = this.config.vocabSize;
    const k = Math.min(Math.max(...wanted.map((p) => pieces[p].candidates!)), V);
    const read = this.#submitWithHead('prefill', wanted.length, k, false, (encoder, readback) => {
      this.#encodePrefill(encoder, pieces, firstRows);
      // Gather each wanted piece's last row of x into consecutive rows of headRows.
      wanted.forEach((p, i) => {
        const row = firstRows[p] + pieces[p].tokens.length - 1;
        encoder.copyBufferToBuffer(this.#buf.x, row * C * 4, this.#buf.headRows, i * C * 4, C * 4);
      });
      this.#encodeHead(encoder, this.#ops.finalNormGathered, 0, wanted.length, k, readback);
    });
    if (next) this.#recordAhead(next);
    const candidates = await read;
    wanted.forEach((p, i) => {
      const n = Math.min(pieces[p].candidates!, V);
      const c = candidates[i];
      result[p] = n === k ? c : { ids: c.ids.slice(0, n), logits: c.logits.slice(0, n), logSumExp: c.logSumExp };
    });
    return result;
  }

  /**
   * One prefill step over several pieces, as prefillBatch, that returns every row's full logits
   * (per piece, in token order) instead of candidates: teacher-forced scoring of many sequences in
   * one forward pass (a validator recomputing miners' responses). The rows go through the LM head
   * #logitRows at a time; the pieces' `candidates` are ignored.
   */
  async prefillBatchLogits(pieces: PrefillPiece[]): Promise<Float32Array[][]> {
    const firstRows = this.#checkPieces(pieces);
    this.#submit('prefill', (encoder) => this.#encodePrefill(encoder, pieces, firstRows));
    const rows = pieces.reduce((n, p) => n + p.tokens.length, 0);
    const { hiddenSize: C, vocabSize: V } = this.config;
    const all: Float32Array[] = [];
    for (let first = 0; first < rows; first += this.#logitRows) {
      const count = Math.min(this.#logitRows, rows - first);
      this.#submit('head', (encoder) => this.#encodeHead(encoder, this.#ops.finalNorm, first * C, count, 1));
      // One read back for the submit's rows (a map per row costs a round trip each).
      const block = await readF32(this.#gpu, this.#buf.logits, count * V);
      for (let r = 0; r < count; r++) all.push(block.slice(r * V, (r + 1) * V));
    }
    await this.#gpu.sync();
    return pieces.map((p, i) => all.slice(firstRows[i], firstRows[i] + p.tokens.length));
  }

  /** Validate a prefill step's pieces; returns the row of x where each piece's tokens begin. */
  #checkPieces(pieces: PrefillPiece[]): number[] {
    if (pieces.length === 0 || pieces.length > this.#maxPieces) {
      throw new ShapeError(`prefill step of ${pieces.length} pieces (1..${this.#maxPieces} allowed)`);
    }
    const slots = new Map<number, number>();
    const firstRows: number[] = [];
    let rows = 0;
    for (const [i, piece] of pieces.entries()) {
      const { slot, tokens, start, candidates = 0 } = piece;
      if (!Array.isArray(tokens) || tokens.length === 0) throw new ShapeError(`prefill piece ${i} needs at least one token`);
      if (!Number.isSafeInteger(start) || start < 0) throw new ShapeError(`prefill piece ${i}: start must be an integer >= 0 (got ${start})`);
      this.#checkSlot(slot, start + tokens.length);
      if (slots.has(slot)) throw new ShapeError(`prefill pieces ${slots.get(slot)} and ${i} both use KV slot ${slot}`);
      slots.set(slot, i);
      if (!Number.isSafeInteger(candidates) || candidates < 0 || candidates > TOPK_MAX_K) {
        throw new ShapeError(`prefill piece ${i}: candidates must be an integer in [0, ${TOPK_MAX_K}] (got ${candidates})`);
      }
      this.#checkTokens(tokens);
      firstRows.push(rows);
      rows += tokens.length;
    }
    if (rows > this.options.prefillChunk) {
      throw new ShapeError(`prefill step of ${rows} tokens exceeds prefillChunk (${this.options.prefillChunk})`);
    }
    return firstRows;
  }

  /** Write the step's ids, positions and KV-write metadata, and record every layer in one pass. */
  #encodePrefill(encoder: GPUCommandEncoder, pieces: PrefillPiece[], firstRows: number[]): void {
    const { numHeads: Hq, headDim: D } = this.config;
    const W = this.#qkvWidth;
    const rows = pieces.reduce((n, p) => n + p.tokens.length, 0);
    const inputs = this.#inputs;
    const at = inputOffsets(rows);
    pieces.forEach((piece, i) => {
      piece.tokens.forEach((token, t) => {
        const row = firstRows[i] + t;
        inputs[at.ids + row] = token;
        inputs[at.positions + row] = piece.start + t;
        inputs[at.kvMeta + 2 * row] = piece.slot;
        inputs[at.kvMeta + 2 * row + 1] = piece.start + t;
      });
    });
    this.#gpu.device.queue.writeBuffer(this.#buf.inputs, 0, inputs, 0, at.kvMeta + 2 * rows);
    const pass = encoder.beginComputePass();
    this.#encodeLayers(pass, rows, (layer) => {
      pieces.forEach((piece, i) => {
        layer.prefill[i].encode(pass, {
          tokens: piece.tokens.length,
          pastLen: piece.start,
          tableRow: piece.slot,
          qOffset: firstRows[i] * W,
          qRowStride: W,
          outOffset: firstRows[i] * Hq * D,
          outRowStride: Hq * D,
          window: layer.window,
          scale: this.#attentionScale,
        });
      });
    });
    pass.end();
  }

  /**
   * One decoding step for a batch of sequences, one token each. Returns each row's `candidates`
   * most likely next tokens (fewer is cheaper: greedy decoding needs one). The step is submitted
   * before the returned promise settles, so a caller may submit the next step (tokensFromPicks)
   * before it reads this one's candidates: at most two steps are in flight.
   */
  async decode(rows: DecodeRow[], candidates = TOPK_MAX_K, options: DecodeOptions = {}): Promise<RowCandidates[]> {
    const B = this.#checkDecodeRows(rows.length);
    const k = this.#candidateK(candidates);
    const { sample, tokensFromPicks = false } = options;
    if (sample && sample.length !== B) throw new ShapeError(`decode: ${sample.length} rows of sampling parameters for ${B} rows`);
    const fromRows = tokensFromPicks ? this.#rowsFollowed(rows) : undefined;
    this.#checkReadbackFree(this.#nextReadback);
    const inputs = this.#inputs;
    const at = inputOffsets(B);
    let maxLen = 0;
    // Each row is its own sequence: attention writes a row's key while the other rows read theirs.
    const stamps = (this.#slotStamps ??= new Uint32Array(this.options.slots));
    const stamp = ++this.#decodeStamp;
    for (let r = 0; r < B; r++) {
      const { slot, token, position } = rows[r];
      this.#checkSlot(slot, position + 1);
      if (stamps[slot] === stamp) throw new ShapeError(`decode: rows ${rows.findIndex((row) => row.slot === slot)} and ${r} both use KV slot ${slot}`);
      stamps[slot] = stamp;
      if (!tokensFromPicks) this.#checkToken(token);
      inputs[at.ids + r] = token; // overwritten on the GPU with tokensFromPicks
      inputs[at.positions + r] = position;
      inputs[at.kvMeta + 2 * r] = slot;
      inputs[at.kvMeta + 2 * r + 1] = position;
      inputs[at.attnMeta + 2 * r] = slot;
      inputs[at.attnMeta + 2 * r + 1] = position + 1;
      if (position + 1 > maxLen) maxLen = position + 1;
    }
    if (sample) writeRowSampling(inputs, at.sampling, sample, rows.map((row) => row.slot));
    this.#gpu.device.queue.writeBuffer(this.#buf.inputs, 0, inputs, 0, sample ? at.sampling + ROW_SAMPLING_WORDS * B : at.attnMeta + 2 * B);
    const shape: StepShape = { rows: B, maxLen, k, sample: sample !== undefined, fromRows };
    const recorded = this.#recorded;
    let read: Promise<RowCandidates[]>;
    if (recorded && sameShape(recorded.shape, shape)) {
      this.#recorded = undefined;
      this.#decodeStepsRecordedAhead++;
      this.#gpu.device.queue.submit([recorded.commands]);
      read = this.#read(recorded.readback, B, k, shape.sample);
    } else {
      read = this.#submitWithHead('decode', B, k, shape.sample, (encoder, readback) => this.#encodeDecode(encoder, shape, readback));
    }
    this.#picks = sample ? { slots: rows.map((row) => row.slot), positions: rows.map((row) => row.position) } : undefined;
    if (tokensFromPicks) this.#decodeStepsFromPicks++;
    // The next step's recording overlaps this one's GPU work; the one after a step at the capacity cannot exist.
    if ((options.recordNext ?? true) && maxLen < this.options.capacity) {
      const fed = shape.sample && (options.nextTokensFromPicks ?? false);
      this.#recordAhead({ ...shape, maxLen: maxLen + 1, fromRows: fed ? Array.from({ length: B }, (_, r) => r) : undefined });
    }
    return read;
  }

  /** Decode steps submitted from a recording made while the GPU ran the step before, since load. */
  get decodeStepsRecordedAhead(): number {
    return this.#decodeStepsRecordedAhead;
  }

  /** Decode steps that took their tokens from the step before's picks on the GPU (tokensFromPicks), since load. */
  get decodeStepsFromPicks(): number {
    return this.#decodeStepsFromPicks;
  }

  /**
   * Layers and head of a decode step of this shape, in one pass, and its copies into `readback`
   * (with fromRows, first the copies of the last step's picks into the token ids: one per run of
   * rows that follow consecutive rows).
   */
  #encodeDecode(encoder: GPUCommandEncoder, shape: StepShape, readback: GPUBuffer): void {
    const { rows: B, maxLen, k, fromRows } = shape;
    const { numHeads: Hq, numKvHeads: Hkv, headDim: D } = this.config;
    const at = inputOffsets(B);
    for (let r = 0, end = 0; fromRows && r < B; r = end) {
      for (end = r + 1; end < B && fromRows[end] === fromRows[end - 1] + 1; end++);
      encoder.copyBufferToBuffer(this.#buf.picked, fromRows[r] * 4, this.#buf.inputs, (at.ids + r) * 4, (end - r) * 4);
    }
    const attention = {
      rows: B, maxLen, qRowStride: this.#qkvWidth, outRowStride: Hq * D, window: 0, metaOffset: at.attnMeta, scale: this.#attentionScale,
      kOffset: Hq * D, vOffset: (Hq + Hkv) * D,
    };
    const pass = encoder.beginComputePass();
    this.#encodeLayers(pass, B, (layer) => {
      attention.window = layer.window;
      layer.decode.encode(pass, attention);
    }, true);
    pass.end();
    this.#encodeHead(encoder, this.#ops.finalNorm, 0, B, k, readback, shape.sample ? at.sampling : undefined);
  }

  /**
   * Record the decode step of this shape, to be submitted by the decode() call that asks for it,
   * copying into the readback buffer the last submitted step did not use. The submit just made
   * uploaded the last step's uniforms, so the values written now wait in the arena's CPU copy for
   * the next submit. A recording that fails is dropped quietly: the decode() that needs the step
   * records it again and reports the error there.
   */
  #recordAhead(shape: StepShape): void {
    try {
      const readback = this.#nextReadback;
      const encoder = this.#gpu.device.createCommandEncoder({ label: 'decode' });
      this.#encodeDecode(encoder, shape, readback);
      this.#recorded = { commands: encoder.finish(), shape, readback };
    } catch {
      this.#uniforms.abandon();
    }
  }

  /**
   * Forget the step recorded ahead, before anything else is recorded on this model: that recording
   * rewrites kernels' uniforms the recorded step would read, and may be of another shape. The
   * arena's epoch moves on, so the same kernels may take new values before the next submit.
   */
  #dropRecorded(): void {
    if (!this.#recorded) return;
    this.#recorded = undefined;
    this.#uniforms.abandon();
  }

  /**
   * Record one command buffer with `record` and submit it (the submit uploads the uniforms first).
   * If recording throws, nothing is submitted and the uniform arena is told so, so the next step
   * may give the same kernels other values.
   */
  #submit(label: string, record: (encoder: GPUCommandEncoder) => void): void {
    this.#dropRecorded();
    this.#picks = undefined;
    let commands: GPUCommandBuffer;
    try {
      const encoder = this.#gpu.device.createCommandEncoder({ label });
      record(encoder);
      commands = encoder.finish();
    } catch (err) {
      this.#uniforms.abandon();
      throw err;
    }
    this.#gpu.device.queue.submit([commands]);
  }

  /** A decode step's row count, checked: 1..slots. */
  #checkDecodeRows(rows: number): number {
    if (!Number.isSafeInteger(rows) || rows < 1 || rows > this.options.slots) throw new ShapeError(`decode batch of ${rows} rows (1..${this.options.slots} allowed)`);
    return rows;
  }

  /** A decode shape given ahead, checked as decode() checks its rows; with its top-k size. */
  #checkDecodeShape({ rows, maxLen, candidates, sample = false }: DecodeShape): StepShape {
    this.#checkDecodeRows(rows);
    if (!Number.isSafeInteger(maxLen) || maxLen < 1 || maxLen > this.options.capacity) {
      throw new ShapeError(`decode maxLen must be an integer in [1, ${this.options.capacity}] (got ${maxLen})`);
    }
    return { rows, maxLen, k: this.#candidateK(candidates), sample };
  }

  /**
   * Rows whose tokens come from the last step's picks must each follow one of that step's rows:
   * the same slot, one position on. Returns the row each follows.
   */
  #rowsFollowed(rows: DecodeRow[]): number[] {
    const last = this.#picks;
    if (!last) throw new ShapeError('tokensFromPicks: the last step submitted was not a decode step that picked tokens');
    return rows.map(({ slot, position }, r) => {
      const from = last.slots.indexOf(slot);
      if (from < 0) throw new ShapeError(`tokensFromPicks: row ${r}'s slot ${slot} was not in the last step (slots ${last.slots.join(', ')})`);
      if (position !== last.positions[from] + 1) {
        throw new ShapeError(`tokensFromPicks: row ${r} (slot ${slot}, position ${position}) does not follow the last step's row (slot ${slot}, position ${last.positions[from]})`);
      }
      return from;
    });
  }

  /** The top-k size for a requested candidate count (checked), capped by the vocabulary. */
  #candidateK(candidateCount: number): number {
    if (!Number.isSafeInteger(candidateCount) || candidateCount < 1 || candidateCount > TOPK_MAX_K) {
      throw new ShapeError(`candidate count must be an integer in [1, ${TOPK_MAX_K}] (got ${candidateCount})`);
    }
    return Math.min(candidateCount, this.config.vocabSize);
  }

  /** Scores are q·k times this (the attention kernels fold it into the queries as they load them). */
  get #attentionScale(): number {
    return this.config.attentionScale ?? 1 / Math.sqrt(this.config.headDim);
  }

  get #qkvWidth(): number {
    return (this.config.numHeads + 2 * this.config.numKvHeads) * this.config.headDim;
  }

  /**
   * Embedding, then every layer, leaving the residual stream of `R` rows in x. Matvec-sized steps
   * (decode) fold the norms into the projections after them (where the adapter's tuning says that
   * pays: Linear.normFoldedFor) and the MLP's activation into its input projection
   * (Linear.activationFusedFor); matmul-sized steps run them as their own kernels. `decoding`: the
   * attention is the decode op's, which normalises, rotates and stores the step's keys itself where it
   * was built to (its newKv; models/layers.ts builds every layer's so).
   */
  #encodeLayers(pass: GPUComputePassEncoder, R: number, attention: (layer: LayerOps) => void, decoding = false): void {
    const { hiddenSize: C, numHeads: Hq, numKvHeads: Hkv, headDim: D, intermediateSize: F } = this.config;
    const W = this.#qkvWidth;
    const at = inputOffsets(R);
    // Each run's arguments are made once per step and shared by every layer.
    const norm = { rows: R, cols: C };
    const projection = { M: R };
    const qkvSlices = [
      { M: R, outputOffset: 0, outputRowStride: W },
      { M: R, outputOffset: Hq * D, outputRowStride: W },
      { M: R, outputOffset: (Hq + Hkv) * D, outputRowStride: W },
    ];
    const ropeKvWrite = { rows: R, rowStride: W, qOffset: 0, kOffset: Hq * D, vOffset: (Hq + Hkv) * D, metaOffset: at.kvMeta };
    const kvWrite = { rows: R, kOffset: Hq * D, kRowStride: W, vOffset: (Hq + Hkv) * D, vRowStride: W, metaOffset: at.kvMeta };
    // Gate and up apart: gate's rows at 0 in the mlp buffer, up's after them.
    const upApart = { M: R, outputOffset: R * F };
    const act = { count: R * F };
    const swigluApart = { count: R * F, bOffset: R * F };
    const embed = { count: R, idsOffset: at.ids, scale: this.config.embedScale ?? 1 };
    this.#ops.embed.encode(pass, embed);
    if (this.#ops.posEmbed && this.#ops.posAdd) {
      this.#ops.posEmbed.encode(pass, { count: R, idsOffset: at.positions });
      this.#ops.posAdd.encode(pass, { count: R * C });
    }
    for (const layer of this.#ops.layers) {
      if (!allFoldTheNorm(layer.qkv, R)) layer.attnNorm.encode(pass, norm);
      if (layer.qkv.length === 1) layer.qkv[0].encode(pass, projection);
      else for (let i = 0; i < layer.qkv.length; i++) layer.qkv[i].encode(pass, qkvSlices[i]);
      if (!(decoding && layer.decode.newKv)) {
        layer.ropeKvWrite?.encode(pass, ropeKvWrite);
        layer.kvWrite?.encode(pass, kvWrite);
      }
      attention(layer);
      layer.attnOut.encode(pass, projection);
      const mlpIn = layer.gateUp ?? layer.gate ?? layer.up!;
      if (!(mlpIn.normFoldedFor(R) && (!layer.gate || layer.up!.normFoldedFor(R)))) layer.mlpNorm.encode(pass, norm);
      if (layer.gateUp || (layer.up && !layer.gate)) {
        // One projection: [gate; up] interleaved (SwiGLU) or up (GELU), the activation fused on matvec runs.
        mlpIn.encode(pass, projection);
        if (!mlpIn.activationFusedFor(R)) layer.act.encode(pass, act);
      } else {
        layer.gate!.encode(pass, projection);
        layer.up!.encode(pass, upApart);
        layer.act.encode(pass, swigluApart);
      }
      layer.down.encode(pass, projection);
      layer.ffnPostNorm?.encode(pass, norm);
    }
  }

  /**
   * Final norm, LM head and top-k for `count` rows of x starting at row `first`, in one submit;
   * reads back the candidates (and the full logits rows when asked).
   */
  async #head(first: number, count: number, withLogits: boolean, candidateCount: number): Promise<{ candidates: RowCandidates[]; logits?: Float32Array[] }> {
    const { hiddenSize: C, vocabSize: V } = this.config;
    const k = this.#candidateK(candidateCount);
    const candidates = await this.#submitWithHead('head', count, k, false, (encoder, readback) => this.#encodeHead(encoder, this.#ops.finalNorm, first * C, count, k, readback));
    const logits = withLogits
      ? await Promise.all(Array.from({ length: count }, (_, r) => readF32(this.#gpu, this.#buf.logits, V, r * V)))
      : undefined;
    if (this.#gpu.pendingErrors.length > 0) await this.#gpu.sync();
    return { candidates, logits };
  }

  /**
   * Record the final norm (`norm`, over `count` rows from element xOffset of its input), LM head and
   * top-k, with `readback` the copies of the top k of each row and the log-sum-exps into it (and,
   * with `samplingOffset`, the GPU's pick of each row by the parameters there in `inputs`, and a copy of the picks).
   */
  #encodeHead(encoder: GPUCommandEncoder, norm: Norm, xOffset: number, count: number, k: number, readback?: GPUBuffer, samplingOffset?: number): void {
    const { hiddenSize: C, vocabSize: V } = this.config;
    const pass = encoder.beginComputePass();
    norm.encode(pass, { rows: count, cols: C, xOffset });
    this.#ops.lmHead.encode(pass, { M: count });
    this.#ops.logitSoftcap?.encode(pass, { count: count * V });
    this.#ops.topK.encode(pass, { rows: count, cols: V, k });
    if (samplingOffset !== undefined) this.#ops.pick.encode(pass, { rows: count, k, samplingOffset, seenWords: seenWords(V) });
    pass.end();
    if (!readback) return;
    encoder.copyBufferToBuffer(this.#buf.topValues, 0, readback, 0, count * k * 4);
    encoder.copyBufferToBuffer(this.#buf.topIds, 0, readback, count * k * 4, count * k * 4);
    encoder.copyBufferToBuffer(this.#buf.lse, 0, readback, 2 * count * k * 4, count * 4);
    if (samplingOffset !== undefined) encoder.copyBufferToBuffer(this.#buf.picked, 0, readback, (2 * count * k + count) * 4, count * 4);
  }

  /** The readback buffer the next step copies into: the one the last step did not. */
  get #nextReadback(): GPUBuffer {
    return this.#readbacks[1 - this.#lastReadback];
  }

  /** Throw unless `readback` is free: a step's candidates are read back before the step after next is submitted. */
  #checkReadbackFree(readback: GPUBuffer): void {
    if (this.#reading.has(readback)) {
      throw new Error('two steps are already in flight: wait for the older one\'s candidates before submitting another step');
    }
  }

  /** Record with `record` a step whose head copies candidates into the next readback buffer, submit it and start reading them back. */
  #submitWithHead(label: string, count: number, k: number, picked: boolean, record: (encoder: GPUCommandEncoder, readback: GPUBuffer) => void): Promise<RowCandidates[]> {
    const readback = this.#nextReadback;
    this.#checkReadbackFree(readback);
    this.#submit(label, (encoder) => record(encoder, readback));
    return this.#read(readback, count, k, picked);
  }

  /**
   * Called right after submitting a step that copies into `readback`: map it once the step has run
   * and split it into rows of candidates (with the GPU's picks when `picked`).
   */
  async #read(readback: GPUBuffer, count: number, k: number, picked: boolean): Promise<RowCandidates[]> {
    this.#lastReadback = this.#readbacks.indexOf(readback);
    this.#reading.add(readback);
    const words = 2 * count * k + 2 * count;
    let data: ArrayBuffer;
    try {
      await mapForRead(this.#gpu, readback, 0, words * 4);
      data = readback.getMappedRange(0, words * 4).slice(0);
      readback.unmap();
    } finally {
      this.#reading.delete(readback);
    }
    const values = new Float32Array(data, 0, count * k);
    const ids = new Uint32Array(data, count * k * 4, count * k);
    const lse = new Float32Array(data, 2 * count * k * 4, count);
    const picks = new Uint32Array(data, (2 * count * k + count) * 4, count);
    if (this.#gpu.pendingErrors.length > 0) await this.#gpu.sync();
    return Array.from({ length: count }, (_, r) => {
      const row: RowCandidates = { ids: ids.slice(r * k, (r + 1) * k), logits: values.slice(r * k, (r + 1) * k), logSumExp: lse[r] };
      if (picked) {
        row.picked = row.ids.indexOf(picks[r]);
        if (row.picked < 0) throw new Error(`the GPU picked token ${picks[r]} for row ${r}, which is not among its candidates`);
      }
      return row;
    });
  }

  #checkSlot(slot: number, length: number): void {
    if (!Number.isSafeInteger(slot) || slot < 0 || slot >= this.options.slots) {
      throw new ShapeError(`KV slot ${slot} out of range (0..${this.options.slots - 1})`);
    }
    if (length > this.options.capacity) {
      throw new ShapeError(`sequence of ${length} tokens exceeds the KV capacity of ${this.options.capacity} per slot`);
    }
  }

  #checkTokens(tokens: number[]): void {
    for (const t of tokens) this.#checkToken(t);
  }

  #checkToken(t: number): void {
    if (!Number.isSafeInteger(t) || t < 0 || t >= this.config.vocabSize) {
      throw new ShapeError(`token id ${t} is outside the vocabulary (0..${this.config.vocabSize - 1})`);
    }
  }

  destroy(): void {
    this.#recorded = undefined;
    for (const readback of this.#readbacks) readback.destroy();
    this.#ops.topK.destroy();
    this.#arena.destroy();
  }
}

function sameShape(a: StepShape, b: StepShape): boolean {
  const [x, y] = [a.fromRows, b.fromRows];
  const sameFrom = !x || !y ? x === y : x.length === y.length && x.every((row, i) => row === y[i]);
  return a.rows === b.rows && a.maxLen === b.maxLen && a.k === b.k && a.sample === b.sample && sameFrom;
}

/** Where a step of `rows` rows keeps each of its inputs in the inputs buffer (u32 elements). */
function inputOffsets(rows: number): { ids: number; positions: number; kvMeta: number; attnMeta: number; sampling: number } {
  return { ids: 0, positions: rows, kvMeta: 2 * rows, attnMeta: 4 * rows, sampling: 6 * rows };
}

/** True when every projection after a norm folds it in for a run of `rows` rows (then the norm kernel is skipped). */
function allFoldTheNorm(projections: readonly Linear[], rows: number): boolean {
  for (const projection of projections) if (!projection.normFoldedFor(rows)) return false;
  return true;
}

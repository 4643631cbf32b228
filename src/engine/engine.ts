// The engine: a loaded model, its tokenizer, and a scheduler with continuous batching.
//
// Requests wait in a queue ordered by priority (the validator's stake), then arrival. The
// scheduler loop runs while there is work: each turn it admits queued requests, runs ONE prefill
// step over the admitted prompts (oldest first, up to prefillChunk tokens in all: a long prompt
// contributes a chunk, short ones fit whole; a prompt's last piece also samples its first token),
// then runs batched decode steps for every decoding sequence (one forward pass over all rows: the
// weights are read once per step, not once per sequence): one step, or, until a request arrives, a
// run of steps two in flight, each fed on the GPU with the tokens the step before picked
// (#decodeSteps). A cancelled or abandoned request gives its KV blocks back at the next turn or
// step of a run.
//
// The KV cache is a pool of blocks (src/engine/kv-cache.ts): a request is admitted, highest
// priority first, when a block-table row (slot) is free and the pool can promise every block its
// prompt + max_tokens can fill (capped at the context); until then it waits, and so do the requests
// behind it (the queue's order decides who waits, not the size of the request). Prompt prefix reuse
// is block sharing: a prompt starts after the longest cached prefix of at least prefixCacheMin
// tokens (full blocks shared, a partly matching block copied), including prefixes of requests
// admitted in the same turn. Attention reads keys only below each query's position, through the
// sequence's own block table, so what other sequences wrote never shows.
import { acquireGpu, gpuFailure, type Gpu } from '../gpu/device.ts';
import { BadRequestError, GpuMemoryError, OptionError, OverloadedError } from '../errors.ts';
import { openModelSource, type ModelSource } from '../../models/source.ts';
import { Transformer, type DecodeShape, type PrefillPiece, type RowCandidates, type TransformerOptions } from '../../models/transformer.ts';
import { TINY_MODEL_ID } from '../../models/tiny.ts';
import { KV_BLOCK_TOKENS } from '../../kernels/attention.ts';
import { estimateActivationBytes, estimateWeightBytes, fmtBytes, gpuMemoryBytes, parseGpuMemory, planKvPool, type GpuMemory, type KvDtype, type KvPoolPlan } from '../../models/memory-plan.ts';
import { KvBlockPool } from './kv-blocks.ts';
import { KvCache } from './kv-cache.ts';
import { Sampler, validateSamplingParams } from './sampler.ts';
import { Channel, acceptToken, candidatesNeeded, type Sequence } from './sequence.ts';
import { TextTokenizer } from './tokenizer.ts';
import { MAX_LOGPROBS, type ChatMessage, type EngineInfo, type FinishReason, type GenerateOptions, type GenerateRequest, type GeneratedToken, type GenerationSummary, type TextGenerator } from './types.ts';

export interface EngineOptions {
  /** HF folder, .gguf file, or 'tiny-random-llama' (the embedded default). */
  model?: string;
  /** Adapter choice (auto, gpu, software); see src/gpu/device.ts. */
  adapter?: string;
  /**
   * Sequences held at once (block-table rows; the largest decode batch). Default 32: a row costs
   * ceil(capacity / 16) table entries and a row of logits, and the KV pool, not the rows, bounds
   * how many sequences fit; 32 lets that many short sequences share one read of the weights per step.
   */
  slots?: number;
  /** Most tokens per sequence (prompt + completion): a limit, not a reservation. Default min(1024, model context). */
  capacity?: number;
  /**
   * GPU memory for weights, activations and the KV pool: bytes, a fraction of the adapter's
   * maxBufferSize ({ fraction }), or the same as text ("12GiB", "0.8"). Default: no budget; the pool
   * holds min(slots, 16) full-context sequences (the bytes the f32 slot cache of 8 held), as far as
   * each layer's pool buffer fits the adapter's limits.
   */
  gpuMemory?: string | GpuMemory;
  /** How the KV cache stores keys and values: 'f16' (default), 'f32' or 'q8_0'. */
  kvDtype?: KvDtype;
  /** Most KV blocks in the pool (within gpuMemory and the adapter's limits); tests size small pools with it. */
  kvBlocks?: number;
  /** Prompt tokens per prefill step. Default 128. */
  prefillChunk?: number;
  /** Prompts (pieces) one prefill step carries at most. Default 8. */
  maxPrefillPieces?: number;
  /** Requests allowed to wait for a slot before new ones get OVERLOADED. Default 256. */
  maxQueue?: number;
  /**
   * Shortest common prefix (tokens) between a new prompt and a free slot's cached tokens that is
   * reused instead of prefilled again (a repeated system prompt or chat template). Default 16;
   * 0 disables reuse.
   */
  prefixCacheMin?: number;
  onProgress?: (done: number, total: number, name: string) => void;
  /**
   * Tune the decode matvec variants for this adapter at load, cached per adapter and driver
   * (TransformerOptions.autotune; kernels/autotune.ts), or false for the static defaults. Default on,
   * unless WEBGPU_MINER_AUTOTUNE=off.
   */
  autotune?: TransformerOptions['autotune'];
  /**
   * Submit each decode step of a steady batch before reading the step before it back, its tokens
   * taken from that step's picks on the GPU (#decodeSteps). Default true; false runs one step at a
   * time, the host between every two (for comparisons).
   */
  overlapDecode?: boolean;
  /** Use this device instead of acquiring one (tests share a device). */
  gpu?: Gpu;
}

export { TEXT_ONLY } from './sequence.ts';

export class Engine implements TextGenerator {
  readonly model: Transformer;
  readonly tokenizer: TextTokenizer;
  readonly gpu: Gpu;
  readonly #ownsGpu: boolean;
  readonly #maxQueue: number;
  /**
   * Whether runs of decode steps go two in flight (EngineOptions.overlapDecode); may be switched
   * between requests (the end-to-end bench times batch-1 decode both ways).
   */
  overlapDecode: boolean;
  readonly #queue: Sequence[] = [];
  /** Admitted, holding a slot and blocks, prompt partly in the KV cache. */
  readonly #prefilling: Sequence[] = [];
  /** Decoding: one row each in every decode step. */
  readonly #active: Sequence[] = [];
  readonly #kv: KvCache;
  /** How the pool was sized. */
  readonly kvPlan: KvPoolPlan;
  /** Prompt tokens taken from a slot's cache instead of prefilled, since load. */
  #promptTokensReused = 0;
  /** Prompt tokens run through prefill, since load. */
  #promptTokensComputed = 0;
  #order = 0;
  /** Requests enqueued since load: a run of decode steps ends when one arrives (#decodeSteps). */
  #arrivals = 0;
  #loop?: Promise<void>;
  #closed = false;

  private constructor(gpu: Gpu, ownsGpu: boolean, model: Transformer, tokenizer: TextTokenizer, maxQueue: number, prefixCacheMin: number, plan: KvPoolPlan, overlapDecode: boolean) {
    this.gpu = gpu;
    this.overlapDecode = overlapDecode;
    this.#ownsGpu = ownsGpu;
    this.model = model;
    this.tokenizer = tokenizer;
    this.#maxQueue = maxQueue;
    this.kvPlan = plan;
    const { slots, capacity } = model.options;
    this.#kv = new KvCache(new KvBlockPool(model.stats.kvBlocks, KV_BLOCK_TOKENS), model, { slots, capacity, prefixCacheMin });
  }

  static async load(options: EngineOptions = {}): Promise<Engine> {
    const { prefixCacheMin = 16 } = options;
    if (!Number.isSafeInteger(prefixCacheMin) || prefixCacheMin < 0) {
      throw new OptionError(`prefixCacheMin must be an integer >= 0 (0 disables prefix reuse; got ${prefixCacheMin})`);
    }
    const memory = typeof options.gpuMemory === 'string' ? parseGpuMemory(options.gpuMemory) : options.gpuMemory;
    const gpu = options.gpu ?? (await acquireGpu({ adapter: options.adapter }));
    let source: ModelSource | undefined;
    try {
      source = await openModelSource(options.model ?? TINY_MODEL_ID);
      const tokenizer = new TextTokenizer(source.tokenizer);
      const slots = options.slots ?? 32;
      const capacity = options.capacity ?? Math.min(1024, source.config.maxPositions);
      const prefillChunk = options.prefillChunk ?? 128;
      const kvDtype = options.kvDtype ?? 'f16';
      for (const [name, value] of Object.entries({ slots, capacity, prefillChunk })) {
        if (!Number.isSafeInteger(value) || value < 1) throw new OptionError(`${name} must be an integer >= 1 (got ${value})`);
      }
      const perSequence = Math.ceil(capacity / KV_BLOCK_TOKENS);
      if (options.kvBlocks !== undefined && (!Number.isSafeInteger(options.kvBlocks) || options.kvBlocks < 1)) {
        throw new OptionError(`kvBlocks must be an integer >= 1 (got ${options.kvBlocks})`);
      }
      const budgetBytes = memory ? gpuMemoryBytes(memory, gpu.limits) : undefined;
      const plan = planKvPool({
        config: source.config,
        kvDtype,
        weightBytes: estimateWeightBytes(source.config, (name) => source!.dtypeOf(name)),
        activationBytes: estimateActivationBytes(source.config, { slots, prefillChunk }),
        budgetBytes,
        limits: gpu.limits,
        maxBlocks: options.kvBlocks ?? (budgetBytes === undefined ? Math.min(slots, 16) : slots) * perSequence,
      });
      if (plan.blocks < perSequence) {
        throw new OptionError(
          `the KV pool holds ${plan.blocks} blocks of ${KV_BLOCK_TOKENS} tokens (limited by ${plan.limitedBy}${budgetBytes !== undefined ? ` at --gpu-memory ${fmtBytes(budgetBytes)}` : ''}), ` +
            `fewer than one sequence of the context (${capacity} tokens, ${perSequence} blocks) needs: give a smaller --context or more --gpu-memory`,
        );
      }
      const model = await Transformer.load(gpu, source, {
        slots,
        capacity,
        prefillChunk,
        maxPrefillPieces: options.maxPrefillPieces ?? 8,
        kvBlocks: plan.blocks,
        kvDtype,
        onProgress: options.onProgress,
        autotune: options.autotune,
      }).catch((err: unknown) => {
        // Without a budget the pool holds up to 16 whole contexts, which a small GPU may not fit.
        if (!(err instanceof GpuMemoryError) || err.allocation !== 'kv') throw err;
        const fix = budgetBytes === undefined
          ? 'give --gpu-memory with the memory this GPU has (e.g. --gpu-memory 8GiB) to size the KV pool to what the weights leave of it'
          : `--gpu-memory ${fmtBytes(budgetBytes)} is more than this GPU has free: give less`;
        throw new GpuMemoryError(`${err.message}: ${fix}, or fewer --slots or a shorter --context`, 'kv');
      });
      // The plan estimated the weights and activations; the loaded model knows them.
      const used = model.stats.weightBytes + model.stats.activationBytes;
      if (budgetBytes !== undefined && used > budgetBytes) {
        model.destroy();
        throw new OptionError(
          `--gpu-memory ${fmtBytes(budgetBytes)} is exceeded: the model holds ${fmtBytes(model.stats.weightBytes)} of weights and ` +
            `${fmtBytes(model.stats.activationBytes)} of activations and KV pool (${plan.blocks} blocks of ${fmtBytes(plan.blockBytes)}; the plan estimated ` +
            `${fmtBytes(plan.weightBytes)} of weights)`,
        );
      }
      return new Engine(gpu, !options.gpu, model, tokenizer, options.maxQueue ?? 256, prefixCacheMin, plan, options.overlapDecode ?? true);
    } catch (err) {
      if (!options.gpu) gpu.destroy();
      throw err;
    } finally {
      await source?.close();
    }
  }

  info(): EngineInfo {
    const { info } = this.gpu;
    const kv = this.#kv.stats();
    return {
      modelId: this.model.id,
      weightsDigest: this.model.weightsDigest,
      adapter: [info.vendor, info.architecture, info.device, info.description].filter(Boolean).join(' / '),
      backend: info.backend,
      queueDepth: this.#queue.length,
      activeSequences: this.#prefilling.length + this.#active.length,
      kvBlocksUsed: kv.used,
      kvBlocksTotal: kv.total,
      kvBlocksShared: kv.shared,
      kvBlocksCached: kv.cached,
      kvBlockTokens: KV_BLOCK_TOKENS,
      promptTokensReused: this.#promptTokensReused,
      promptTokensComputed: this.#promptTokensComputed,
      ...(this.gpu.lostError ? { gpuLost: this.gpu.lostError.message } : {}),
    };
  }

  /** Token ids of the request's prompt or chat messages, checked against the KV capacity. */
  encodePrompt(request: GenerateRequest): number[] {
    const hasPrompt = typeof request.prompt === 'string';
    const hasMessages = Array.isArray(request.messages);
    if (hasPrompt === hasMessages) throw new BadRequestError('give exactly one of prompt or messages');
    let ids: number[];
    if (hasMessages) {
      for (const m of request.messages!) {
        if (!m || typeof m.role !== 'string' || typeof m.content !== 'string') {
          throw new BadRequestError('each message needs a string role and a string content');
        }
      }
      if (!this.tokenizer.hasChatTemplate) throw new BadRequestError(`model ${this.model.id} has no chat template; send a prompt`);
      const text = this.tokenizer.applyChatTemplate(request.messages!);
      this.#refuseUnfitting(text);
      ids = this.tokenizer.encode(text, false); // the rendered template carries its own special tokens
    } else {
      this.#refuseUnfitting(request.prompt!);
      ids = this.tokenizer.encode(request.prompt!);
    }
    if (ids.length === 0) throw new BadRequestError('the prompt is empty');
    if (ids.length >= this.model.options.capacity) {
      throw new BadRequestError(`prompt of ${ids.length} tokens does not fit the context of ${this.model.options.capacity} tokens`);
    }
    return ids;
  }

  tokenize(input: { prompt?: string; messages?: ChatMessage[] }, addSpecialTokens = true): number[] {
    if (typeof input.prompt === 'string' && !addSpecialTokens) {
      this.#refuseUnfitting(input.prompt);
      return this.tokenizer.encode(input.prompt, false);
    }
    return this.encodePrompt({ ...input, maxTokens: 1 });
  }

  detokenize(ids: number[]): string {
    const vocab = this.model.config.vocabSize;
    const bad = ids.find((id) => !Number.isSafeInteger(id) || id < 0 || id >= vocab);
    if (bad !== undefined) throw new BadRequestError(`token id ${bad} is outside the vocabulary [0, ${vocab})`);
    return this.tokenizer.decode(ids, true);
  }

  tokenText(id: number): string {
    return this.tokenizer.decode([id], false);
  }

  /** Refuse a text too long for the context before tokenising it (the work is bounded by the context, not the text). */
  #refuseUnfitting(text: string): void {
    const capacity = this.model.options.capacity;
    const atLeast = this.tokenizer.minTokens(text);
    if (atLeast >= capacity) {
      throw new BadRequestError(
        `prompt of ${Buffer.byteLength(text, 'utf8')} bytes is at least ${atLeast} tokens (a token of this model covers at most ` +
          `${this.tokenizer.maxBytesPerToken} bytes) and does not fit the context of ${capacity} tokens`,
      );
    }
  }

  #validate(request: GenerateRequest): { promptIds: number[]; sampler: Sampler; maxTokens: number } {
    if (!request || typeof request !== 'object') throw new BadRequestError('request must be an object');
    const { maxTokens, logprobs = 0, stop = [] } = request;
    if (!Number.isSafeInteger(maxTokens) || maxTokens < 1) throw new BadRequestError(`max_tokens must be an integer >= 1 (got ${maxTokens})`);
    if (!Number.isSafeInteger(logprobs) || logprobs < 0 || logprobs > MAX_LOGPROBS) {
      throw new BadRequestError(`logprobs must be an integer in [0, ${MAX_LOGPROBS}] (got ${logprobs})`);
    }
    if (!Array.isArray(stop) || stop.length > 16 || stop.some((s) => typeof s !== 'string' || s.length === 0 || s.length > 256)) {
      throw new BadRequestError('stop must be a list of at most 16 non-empty strings of at most 256 characters');
    }
    let params;
    try {
      params = validateSamplingParams({
        temperature: request.temperature,
        topK: request.topK,
        topP: request.topP,
        minP: request.minP,
        repetitionPenalty: request.repetitionPenalty,
        seed: request.seed,
      });
    } catch (err) {
      throw new BadRequestError((err as Error).message);
    }
    const promptIds = this.encodePrompt(request);
    // The completion is cut at the context (finish_reason "length"); the pool always holds one
    // sequence of the whole context (checked at load), so every request is admitted in its turn.
    return { promptIds, sampler: new Sampler(params), maxTokens: Math.min(maxTokens, this.model.options.capacity - promptIds.length) };
  }

  async *generate(request: GenerateRequest, options: GenerateOptions = {}): AsyncGenerator<GeneratedToken, GenerationSummary> {
    if (this.#closed) throw new OverloadedError('the engine is shutting down');
    if (this.gpu.lostError) throw this.gpu.lostError;
    const arrival = performance.now();
    const { promptIds, sampler, maxTokens } = this.#validate(request);
    // Queued requests that free slots can take at the next turn are not counted as waiting for one.
    const { slots, slotsUsed } = this.#kv.stats();
    if (this.#queue.length - (slots - slotsUsed) >= this.#maxQueue) throw new OverloadedError(`queue full (${this.#maxQueue} requests waiting)`);
    const seq: Sequence = {
      request,
      promptIds,
      maxTokens,
      sampler,
      history: new Set(promptIds),
      stream: this.tokenizer.stream(),
      held: '',
      completion: 0,
      priority: options.priority ?? 0,
      arrival,
      order: this.#order++,
      reusedPrompt: 0,
      channel: new Channel(),
      signal: options.signal,
    };
    if (options.signal?.aborted) this.#end(seq, 'cancelled');
    else this.#enqueue(seq);
    try {
      for (;;) {
        const token = await seq.channel.next();
        if (!token) break;
        yield token;
      }
    } finally {
      // The consumer stopped early (socket closed, break): free the blocks at the next turn.
      seq.finish ??= 'cancelled';
    }
    const totalMs = performance.now() - arrival;
    const ttftMs = (seq.firstTokenAt ?? performance.now()) - arrival;
    const decodeMs = totalMs - ttftMs;
    return {
      finishReason: seq.finish,
      promptTokens: promptIds.length,
      cachedPromptTokens: seq.reusedPrompt,
      completionTokens: seq.completion,
      ttftMs,
      totalMs,
      tokensPerS: seq.completion > 1 && decodeMs > 0 ? ((seq.completion - 1) * 1000) / decodeMs : 0,
    };
  }

  #enqueue(seq: Sequence): void {
    this.#arrivals++;
    this.#queue.push(seq);
    this.#queue.sort((a, b) => b.priority - a.priority || a.order - b.order);
    this.#loop ??= this.#run().finally(() => (this.#loop = undefined));
  }

  /** The scheduler loop; runs until no sequence is queued, prefilling or decoding. */
  async #run(): Promise<void> {
    try {
      // Let requests that arrive together (same tick, same I/O poll) join the first prefill step.
      await new Promise((resolve) => setImmediate(resolve));
      while (this.#queue.length > 0 || this.#prefilling.length > 0 || this.#active.length > 0) {
        this.#retire();
        this.#admit();
        // One prefill step per turn (at most prefillChunk tokens), so prompts delay the sequences
        // already decoding by at most one step; with nothing decoding, prefill on.
        do {
          if (this.#prefilling.length === 0) break;
          if (!(await this.#prefillStep())) {
            // Nothing could run (see #prefillStep): yield rather than spin, so a cancel can land.
            await new Promise((resolve) => setImmediate(resolve));
            break;
          }
          this.#retire();
        } while (this.#active.length === 0);
        if (this.#active.length > 0) await this.#decodeSteps();
      }
    } catch (err) {
      // A GPU failure ends every request in flight with that error; the engine stays usable, unless
      // the device was lost (then every request fails with that loss, and generate() refuses new ones).
      // What the failed step wrote is unknown: the blocks go back and nothing cached is trusted.
      const failure = await gpuFailure(this.gpu, err);
      for (const seq of [...this.#prefilling.splice(0), ...this.#active.splice(0), ...this.#queue.splice(0)]) {
        seq.finish ??= 'cancelled';
        seq.channel.close(failure);
        if (seq.kv) this.#kv.release(seq.kv, false);
      }
      this.#kv.forgetCached();
    }
  }

  /**
   * Batched decode steps of the sequences decoding now: one step, or a run of them. Every step picks
   * each row's token on the GPU (PickToken, by the request's sampling parameters), so that in a run
   * step N + 1 takes step N's picks on the GPU and is submitted before step N is read back: the GPU
   * has the next step queued while the host reads, emits and records, and never waits for it. A
   * sequence that ends leaves the run (its row in the step in flight is dropped); the run ends, after
   * reading the step still in flight, once none goes on, a request arrives, or one leaves while
   * requests wait for room (#following).
   */
  async #decodeSteps(): Promise<void> {
    let batch = [...this.#active]; // the rows of `step`, in order
    const k = Math.max(...batch.map(candidatesNeeded));
    const arrivals = this.#arrivals;
    // Each row feeds its pending token, into a block its table covers before the step runs.
    const rows = batch.map((seq) => {
      const kv = seq.kv!;
      kv.ids.push(seq.pending!);
      this.#kv.prepare(kv, kv.written + 1);
      return { slot: kv.slot, token: seq.pending!, position: kv.written };
    });
    let following = this.#following(batch, arrivals, 2);
    // The next step is recorded while the GPU runs this one, unless the batch is known to change
    // before it: a prompt to prefill, or a sequence at its last token. (A queued request could
    // not be admitted this turn, so it waits for a sequence to end: the same signs.)
    const whole = following?.length === batch.length;
    const recordNext = whole || (!following && this.#prefilling.length === 0 && batch.every((seq) => seq.completion + 1 < seq.maxTokens));
    let step = this.model.decode(rows, k, { sample: batch.map((seq) => seq.sampler.nextGpuPick()), recordNext, nextTokensFromPicks: whole });
    for (;;) {
      let next: Promise<RowCandidates[]> | undefined;
      if (following) {
        const fed = following.map((seq) => {
          const kv = seq.kv!;
          this.#kv.prepare(kv, kv.written + 2);
          return { slot: kv.slot, token: 0, position: kv.written + 1 };
        });
        // The step after is recorded ahead, fed from this one's picks, when it will carry the same rows.
        const onward = this.#following(following, arrivals, 3)?.length === following.length;
        next = this.model.decode(fed, k, { sample: following.map((seq) => seq.sampler.nextGpuPick()), tokensFromPicks: true, recordNext: onward, nextTokensFromPicks: onward });
        next.catch(() => {}); // awaited below, after `step`: its error is thrown there
      }
      const candidates = await step;
      batch.forEach((seq, i) => {
        if (seq.finish) return; // ended at the step before: this row of the step in flight is dropped
        this.#kv.wrote(seq.kv!, seq.kv!.written + 1);
        this.#accept(seq, candidates[i]);
        // The step in flight fed what this one picked.
        if (following?.includes(seq) && !seq.finish) seq.kv!.ids.push(seq.pending!);
      });
      if (!next) return;
      // Sequences that ended leave now, their streams ended and their blocks given back, while the
      // GPU runs `next` (whose writes to those blocks come before any later step's).
      this.#retire();
      [step, batch] = [next, following!];
      following = this.#following(batch, arrivals, 2);
    }
  }

  /**
   * The sequences of `batch` (the rows of the step in flight) that the step after it carries, fed
   * with its picks: those not ended or cancelled with `steps` tokens left before max_tokens (the
   * KV positions admission promised). None, and the run ends, when overlapping is off, a prompt
   * waits, a request arrived since the run began, one leaves while requests wait for room (its
   * blocks may admit them), or none goes on.
   */
  #following(batch: Sequence[], arrivals: number, steps: number): Sequence[] | undefined {
    if (!this.overlapDecode || this.#prefilling.length > 0 || this.#arrivals !== arrivals) return undefined;
    const going = batch.filter((seq) => !seq.finish && !seq.signal?.aborted && seq.completion + steps <= seq.maxTokens);
    if (going.length === 0 || (going.length < batch.length && this.#queue.length > 0)) return undefined;
    return going;
  }

  /**
   * One batched prefill step: the admitted prompts, oldest first, fill a budget of prefillChunk
   * tokens and maxPrefillPieces pieces (a long prompt takes a chunk, the next ones fit whole or
   * start with what is left). A piece that completes its prompt samples the first token and the
   * sequence moves on to decoding.
   */
  async #prefillStep(): Promise<boolean> {
    let budget = this.model.options.prefillChunk;
    const batch: Array<{ seq: Sequence; piece: PrefillPiece; last: boolean }> = [];
    for (const seq of this.#prefilling) {
      if (budget === 0 || batch.length === this.model.maxPrefillPieces) break;
      const kv = seq.kv!;
      // A prefix shared with a sequence that has not written it yet: wait a step (or write it, if
      // its writer has ended; then less of the prompt was reused than admission counted).
      const admitted = kv.written;
      if (!this.#kv.ready(kv)) continue;
      if (kv.written < admitted) {
        seq.reusedPrompt -= admitted - kv.written;
        this.#promptTokensReused -= admitted - kv.written;
      }
      const tokens = seq.promptIds.slice(kv.written, kv.written + budget);
      const last = kv.written + tokens.length === seq.promptIds.length;
      this.#kv.prepare(kv, kv.written + tokens.length);
      batch.push({ seq, last, piece: { slot: kv.slot, tokens, start: kv.written, candidates: last ? candidatesNeeded(seq) : 0 } });
      budget -= tokens.length;
    }
    // Every admitted prompt waiting on a writer that is itself waiting cannot happen (writers are
    // admitted first and never wait on later sequences), but a turn must not run an empty step.
    if (batch.length === 0) return false;
    const candidates = await this.model.prefillBatch(batch.map((b) => b.piece), { nextDecode: this.#decodeAfter(batch) });
    batch.forEach(({ seq, piece, last }, i) => {
      this.#kv.wrote(seq.kv!, piece.start + piece.tokens.length);
      this.#promptTokensComputed += piece.tokens.length;
      if (last) {
        this.#prefilling.splice(this.#prefilling.indexOf(seq), 1);
        this.#active.push(seq);
        this.#accept(seq, candidates[i]!);
        // The GPU's picks apply the repetition penalty from the slot's seen tokens: the prompt and the first token.
        if (seq.sampler.params.repetitionPenalty !== 1) this.model.setSeenTokens(seq.kv!.slot, seq.history);
      }
    });
    return true;
  }

  /**
   * The decode step that follows a prefill step of `batch` in the same turn: the sequences decoding
   * now and those whose prompt the step completes (unless that first token is their last), each at
   * its next position. The prefill records it while the GPU runs (PrefillBatchOptions.nextDecode);
   * a joining sequence that samples its end there makes it another shape, and it is recorded again.
   */
  #decodeAfter(batch: Array<{ seq: Sequence; last: boolean }>): DecodeShape | undefined {
    const joining = batch.filter(({ seq, last }) => last && seq.maxTokens > 1).map(({ seq }) => seq);
    const rows = this.#active.length + joining.length;
    if (rows === 0) return undefined;
    let maxLen = 0;
    for (const seq of this.#active) maxLen = Math.max(maxLen, seq.kv!.written + 1);
    for (const seq of joining) maxLen = Math.max(maxLen, seq.promptIds.length + 1);
    let candidates = 1;
    for (const seq of [...this.#active, ...joining]) candidates = Math.max(candidates, candidatesNeeded(seq));
    return { rows, maxLen, candidates, sample: true };
  }

  /**
   * Admit queued requests, highest priority first, while the KV cache can take them (a free slot,
   * and blocks for prompt + max_tokens beside every admitted sequence's promise). The first that
   * does not fit waits, and so does everything behind it.
   */
  #admit(): void {
    while (this.#queue.length > 0) {
      const seq = this.#queue[0];
      if (seq.signal?.aborted || seq.finish) {
        this.#queue.shift();
        this.#end(seq, 'cancelled');
        continue;
      }
      // The last sampled token is never fed back: prompt + maxTokens - 1 positions at most.
      const admitted = this.#kv.admit(seq.promptIds, seq.promptIds.length + seq.maxTokens - 1);
      if (!admitted) return;
      this.#queue.shift();
      seq.kv = admitted.seq;
      seq.reusedPrompt = admitted.reused;
      this.#promptTokensReused += admitted.reused;
      this.#prefilling.push(seq);
    }
  }

  /** Drop finished, cancelled and aborted sequences, freeing their slots. */
  #retire(): void {
    for (const list of [this.#prefilling, this.#active]) {
      for (let i = list.length - 1; i >= 0; i--) {
        const seq = list[i];
        if (seq.signal?.aborted) seq.finish ??= 'cancelled';
        if (seq.finish) {
          list.splice(i, 1);
          this.#kv.release(seq.kv!);
          this.#end(seq, seq.finish);
        }
      }
    }
  }

  #end(seq: Sequence, reason: FinishReason): void {
    seq.finish ??= reason;
    seq.channel.close();
  }

  #accept(seq: Sequence, candidates: Parameters<typeof acceptToken>[1]): void {
    acceptToken(seq, candidates, this.tokenizer, this.model.config.eosTokenIds);
  }

  /**
   * Forget every cached prefix and give slot s the blocks [s * P, (s + 1) * P) (P = blocks per
   * context), for callers that drive the model's slots directly (benchmarks, the validator's
   * recomputation): call it with the engine idle, before such use and after it. Slots beyond what
   * the pool holds at full context keep their tables; direct callers must not use them. Returns
   * the slots laid out (0 .. n - 1).
   */
  forgetCachedPrefixes(): number {
    if (this.#loop) throw new OverloadedError('forgetCachedPrefixes needs an idle engine');
    this.#kv.forgetCached();
    const perSequence = Math.ceil(this.model.options.capacity / KV_BLOCK_TOKENS);
    const slots = Math.min(this.model.options.slots, Math.floor(this.#kv.pool.total / perSequence));
    for (let slot = 0; slot < slots; slot++) this.model.setBlockTable(slot, Array.from({ length: perSequence }, (_, i) => slot * perSequence + i));
    return slots;
  }

  /** Logits at the last position (or every position) of `tokens`, for comparisons with other runtimes. */
  async logits(tokens: number[], all = false): Promise<Float32Array[]> {
    if (this.#loop) throw new OverloadedError('logits needs an idle engine');
    // Every position is computed (no reuse): all logits are wanted, and they must not depend on the cache.
    const admitted = this.#kv.admit(tokens, tokens.length, false);
    if (!admitted) throw new OverloadedError('logits: no KV slot or blocks free');
    const kv = admitted.seq;
    try {
      this.#kv.prepare(kv, tokens.length);
      const { logits } = await this.model.prefill(kv.slot, tokens, 0, { allLogits: true });
      this.#kv.wrote(kv, tokens.length);
      return all ? logits! : [logits![logits!.length - 1]];
    } finally {
      this.#kv.release(kv);
    }
  }

  async close(graceMs = 0): Promise<void> {
    this.#closed = true;
    if (graceMs > 0 && this.#loop) {
      await Promise.race([this.#loop, new Promise((resolve) => setTimeout(resolve, graceMs))]);
    }
    for (const seq of [...this.#queue, ...this.#prefilling, ...this.#active]) seq.finish ??= 'cancelled';
    await this.#loop;
    this.model.destroy();
    if (this.#ownsGpu) this.gpu.destroy();
  }
}

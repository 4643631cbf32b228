// The engine: a loaded model, its tokenizer, and a scheduler with continuous batching.
//
// Requests wait in a queue ordered by priority (the validator's stake), then arrival. The
// scheduler loop runs while there is work: each turn it admits queued requests into free KV slots,
// runs ONE prefill step over the admitted prompts (oldest first, up to prefillChunk tokens in all:
// a long prompt contributes a chunk, short ones fit whole; a prompt's last piece also samples its
// first token), then runs ONE batched decode step for every decoding sequence (one forward pass
// over all rows: the weights are read once per step, not once per sequence). A cancelled or
// abandoned request leaves its slot at the next turn.
//
// Prompt prefix reuse (llama.cpp server's cache_prompt, without copying KV): a slot keeps, after its
// sequence ends, the ids of the tokens whose K/V it holds (the prompt and the generated tokens that
// were fed back; the last sampled token never was). A new request takes the free slot whose ids
// share the longest prefix with its prompt and, when that prefix is at least prefixCacheMin tokens,
// prefills only the rest (at least its last token, whose logits it needs). The positions past the
// prefix are overwritten by the new prefill, and attention reads keys only below each query's
// position (prefill: past_len + t; decode: kv_len), never up to the slot's capacity, so stale K/V
// beyond the sequence's length is never seen. K/V at a position depends only on the tokens up to it,
// so a sliding window changes nothing here. Without a long enough match a request takes a cold
// (never used) slot first, then the least recently released one, so warm slots live longest.
import { acquireGpu, type Gpu } from '../gpu/device.ts';
import { BadRequestError, OptionError, OverloadedError } from '../errors.ts';
import { openModelSource, type ModelSource } from '../../models/source.ts';
import { Transformer, type PrefillPiece, type RowCandidates, type TransformerOptions } from '../../models/transformer.ts';
import { TINY_MODEL_ID } from '../../models/tiny.ts';
import { CANDIDATES, Sampler, validateSamplingParams } from './sampler.ts';
import { TextTokenizer, type TokenStream } from './tokenizer.ts';
import { MAX_LOGPROBS, type ChatMessage, type EngineInfo, type FinishReason, type GenerateOptions, type GenerateRequest, type GeneratedToken, type GenerationSummary, type TextGenerator } from './types.ts';

export interface EngineOptions {
  /** HF folder, .gguf file, or 'tiny-random-llama' (the embedded default). */
  model?: string;
  /** Adapter choice (auto, gpu, software); see src/gpu/device.ts. */
  adapter?: string;
  /** Sequences decoded together (KV slots). Default 8. */
  slots?: number;
  /** Tokens per sequence (prompt + completion). Default min(1024, model context). */
  capacity?: number;
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
  /** Use this device instead of acquiring one (tests share a device). */
  gpu?: Gpu;
}

/** tokenId of a text-only piece: text held back for a stop string, released when EOS ends the output. */
export const TEXT_ONLY = -1;

/** One queued or running generation. */
interface Sequence {
  request: GenerateRequest;
  promptIds: number[];
  maxTokens: number;
  sampler: Sampler;
  history: Set<number>;
  stream: TokenStream;
  /** Text decoded but held back because it could be the start of a stop string. */
  held: string;
  completion: number;
  priority: number;
  arrival: number;
  order: number;
  slot?: number;
  /** Tokens in the slot's KV cache. */
  cached: number;
  /** Prompt tokens whose K/V were already in the slot at admission (not prefilled again). */
  reusedPrompt: number;
  /** Sampled, emitted, not yet fed back through the model. */
  pending?: number;
  /** Generated tokens fed back through the model (their K/V follow the prompt's in the slot). */
  fed: number[];
  firstTokenAt?: number;
  finish?: FinishReason;
  channel: Channel<GeneratedToken>;
  signal?: AbortSignal;
}

/** A single-consumer async queue: the scheduler pushes, the request's generator pulls. */
class Channel<T> {
  readonly #items: T[] = [];
  #wake?: () => void;
  #closed = false;
  #error?: unknown;

  push(item: T): void {
    this.#items.push(item);
    this.#wake?.();
  }
  close(error?: unknown): void {
    this.#closed = true;
    this.#error = error;
    this.#wake?.();
  }
  async next(): Promise<T | undefined> {
    while (this.#items.length === 0) {
      if (this.#closed) {
        if (this.#error) throw this.#error;
        return undefined;
      }
      await new Promise<void>((resolve) => (this.#wake = resolve));
      this.#wake = undefined;
    }
    return this.#items.shift();
  }
}

export class Engine implements TextGenerator {
  readonly model: Transformer;
  readonly tokenizer: TextTokenizer;
  readonly gpu: Gpu;
  readonly #ownsGpu: boolean;
  readonly #maxQueue: number;
  readonly #queue: Sequence[] = [];
  /** Admitted, holding a slot, prompt partly in the KV cache. */
  readonly #prefilling: Sequence[] = [];
  /** Decoding: one row each in every decode step. */
  readonly #active: Sequence[] = [];
  readonly #freeSlots: number[];
  readonly #prefixCacheMin: number;
  /** Per slot, while it is free: the ids of the tokens whose K/V it holds, from position 0 ([] = cold). */
  readonly #slotTokens: number[][];
  /** Per slot: when it was last released (a tick of #releases; 0 = never). */
  readonly #slotReleased: number[];
  #releases = 0;
  /** Prompt tokens taken from a slot's cache instead of prefilled, since load. */
  #promptTokensReused = 0;
  /** Prompt tokens run through prefill, since load. */
  #promptTokensComputed = 0;
  #order = 0;
  #loop?: Promise<void>;
  #closed = false;

  private constructor(gpu: Gpu, ownsGpu: boolean, model: Transformer, tokenizer: TextTokenizer, maxQueue: number, prefixCacheMin: number) {
    this.gpu = gpu;
    this.#ownsGpu = ownsGpu;
    this.model = model;
    this.tokenizer = tokenizer;
    this.#maxQueue = maxQueue;
    this.#prefixCacheMin = prefixCacheMin;
    const { slots } = model.options;
    this.#freeSlots = Array.from({ length: slots }, (_, i) => slots - 1 - i);
    this.#slotTokens = Array.from({ length: slots }, () => []);
    this.#slotReleased = new Array<number>(slots).fill(0);
  }

  static async load(options: EngineOptions = {}): Promise<Engine> {
    const { prefixCacheMin = 16 } = options;
    if (!Number.isSafeInteger(prefixCacheMin) || prefixCacheMin < 0) {
      throw new OptionError(`prefixCacheMin must be an integer >= 0 (0 disables prefix reuse; got ${prefixCacheMin})`);
    }
    const gpu = options.gpu ?? (await acquireGpu({ adapter: options.adapter }));
    let source: ModelSource | undefined;
    try {
      source = await openModelSource(options.model ?? TINY_MODEL_ID);
      const tokenizer = new TextTokenizer(source.tokenizer);
      const model = await Transformer.load(gpu, source, {
        slots: options.slots ?? 8,
        capacity: options.capacity ?? Math.min(1024, source.config.maxPositions),
        prefillChunk: options.prefillChunk ?? 128,
        maxPrefillPieces: options.maxPrefillPieces ?? 8,
        onProgress: options.onProgress,
        autotune: options.autotune,
      });
      return new Engine(gpu, !options.gpu, model, tokenizer, options.maxQueue ?? 256, prefixCacheMin);
    } catch (err) {
      if (!options.gpu) gpu.destroy();
      throw err;
    } finally {
      await source?.close();
    }
  }

  info(): EngineInfo {
    const { info } = this.gpu;
    return {
      modelId: this.model.id,
      weightsDigest: this.model.weightsDigest,
      adapter: [info.vendor, info.architecture, info.device, info.description].filter(Boolean).join(' / '),
      backend: info.backend,
      queueDepth: this.#queue.length,
      activeSequences: this.#prefilling.length + this.#active.length,
      kvBlocksUsed: this.model.options.slots - this.#freeSlots.length,
      kvBlocksTotal: this.model.options.slots,
      promptTokensReused: this.#promptTokensReused,
      promptTokensComputed: this.#promptTokensComputed,
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
    // The completion is cut at the slot's capacity (finish_reason "length").
    return { promptIds, sampler: new Sampler(params), maxTokens: Math.min(maxTokens, this.model.options.capacity - promptIds.length) };
  }

  async *generate(request: GenerateRequest, options: GenerateOptions = {}): AsyncGenerator<GeneratedToken, GenerationSummary> {
    if (this.#closed) throw new OverloadedError('the engine is shutting down');
    const arrival = performance.now();
    const { promptIds, sampler, maxTokens } = this.#validate(request);
    // Queued requests that free slots will take at the next turn are not waiting for one.
    if (this.#queue.length - this.#freeSlots.length >= this.#maxQueue) throw new OverloadedError(`queue full (${this.#maxQueue} requests waiting)`);
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
      cached: 0,
      reusedPrompt: 0,
      fed: [],
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
      // The consumer stopped early (socket closed, break): free the slot at the next turn.
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
          await this.#prefillStep();
          this.#retire();
        } while (this.#active.length === 0);
        if (this.#active.length === 0) continue;
        // One batched decode step: every decoding sequence feeds its pending token.
        const rows = this.#active.map((seq) => ({ slot: seq.slot!, token: seq.pending!, position: seq.cached }));
        const candidates = await this.model.decode(rows, Math.max(...this.#active.map(candidatesNeeded)));
        this.#active.forEach((seq, i) => {
          seq.cached++;
          seq.fed.push(seq.pending!);
          this.#accept(seq, candidates[i]);
        });
      }
    } catch (err) {
      // A GPU failure ends every request in flight with that error; the engine stays usable.
      // What the failed step wrote is unknown: the slots go back cold.
      for (const seq of [...this.#prefilling.splice(0), ...this.#active.splice(0), ...this.#queue.splice(0)]) {
        seq.finish ??= 'cancelled';
        seq.channel.close(err);
        if (seq.slot !== undefined) this.#release(seq.slot, []);
      }
    }
  }

  /**
   * One batched prefill step: the admitted prompts, oldest first, fill a budget of prefillChunk
   * tokens and maxPrefillPieces pieces (a long prompt takes a chunk, the next ones fit whole or
   * start with what is left). A piece that completes its prompt samples the first token and the
   * sequence moves on to decoding.
   */
  async #prefillStep(): Promise<void> {
    let budget = this.model.options.prefillChunk;
    const batch: Array<{ seq: Sequence; piece: PrefillPiece; last: boolean }> = [];
    for (const seq of this.#prefilling) {
      if (budget === 0 || batch.length === this.model.maxPrefillPieces) break;
      const tokens = seq.promptIds.slice(seq.cached, seq.cached + budget);
      const last = seq.cached + tokens.length === seq.promptIds.length;
      batch.push({ seq, last, piece: { slot: seq.slot!, tokens, start: seq.cached, candidates: last ? candidatesNeeded(seq) : 0 } });
      budget -= tokens.length;
    }
    const candidates = await this.model.prefillBatch(batch.map((b) => b.piece));
    batch.forEach(({ seq, piece, last }, i) => {
      seq.cached += piece.tokens.length;
      this.#promptTokensComputed += piece.tokens.length;
      if (last) {
        this.#prefilling.splice(this.#prefilling.indexOf(seq), 1);
        this.#active.push(seq);
        this.#accept(seq, candidates[i]!);
      }
    });
  }

  /**
   * Move queued requests into free KV slots, highest priority first. Each takes the free slot whose
   * cached tokens share the longest prefix with its prompt and starts its prefill after that prefix
   * when it is at least prefixCacheMin tokens long (a slot in use is never a candidate).
   */
  #admit(): void {
    while (this.#queue.length > 0 && this.#freeSlots.length > 0) {
      const seq = this.#queue.shift()!;
      if (seq.signal?.aborted || seq.finish) this.#end(seq, 'cancelled');
      else {
        const { slot, reuse } = this.#pickSlot(seq.promptIds);
        this.#freeSlots.splice(this.#freeSlots.indexOf(slot), 1);
        this.#slotTokens[slot] = [];
        seq.slot = slot;
        seq.cached = reuse;
        seq.reusedPrompt = reuse;
        this.#promptTokensReused += reuse;
        this.#prefilling.push(seq);
      }
    }
  }

  /**
   * The free slot for a prompt and the prompt tokens it can reuse: the longest common prefix with a
   * slot's cached tokens, capped at the prompt's length - 1 (the last prompt token is always
   * prefilled: its logits give the first token), if at least prefixCacheMin; ties and no match go
   * to the least recently released slot, cold ones first.
   */
  #pickSlot(prompt: number[]): { slot: number; reuse: number } {
    const candidates = this.#freeSlots.map((slot) => {
      let reuse = 0;
      if (this.#prefixCacheMin > 0) {
        const cached = this.#slotTokens[slot];
        const limit = Math.min(cached.length, prompt.length - 1);
        while (reuse < limit && cached[reuse] === prompt[reuse]) reuse++;
        if (reuse < this.#prefixCacheMin) reuse = 0;
      }
      return { slot, reuse, released: this.#slotReleased[slot] };
    });
    // Longest reuse, then least recently released (cold = 0), then the lowest slot.
    candidates.sort((a, b) => b.reuse - a.reuse || a.released - b.released || a.slot - b.slot);
    const { slot, reuse } = candidates[0];
    return { slot, reuse };
  }

  /** Free `slot`, remembering the ids of the tokens whose K/V it holds from position 0. */
  #release(slot: number, tokens: number[]): void {
    this.#slotTokens[slot] = tokens;
    this.#slotReleased[slot] = tokens.length > 0 ? ++this.#releases : 0;
    this.#freeSlots.push(slot);
  }

  /** The ids whose K/V a sequence wrote into its slot: its first `cached` tokens (prompt, then fed). */
  #writtenTokens(seq: Sequence): number[] {
    const tokens = seq.promptIds.slice(0, Math.min(seq.cached, seq.promptIds.length)).concat(seq.fed);
    // cached counts exactly the positions written; anything else is a bookkeeping bug: go cold.
    return tokens.length === seq.cached ? tokens : [];
  }

  /** Drop finished, cancelled and aborted sequences, freeing their slots. */
  #retire(): void {
    for (const list of [this.#prefilling, this.#active]) {
      for (let i = list.length - 1; i >= 0; i--) {
        const seq = list[i];
        if (seq.signal?.aborted) seq.finish ??= 'cancelled';
        if (seq.finish) {
          list.splice(i, 1);
          this.#release(seq.slot!, this.#writtenTokens(seq));
          this.#end(seq, seq.finish);
        }
      }
    }
  }

  #end(seq: Sequence, reason: FinishReason): void {
    seq.finish ??= reason;
    seq.channel.close();
  }

  /** Sample the next token of `seq`, emit it, and decide whether the sequence ends. */
  #accept(seq: Sequence, candidates: RowCandidates): void {
    if (seq.finish) return;
    const topN = seq.request.logprobs ?? 0;
    const sampled = seq.sampler.sample(candidates, seq.history, topN);
    seq.firstTokenAt ??= performance.now();
    if (this.model.config.eosTokenIds.includes(sampled.tokenId)) {
      this.#flushHeld(seq);
      seq.finish = 'stop';
      return;
    }
    seq.history.add(sampled.tokenId);
    seq.pending = sampled.tokenId;
    seq.held += seq.stream.push(sampled.tokenId);
    const index = seq.completion++;
    const atLimit = seq.completion >= seq.maxTokens;
    if (atLimit) seq.held += seq.stream.flush();
    // Stop strings: cut the text at the first one and end; otherwise release all text that cannot
    // be the beginning of a stop string.
    const stops = seq.request.stop ?? [];
    let text: string;
    const hit = stops.map((s) => seq.held.indexOf(s)).filter((i) => i >= 0);
    if (hit.length > 0) {
      text = seq.held.slice(0, Math.min(...hit));
      seq.held = '';
      seq.finish = 'stop';
    } else {
      const keep = atLimit ? 0 : heldBackLength(seq.held, stops);
      text = seq.held.slice(0, seq.held.length - keep);
      seq.held = seq.held.slice(seq.held.length - keep);
      if (atLimit) seq.finish = 'length';
    }
    seq.channel.push({
      index,
      tokenId: sampled.tokenId,
      text,
      logprob: sampled.logprob,
      topLogprobs: sampled.top.map((t) => ({ tokenId: t.tokenId, text: this.tokenizer.decode([t.tokenId], false), logprob: t.logprob })),
    });
  }

  /** At EOS: text still held back (a partial stop-string match) is released as a text-only piece. */
  #flushHeld(seq: Sequence): void {
    seq.held += seq.stream.flush();
    if (seq.held.length > 0 && seq.completion > 0) {
      seq.channel.push({ index: seq.completion, tokenId: TEXT_ONLY, text: seq.held, logprob: 0, topLogprobs: [] });
    }
    seq.held = '';
  }

  /**
   * Treat every free slot as empty: for callers that wrote the KV cache through `model` directly
   * (benchmarks), after which what the slots remember no longer matches what they hold.
   */
  forgetCachedPrefixes(): void {
    for (const slot of this.#freeSlots) {
      this.#slotTokens[slot] = [];
      this.#slotReleased[slot] = 0;
    }
  }

  /** Logits at the last position (or every position) of `tokens`, for comparisons with other runtimes. */
  async logits(tokens: number[], all = false): Promise<Float32Array[]> {
    if (this.#loop) throw new OverloadedError('logits needs an idle engine');
    const slot = this.#pickSlot(tokens).slot;
    // The slot's cache is overwritten from position 0: cold until the prefill has written it.
    this.#slotTokens[slot] = [];
    this.#slotReleased[slot] = 0;
    const { logits } = await this.model.prefill(slot, tokens, 0, { allLogits: true });
    this.#slotTokens[slot] = tokens.slice();
    this.#slotReleased[slot] = ++this.#releases;
    return all ? logits! : [logits![logits!.length - 1]];
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

/**
 * How many candidates a sequence's sampler needs each step: greedy without penalties needs the
 * best token (and the logprob alternatives); anything that reshapes the distribution needs all.
 */
function candidatesNeeded(seq: Sequence): number {
  const { temperature, topK, repetitionPenalty } = seq.sampler.params;
  const alternatives = seq.request.logprobs ?? 0;
  if (temperature === 0 && repetitionPenalty === 1) return Math.max(1, alternatives);
  if (topK > 0 && repetitionPenalty === 1) return Math.min(CANDIDATES, Math.max(topK, alternatives));
  return CANDIDATES;
}

/** How many characters at the end of `text` could begin one of the stop strings. */
function heldBackLength(text: string, stops: string[]): number {
  let keep = 0;
  for (const stop of stops) {
    for (let n = Math.min(stop.length - 1, text.length); n > keep; n--) {
      if (text.endsWith(stop.slice(0, n))) {
        keep = n;
        break;
      }
    }
  }
  return keep;
}

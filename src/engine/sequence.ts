// One generation as the scheduler carries it: the request, its sampler and output stream, and the
// turning of sampled tokens into emitted pieces (end-of-sequence, max_tokens, stop strings held back
// until they can no longer match).
import type { RowCandidates } from '../../models/transformer.ts';
import type { KvSequence } from './kv-cache.ts';
import { CANDIDATES, type Sampler } from './sampler.ts';
import type { TextTokenizer, TokenStream } from './tokenizer.ts';
import type { FinishReason, GenerateRequest, GeneratedToken } from './types.ts';

/** tokenId of a text-only piece: text held back for a stop string, released when EOS ends the output. */
export const TEXT_ONLY = -1;

/** One queued or running generation. */
export interface Sequence {
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
  /** Its slot and blocks, from admission to the end (the written positions are kv.written). */
  kv?: KvSequence;
  /** Prompt tokens whose K/V were already cached at admission (not prefilled again). */
  reusedPrompt: number;
  /** Sampled, emitted, not yet fed back through the model. */
  pending?: number;
  firstTokenAt?: number;
  finish?: FinishReason;
  channel: Channel<GeneratedToken>;
  signal?: AbortSignal;
}

/** A single-consumer async queue: the scheduler pushes, the request's generator pulls. */
export class Channel<T> {
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

/**
 * Take the next token of `seq` (the GPU's pick in decode steps, else sampled here), emit it, and
 * decide whether the sequence ends.
 */
export function acceptToken(seq: Sequence, candidates: RowCandidates, tokenizer: TextTokenizer, eosTokenIds: readonly number[]): void {
  if (seq.finish) return;
  const topN = seq.request.logprobs ?? 0;
  const sampled = candidates.picked !== undefined ? seq.sampler.take(candidates, candidates.picked, topN) : seq.sampler.sample(candidates, seq.history, topN);
  seq.firstTokenAt ??= performance.now();
  if (eosTokenIds.includes(sampled.tokenId)) {
    flushHeld(seq);
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
    topLogprobs: sampled.top.map((t) => ({ tokenId: t.tokenId, text: tokenizer.decode([t.tokenId], false), logprob: t.logprob })),
  });
}

/** At EOS: text still held back (a partial stop-string match) is released as a text-only piece. */
function flushHeld(seq: Sequence): void {
  seq.held += seq.stream.flush();
  if (seq.held.length > 0 && seq.completion > 0) {
    seq.channel.push({ index: seq.completion, tokenId: TEXT_ONLY, text: seq.held, logprob: 0, topLogprobs: [] });
  }
  seq.held = '';
}

/**
 * How many candidates a sequence's sampler needs each step: greedy without penalties needs the
 * best token (and the logprob alternatives); anything that reshapes the distribution needs all.
 */
export function candidatesNeeded(seq: Sequence): number {
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

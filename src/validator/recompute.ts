// Teacher-forced recomputation: the validator runs each miner's prompt + completion through its own
// copy of the model (one prefill over the whole sequence, the completion's tokens fed as they are)
// and reads, at every completion position, what the reference thought of the miner's token.
//
// Many responses go through one forward pass: each sequence takes a KV slot, and a prefill step
// carries pieces of up to maxPrefillPieces sequences laid end to end (prefillChunk tokens in all);
// a sequence longer than what is left of a step continues in the next one from its own cache. Each
// logits row is reduced at once to the few figures the checks need (logprob and rank of the miner's
// token, the reference's top alternatives, EOS), so no vocabulary-sized row is kept.
import { Engine } from '../engine/engine.ts';
import { OptionError } from '../errors.ts';
import type { Challenge } from './challenges.ts';

/** Alternatives kept per position (SN1 compares the top 10; the protocol sends at most 20). */
export const REFERENCE_TOP = 20;

/** What the reference thinks at one position of a completion. */
export interface ReferenceRow {
  /** The miner's token at this position (undefined at the row after the last token). */
  tokenId?: number;
  /** log p(token) under the reference (temperature 1, no penalties). */
  logprob: number;
  /** Tokens the reference finds strictly more likely than the miner's (0 = its first choice). */
  rank: number;
  /** The reference's most likely tokens, best first. */
  top: Array<{ tokenId: number; logprob: number }>;
  /** log of the probability of ending here (all EOS ids together). */
  eosLogprob: number;
  /** Rank of the most likely EOS id. */
  eosRank: number;
  /**
   * How many tokens the request's own sampler could have picked here, by the reference: its top_k
   * and top_p nucleus at its temperature (1 for greedy; at most MAX_CHOICES).
   */
  choices: number;
}

/** The sampling a request asked for (what bounds the tokens an honest miner may pick). */
export interface SamplingBounds {
  temperature: number;
  topK?: number;
  topP?: number;
}

/** Most sampler choices counted at one position: enough for any top_k a validator sends (SN1 sends 50). */
export const MAX_CHOICES = 100;

export interface ScoringItem {
  prompt: number[];
  completion: number[];
  /** Default greedy. */
  sampling?: SamplingBounds;
}

export interface ScoredItem {
  /** One row per completion token, then (unless truncated) one for the position after the last. */
  rows: ReferenceRow[];
  /** Completion tokens beyond the reference's context were not scored. */
  truncated: number;
}

/** Reduce one logits row (log-sum-exp in float64). */
export function referenceRow(logits: ArrayLike<number>, tokenId: number | undefined, eosIds: readonly number[], topN = REFERENCE_TOP, sampling: SamplingBounds = { temperature: 0 }): ReferenceRow {
  const V = logits.length;
  let max = -Infinity;
  for (let i = 0; i < V; i++) if (logits[i] > max) max = logits[i];
  let sum = 0;
  for (let i = 0; i < V; i++) sum += Math.exp(logits[i] - max);
  const lse = max + Math.log(sum);
  const own = tokenId === undefined ? Infinity : logits[tokenId];
  const bestEos = eosIds.reduce((m, id) => Math.max(m, id < V ? logits[id] : -Infinity), -Infinity);
  let rank = 0;
  let eosRank = 0;
  // The top N by a small insertion list: N is tiny against V.
  // Enough of the best for the alternatives and for the sampler's set (one pass, no sort of V).
  const keep = Math.min(V, Math.max(topN, MAX_CHOICES));
  const top: Array<{ tokenId: number; logit: number }> = [];
  for (let i = 0; i < V; i++) {
    const l = logits[i];
    if (l > own) rank++;
    if (l > bestEos) eosRank++;
    if (top.length < keep || l > top[top.length - 1].logit) {
      let j = top.length;
      while (j > 0 && top[j - 1].logit < l) j--;
      top.splice(j, 0, { tokenId: i, logit: l });
      if (top.length > keep) top.pop();
    }
  }
  const choices = samplerChoices(logits, sampling, top.map((t) => t.tokenId));
  let eosSum = 0;
  for (const id of eosIds) if (id < V) eosSum += Math.exp(logits[id] - lse);
  return {
    ...(tokenId !== undefined ? { tokenId } : {}),
    logprob: tokenId === undefined ? 0 : own - lse,
    rank: tokenId === undefined ? 0 : rank,
    top: top.slice(0, topN).map((t) => ({ tokenId: t.tokenId, logprob: t.logit - lse })),
    eosLogprob: Math.log(eosSum),
    eosRank,
    choices,
  };
}

/**
 * The size of the set a sampler with `sampling` draws from over this row: the top_k most likely
 * (0 = no limit), then the smallest prefix whose probability at the temperature reaches top_p;
 * 1 for greedy, at most MAX_CHOICES.
 */
export function samplerChoices(logits: ArrayLike<number>, sampling: SamplingBounds, best?: number[]): number {
  const { temperature, topK = 0, topP = 1 } = sampling;
  if (temperature === 0) return 1;
  const V = logits.length;
  const limit = Math.min(V, MAX_CHOICES, topK > 0 ? topK : MAX_CHOICES);
  if (topP >= 1) return limit;
  // `best`: token ids by descending logit, at least `limit` of them (else they are sorted here).
  const order = best && best.length >= limit ? best.slice(0, limit) : Array.from({ length: V }, (_, i) => i).sort((a, b) => logits[b] - logits[a]).slice(0, limit);
  const max = logits[order[0]];
  let sum = 0;
  for (let i = 0; i < V; i++) sum += Math.exp((logits[i] - max) / temperature);
  let mass = 0;
  for (let n = 0; n < order.length; n++) {
    mass += Math.exp((logits[order[n]] - max) / temperature) / sum;
    if (mass >= topP) return n + 1;
  }
  return limit;
}

export interface ReferenceOptions {
  /** HF folder, .gguf file, or the embedded model's name. */
  model?: string;
  adapter?: string;
  /** Tokens per scored sequence (prompt + completion). Default 512 (the KV cache is slots x this). */
  capacity?: number;
  /** Rows per forward pass. Default 256. */
  prefillChunk?: number;
  /** Sequences per forward pass (KV slots). Default 8. */
  slots?: number;
  /** The engine's matvec autotune (EngineOptions.autotune); false: the static defaults. */
  autotune?: boolean;
  /** Use this engine (tests share one); it must be idle, and its cached prefixes are forgotten. */
  engine?: Engine;
}

/** The validator's own copy of the model, used only to recompute. */
export class ReferenceModel {
  readonly engine: Engine;
  readonly #owned: boolean;
  /** Rows computed and sequences scored since load (for throughput figures). */
  rowsComputed = 0;

  private constructor(engine: Engine, owned: boolean) {
    this.engine = engine;
    this.#owned = owned;
  }

  static async load(options: ReferenceOptions = {}): Promise<ReferenceModel> {
    if (options.engine) return new ReferenceModel(options.engine, false);
    const engine = await Engine.load({
      model: options.model,
      adapter: options.adapter,
      slots: options.slots ?? 8,
      // Challenges are a short prompt and at most 80 tokens; a longer answer is judged on what fits.
      capacity: options.capacity ?? 512,
      prefillChunk: options.prefillChunk ?? 256,
      prefixCacheMin: 0,
      // The reference judges the miners' numbers: its KV cache stays f32 (8 x 512 tokens is small).
      kvDtype: 'f32',
      autotune: options.autotune,
    });
    return new ReferenceModel(engine, true);
  }

  get id(): string {
    return this.engine.model.id;
  }

  get weightsDigest(): string {
    return this.engine.model.weightsDigest;
  }

  /** The prompt token ids an honest miner with this model's tokenizer and chat template would run. */
  promptIds(challenge: Challenge): number[] {
    return this.engine.encodePrompt({ prompt: challenge.prompt, messages: challenge.messages, maxTokens: challenge.maxTokens });
  }

  /** The text of `ids` as this tokenizer decodes it (special tokens skipped, as a miner streams it). */
  decode(ids: number[]): string {
    return this.engine.tokenizer.decode(ids, true);
  }

  get eosIds(): readonly number[] {
    return this.engine.model.config.eosTokenIds;
  }

  get vocabSize(): number {
    return this.engine.model.config.vocabSize;
  }

  /** Recompute every item, teacher-forced, many per forward pass. */
  async score(items: ScoringItem[]): Promise<ScoredItem[]> {
    const model = this.engine.model;
    const { slots, capacity, prefillChunk } = model.options;
    const V = model.config.vocabSize;
    for (const [i, item] of items.entries()) {
      if (item.prompt.length === 0) throw new OptionError(`item ${i} has an empty prompt`);
      if (item.prompt.length >= capacity) throw new OptionError(`item ${i}: a prompt of ${item.prompt.length} tokens does not fit the reference's context of ${capacity}`);
      const bad = item.completion.find((t) => !Number.isSafeInteger(t) || t < 0 || t >= V);
      if (bad !== undefined) throw new OptionError(`item ${i}: token id ${bad} is outside the vocabulary (0..${V - 1})`);
    }
    // The KV slots are written directly: each gets its own blocks, and the engine's prefix cache goes.
    const usableSlots = this.engine.forgetCachedPrefixes();
    const results: ScoredItem[] = items.map((item) => {
      const fits = Math.min(item.completion.length, capacity - item.prompt.length);
      return { rows: [], truncated: item.completion.length - fits };
    });
    const sequences = items.map((item, i) => item.prompt.concat(item.completion.slice(0, item.completion.length - results[i].truncated)));
    const queue = items.map((_, i) => i);
    const freeSlots = Array.from({ length: Math.min(slots, usableSlots) }, (_, s) => s);
    const active: Array<{ item: number; slot: number; fed: number }> = [];
    const maxPieces = model.maxPrefillPieces;
    while (queue.length > 0 || active.length > 0) {
      while (queue.length > 0 && freeSlots.length > 0 && active.length < maxPieces) active.push({ item: queue.shift()!, slot: freeSlots.shift()!, fed: 0 });
      let budget = prefillChunk;
      const step: Array<{ entry: (typeof active)[number]; start: number; tokens: number[] }> = [];
      for (const entry of active) {
        if (budget === 0) break;
        const tokens = sequences[entry.item].slice(entry.fed, entry.fed + budget);
        step.push({ entry, start: entry.fed, tokens });
        budget -= tokens.length;
      }
      const logits = await model.prefillBatchLogits(step.map((s) => ({ slot: s.entry.slot, tokens: s.tokens, start: s.start })));
      this.rowsComputed += step.reduce((n, s) => n + s.tokens.length, 0);
      step.forEach((s, k) => {
        const seq = sequences[s.entry.item];
        const promptLength = items[s.entry.item].prompt.length;
        logits[k].forEach((row, j) => {
          const position = s.start + j;
          // Row at `position` predicts the token at position + 1; the completion starts at promptLength.
          if (position < promptLength - 1) return;
          const next = position + 1 < seq.length ? seq[position + 1] : undefined;
          const truncatedHere = next === undefined && results[s.entry.item].truncated > 0;
          if (!truncatedHere) results[s.entry.item].rows.push(referenceRow(row, next, this.eosIds, REFERENCE_TOP, items[s.entry.item].sampling));
        });
        s.entry.fed += s.tokens.length;
      });
      for (let i = active.length - 1; i >= 0; i--) {
        if (active[i].fed === sequences[active[i].item].length) {
          freeSlots.push(active[i].slot);
          active.splice(i, 1);
        }
      }
    }
    return results;
  }

  async close(): Promise<void> {
    if (this.#owned) await this.engine.close();
  }
}

// Token sampling over a small candidate set the GPU has already chosen: on the CPU for a
// sequence's first token, by the GPU itself (PickToken, the same rules in f32, with the uniform
// draws this sampler makes: nextGpuPick) in decode steps.
//
// The GPU returns, per sequence, the K highest logits (K = CANDIDATES, ids sorted by logit) and the
// log-sum-exp of the whole row, so the CPU never reads a whole vocabulary row per token. Sampling
// then happens among those candidates: with CANDIDATES = 64 the probability mass left out is
// negligible for real models, and `top_k` above 64 acts as 64 (README, "Sampling").
//
// Logprobs reported to validators are the model's own distribution (log-softmax of the raw logits,
// temperature 1, no penalties): that is what validators recompute and compare against.
import { xoroshiro128plus, type RandomGenerator } from 'pure-rand';
import { OptionError } from '../errors.ts';
import type { RowSampling } from '../../kernels/sample.ts';

/** How many candidates the GPU hands to the sampler per sequence and step (top-k's maximum). */
export const CANDIDATES = 64;

export interface SamplingParams {
  /** 0 means greedy (argmax). Default 1. */
  temperature?: number;
  /** Keep the k most likely candidates (0 = off). */
  topK?: number;
  /** Nucleus: keep the smallest prefix whose probability reaches p (1 = off). */
  topP?: number;
  /** Keep candidates with probability >= minP * p(best) (0 = off). */
  minP?: number;
  /** HF-style: logit / p when positive, logit * p when negative, for tokens already seen (1 = off). */
  repetitionPenalty?: number;
  /** Seed for the sampler's generator; the same seed on the same adapter reproduces the output. */
  seed?: number;
}

export interface Candidates {
  /** Token ids, highest logit first. */
  ids: ArrayLike<number>;
  /** Raw logits, in the same order. */
  logits: ArrayLike<number>;
  /** log(sum(exp(logits))) over the whole vocabulary row. */
  logSumExp: number;
}

export interface SampledToken {
  tokenId: number;
  /** Model log-probability of the chosen token. */
  logprob: number;
  /** The most likely alternatives by the model's own distribution, best first. */
  top: Array<{ tokenId: number; logprob: number }>;
}

function checkRange(name: string, value: number, min: number, max: number): void {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < min || value > max) {
    throw new OptionError(`${name} must be a number in [${min}, ${max}] (got ${value})`);
  }
}

/** Validate sampling parameters (a plain function, so requests can be checked before any GPU work). */
export function validateSamplingParams(params: SamplingParams): Required<SamplingParams> {
  const p = {
    temperature: params.temperature ?? 1,
    topK: params.topK ?? 0,
    topP: params.topP ?? 1,
    minP: params.minP ?? 0,
    repetitionPenalty: params.repetitionPenalty ?? 1,
    seed: params.seed ?? Math.floor(Math.random() * 2 ** 31),
  };
  checkRange('temperature', p.temperature, 0, 100);
  checkRange('top_k', p.topK, 0, 1 << 30);
  if (!Number.isInteger(p.topK)) throw new OptionError(`top_k must be an integer (got ${p.topK})`);
  checkRange('top_p', p.topP, 0, 1);
  checkRange('min_p', p.minP, 0, 1);
  checkRange('repetition_penalty', p.repetitionPenalty, 0.01, 100);
  if (!Number.isSafeInteger(p.seed)) throw new OptionError(`seed must be an integer (got ${p.seed})`);
  return p;
}

export class Sampler {
  readonly params: Required<SamplingParams>;
  #rng: RandomGenerator;

  constructor(params: SamplingParams = {}) {
    this.params = validateSamplingParams(params);
    // xoroshiro128+ seeded from a 32-bit value: the seed's low 32 bits and a fixed high word.
    this.#rng = xoroshiro128plus(this.params.seed | 0);
  }

  /** A uniform number in [0, 1) with 32 bits of randomness. */
  #uniform(): number {
    return (this.#rng.unsafeNext() >>> 0) / 2 ** 32;
  }

  /**
   * Choose the next token from the candidates. `history` holds the ids seen so far (prompt and
   * output) for the repetition penalty; `topLogprobs` is how many alternatives to report.
   */
  sample(candidates: Candidates, history: ReadonlySet<number>, topLogprobs = 0): SampledToken {
    if (candidates.ids.length === 0) throw new OptionError('sampler got no candidates');
    const { order, scores } = penalizedOrder(candidates, history, this.params.repetitionPenalty);
    const chosen = order[this.params.temperature > 0 ? pickSorted(scores, this.params, this.#uniform()) : 0];
    return this.take(candidates, chosen, topLogprobs);
  }

  /**
   * The parameters for the GPU to pick this sampler's next token (PickToken), with the draw sample()
   * would make for it: the generator moves on exactly as if the CPU had sampled.
   */
  nextGpuPick(): RowSampling {
    const { temperature, topK, topP, minP, repetitionPenalty } = this.params;
    return { temperature, topK, topP, minP, repetitionPenalty, uniform: temperature > 0 ? this.#uniform() : 0 };
  }

  /** The sampled token for candidate `index` (chosen here or on the GPU), with its logprob and the top alternatives. */
  take(candidates: Candidates, index: number, topLogprobs = 0): SampledToken {
    const { ids, logits, logSumExp } = candidates;
    const top: SampledToken['top'] = [];
    for (let i = 0; i < Math.min(topLogprobs, ids.length); i++) top.push({ tokenId: ids[i], logprob: logits[i] - logSumExp });
    return { tokenId: ids[index], logprob: logits[index] - logSumExp, top };
  }
}

/**
 * The candidates' scores after the repetition penalty (logit / p when positive, logit * p when not,
 * for ids in `history`), best first, equal scores lower id first: `order` holds the candidates'
 * indices in that order and `scores` their scores.
 */
export function penalizedOrder(candidates: Pick<Candidates, 'ids' | 'logits'>, history: ReadonlySet<number>, penalty: number): { order: number[]; scores: number[] } {
  const { ids, logits } = candidates;
  const all = Array.from(logits, (logit, i) => (penalty === 1 || !history.has(ids[i]) ? logit : logit > 0 ? logit / penalty : logit * penalty));
  const order = Array.from({ length: ids.length }, (_, i) => i).sort((a, b) => all[b] - all[a] || ids[a] - ids[b]);
  return { order, scores: order.map((i) => all[i]) };
}

/**
 * The sampler's pick among scores sorted best first, at temperature > 0: weights
 * exp((score - best) / T) over the first topK, then min_p, then the top_p nucleus, and `uniform`
 * (in [0, 1)) walks their cumulative sum. Returns the index into `sorted`. The GPU's PickToken
 * (shaders/sample_pick.wgsl) does the same in f32.
 */
export function pickSorted(sorted: ArrayLike<number>, params: Pick<RowSampling, 'temperature' | 'topK' | 'topP' | 'minP'>, uniform: number): number {
  const { temperature, topK, topP, minP } = params;
  const n = topK > 0 ? Math.min(topK, sorted.length) : sorted.length;
  let weights = Array.from({ length: n }, (_, j) => Math.exp((sorted[j] - sorted[0]) / temperature));
  let total = weights.reduce((a, b) => a + b, 0);
  if (minP > 0) {
    // The weights fall along the list, so the kept ones are a prefix.
    const kept = weights.findIndex((w) => w / total < minP * (weights[0] / total));
    if (kept >= 0) weights = weights.slice(0, kept);
    total = weights.reduce((a, b) => a + b, 0);
  }
  if (topP < 1) {
    let cumulative = 0;
    let cut = weights.length;
    for (let j = 0; j < weights.length; j++) {
      cumulative += weights[j] / total;
      if (cumulative >= topP) {
        cut = j + 1;
        break;
      }
    }
    weights = weights.slice(0, cut);
    total = weights.reduce((a, b) => a + b, 0);
  }
  let r = uniform * total;
  for (let j = 0; j < weights.length; j++) {
    r -= weights[j];
    if (r < 0) return j;
  }
  return weights.length - 1;
}

// Every threshold the validator judges miners by, in one place, each with where it comes from.
// The published figures were read from the subnets' own verifiers (README, "Validating miners"):
//   Targon v4   manifold-inc/targon verifier/verifier.py @ becd458 (vLLM reference)
//   SN19        namoray/vision-workers checking/functions/text.py (vLLM 0.6.3)
//   SN1 Apex    macrocosm-os/prompting exact_match.py (mid-2025)
//   SN4 v5      manifold-inc/targon verifier rescoring
// Ranks are 0-based here: rank 0 is the reference's most likely token, and a token's rank counts the
// tokens the reference finds strictly more likely (a tie goes to the miner). The rank rules count
// past the tokens the request's own sampler could pick (its top_k and top_p at its temperature, by
// the reference): for greedy requests that is the plain rank; for sampled ones a token inside the
// sampler's set counts as rank 0. The published rules assume a trained model's peaked
// distributions, where the set is a handful of tokens; on a flat one (a random model) the plain
// rank of an honestly sampled token can be 40.
//
// These thresholds assume the miner and the validator run the same checkpoint and tokenizer. An
// honest miner on another adapter or a quantised copy of the checkpoint moves logprobs by far less
// than the probability-distance band and never by tens of ranks; the greedy margin absorbs near-ties
// that such a miner may break the other way.
import { OptionError } from '../errors.ts';

export interface Thresholds {
  /** Targon: any completion token at rank >= this fails the response. */
  rankFail: number;
  /** Targon: this many tokens or more at rank >= rankManyAt fail it. */
  rankManyAt: number;
  rankManyCount: number;
  /** SN19: more than rankSomeCount tokens at rank >= rankSomeAt fail it. */
  rankSomeAt: number;
  rankSomeCount: number;
  /** SN19: mean |exp(lp_miner) - exp(lp_ref)| at or below this scores 1 ... */
  probDistanceFull: number;
  /** ... falling linearly to probDistanceHalfScore at this distance, and 0 (a failure) above it. */
  probDistanceZero: number;
  probDistanceHalfScore: number;
  /** SN1: the mean share of the miner's top-k alternatives found in the reference's top k. */
  topkOverlapMin: number;
  /** SN1: a miner that stops (EOS) must have the reference's EOS within its top this-many (or the sampler's set). */
  eosStopRank: number;
  /** SN19: running past a position where p(EOS) / p(token) exceeds this fails. */
  eosPastRatio: number;
  /**
   * Greedy requests (temperature 0): each token must be the reference's most likely one, or within
   * this many nats of it (near-ties a quantised honest miner may break the other way). Ours.
   */
  greedyMarginNats: number;
  /** SN4 v5: usage.prompt_tokens more than this factor off the validator's own count fails. */
  usageFactor: number;
  /** Targon: a completion of more than this many tokens ... */
  streamMinTokens: number;
  /** ... whose first streamFirstShare of tokens arrived after streamLateShare of the total time was not streamed. */
  streamFirstShare: number;
  streamLateShare: number;
  /** SN1: any gap between frames of at least this many ms costs speed: max(gapFloor, 1 - 5 std(gaps in s)). */
  gapMs: number;
  gapFloor: number;
  /** Time to first token above this (Targon's whole-response budget is 12 s) scores speed slowFactor. */
  maxTtftMs: number;
  /** Decode speed below this (tokens/s; 0 = not judged) scores speed slowFactor. */
  minTokensPerS: number;
  /** SN1's floor for a slow but honest response's speed factor. */
  slowFactor: number;
}

export const DEFAULT_THRESHOLDS: Readonly<Thresholds> = Object.freeze({
  rankFail: 75,
  rankManyAt: 25,
  rankManyCount: 5,
  rankSomeAt: 10,
  rankSomeCount: 3,
  probDistanceFull: 0.125,
  probDistanceZero: 0.25,
  probDistanceHalfScore: 0.5,
  topkOverlapMin: 0.9,
  eosStopRank: 10,
  eosPastRatio: 100,
  greedyMarginNats: 0.5,
  usageFactor: 2,
  streamMinTokens: 60,
  streamFirstShare: 0.05,
  streamLateShare: 0.85,
  gapMs: 1000,
  gapFloor: 0.3,
  maxTtftMs: 12_000,
  minTokensPerS: 0,
  slowFactor: 0.3,
});

/** The defaults with `overrides` applied, each checked to be a finite number >= 0. */
export function resolveThresholds(overrides: Partial<Thresholds> = {}): Thresholds {
  const t = { ...DEFAULT_THRESHOLDS };
  for (const [key, value] of Object.entries(overrides) as [keyof Thresholds, number | undefined][]) {
    if (value === undefined) continue;
    if (!(key in DEFAULT_THRESHOLDS)) throw new OptionError(`unknown threshold '${key}'`);
    if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) throw new OptionError(`threshold ${key} must be a finite number >= 0 (got ${value})`);
    t[key] = value;
  }
  return t;
}

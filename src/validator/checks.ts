// The checks one response is judged by, as pure functions of the response (read back from its
// signed frames), the reference's recomputation of it, and the thresholds (thresholds.ts, which
// also names where each rule comes from). Each check says pass (true), fail (false) or not
// applicable (null), with the figures it judged by.
//
// quality: 0 when any of the integrity or recomputation checks fails, else SN19's probability
//   distance score (1 up to a mean distance of 0.125, linear to 0.5 at 0.25).
// speed:   0 when the answer never came or was not streamed, else SN1's gap factor times slowFactor
//   for each of time-to-first-token and tokens/s that misses its limit.
import type { Challenge } from './challenges.ts';
import type { ReferenceRow, ScoredItem } from './recompute.ts';
import type { Thresholds } from './thresholds.ts';
import type { MinerResponse } from './transcript.ts';

export const QUALITY_CHECKS = ['signature', 'answered', 'max_tokens', 'usage', 'text', 'rank', 'greedy', 'logprob', 'topk', 'eos'] as const;
export const SPEED_CHECKS = ['streamed', 'gaps', 'ttft', 'throughput'] as const;
export type CheckName = (typeof QUALITY_CHECKS)[number] | (typeof SPEED_CHECKS)[number];

export interface CheckResult {
  pass: boolean | null;
  /** Why it failed (or why it does not apply), for humans. */
  detail?: string;
  [figure: string]: unknown;
}

export interface ResponseVerdict {
  challenge: string;
  quality: number;
  speed: number;
  score: number;
  checks: Record<CheckName, CheckResult>;
}

/** What the reference computed for a response, with the validator's own prompt token count. */
export interface Recomputed extends ScoredItem {
  promptTokens: number;
  /** The completion's text as the reference tokenizer decodes its ids. */
  text: string;
}

const na = (detail: string): CheckResult => ({ pass: null, detail });
const round = (x: number, digits = 4) => (Number.isFinite(x) ? Math.round(x * 10 ** digits) / 10 ** digits : x);

// ---------------------------------------------------------------------------------------------
// Pure scoring rules (exact figures are unit-tested)

/** SN19's curve: mean probability distance -> score. */
export function probDistanceScore(meanDistance: number, t: Thresholds): number {
  if (!(meanDistance >= 0)) return 0;
  if (meanDistance <= t.probDistanceFull) return 1;
  if (meanDistance > t.probDistanceZero) return 0;
  const span = t.probDistanceZero - t.probDistanceFull;
  return 1 - ((1 - t.probDistanceHalfScore) * (meanDistance - t.probDistanceFull)) / span;
}

/** Targon's and SN19's rank rules over the completion's ranks. */
export function rankCheck(ranks: number[], t: Thresholds): CheckResult {
  if (ranks.length === 0) return na('no completion tokens');
  const maxRank = Math.max(...ranks);
  const many = ranks.filter((r) => r >= t.rankManyAt).length;
  const some = ranks.filter((r) => r >= t.rankSomeAt).length;
  const figures = { maxRank, [`atOrAbove${t.rankManyAt}`]: many, [`atOrAbove${t.rankSomeAt}`]: some, notFirst: ranks.filter((r) => r > 0).length, tokens: ranks.length };
  if (maxRank >= t.rankFail) return { pass: false, detail: `a token at rank ${maxRank} (Targon: any rank >= ${t.rankFail} fails)`, ...figures };
  if (many >= t.rankManyCount) return { pass: false, detail: `${many} tokens at rank >= ${t.rankManyAt} (Targon: ${t.rankManyCount} or more fail)`, ...figures };
  if (some > t.rankSomeCount) return { pass: false, detail: `${some} tokens at rank >= ${t.rankSomeAt} (SN19: more than ${t.rankSomeCount} fail)`, ...figures };
  return { pass: true, ...figures };
}

/** Gaps between consecutive frame arrivals, ms. */
export function frameGaps(arrivalsMs: number[]): number[] {
  const gaps: number[] = [];
  for (let i = 1; i < arrivalsMs.length; i++) gaps.push(arrivalsMs[i] - arrivalsMs[i - 1]);
  return gaps;
}

/** SN1: 1 when no gap reaches gapMs, else max(gapFloor, 1 - 5 std(gaps in seconds)) (population std). */
export function gapFactor(gapsMs: number[], t: Thresholds): number {
  if (gapsMs.length === 0 || Math.max(...gapsMs) < t.gapMs) return 1;
  const s = gapsMs.map((g) => g / 1000);
  const mean = s.reduce((a, b) => a + b, 0) / s.length;
  const std = Math.sqrt(s.reduce((a, b) => a + (b - mean) ** 2, 0) / s.length);
  return Math.max(t.gapFloor, 1 - 5 * std);
}

/**
 * Targon's "not streamed": more than streamMinTokens tokens whose first streamFirstShare arrived
 * after streamLateShare of the time from the request to the end. `tokenArrivalsMs[i]` is when
 * token i arrived.
 */
export function streamedCheck(tokenArrivalsMs: number[], endMs: number, t: Thresholds): CheckResult {
  const n = tokenArrivalsMs.length;
  if (n <= t.streamMinTokens) return { pass: null, detail: `${n} tokens: the rule judges more than ${t.streamMinTokens}`, tokens: n };
  const first = Math.max(1, Math.ceil(n * t.streamFirstShare));
  const at = tokenArrivalsMs[first - 1];
  const share = endMs > 0 ? at / endMs : 1;
  const figures = { tokens: n, firstTokens: first, firstTokensAtMs: round(at, 1), endMs: round(endMs, 1), share: round(share) };
  if (share > t.streamLateShare) {
    return { pass: false, detail: `the first ${first} of ${n} tokens arrived at ${Math.round(share * 100)} % of the time (Targon: after ${t.streamLateShare * 100} % is not streamed)`, ...figures };
  }
  return { pass: true, ...figures };
}

/** Mean |exp(a) - exp(b)| over pairs. */
export function meanProbDistance(miner: number[], reference: number[]): number {
  if (miner.length === 0) return 0;
  let sum = 0;
  for (let i = 0; i < miner.length; i++) sum += Math.abs(Math.exp(miner[i]) - Math.exp(reference[i]));
  return sum / miner.length;
}

// ---------------------------------------------------------------------------------------------
// One response

/**
 * A response that stops (finish_reason "stop") may carry the EOS token itself as its last token:
 * vLLM streams it, with its logprob (its token_ids include it; our miners send no EOS). It is the
 * stop, which the eos check judges at that position, not a completion token: it is taken out before
 * the response is recomputed and judged. Any other response comes back as it is.
 */
export function withoutStopToken(response: MinerResponse, eosIds: readonly number[]): MinerResponse {
  if (response.finishReason !== 'stop') return response;
  let last = response.tokens.length - 1;
  while (last >= 0 && response.tokens[last].tokenId < 0) last--;
  if (last < 0 || !eosIds.includes(response.tokens[last].tokenId)) return response;
  return { ...response, tokens: response.tokens.filter((_, i) => i !== last) };
}

/**
 * Judge a response. `recomputed` is undefined when there was nothing to recompute (no answer, or
 * an answer that failed integrity: no signed claim is worth the GPU).
 */
export function judgeResponse(challenge: Challenge, response: MinerResponse, recomputed: Recomputed | undefined, t: Thresholds): ResponseVerdict {
  const checks = {} as Record<CheckName, CheckResult>;
  const tokens = response.tokens.filter((tok) => tok.tokenId >= 0);
  const answered = response.error === undefined && (response.finishReason === 'stop' || response.finishReason === 'length');

  // An unsigned HTTP stream (a plain OpenAI server) is not a failure: the validator measured it on
  // its own connection, as the subnets this copies always did; the verdict says it was unsigned.
  checks.signature =
    response.integrity.pass === null
      ? na(response.integrity.detail ?? response.error?.message ?? 'nothing was received')
      : response.integrity.pass && response.integrity.unsigned
        ? { pass: null, unsigned: true, detail: 'the stream was not signed: judged on its content, but nothing proves to a third party that the miner sent it' }
        : { pass: response.integrity.pass, framesVerified: response.integrity.framesVerified, ...(response.integrity.detail ? { detail: response.integrity.detail } : {}) };
  checks.answered = answered
    ? { pass: true, finishReason: response.finishReason }
    : { pass: false, detail: response.error ? `${response.error.code}: ${response.error.message}` : `finish_reason ${response.finishReason}`, ...(response.error ? { code: response.error.code } : {}) };
  checks.max_tokens = response.integrity.pass === null && tokens.length === 0
    ? na('no tokens')
    : tokens.length <= challenge.maxTokens
      ? { pass: true, tokens: tokens.length, maxTokens: challenge.maxTokens }
      : { pass: false, detail: `${tokens.length} tokens for max_tokens ${challenge.maxTokens}`, tokens: tokens.length, maxTokens: challenge.maxTokens };

  const usable = response.integrity.pass === true && answered && recomputed !== undefined;
  if (!usable || !recomputed) {
    const why = response.integrity.pass === false ? 'the frames failed verification' : 'no complete answer';
    for (const name of ['usage', 'text', 'rank', 'greedy', 'logprob', 'topk', 'eos'] as const) checks[name] = na(why);
  } else {
    judgeRecomputed(challenge, response, recomputed, t, checks);
  }

  // Speed, from the arrival of the frames (the validator's own clock).
  const arrivals = response.frames.map((f) => f.atMs);
  const tokenArrivals = response.tokens.map((tok) => tok.atMs);
  if (!answered || arrivals.length === 0) {
    for (const name of SPEED_CHECKS) checks[name] = na('no complete answer');
  } else {
    const ttftMs = arrivals[0];
    const decodeMs = arrivals[arrivals.length - 1] - ttftMs;
    const tokensPerS = tokens.length > 1 && decodeMs > 0 ? ((tokens.length - 1) * 1000) / decodeMs : null;
    const gaps = frameGaps(arrivals);
    checks.streamed = streamedCheck(tokenArrivals, response.endMs, t);
    const factor = gapFactor(gaps, t);
    const maxGap = gaps.length ? Math.max(...gaps) : 0;
    checks.gaps = { pass: factor === 1, factor: round(factor), maxGapMs: round(maxGap, 1), frames: arrivals.length, ...(factor < 1 ? { detail: `a gap of ${Math.round(maxGap)} ms between frames (SN1: >= ${t.gapMs} ms costs speed)` } : {}) };
    checks.ttft = ttftMs <= t.maxTtftMs ? { pass: true, ttftMs: round(ttftMs, 1) } : { pass: false, ttftMs: round(ttftMs, 1), detail: `first token after ${Math.round(ttftMs)} ms (limit ${t.maxTtftMs})` };
    checks.throughput =
      tokensPerS === null
        ? { pass: null, detail: 'fewer than two tokens, or all in one frame' }
        : t.minTokensPerS === 0 || tokensPerS >= t.minTokensPerS
          ? { pass: true, tokensPerS: round(tokensPerS, 2) }
          : { pass: false, tokensPerS: round(tokensPerS, 2), detail: `${tokensPerS.toFixed(1)} tokens/s (floor ${t.minTokensPerS})` };
  }

  const failed = (name: CheckName) => checks[name].pass === false;
  let quality = QUALITY_CHECKS.some(failed) || !answered ? 0 : ((checks.logprob.score as number | undefined) ?? 1);
  if (tokens.length === 0 && answered && checks.eos.pass !== true) quality = 0;
  let speed = 0;
  if (answered && !failed('streamed')) {
    speed = (checks.gaps.factor as number | undefined) ?? 1;
    if (failed('ttft')) speed *= t.slowFactor;
    if (failed('throughput')) speed *= t.slowFactor;
  }
  return { challenge: challenge.name, quality, speed, score: quality * speed, checks };
}

function judgeRecomputed(challenge: Challenge, response: MinerResponse, r: Recomputed, t: Thresholds, checks: Record<CheckName, CheckResult>): void {
  const tokens = response.tokens.filter((tok) => tok.tokenId >= 0);
  const scored = tokens.slice(0, tokens.length - r.truncated);
  const rows = r.rows;
  const positions = scored.map((tok, i) => ({ tok, row: rows[i] }));
  const after: ReferenceRow | undefined = rows.length > scored.length ? rows[scored.length] : undefined;

  // usage: SN4 v5 allows a factor of 2 on the prompt count; the completion count is exact (the transcript checked it).
  const claimed = response.usage?.promptTokens ?? 0;
  checks.usage = !response.usage
    ? { pass: false, recount: r.promptTokens, detail: 'no usage was reported (the request asked for it)' }
    : claimed <= r.promptTokens * t.usageFactor && claimed * t.usageFactor >= r.promptTokens
      ? { pass: true, promptTokens: claimed, recount: r.promptTokens }
      : { pass: false, promptTokens: claimed, recount: r.promptTokens, detail: `miner reports ${claimed} prompt tokens; the reference counts ${r.promptTokens} (SN4: more than ${t.usageFactor}x off fails)` };

  // text: the ids must say what the text says (validators that re-tokenize the text rely on it).
  const text = response.tokens.map((tok) => tok.text).join('');
  checks.text = response.tokens.some((tok) => tok.tokenId < 0)
    ? na('text-only pieces (stop strings) are not compared')
    : text === r.text
      ? { pass: true, chars: text.length }
      : { pass: false, detail: `the streamed text differs from the tokens' text at character ${firstDifference(text, r.text)}` };

  // Ranks past the tokens the request's own sampler could pick: a sampled token inside its top_k /
  // top_p set is rank 0, so a flat distribution sampled honestly is not mistaken for another model.
  checks.rank = rankCheck(positions.map((p) => Math.max(0, p.row.rank - (p.row.choices - 1))), t);

  if (challenge.temperature !== 0) checks.greedy = na(`temperature ${challenge.temperature}`);
  else {
    const misses = positions.filter((p) => p.row.top[0].logprob - p.row.logprob > t.greedyMarginNats);
    checks.greedy =
      misses.length === 0
        ? { pass: true, tokens: positions.length }
        : { pass: false, misses: misses.length, tokens: positions.length, firstMiss: misses[0].tok.index, detail: `${misses.length} of ${positions.length} tokens are not the reference's greedy choice (first at index ${misses[0].tok.index}; margin ${t.greedyMarginNats} nats)` };
  }

  const distance = meanProbDistance(positions.map((p) => p.tok.logprob), positions.map((p) => p.row.logprob));
  const score = probDistanceScore(distance, t);
  const invalid = positions.find((p) => !(p.tok.logprob <= 0));
  checks.logprob =
    positions.length === 0
      ? na('no completion tokens')
      : invalid
        ? { pass: false, score: 0, detail: `token ${invalid.tok.index} claims logprob ${invalid.tok.logprob}` }
        : { pass: distance <= t.probDistanceZero, meanDistance: round(distance, 6), score: round(score, 6), ...(distance > t.probDistanceZero ? { detail: `mean |p_miner - p_ref| ${distance.toFixed(3)} (SN19: above ${t.probDistanceZero} scores 0)` } : {}) };

  if (challenge.logprobs === 0) checks.topk = na('no alternatives asked for');
  else if (positions.length === 0) checks.topk = na('no completion tokens');
  else {
    const k = challenge.logprobs;
    let overlap = 0;
    let short = 0;
    for (const { tok, row } of positions) {
      if (tok.top.length < k) short++;
      const ref = new Set(row.top.slice(0, k).map((a) => a.tokenId));
      overlap += tok.top.slice(0, k).filter((a) => ref.has(a.tokenId)).length / k;
    }
    const mean = overlap / positions.length;
    checks.topk =
      mean >= t.topkOverlapMin
        ? { pass: true, overlap: round(mean), k }
        : { pass: false, overlap: round(mean), k, ...(short ? { shortLists: short } : {}), detail: `mean top-${k} overlap ${mean.toFixed(2)} (SN1: below ${t.topkOverlapMin} fails)` };
  }

  // EOS: stopping needs a likely EOS (SN1: in the reference's top 10); running past one fails (SN19: p(EOS)/p(token) > 100).
  const past = positions.find((p) => p.row.eosLogprob - p.row.logprob > Math.log(t.eosPastRatio));
  if (past) {
    checks.eos = { pass: false, detail: `ran past a likely EOS at token ${past.tok.index}: p(EOS)/p(token) = ${Math.exp(past.row.eosLogprob - past.row.logprob).toFixed(0)} (SN19: above ${t.eosPastRatio} fails)` };
  } else if (response.finishReason === 'stop') {
    if (!after) checks.eos = na('the end lies beyond the reference context');
    else if (after.eosRank < Math.max(t.eosStopRank, after.choices)) checks.eos = { pass: true, stopEosRank: after.eosRank, stopEosProb: round(Math.exp(after.eosLogprob), 6) };
    else checks.eos = { pass: false, stopEosRank: after.eosRank, stopEosProb: round(Math.exp(after.eosLogprob), 6), detail: `stopped where EOS is at rank ${after.eosRank}, p ${Math.exp(after.eosLogprob).toExponential(1)} (SN1: must be in the top ${t.eosStopRank}, or among the ${after.choices} tokens the sampler could pick)` };
  } else if (tokens.length < challenge.maxTokens) {
    checks.eos = { pass: false, detail: `finish_reason length after ${tokens.length} tokens, before max_tokens ${challenge.maxTokens}` };
  } else {
    checks.eos = { pass: true };
  }
}

function firstDifference(a: string, b: string): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

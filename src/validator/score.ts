// From response verdicts to a miner's score, and from scores to weights.
//
// A miner's score is the mean over its responses of quality x speed; its quality and speed are the
// means of each. A check passes for a miner when no response failed it (null when it applied to
// none). Weights are the scores normalised to sum to 1: what a validator would set on chain.
import { QUALITY_CHECKS, SPEED_CHECKS, type CheckName, type CheckResult, type ResponseVerdict } from './checks.ts';

export interface MinerCheckSummary {
  pass: boolean | null;
  /** Responses that failed it, of those it applied to. */
  failed: number;
  of: number;
  /** The first failure's detail. */
  detail?: string;
  /** Figures over the responses it applied to (worst or mean, named so). */
  [figure: string]: unknown;
}

export interface MinerScore {
  uid: number;
  hotkey: string;
  score: number;
  quality: number;
  speed: number;
  responses: number;
  checks: Record<CheckName, MinerCheckSummary>;
}

export interface Weight {
  uid: number;
  weight: number;
}

const mean = (xs: number[]) => (xs.length === 0 ? 0 : xs.reduce((a, b) => a + b, 0) / xs.length);
const round6 = (x: number) => Math.round(x * 1e6) / 1e6;

/** The figures worth carrying up from a check's per-response results. */
function figures(name: CheckName, results: CheckResult[]): Record<string, number> {
  const nums = (key: string) => results.map((r) => r[key]).filter((v): v is number => typeof v === 'number');
  const max = (key: string) => (nums(key).length ? Math.max(...nums(key)) : undefined);
  const min = (key: string) => (nums(key).length ? Math.min(...nums(key)) : undefined);
  const avg = (key: string) => (nums(key).length ? round6(mean(nums(key))) : undefined);
  const out: Record<string, number | undefined> = {};
  switch (name) {
    case 'rank': out.maxRank = max('maxRank'); break;
    case 'logprob': out.meanDistance = avg('meanDistance'); out.maxDistance = max('meanDistance'); break;
    case 'topk': out.minOverlap = min('overlap'); break;
    case 'greedy': out.misses = nums('misses').reduce((a, b) => a + b, 0); break;
    case 'streamed': out.maxShare = max('share'); break;
    case 'gaps': out.maxGapMs = max('maxGapMs'); out.minFactor = min('factor'); break;
    case 'ttft': out.maxTtftMs = max('ttftMs'); out.meanTtftMs = avg('ttftMs'); break;
    case 'throughput': out.meanTokensPerS = avg('tokensPerS'); out.minTokensPerS = min('tokensPerS'); break;
    case 'signature': out.framesVerified = nums('framesVerified').reduce((a, b) => a + b, 0); break;
    default: break;
  }
  return Object.fromEntries(Object.entries(out).filter(([, v]) => v !== undefined)) as Record<string, number>;
}

export function scoreMiner(uid: number, hotkey: string, verdicts: ResponseVerdict[]): MinerScore {
  const checks = {} as Record<CheckName, MinerCheckSummary>;
  for (const name of [...QUALITY_CHECKS, ...SPEED_CHECKS]) {
    const results = verdicts.map((v) => v.checks[name]);
    const applied = results.filter((r) => r.pass !== null);
    const failures = applied.filter((r) => r.pass === false);
    checks[name] = {
      pass: applied.length === 0 ? null : failures.length === 0,
      failed: failures.length,
      of: applied.length,
      ...(failures[0]?.detail ? { detail: failures[0].detail } : {}),
      ...figures(name, applied),
    };
    // Unsigned HTTP streams are not judged by the signature check (null), but counted where it is summed up.
    const unsigned = results.filter((r) => r.unsigned === true).length;
    if (unsigned > 0) checks[name].unsigned = unsigned;
  }
  return {
    uid,
    hotkey,
    score: mean(verdicts.map((v) => v.score)),
    quality: mean(verdicts.map((v) => v.quality)),
    speed: mean(verdicts.map((v) => v.speed)),
    responses: verdicts.length,
    checks,
  };
}

/** Scores normalised to sum to 1, by uid; empty when no miner scored anything (nothing to reward). */
export function normaliseWeights(scores: Array<{ uid: number; score: number }>): Weight[] {
  const total = scores.reduce((a, s) => a + Math.max(0, s.score), 0);
  if (!(total > 0)) return [];
  return scores.map((s) => ({ uid: s.uid, weight: Math.max(0, s.score) / total })).sort((a, b) => a.uid - b.uid);
}

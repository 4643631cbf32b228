// The validator's pure parts with exact figures: the scoring rules (SN19's curve, Targon's and
// SN19's rank rules, SN1's gap factor, Targon's streaming rule), the reduction of a logits row, a
// response judged on a clock the test sets, weights, the challenge generator, the metagraph's axon
// entries, and transcripts of really signed frames read back, tampered with and refused.
import { createHash } from 'node:crypto';
import { encode } from '@msgpack/msgpack';
import { beforeAll, describe, expect, it } from 'vitest';
import { encodeBody, encodeFrame, type DoneBody, type ResponseFrame, type TokenBody } from '../src/wire/protocol.ts';
import { signRequest, signResponse, signerFromUri, type Signer } from '../src/wire/signing.ts';
import { makeChallenges, type Challenge } from '../src/validator/challenges.ts';
import { frameGaps, gapFactor, judgeResponse, meanProbDistance, withoutStopToken, probDistanceScore, rankCheck, streamedCheck, type Recomputed } from '../src/validator/checks.ts';
import { referenceRow, samplerChoices, type ReferenceRow } from '../src/validator/recompute.ts';
import { normaliseWeights, scoreMiner } from '../src/validator/score.ts';
import { DEFAULT_THRESHOLDS, resolveThresholds } from '../src/validator/thresholds.ts';
import { TRANSCRIPT_FORMAT, TranscriptError, challengePayload, readTranscript, type MinerResponse, type Transcript } from '../src/validator/transcript.ts';
import { parseValidatorMetagraph } from '../src/validator/validate.ts';

const t = DEFAULT_THRESHOLDS;

describe('scoring rules', () => {
  it("SN19's probability-distance curve", () => {
    expect(probDistanceScore(0, t)).toBe(1);
    expect(probDistanceScore(0.125, t)).toBe(1);
    expect(probDistanceScore(0.1875, t)).toBeCloseTo(0.75, 12);
    expect(probDistanceScore(0.25, t)).toBeCloseTo(0.5, 12);
    expect(probDistanceScore(0.2500001, t)).toBe(0);
    expect(probDistanceScore(Number.NaN, t)).toBe(0);
    expect(meanProbDistance([Math.log(0.5), Math.log(0.9)], [Math.log(0.25), Math.log(0.9)])).toBeCloseTo(0.125, 12);
  });

  it("Targon's and SN19's rank rules", () => {
    expect(rankCheck([0, 0, 74], t)).toMatchObject({ pass: true, maxRank: 74 });
    expect(rankCheck([0, 75], t)).toMatchObject({ pass: false, maxRank: 75 });
    expect(rankCheck([10, 10, 10, 0], t)).toMatchObject({ pass: true, atOrAbove10: 3 });
    expect(rankCheck([10, 10, 10, 10], t)).toMatchObject({ pass: false, atOrAbove10: 4 });
    // Targon's "five at rank >= 25" fires before SN19's, with the SN19 rule relaxed out of the way.
    const loose = resolveThresholds({ rankSomeCount: 100 });
    expect(rankCheck([25, 25, 25, 25, 0], loose).pass).toBe(true);
    expect(rankCheck([25, 25, 25, 25, 30], loose)).toMatchObject({ pass: false, atOrAbove25: 5 });
    expect(rankCheck([], t).pass).toBeNull();
  });

  it("SN1's gap factor", () => {
    expect(frameGaps([0, 100, 300])).toEqual([100, 200]);
    expect(gapFactor([100, 200], t)).toBe(1);
    expect(gapFactor([1000, 1000], t)).toBe(1); // a steady one-second cadence has no spread
    expect(gapFactor([1000, 900, 1100], t)).toBeCloseTo(1 - 5 * Math.sqrt(0.02 / 3), 12);
    expect(gapFactor([1000, 0], t)).toBe(0.3); // 1 - 5 * 0.5, floored
  });

  it("Targon's not-streamed rule", () => {
    const steady = Array.from({ length: 61 }, (_, i) => 100 + 10 * i);
    // The first ceil(61 * 0.05) = 4 tokens arrived at 130 ms of 700.
    expect(streamedCheck(steady, 700, t)).toMatchObject({ pass: true, firstTokens: 4, firstTokensAtMs: 130 });
    const buffered = new Array(61).fill(990);
    expect(streamedCheck(buffered, 1000, t)).toMatchObject({ pass: false, share: 0.99 });
    expect(streamedCheck(new Array(60).fill(990), 1000, t).pass).toBeNull();
  });

  it('reduces a logits row to rank, logprob, top alternatives and EOS', () => {
    const row = referenceRow([1, 3, 2, 3], 2, [0], 3);
    const lse = 3 + Math.log(Math.exp(-2) + 1 + Math.exp(-1) + 1);
    expect(row.rank).toBe(2);
    expect(row.logprob).toBeCloseTo(2 - lse, 12);
    expect(row.top.map((a) => a.tokenId)).toEqual([1, 3, 2]);
    expect(row.eosRank).toBe(3);
    expect(row.eosLogprob).toBeCloseTo(1 - lse, 12);
    // A tie with the best goes to the miner.
    expect(referenceRow([1, 3, 2, 3], 3, [0]).rank).toBe(0);
  });

  it("counts the tokens the request's own sampler could pick", () => {
    const logits = [2, 1, 0, -1];
    expect(samplerChoices(logits, { temperature: 0, topK: 50, topP: 0.95 })).toBe(1);
    expect(samplerChoices(logits, { temperature: 1, topP: 0.5 })).toBe(1); // p = 0.644
    expect(samplerChoices(logits, { temperature: 1, topP: 0.9 })).toBe(3); // 0.644 + 0.237 + 0.087
    expect(samplerChoices(logits, { temperature: 2, topP: 0.9 })).toBe(4); // three reach only 0.898 at T = 2
    expect(samplerChoices(logits, { temperature: 1, topK: 2 })).toBe(2);
    expect(referenceRow(logits, 3, [], 2, { temperature: 1, topP: 0.9 }).choices).toBe(3);
  });

  it('normalises weights to sum to 1 and gives none when nobody scored', () => {
    expect(normaliseWeights([{ uid: 2, score: 3 }, { uid: 1, score: 1 }])).toEqual([{ uid: 1, weight: 0.25 }, { uid: 2, weight: 0.75 }]);
    expect(normaliseWeights([{ uid: 1, score: 0 }])).toEqual([]);
  });

  it('refuses a threshold that is not a finite number >= 0', () => {
    expect(() => resolveThresholds({ gapMs: -1 })).toThrow(/gapMs/);
    expect(() => resolveThresholds({ nope: 1 } as never)).toThrow(/unknown threshold 'nope'/);
  });
});

describe('judging one response (speed on a clock the test sets)', () => {
  const challenge: Challenge = { name: 'c', prompt: 'p', maxTokens: 4, temperature: 0, seed: 1, logprobs: 0 };
  const row = (tokenId: number | undefined, rank: number, logprob: number, eosRank = 50, eosLogprob = -9, choices = 1): ReferenceRow => ({
    ...(tokenId !== undefined ? { tokenId } : {}),
    rank,
    logprob,
    top: [{ tokenId: 7, logprob: -0.1 }],
    eosRank,
    eosLogprob,
    choices,
  });
  const response = (atMs: number[], finishReason: 'stop' | 'length' = 'length', logprob = -0.1): MinerResponse => ({
    integrity: { pass: true, framesVerified: atMs.length + 1 },
    finishReason,
    usage: { promptTokens: 3, completionTokens: atMs.length },
    tokens: atMs.map((at, index) => ({ index, tokenId: 7, text: 'x', logprob, top: [], atMs: at })),
    frames: atMs.map((at) => ({ atMs: at, tokens: 1 })),
    endMs: atMs[atMs.length - 1] + 1,
  });
  const recomputed = (n: number, stop?: { eosRank: number }): Recomputed => ({
    rows: [...Array.from({ length: n }, () => row(7, 0, -0.1)), row(undefined, 0, 0, stop?.eosRank ?? 50, -1)],
    truncated: 0,
    promptTokens: 3,
    text: 'x'.repeat(n),
  });

  it('an honest answer scores 1 x 1', () => {
    const v = judgeResponse(challenge, response([100, 200, 300, 400]), recomputed(4), t);
    expect(v).toMatchObject({ quality: 1, speed: 1, score: 1 });
    expect(v.checks.throughput).toMatchObject({ pass: true, tokensPerS: 10 });
    expect(v.checks.ttft).toMatchObject({ pass: true, ttftMs: 100 });
  });

  it('ranks count past what the sampler could pick: rank 40 of 50 choices is fine when sampled, not when greedy', () => {
    const sampled: Challenge = { ...challenge, temperature: 0.7, topK: 50, topP: 0.95 };
    const rows = (choices: number): Recomputed => ({ ...recomputed(4), rows: [...Array.from({ length: 4 }, () => row(7, 40, -0.1, 50, -9, choices)), row(undefined, 0, 0, 50, -1, choices)] });
    expect(judgeResponse(sampled, response([100, 200, 300, 400]), rows(50), t).checks.rank).toMatchObject({ pass: true, maxRank: 0 });
    expect(judgeResponse(sampled, response([100, 200, 300, 400]), rows(20), t).checks.rank).toMatchObject({ pass: false, maxRank: 21 });
    expect(judgeResponse(challenge, response([100, 200, 300, 400]), rows(1), t).checks.rank).toMatchObject({ pass: false, maxRank: 40 });
  });

  it('a 1.5 s stall costs SN1 speed; a slow first token costs the slow factor', () => {
    // gaps 0.1, 1.5, 0.1 s: std = sqrt(((0.1-17/30)^2 * 2 + (1.5-17/30)^2) / 3)
    const gaps = [0.1, 1.5, 0.1];
    const mean = gaps.reduce((a, b) => a + b) / 3;
    const std = Math.sqrt(gaps.reduce((a, g) => a + (g - mean) ** 2, 0) / 3);
    const stalled = judgeResponse(challenge, response([100, 200, 1700, 1800]), recomputed(4), t);
    expect(stalled.checks.gaps.pass).toBe(false);
    expect(stalled.speed).toBeCloseTo(Math.max(0.3, 1 - 5 * std), 12);
    expect(stalled.quality).toBe(1);
    const late = judgeResponse(challenge, response([13_000, 13_100, 13_200, 13_300]), recomputed(4), t);
    expect(late.checks.ttft.pass).toBe(false);
    expect(late.speed).toBeCloseTo(0.3, 12);
  });

  it('stopping where EOS is unlikely fails eos; where it is likely passes', () => {
    const early = judgeResponse(challenge, response([100, 200], 'stop'), recomputed(2, { eosRank: 12 }), t);
    expect(early.checks.eos.pass).toBe(false);
    expect(early.quality).toBe(0);
    const fair = judgeResponse(challenge, response([100, 200], 'stop'), recomputed(2, { eosRank: 3 }), t);
    expect(fair.checks.eos.pass).toBe(true);
    expect(fair.quality).toBe(1);
  });

  it("a stop that streams the EOS token itself (vLLM's token_ids include it) is judged as the stop", () => {
    const EOS = 2;
    const withEos = response([100, 200, 300], 'stop');
    withEos.tokens[2].tokenId = EOS;
    const trimmed = withoutStopToken(withEos, [EOS]);
    expect(trimmed.tokens.map((tok) => tok.tokenId)).toEqual([7, 7]);
    expect(judgeResponse(challenge, trimmed, recomputed(2, { eosRank: 3 }), t)).toMatchObject({ quality: 1, checks: { eos: { pass: true } } });
    // Not the stop: left as it is.
    expect(withoutStopToken(withEos, [9])).toBe(withEos);
    expect(withoutStopToken({ ...withEos, finishReason: 'length' }, [EOS]).tokens).toHaveLength(3);
  });

  it('made-up logprobs fail the distance rule; more tokens than max_tokens fail max_tokens', () => {
    const madeUp = judgeResponse(challenge, response([100, 200, 300, 400], 'length', Math.log(0.5)), recomputed(4), t);
    // |0.5 - exp(-0.1)| = 0.4048
    expect(madeUp.checks.logprob).toMatchObject({ pass: false, meanDistance: Number((Math.exp(-0.1) - 0.5).toFixed(6)) });
    expect(madeUp.quality).toBe(0);
    const long = judgeResponse(challenge, response([100, 200, 300, 400, 500]), recomputed(5), t);
    expect(long.checks.max_tokens.pass).toBe(false);
    expect(long.quality).toBe(0);
  });

  it('sums verdicts into a miner score', () => {
    const good = judgeResponse(challenge, response([100, 200, 300, 400]), recomputed(4), t);
    const bad = judgeResponse(challenge, response([100, 200], 'stop'), recomputed(2, { eosRank: 12 }), t);
    const s = scoreMiner(3, 'hk', [good, bad]);
    expect(s).toMatchObject({ score: 0.5, quality: 0.5, speed: 1, responses: 2 });
    expect(s.checks.eos).toMatchObject({ pass: false, failed: 1, of: 2 });
  });
});

describe('challenges and the metagraph', () => {
  it('the same seed and round give the same challenges; another round others', () => {
    expect(makeChallenges(5, 0)).toEqual(makeChallenges(5, 0));
    expect(makeChallenges(5, 1)).not.toEqual(makeChallenges(5, 0));
    const round = makeChallenges(9, 0);
    expect(new Set(round.map((c) => c.temperature > 0))).toEqual(new Set([true, false]));
    expect(round.some((c) => c.maxTokens > t.streamMinTokens)).toBe(true);
    expect(round.some((c) => c.messages) && round.some((c) => c.prompt)).toBe(true);
    expect(() => makeChallenges(1.5, 0)).toThrow(/seed/);
  });

  it('reads axon entries and names what is wrong with one', async () => {
    const a = await signerFromUri('//Alice');
    const b = await signerFromUri('//Bob');
    const base = (axon: unknown) => ({ netuid: 1, block: 1, neurons: [{ uid: 0, hotkey: a.address, stake: 1, validator_permit: true }, { uid: 1, hotkey: b.address, stake: 0, validator_permit: false, axon }] });
    expect(parseValidatorMetagraph(base({ ip: '10.0.0.2', port: 8091, protocol: 'ws' }))[1].axon).toEqual({ ip: '10.0.0.2', port: 8091, protocol: 'ws' });
    expect(parseValidatorMetagraph(base(undefined))[1].axon).toBeUndefined();
    expect(() => parseValidatorMetagraph(base({ ip: '10.0.0.2', port: 8091, protocol: 'grpc' }))).toThrow(/neurons\[1\]\.axon\.protocol must be "ws" or "http"/);
    expect(() => parseValidatorMetagraph(base({ ip: '10.0.0.2', port: 70000, protocol: 'ws' }))).toThrow(/neurons\[1\]\.axon\.port/);
  });
});

describe('transcripts of signed frames', () => {
  let validator: Signer;
  let miner: Signer;
  let mallory: Signer;
  const challenge: Challenge = { name: 'r0-c0', prompt: 'Hello', maxTokens: 3, temperature: 0, seed: 1, logprobs: 0 };
  beforeAll(async () => {
    validator = await signerFromUri('//Alice');
    miner = await signerFromUri('//Miner');
    mallory = await signerFromUri('//Mallory');
  });

  /** A transcript as a miner that answers with `tokens` would leave it; `signers[i]` signs frame i. */
  function transcript(tokens: number[], options: { signers?: Signer[]; tamper?: (frames: ResponseFrame[]) => void } = {}): Transcript {
    const request = signRequest(validator, { op: 'generate', payload: challengePayload(challenge), signedFor: miner.address });
    const frames: ResponseFrame[] = [];
    const digest = createHash('sha256');
    tokens.forEach((id, index) => {
      const body: TokenBody = { tokens: [{ index, token_id: id, text: `t${id}`, logprob: -0.5, top_logprobs: [] }] };
      const bytes = encodeBody(body);
      digest.update(bytes);
      frames.push(signResponse(options.signers?.[index] ?? miner, { type: 'token', id: request.id, signedFor: validator.address, body: bytes }));
    });
    const done: DoneBody = { finish_reason: 'length', usage: { prompt_tokens: 2, completion_tokens: tokens.length }, timing: { ttft_ms: 1, total_ms: 3, tokens_per_s: 1 }, transcript_sha256: digest.digest('hex') };
    frames.push(signResponse(miner, { type: 'done', id: request.id, signedFor: validator.address, body: encodeBody(done) }));
    options.tamper?.(frames);
    const b64 = (f: Parameters<typeof encodeFrame>[0]) => Buffer.from(encodeFrame(f)).toString('base64');
    return {
      format: TRANSCRIPT_FORMAT,
      round: 0,
      challenge,
      validator: validator.address,
      miner: { uid: 1, hotkey: miner.address },
      transport: 'ws',
      url: 'ws://127.0.0.1:1',
      request: b64(request),
      frames: frames.map((f, i) => ({ atMs: 10 * (i + 1), bytes: b64(f) })),
    };
  }

  it('reads back tokens, arrival times and usage from verified frames', () => {
    const r = readTranscript(transcript([5, 6, 7]), { verifySignatures: true });
    expect(r.integrity).toEqual({ pass: true, framesVerified: 4 });
    expect(r.tokens.map((x) => [x.tokenId, x.atMs])).toEqual([[5, 10], [6, 20], [7, 30]]);
    expect(r).toMatchObject({ finishReason: 'length', usage: { promptTokens: 2, completionTokens: 3 }, endMs: 40 });
  });

  it('a frame signed by another hotkey fails', () => {
    const r = readTranscript(transcript([5, 6, 7], { signers: [miner, mallory] }), { verifySignatures: true });
    expect(r.integrity.pass).toBe(false);
    expect(r.integrity.detail).toMatch(/frame 1 is signed by .* not the miner/);
  });

  it('a body changed after signing fails its signature; a dropped frame fails the digest', () => {
    const changed = transcript([5, 6, 7], {
      tamper: (frames) => {
        frames[1] = { ...frames[1], body: encode({ tokens: [{ index: 1, token_id: 9, text: 't9', logprob: -0.5, top_logprobs: [] }] }) };
      },
    });
    expect(readTranscript(changed, { verifySignatures: true }).integrity.detail).toMatch(/frame 1 \(token\) has a bad signature/);
    const dropped = transcript([5, 6, 7], { tamper: (frames) => frames.splice(2, 1) });
    expect(readTranscript(dropped, { verifySignatures: false }).integrity.detail).toMatch(/transcript digest mismatch|token index/);
  });

  it('refuses a transcript whose signed request is not its challenge', () => {
    const t = transcript([5]);
    expect(() => readTranscript({ ...t, challenge: { ...challenge, maxTokens: 99 } }, { verifySignatures: true })).toThrow(TranscriptError);
  });
});

// `validate`: a scoring loop over a metagraph's miners, and `verify`: the offline audit of one
// saved exchange.
//
// Each round every miner with an axon gets the same seeded challenges (challenges.ts), all at once,
// over protocol v1 (one connection; every frame verified as it arrives) or the HTTP face (one signed
// request each); every exchange is kept as it crossed the wire (transport.ts, transcript.ts). When every miner has answered, all answers are
// recomputed by the validator's own model together (recompute.ts: many responses per forward
// pass), judged (checks.ts) and summed up per miner (score.ts). Weights come only from pass/fail
// verdicts and the recomputation, never from a relative race between miners, so the same seed, the
// same model and honest miners give the same weights however loaded the machines are.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseMetagraph, readMetagraphJson } from '../wire/metagraph.ts';
import { cryptoReady, type Signer } from '../wire/signing.ts';
import { OptionError } from '../errors.ts';
import { createVerifyPool } from './client.ts';
import { DEFAULT_CHALLENGES_PER_ROUND, makeChallenges, type Challenge } from './challenges.ts';
import { judgeResponse, withoutStopToken, type Recomputed, type ResponseVerdict } from './checks.ts';
import { ReferenceModel } from './recompute.ts';
import { normaliseWeights, scoreMiner, type MinerScore, type Weight } from './score.ts';
import { resolveThresholds, type Thresholds } from './thresholds.ts';
import { parseTranscript, readTranscript, type MinerResponse, type Transcript } from './transcript.ts';
import { openTransport, type MinerEndpoint } from './transport.ts';

export interface ValidatorNeuron {
  uid: number;
  hotkey: string;
  axon?: { ip: string; port: number; protocol: 'ws' | 'http' };
}

/** A metagraph JSON value whose neurons may carry `axon: {ip, port, protocol: "ws" | "http"}`. */
export function parseValidatorMetagraph(value: unknown, source = 'metagraph'): ValidatorNeuron[] {
  parseMetagraph(value, source); // uid, hotkey, stake, permit: checked as the miner checks them
  const neurons = (value as { neurons: Array<Record<string, unknown>> }).neurons;
  return neurons.map((n, i) => {
    const neuron: ValidatorNeuron = { uid: n.uid as number, hotkey: n.hotkey as string };
    if (n.axon === undefined || n.axon === null) return neuron;
    const a = n.axon as Record<string, unknown>;
    const where = `${source}: neurons[${i}].axon`;
    if (typeof a !== 'object' || Array.isArray(a)) throw new OptionError(`${where} must be an object {ip, port, protocol}`);
    if (typeof a.ip !== 'string' || a.ip.length === 0 || a.ip.length > 253 || /[\s/]/.test(a.ip)) throw new OptionError(`${where}.ip must be a host name or address`);
    if (!Number.isSafeInteger(a.port) || (a.port as number) < 1 || (a.port as number) > 65535) throw new OptionError(`${where}.port must be an integer in [1, 65535]`);
    if (a.protocol !== 'ws' && a.protocol !== 'http') throw new OptionError(`${where}.protocol must be "ws" or "http" (got ${JSON.stringify(a.protocol)})`);
    neuron.axon = { ip: a.ip, port: a.port as number, protocol: a.protocol };
    return neuron;
  });
}

export function loadValidatorMetagraph(path: string): ValidatorNeuron[] {
  return parseValidatorMetagraph(readMetagraphJson(path), `metagraph file ${path}`);
}

export interface ValidateOptions {
  /** Metagraph file path, or neurons already parsed. */
  metagraph: string | ValidatorNeuron[];
  signer: Signer;
  /** The validator's model (or `reference`, already loaded). */
  model?: string;
  adapter?: string;
  /** The reference model's matvec autotune (false: --no-autotune). */
  autotune?: boolean;
  reference?: ReferenceModel;
  rounds?: number;
  seed?: number;
  /** Miners queried at once. Default 4. */
  concurrency?: number;
  challengesPerRound?: number;
  /** Longest one exchange may take. Default 60 000 ms. */
  timeoutMs?: number;
  thresholds?: Partial<Thresholds>;
  /** Write the report here after each round. */
  json?: string;
  /** Save every transcript with its verdict under this folder. */
  evidence?: string;
  /** Progress lines for humans. */
  log?: (line: string) => void;
}

export interface ValidationReport {
  /** The last round run (0-based); scores cover rounds 0..round. */
  round: number;
  seed: number;
  model: { id: string; weightsDigest: string };
  validator: string;
  miners: MinerScore[];
  skipped: Array<{ uid: number; hotkey: string; reason: string }>;
  weights: Weight[];
  /** Teacher-forced recomputation: tokens scored and their rate. */
  recompute: { tokens: number; seconds: number; tokensPerS: number };
}

interface Scored {
  transcript: Transcript;
  verdict: ResponseVerdict;
}

/** What an evidence file holds: the exchange, and the verdict the validator reached on it. */
export interface EvidenceFile {
  transcript: Transcript;
  reference: { model: string; weightsDigest: string };
  thresholds: Thresholds;
  verdict: ResponseVerdict;
}

async function pool<T>(items: T[], concurrency: number, run: (item: T) => Promise<void>): Promise<void> {
  const queue = [...items];
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, async () => {
    for (let item = queue.shift(); item !== undefined; item = queue.shift()) await run(item);
  }));
}

/** Recompute the answers worth recomputing (all together) and judge every response. */
export async function judgeAll(reference: ReferenceModel, answers: Array<{ challenge: Challenge; response: MinerResponse }>, thresholds: Thresholds): Promise<ResponseVerdict[]> {
  const exchanges = answers.map(({ challenge, response }) => ({ challenge, response: withoutStopToken(response, reference.eosIds) }));
  const wanted = exchanges
    .map((e, i) => ({ ...e, i }))
    .filter(({ response }) => response.integrity.pass === true && response.error === undefined && (response.finishReason === 'stop' || response.finishReason === 'length'));
  const prompts = wanted.map(({ challenge }) => reference.promptIds(challenge));
  const completions = wanted.map(({ response }) => response.tokens.filter((t) => t.tokenId >= 0).map((t) => t.tokenId));
  // Token ids outside the reference's vocabulary cannot be recomputed: such a response is judged unusable.
  const V = reference.vocabSize;
  const fits = completions.map((c) => c.every((t) => Number.isSafeInteger(t) && t >= 0 && t < V));
  const scored = await reference.score(
    wanted.flatMap(({ challenge }, k) => (fits[k] ? [{ prompt: prompts[k], completion: completions[k], sampling: { temperature: challenge.temperature, topK: challenge.topK, topP: challenge.topP } }] : [])),
  );
  const recomputed = new Map<number, Recomputed>();
  let next = 0;
  wanted.forEach(({ i }, k) => {
    if (!fits[k]) return;
    const s = scored[next++];
    recomputed.set(i, { ...s, promptTokens: prompts[k].length, text: reference.decode(completions[k]) });
  });
  return exchanges.map(({ challenge, response }, i) => {
    if (!recomputed.has(i) && wanted.some((w) => w.i === i)) {
      // Answered, signed, but with token ids the reference does not have.
      return judgeResponse(challenge, { ...response, integrity: { ...response.integrity, pass: false, detail: 'token ids outside the vocabulary' } }, undefined, thresholds);
    }
    return judgeResponse(challenge, response, recomputed.get(i), thresholds);
  });
}

export async function validate(options: ValidateOptions): Promise<ValidationReport> {
  const rounds = options.rounds ?? 1;
  const seed = options.seed ?? 0;
  const concurrency = options.concurrency ?? 4;
  const perRound = options.challengesPerRound ?? DEFAULT_CHALLENGES_PER_ROUND;
  const timeoutMs = options.timeoutMs ?? 60_000;
  for (const [name, value, min] of [['rounds', rounds, 1], ['concurrency', concurrency, 1], ['timeout-ms', timeoutMs, 1]] as const) {
    if (!Number.isSafeInteger(value) || value < min) throw new OptionError(`--${name} must be an integer >= ${min} (got ${value})`);
  }
  if (!Number.isSafeInteger(seed)) throw new OptionError(`--seed must be an integer (got ${seed})`);
  const thresholds = resolveThresholds(options.thresholds);
  const log = options.log ?? (() => {});
  const neurons = typeof options.metagraph === 'string' ? loadValidatorMetagraph(options.metagraph) : options.metagraph;
  const skipped: ValidationReport['skipped'] = [];
  const endpoints: MinerEndpoint[] = [];
  for (const n of neurons) {
    if (n.hotkey === options.signer.address) continue;
    if (!n.axon) skipped.push({ uid: n.uid, hotkey: n.hotkey, reason: 'no axon in the metagraph' });
    else endpoints.push({ uid: n.uid, hotkey: n.hotkey, ...n.axon });
  }
  if (endpoints.length === 0) throw new OptionError('no miner in the metagraph has an axon (neurons need axon: {ip, port, protocol: "ws" | "http"})');

  const reference = options.reference ?? (await ReferenceModel.load({ model: options.model, adapter: options.adapter, autotune: options.autotune }));
  const cryptoPool = await createVerifyPool();
  const verdicts = new Map<number, ResponseVerdict[]>(endpoints.map((e) => [e.uid, []]));
  let report: ValidationReport | undefined;
  let recomputeMs = 0;
  let recomputeTokens = 0;
  try {
    for (let round = 0; round < rounds; round++) {
      const challenges = makeChallenges(seed, round, perRound);
      const transcripts: Transcript[] = [];
      log(`round ${round}: ${challenges.length} challenges to ${endpoints.length} miners`);
      await pool(endpoints, concurrency, async (endpoint) => {
        const transport = await openTransport(endpoint, { signer: options.signer, cryptoPool, timeoutMs });
        try {
          transcripts.push(...(await Promise.all(challenges.map((c) => transport.exchange(c, round)))));
        } finally {
          await transport.close();
        }
      });
      // Protocol v1's frames were verified by the client as they arrived; the rest of each transcript
      // (and all of an HTTP one: its transport only records) is checked here.
      const exchanges = transcripts.map((t) => ({ challenge: t.challenge, response: readTranscript(t, { verifySignatures: false }) }));
      const rowsBefore = reference.rowsComputed;
      const t0 = performance.now();
      const judged = await judgeAll(reference, exchanges, thresholds);
      recomputeMs += performance.now() - t0;
      recomputeTokens += reference.rowsComputed - rowsBefore;
      const scored: Scored[] = transcripts.map((transcript, i) => ({ transcript, verdict: judged[i] }));
      for (const s of scored) verdicts.get(s.transcript.miner.uid)!.push(s.verdict);
      if (options.evidence) writeEvidence(options.evidence, round, scored, reference, thresholds);

      const miners = endpoints.map((e) => scoreMiner(e.uid, e.hotkey, verdicts.get(e.uid)!));
      report = {
        round,
        seed,
        model: { id: reference.id, weightsDigest: reference.weightsDigest },
        validator: options.signer.address,
        miners,
        skipped,
        weights: normaliseWeights(miners),
        recompute: { tokens: recomputeTokens, seconds: round3(recomputeMs / 1000), tokensPerS: recomputeMs > 0 ? round3((recomputeTokens * 1000) / recomputeMs) : 0 },
      };
      for (const m of miners) {
        const failed = Object.entries(m.checks).filter(([, c]) => c.pass === false).map(([name]) => name);
        log(`  uid ${m.uid}: score ${m.score.toFixed(3)} (quality ${m.quality.toFixed(3)}, speed ${m.speed.toFixed(3)})${failed.length ? `  failed: ${failed.join(', ')}` : ''}`);
      }
      if (options.json) writeFileSync(options.json, JSON.stringify(report, null, 2) + '\n');
    }
  } finally {
    await cryptoPool.close();
    if (!options.reference) await reference.close();
  }
  return report!;
}

const round3 = (x: number) => Math.round(x * 1000) / 1000;

function writeEvidence(dir: string, round: number, scored: Scored[], reference: ReferenceModel, thresholds: Thresholds): void {
  const folder = join(dir, `round-${round}`);
  mkdirSync(folder, { recursive: true });
  for (const { transcript, verdict } of scored) {
    const file: EvidenceFile = { transcript, reference: { model: reference.id, weightsDigest: reference.weightsDigest }, thresholds, verdict };
    writeFileSync(join(folder, `uid-${transcript.miner.uid}-${transcript.challenge.name}.json`), JSON.stringify(file, null, 2) + '\n');
  }
}

// ---------------------------------------------------------------------------------------------
// verify

export interface VerifyResult {
  /** The verdict reached now, from the signed frames and this model. */
  verdict: ResponseVerdict;
  /** Where it differs from the verdict saved with the transcript (empty: the saved one stands). */
  differences: string[];
  /** Whether every signature in the transcript checked out (null: nothing to check, or an unsigned HTTP stream). */
  signatures: boolean | null;
  reference: { model: string; weightsDigest: string };
  saved?: { model: string; weightsDigest: string };
}

/**
 * Re-check a saved exchange offline: every signature (the validator's request and the miner's
 * frames), the transcript digest, then the recomputation and every check, against the verdict saved
 * with it. Speed checks are judged again from the arrival times the validator recorded.
 */
export async function verifyEvidence(value: unknown, reference: ReferenceModel, overrides?: Partial<Thresholds>): Promise<VerifyResult> {
  await cryptoReady();
  const file = value as Partial<EvidenceFile>;
  const transcript = parseTranscript(file.transcript ?? value);
  const thresholds = resolveThresholds({ ...(file.thresholds ?? {}), ...overrides });
  const response = readTranscript(transcript, { verifySignatures: true });
  const [verdict] = await judgeAll(reference, [{ challenge: transcript.challenge, response }], thresholds);
  const differences: string[] = [];
  if (file.verdict) {
    for (const [name, check] of Object.entries(verdict.checks)) {
      const before = (file.verdict.checks as Record<string, { pass: boolean | null }>)[name]?.pass;
      if (before !== check.pass) differences.push(`${name}: saved ${before}, now ${check.pass}${check.detail ? ` (${check.detail})` : ''}`);
    }
    for (const key of ['quality', 'speed', 'score'] as const) {
      if (Math.abs(file.verdict[key] - verdict[key]) > 1e-6) differences.push(`${key}: saved ${file.verdict[key]}, now ${verdict[key]}`);
    }
  }
  return {
    verdict,
    differences,
    signatures: response.integrity.unsigned ? null : response.integrity.pass,
    reference: { model: reference.id, weightsDigest: reference.weightsDigest },
    ...(file.reference ? { saved: file.reference } : {}),
  };
}

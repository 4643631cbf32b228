// The validator against real miners on loopback: real axons, real sr25519 keys, model files written
// here. An honest miner (and an honest one serving an f16 copy of the checkpoint) scores full
// quality; each cheater is a real miner with a dishonest generator or key, and must score strictly
// lower and fail the check named for it. The same seed gives the same weights; every saved exchange
// verifies offline with the same verdict.
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signerFromUri, type Signer } from '../src/wire/signing.ts';
import { Engine } from '../src/engine/engine.ts';
import { acquireGpu, type Gpu } from '../src/gpu/device.ts';
import { ReferenceModel } from '../src/validator/recompute.ts';
import type { ValidationReport } from '../src/validator/validate.ts';
import { validate, verifyEvidence } from '../src/validator/validate.ts';
import {
  buffering,
  ignoringMaxTokens,
  madeUpLogprobs,
  replaying,
  startMiner,
  stoppingEarly,
  validatorMetagraph,
  writeTinyModel,
  type TestMiner,
} from './support/validator-miners.ts';

// Speed limits no honest loopback miner can miss on a loaded machine (the rules themselves are
// unit-tested with exact figures in validator-checks.test.ts); "not streamed" is a share of the
// time, so it still judges here.
const LOOSE_SPEED = { maxTtftMs: 600_000, gapMs: 600_000 };
// Four challenges: a long greedy one (80 tokens: what the streaming rule judges), a sampled chat
// with 10 logprobs, a short greedy one with 10 logprobs, a long sampled plain prompt (72).
const CHALLENGES = 4;

let root: string;
let refDir: string;
let gpu: Gpu;
let validator: Signer;
const engines: Engine[] = [];
const miners: TestMiner[] = [];
let reference: ReferenceModel;
let metagraphFile: string;

/** The expected outcome per miner: the check it must fail (undefined: honest). */
const EXPECT: Record<string, string | undefined> = {
  honest: undefined,
  'honest-f16': undefined,
  'other-model': 'rank',
  'made-up-logprobs': 'logprob',
  replay: 'greedy',
  'stops-early': 'eos',
  'ignores-max-tokens': 'max_tokens',
  buffering: 'streamed',
  'wrong-key': 'signature',
};

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'validator-e2e-'));
  refDir = writeTinyModel(join(root, 'reference'), 11);
  const otherDir = writeTinyModel(join(root, 'other'), 12);
  const f16Dir = writeTinyModel(join(root, 'reference-f16'), 11, 'F16');
  gpu = await acquireGpu();
  const load = async (model: string, slots: number) => {
    // A KV pool for every slot's whole context: every challenge of every miner runs at once, as the
    // speed thresholds assume (by default the pool holds 16 full contexts and the rest would queue).
    const e = await Engine.load({ gpu, model, slots, capacity: 192, prefillChunk: 64, kvBlocks: slots * (192 / 16) });
    engines.push(e);
    return e;
  };
  const honest = await load(refDir, 48);
  const other = await load(otherDir, 8);
  const f16 = await load(f16Dir, 8);
  reference = await ReferenceModel.load({ engine: await Engine.load({ gpu, model: refDir, slots: 8, capacity: 192, prefillChunk: 128, prefixCacheMin: 0 }) });
  validator = await signerFromUri('//Alice');
  const key = (n: string) => signerFromUri(`//ValidatorTest${n}`);
  const table: Array<[string, Parameters<typeof startMiner>[2], Signer, string?]> = [
    ['honest', honest, await key('Honest')],
    ['honest-f16', f16, await key('F16')],
    ['other-model', other, await key('Other')],
    ['made-up-logprobs', madeUpLogprobs(honest), await key('Logprobs')],
    ['replay', replaying(honest), await key('Replay')],
    ['stops-early', stoppingEarly(honest), await key('Early')],
    ['ignores-max-tokens', ignoringMaxTokens(honest), await key('MaxTokens')],
    ['buffering', buffering(honest), await key('Buffering')],
    // Listed in the metagraph under one hotkey, signing its frames with another.
    ['wrong-key', honest, await key('Mallory'), (await key('WrongKey')).address],
  ];
  for (const [i, [name, generator, signer, listed]] of table.entries()) miners.push(await startMiner(name, i + 1, generator, signer, validator, listed));
  metagraphFile = join(root, 'metagraph.json');
  writeFileSync(metagraphFile, JSON.stringify(validatorMetagraph(validator, miners), null, 2));
}, 300_000);

afterAll(async () => {
  for (const m of miners) await m.server.close(0);
  await reference?.engine.close();
  for (const e of engines) await e.close();
  gpu?.destroy();
  if (root) rmSync(root, { recursive: true, force: true });
});

const run = (json: string, evidence?: string) =>
  validate({ metagraph: metagraphFile, signer: validator, reference, seed: 5, challengesPerRound: CHALLENGES, concurrency: 9, thresholds: LOOSE_SPEED, json, evidence });

describe('validate against honest and cheating miners', () => {
  let first: ValidationReport;

  it('scores the honest miners >= 0.95 and every cheater strictly lower, failing its named check', async () => {
    first = await run(join(root, 'first.json'), join(root, 'evidence'));
    const byName = new Map(miners.map((m) => [m.name, first.miners.find((s) => s.uid === m.uid)!]));
    const summary = Object.fromEntries([...byName].map(([name, s]) => [name, { score: s.score, quality: s.quality, failed: Object.entries(s.checks).filter(([, c]) => c.pass === false).map(([k, c]) => `${k}: ${c.detail}`) }]));
    const honest = byName.get('honest')!;
    for (const [name, check] of Object.entries(EXPECT)) {
      const s = byName.get(name)!;
      if (check === undefined) {
        expect(s.quality, `${name}: ${JSON.stringify(summary[name])}`).toBeGreaterThanOrEqual(0.95);
        expect(Object.values(s.checks).filter((c) => c.pass === false), `${name}: ${JSON.stringify(summary[name])}`).toEqual([]);
      } else {
        expect(s.checks[check as keyof typeof s.checks].pass, `${name} must fail ${check}: ${JSON.stringify(s.checks)}`).toBe(false);
        expect(s.score, `${name}: ${JSON.stringify(summary[name])}`).toBeLessThan(honest.score);
      }
    }
    const total = first.weights.reduce((a, w) => a + w.weight, 0);
    expect(total).toBeCloseTo(1, 12);
    expect(first.model.weightsDigest).toBe(reference.weightsDigest);
  }, 600_000);

  it('writes the same weights for the same seed', async () => {
    const second = await run(join(root, 'second.json'));
    const file = (name: string) => JSON.parse(readFileSync(join(root, name), 'utf8')) as ValidationReport;
    expect(file('second.json').weights).toEqual(file('first.json').weights);
    const verdicts = (r: ValidationReport) => r.miners.map((m) => [m.uid, Object.fromEntries(Object.entries(m.checks).map(([k, c]) => [k, c.pass]))]);
    expect(verdicts(second)).toEqual(verdicts(first));
  }, 600_000);

  it('`validate` (the CLI, a child process with its own copy of the model) writes the same weights', async () => {
    const out = join(root, 'cli.json');
    await promisify(execFile)(process.execPath, [
      '--import', 'tsx', 'src/cli.ts', 'validate', '--metagraph', metagraphFile, '--model', refDir, '--hotkey-uri', '//Alice',
      '--seed', '5', '--challenges', String(CHALLENGES), '--concurrency', '9', '--max-ttft-ms', String(LOOSE_SPEED.maxTtftMs), '--max-gap-ms', String(LOOSE_SPEED.gapMs), '--json', out,
    ]);
    const report = JSON.parse(readFileSync(out, 'utf8')) as ValidationReport;
    expect(report.weights).toEqual(first.weights);
    expect(report.model.weightsDigest).toBe(reference.weightsDigest);
  }, 600_000);

  it('every saved exchange verifies offline with the verdict it was given', async () => {
    const folder = join(root, 'evidence', 'round-0');
    const files = readdirSync(folder);
    expect(files.length).toBe(miners.length * CHALLENGES);
    for (const name of files) {
      const saved = JSON.parse(readFileSync(join(folder, name), 'utf8'));
      const result = await verifyEvidence(saved, reference);
      expect(result.differences, name).toEqual([]);
      if (name.startsWith(`uid-${miners.find((m) => m.name === 'wrong-key')!.uid}-`)) expect(result.signatures).toBe(false);
      if (name.startsWith(`uid-${miners.find((m) => m.name === 'honest')!.uid}-`)) expect(result.signatures).toBe(true);
    }
  }, 600_000);

  it('`verify` (the CLI, a child process) upholds an honest exchange and refuses it with one byte changed', async () => {
    const honest = join(root, 'evidence', 'round-0', `uid-${miners.find((m) => m.name === 'honest')!.uid}-r0-c1.json`);
    const cli = (file: string) => promisify(execFile)(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'verify', '--transcript', file, '--model', refDir]);
    const { stdout } = await cli(honest);
    expect(JSON.parse(stdout)).toMatchObject({ differences: [], signatures: true, verdict: { quality: 1 } });
    // The same exchange with one logprob byte of the first token frame changed after it was signed.
    const saved = JSON.parse(readFileSync(honest, 'utf8'));
    const bytes = Buffer.from(saved.transcript.frames[0].bytes, 'base64');
    const at = bytes.indexOf('logprob') + 'logprob'.length + 2;
    bytes[at] ^= 1;
    saved.transcript.frames[0].bytes = bytes.toString('base64');
    const tampered = join(root, 'tampered.json');
    writeFileSync(tampered, JSON.stringify(saved));
    await expect(cli(tampered)).rejects.toMatchObject({ code: 1, stderr: expect.stringMatching(/VERDICT_DIFFERS.*signature: saved true, now false \(frame 0 \(token\) has a bad signature\)/) });
  }, 600_000);
});

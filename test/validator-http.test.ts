// The validator against miners on the OpenAI/Epistula HTTP face, on loopback with real keys and
// model files written here. One honest engine is served to the validator once per face: over HTTP
// it must score as over WebSocket, with the same tokens for the same challenges and seeds. The cheaters that make
// sense over HTTP fail their named check there too; a plain OpenAI server (the honest stream with its
// signature chunk dropped by a real proxy) is judged on its content and reported unsigned; a stream
// re-signed by another key fails the signature check; the same stream shaped as vLLM's server
// sends it (a role-only first chunk, finish_reason on the last token's chunk, unsigned) is read alike. HTTP transcripts verify offline, and one
// changed byte is caught.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signerFromUri, type Signer } from '../src/wire/signing.ts';
import { Engine } from '../src/engine/engine.ts';
import { acquireGpu, type Gpu } from '../src/gpu/device.ts';
import { ReferenceModel } from '../src/validator/recompute.ts';
import { readTranscript, type HttpTranscript, type Transcript } from '../src/validator/transcript.ts';
import { validate, verifyEvidence, type EvidenceFile, type ValidationReport } from '../src/validator/validate.ts';
import {
  buffering,
  dropSignature,
  ignoringMaxTokens,
  madeUpLogprobs,
  resignWith,
  startMiner,
  vllmShaped,
  startSseProxy,
  validatorMetagraph,
  writeTinyModel,
  type TestMiner,
} from './support/validator-miners.ts';

// As in validator-e2e.test.ts: speed limits no honest loopback miner misses on a loaded machine.
const LOOSE_SPEED = { maxTtftMs: 600_000, gapMs: 600_000 };
// A long greedy completion (80 tokens: what the streaming rule judges), a sampled chat with 10
// logprobs, a short greedy completion with 10 logprobs: both endpoints, both temperatures.
const CHALLENGES = 3;

let root: string;
let refDir: string;
let gpu: Gpu;
let validator: Signer;
const engines: Engine[] = [];
const miners: TestMiner[] = [];
let reference: ReferenceModel;
let report: ValidationReport;

/** The check each miner must fail (undefined: honest). */
const EXPECT: Record<string, string | undefined> = {
  'honest-ws': undefined,
  'honest-http': undefined,
  'plain-openai': undefined,
  'vllm-shaped': undefined,
  'made-up-logprobs': 'logprob',
  'ignores-max-tokens': 'max_tokens',
  buffering: 'streamed',
  'signed-by-another-key': 'signature',
};

const byName = (name: string) => miners.find((m) => m.name === name)!;
const evidence = (name: string): EvidenceFile[] => {
  const folder = join(root, 'evidence', 'round-0');
  return readdirSync(folder)
    .filter((f) => f.startsWith(`uid-${byName(name).uid}-`))
    .sort()
    .map((f) => JSON.parse(readFileSync(join(folder, f), 'utf8')) as EvidenceFile);
};

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'validator-http-'));
  refDir = writeTinyModel(join(root, 'reference'), 11);
  gpu = await acquireGpu();
  const honest = await Engine.load({ gpu, model: refDir, slots: 32, capacity: 192, prefillChunk: 64 });
  engines.push(honest);
  reference = await ReferenceModel.load({ engine: await Engine.load({ gpu, model: refDir, slots: 8, capacity: 192, prefillChunk: 128, prefixCacheMin: 0 }) });
  validator = await signerFromUri('//Alice');
  const key = (n: string) => signerFromUri(`//ValidatorHttpTest${n}`);
  // The same engine behind two axons (a metagraph lists each hotkey once): one reached over
  // WebSocket, one over HTTP; and two behind real proxies that rewrite the stream's last chunk.
  miners.push(await startMiner('honest-ws', 1, honest, await key('HonestWs'), validator));
  miners.push({ ...(await startMiner('honest-http', 2, honest, await key('HonestHttp'), validator)), protocol: 'http' });
  const behindProxy = async (name: string, uid: number, rewrite: Parameters<typeof startSseProxy>[4]) => {
    const axon = await startMiner(`${name}-axon`, uid, honest, await key(name), validator);
    const proxy = await startSseProxy(name, uid, axon.port, axon.hotkey, rewrite);
    return { ...proxy, server: { close: async () => { await proxy.server.close(); await axon.server.close(0); } } };
  };
  miners.push(await behindProxy('plain-openai', 3, dropSignature));
  miners.push(await behindProxy('signed-by-another-key', 4, resignWith(await key('Mallory'))));
  miners.push(await behindProxy('vllm-shaped', 5, vllmShaped));
  const cheaters: Array<[string, Parameters<typeof startMiner>[2]]> = [
    ['made-up-logprobs', madeUpLogprobs(honest)],
    ['ignores-max-tokens', ignoringMaxTokens(honest)],
    ['buffering', buffering(honest)],
  ];
  for (const [i, [name, generator]] of cheaters.entries()) miners.push({ ...(await startMiner(name, 6 + i, generator, await key(name), validator)), protocol: 'http' });
  const metagraphFile = join(root, 'metagraph.json');
  writeFileSync(metagraphFile, JSON.stringify(validatorMetagraph(validator, miners), null, 2));
  report = await validate({ metagraph: metagraphFile, signer: validator, reference, seed: 5, challengesPerRound: CHALLENGES, concurrency: miners.length, thresholds: LOOSE_SPEED, evidence: join(root, 'evidence') });
}, 600_000);

afterAll(async () => {
  for (const m of miners) await m.server.close(0);
  await reference?.engine.close();
  for (const e of engines) await e.close();
  gpu?.destroy();
  if (root) rmSync(root, { recursive: true, force: true });
});

describe('validate over the HTTP face', () => {
  it('scores honest miners over HTTP as over WebSocket, and each cheater lower, failing its named check', () => {
    const score = (name: string) => report.miners.find((s) => s.uid === byName(name).uid)!;
    const failed = (name: string) => Object.entries(score(name).checks).filter(([, c]) => c.pass === false).map(([k, c]) => `${k}: ${c.detail}`);
    for (const [name, check] of Object.entries(EXPECT)) {
      const s = score(name);
      if (check === undefined) {
        expect(s.quality, `${name}: ${failed(name)}`).toBeGreaterThanOrEqual(0.95);
        expect(failed(name), name).toEqual([]);
      } else {
        expect(s.checks[check as keyof typeof s.checks].pass, `${name} must fail ${check}: ${JSON.stringify(s.checks)}`).toBe(false);
        expect(s.score, `${name}: ${failed(name)}`).toBeLessThan(score('honest-http').score);
      }
    }
    expect(score('honest-http').quality).toBeCloseTo(score('honest-ws').quality, 6);
    // The signed HTTP stream's signature verified; the plain server's is reported missing, at no cost.
    expect(score('honest-http').checks.signature).toMatchObject({ pass: true, failed: 0, of: CHALLENGES });
    expect(score('plain-openai').checks.signature).toMatchObject({ pass: null, of: 0, unsigned: CHALLENGES });
    expect(score('plain-openai').quality).toBeCloseTo(score('honest-http').quality, 6);
    expect(score('vllm-shaped').checks.signature).toMatchObject({ pass: null, of: 0, unsigned: CHALLENGES });
    expect(score('vllm-shaped').quality).toBeCloseTo(score('honest-http').quality, 6);
    expect(score('signed-by-another-key').checks.signature.detail).toMatch(/stream signed by \S+, not the miner/);
    expect(report.skipped).toEqual([]);
  });

  it('gets the same tokens over HTTP as over WebSocket for the same challenges and seeds', () => {
    const ws = evidence('honest-ws');
    expect(ws.map((e) => e.transcript.transport)).toEqual(Array(CHALLENGES).fill('ws'));
    // The HTTP requests name the model the miner lists at /v1/models (as vLLM requires).
    const sentModel = (e: EvidenceFile) => JSON.parse(Buffer.from((e.transcript as HttpTranscript).request.body, 'base64').toString('utf8')).model;
    expect(evidence('honest-http').map(sentModel)).toEqual(Array(CHALLENGES).fill(reference.id));
    // Our signed HTTP face, and the same stream as vLLM shapes it (role chunk, finish on the last token).
    const vllmChat = Buffer.concat((evidence('vllm-shaped')[1].transcript as HttpTranscript).response!.chunks.map((c) => Buffer.from(c.bytes, 'base64'))).toString('utf8');
    expect(vllmChat).toContain('"delta":{"role":"assistant","content":""}');
    expect(vllmChat).not.toContain('"epistula"');
    expect(vllmChat.split('\n\n').find((e) => /"finish_reason":"(stop|length)"/.test(e))).toContain('"token":"token_id:');
    for (const http of [evidence('honest-http'), evidence('vllm-shaped')]) {
      expect(http.map((e) => e.transcript.transport)).toEqual(Array(CHALLENGES).fill('http'));
      for (let i = 0; i < CHALLENGES; i++) {
        expect(http[i].transcript.challenge).toEqual(ws[i].transcript.challenge);
        const a = readTranscript(ws[i].transcript, { verifySignatures: true });
        const b = readTranscript(http[i].transcript, { verifySignatures: true });
        expect(b.integrity).toMatchObject({ pass: true });
        expect(b.tokens.length).toBeGreaterThan(0);
        expect(b.tokens.map((t) => t.tokenId), ws[i].transcript.challenge.name).toEqual(a.tokens.map((t) => t.tokenId));
        expect(b.tokens.map((t) => t.text).join('')).toBe(a.tokens.map((t) => t.text).join(''));
        b.tokens.forEach((t, k) => expect(t.logprob).toBeCloseTo(a.tokens[k].logprob, 3));
        expect(b.tokens.map((t) => t.top.map((x) => x.tokenId))).toEqual(a.tokens.map((t) => t.top.map((x) => x.tokenId)));
        expect([b.finishReason, b.usage]).toEqual([a.finishReason, a.usage]);
      }
    }
  });

  it('verifies every HTTP exchange offline with the verdict it was given; one changed byte is caught', async () => {
    const unsigned = ['plain-openai', 'vllm-shaped'];
    for (const name of ['honest-http', ...unsigned, 'signed-by-another-key', 'made-up-logprobs']) {
      for (const saved of evidence(name)) {
        const result = await verifyEvidence(saved, reference);
        expect(result.differences, `${name} ${saved.transcript.challenge.name}`).toEqual([]);
        expect(result.signatures, name).toBe(unsigned.includes(name) ? null : name !== 'signed-by-another-key');
      }
    }
    // One byte of a logprob in the honest stream, changed after the miner signed it.
    const saved = evidence('honest-http')[1];
    const response = (saved.transcript as HttpTranscript).response!;
    const piece = response.chunks.findIndex((c) => Buffer.from(c.bytes, 'base64').includes('"logprob":-'));
    const bytes = Buffer.from(response.chunks[piece].bytes, 'base64');
    const at = bytes.indexOf('"logprob":-') + '"logprob":-'.length;
    bytes[at] = bytes[at] === 0x31 ? 0x32 : 0x31;
    response.chunks[piece].bytes = bytes.toString('base64');
    const tampered = await verifyEvidence(saved, reference);
    expect(tampered.signatures).toBe(false);
    expect(tampered.differences.join('; ')).toMatch(/signature: saved true, now false \(stream digest mismatch/);
  });

  it('`verify` (the CLI, a child process) upholds an HTTP exchange and an unsigned one', async () => {
    const folder = join(root, 'evidence', 'round-0');
    const cli = (name: string) =>
      promisify(execFile)(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'verify', '--transcript', join(folder, `uid-${byName(name).uid}-r0-c1.json`), '--model', refDir]);
    expect(JSON.parse((await cli('honest-http')).stdout)).toMatchObject({ differences: [], signatures: true, verdict: { quality: 1, checks: { signature: { pass: true } } } });
    expect(JSON.parse((await cli('plain-openai')).stdout)).toMatchObject({ differences: [], signatures: null, verdict: { quality: 1, checks: { signature: { pass: null, unsigned: true } } } });
  }, 300_000);

  it('refuses an HTTP transcript whose signed request is not the challenge it names', async () => {
    const saved = evidence('honest-http')[0];
    const transcript = structuredClone(saved.transcript) as Transcript;
    transcript.challenge = { ...transcript.challenge, maxTokens: transcript.challenge.maxTokens + 1 };
    expect(() => readTranscript(transcript, { verifySignatures: true })).toThrow(/does not carry the challenge/);
  });
});

// The transports' failures are verdicts, not crashes: a miner that cannot be reached, and one that
// never finishes (a real axon in front of a generator that holds), each leave a transcript that
// reads back as unanswered, over WebSocket and over HTTP. No GPU: the held generator stands in for the model.
import { createServer } from 'node:net';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { signerFromUri, type Signer } from '../src/wire/signing.ts';
import { makeChallenges } from '../src/validator/challenges.ts';
import { judgeResponse } from '../src/validator/checks.ts';
import { DEFAULT_THRESHOLDS } from '../src/validator/thresholds.ts';
import { readTranscript } from '../src/validator/transcript.ts';
import { openTransport } from '../src/validator/transport.ts';
import { heldGenerator } from './support/held-generator.ts';
import { startMiner, type TestMiner } from './support/validator-miners.ts';

let validator: Signer;
let minerKey: Signer;
let miner: TestMiner;
const held = heldGenerator(2);
beforeAll(async () => {
  validator = await signerFromUri('//Alice');
  minerKey = await signerFromUri('//ValidatorTestHeld');
  miner = await startMiner('held', 1, held, minerKey, validator);
});
afterAll(async () => {
  await miner?.server.close(0);
});

/** A loopback port with nothing listening on it. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

it('an unreachable miner: every exchange is recorded as a connection failure and judged unanswered', async () => {
  const [challenge] = makeChallenges(1, 0, 1);
  const transport = await openTransport({ uid: 4, hotkey: minerKey.address, ip: '127.0.0.1', port: await closedPort(), protocol: 'ws' }, { signer: validator, timeoutMs: 10_000 });
  const transcript = await transport.exchange(challenge, 0);
  await transport.close();
  expect(transcript).toMatchObject({ request: '', frames: [], error: { code: 'CONNECTION' } });
  const response = readTranscript(transcript, { verifySignatures: true });
  const verdict = judgeResponse(challenge, response, undefined, DEFAULT_THRESHOLDS);
  expect(verdict).toMatchObject({ quality: 0, speed: 0, score: 0 });
  expect(verdict.checks.answered).toMatchObject({ pass: false, code: 'CONNECTION' });
  expect(verdict.checks.signature.pass).toBeNull();
});

it('a miner that never finishes: the exchange times out, is cancelled, and keeps the signed frames that came', async () => {
  const [challenge] = makeChallenges(1, 0, 1);
  const transport = await openTransport({ uid: 1, hotkey: minerKey.address, ip: '127.0.0.1', port: miner.port, protocol: 'ws' }, { signer: validator, timeoutMs: 300 });
  const transcript = await transport.exchange(challenge, 0);
  expect(transcript.error).toMatchObject({ code: 'TIMEOUT' });
  // The cancel reaches the generator: it ends as aborted.
  const call = await held.call(0);
  await call.done;
  expect(call.signal?.aborted).toBe(true);
  await transport.close();
  const response = readTranscript(transcript, { verifySignatures: true });
  expect(response.integrity).toMatchObject({ pass: true });
  // However loaded the machine, what arrived before the timer is a verified prefix of what was sent.
  const texts = response.tokens.map((t) => t.text);
  expect(['t0 ', 't1 '].slice(0, texts.length)).toEqual(texts);
  const verdict = judgeResponse(challenge, response, undefined, DEFAULT_THRESHOLDS);
  expect(verdict.checks.answered).toMatchObject({ pass: false, code: 'TIMEOUT' });
  expect(verdict.score).toBe(0);
});

it('HTTP: an unreachable miner is recorded as a connection failure and judged unanswered', async () => {
  const [challenge] = makeChallenges(1, 0, 1);
  const transport = await openTransport({ uid: 4, hotkey: minerKey.address, ip: '127.0.0.1', port: await closedPort(), protocol: 'http' }, { signer: validator, timeoutMs: 10_000 });
  const transcript = await transport.exchange(challenge, 0);
  await transport.close();
  expect(transcript).toMatchObject({ transport: 'http', response: null, error: { code: 'CONNECTION' } });
  const verdict = judgeResponse(challenge, readTranscript(transcript, { verifySignatures: true }), undefined, DEFAULT_THRESHOLDS);
  expect(verdict).toMatchObject({ quality: 0, speed: 0, score: 0 });
  expect(verdict.checks.answered).toMatchObject({ pass: false, code: 'CONNECTION' });
  expect(verdict.checks.signature.pass).toBeNull();
});

it('HTTP: a miner that never finishes times out; the tokens that came prove nothing unsigned', async () => {
  const [challenge] = makeChallenges(2, 0, 1);
  const transport = await openTransport({ uid: 1, hotkey: minerKey.address, ip: '127.0.0.1', port: miner.port, protocol: 'http' }, { signer: validator, timeoutMs: 1000 });
  const transcript = await transport.exchange(challenge, 0);
  expect(transcript.error).toMatchObject({ code: 'TIMEOUT' });
  // The aborted request closes the connection: the generation is cancelled.
  const call = await held.call(1);
  await call.done;
  expect(call.signal?.aborted).toBe(true);
  await transport.close();
  const response = readTranscript(transcript, { verifySignatures: true });
  // Whether or not the first tokens came before the timer, nothing signed them.
  expect(response.integrity.pass).toBeNull();
  const verdict = judgeResponse(challenge, response, undefined, DEFAULT_THRESHOLDS);
  expect(verdict.checks.answered).toMatchObject({ pass: false, code: 'TIMEOUT' });
  expect(verdict.checks.signature.pass).toBeNull();
  expect(verdict.score).toBe(0);
});

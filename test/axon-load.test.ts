// Load: 32 validator clients, each with its own hotkey and connection, each streaming a generation
// from the tiny model at the same time. Every token arrives, in order, on the right request, in frames
// whose miner signatures and transcript digests the client verifies; and with a fixed seed every
// output equals what the same request produced alone.
import { pino } from 'pino';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { parseMetagraph } from '../src/wire/metagraph.ts';
import { AxonServer } from '../src/axon/server.ts';
import { signerFromUri, type Signer } from '../src/wire/signing.ts';
import type { TextGenerator } from '../src/engine/types.ts';
import { ValidatorClient, type GenerateParams, type GenerationResult } from '../src/validator/client.ts';
import { devKeys } from './support/axon-harness.ts';
import { createTestGenerator } from './support/test-engine.ts';

const CLIENTS = 32;
const STREAMS_PER_CLIENT = 1;
const MAX_TOKENS = 16;
const DISTINCT = 4;
/**
 * The time limits this test does not test (the handshake, a generation, the client's connect): as
 * long as the test itself may run (testTimeout in vitest.config.ts), so however slow the machine, no
 * connection or request of this test runs into one of them before the test would have failed anyway.
 */
const UNLIMITED_MS = 120_000;

const keys = await devKeys();
const validators: Signer[] = await Promise.all(Array.from({ length: CLIENTS }, (_, i) => signerFromUri(`//Validator${i}`)));
const requests: GenerateParams[] = Array.from({ length: DISTINCT }, (_, i) => ({
  prompt: `load test prompt number ${i}`,
  maxTokens: MAX_TOKENS,
  seed: 1000 + i,
  logprobs: i % 3,
}));

let generator: TextGenerator;
let server: AxonServer;
let url: string;

beforeAll(async () => {
  generator = await createTestGenerator();
  const metagraph = parseMetagraph({
    netuid: 1,
    block: 1,
    neurons: validators.map((v, uid) => ({ uid, hotkey: v.address, stake: 100 + uid, validator_permit: true })),
  });
  server = new AxonServer({
    generator,
    signer: keys.miner,
    logger: pino({ level: 'silent' }),
    // All the clients connect at once, from one address: none is refused for arriving together.
    limits: { maxConnectionsPerIp: CLIENTS * 2, maxPendingConnectionsPerIp: CLIENTS * 2, handshakeTimeoutMs: UNLIMITED_MS, requestTimeoutMs: UNLIMITED_MS },
    // notBefore 0: the validators' keys and frames may be made before the server starts.
    policy: { metagraph, requirePermit: true, minStake: 50, notBefore: 0 },
  });
  const { port } = await server.listen(0, '127.0.0.1');
  url = `ws://127.0.0.1:${port}`;
});
afterAll(() => server.close(500));

const ids = (r: GenerationResult) => r.tokens.map((t) => t.tokenId);

test(`${CLIENTS} concurrent validators x ${STREAMS_PER_CLIENT} streams: every token signed, in order, on its request, equal to the single-request output`, async () => {
  // What each request produces alone.
  const solo = await ValidatorClient.connect({ url, signer: validators[0], minerHotkey: keys.miner.address, connectTimeoutMs: UNLIMITED_MS });
  const expected: GenerationResult[] = [];
  for (const request of requests) expected.push(await solo.generate(request).collect());
  await solo.close();

  const t0 = performance.now();
  const clients = await Promise.all(validators.map((signer) => ValidatorClient.connect({ url, signer, minerHotkey: keys.miner.address, connectTimeoutMs: UNLIMITED_MS })));
  const jobs = clients.flatMap((client, c) =>
    Array.from({ length: STREAMS_PER_CLIENT }, async (_, s) => {
      const which = (c * STREAMS_PER_CLIENT + s) % DISTINCT;
      const stream = client.generate(requests[which]);
      const seen: number[] = [];
      for await (const token of stream) seen.push(token.index);
      const result = await stream.result;
      return { which, seen, result, id: stream.id };
    }),
  );
  const results = await Promise.all(jobs);
  const seconds = (performance.now() - t0) / 1000;
  await Promise.all(clients.map((c) => c.close()));

  let tokens = 0;
  let frames = 0;
  for (const { which, seen, result, id } of results) {
    expect(result.id).toBe(id);
    expect(seen).toEqual([...Array(expected[which].tokens.length).keys()]); // every token, in order
    expect(result.usage.completionTokens).toBe(seen.length);
    expect(ids(result)).toEqual(ids(expected[which])); // same output as alone
    expect(result.text).toBe(expected[which].text);
    expect(result.tokens.every((t) => t.topLogprobs.length === requests[which].logprobs)).toBe(true);
    tokens += result.tokens.length;
    frames += result.framesVerified;
  }
  expect(new Set(results.map((r) => r.id)).size).toBe(CLIENTS * STREAMS_PER_CLIENT);
  expect(server.stats().activeRequests).toBe(0);
  expect(generator.info().activeSequences).toBe(0);
  const ttfts = results.map((r) => r.result.measured.ttftMs).sort((a, b) => a - b);
  console.log(
    `load: ${CLIENTS} clients, ${results.length} streams, ${tokens} tokens in ${frames} verified frames, ${seconds.toFixed(2)} s ` +
      `(${(tokens / seconds).toFixed(0)} tokens/s aggregate; ttft p50 ${ttfts[ttfts.length >> 1].toFixed(1)} ms, max ${ttfts.at(-1)!.toFixed(1)} ms)`,
  );
});

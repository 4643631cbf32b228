// Property-based fuzzing of the axon: 100 batches of 100 frames (10,000 in all) of random bytes,
// random msgpack, mutated signed frames, text frames and correctly signed frames with random bodies,
// all on one connection. Every frame gets exactly one answer (an error frame, or a pong/info for a
// frame that happens to be valid), the connection stays open, and afterwards a fresh client pings
// and generates as if nothing happened.
import { encode } from '@msgpack/msgpack';
import fc from 'fast-check';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { WebSocket } from 'ws';
import { ERROR_CODES, encodeFrame, type RequestFrame } from '../src/wire/protocol.ts';
import { signRequest } from '../src/wire/signing.ts';
import { ValidatorClient } from '../src/validator/client.ts';
import { RawPeer, devKeys, startAxon, type TestAxon } from './support/axon-harness.ts';

const BATCHES = 100;
const BATCH = 100;
const keys = await devKeys();
let axon: TestAxon;

beforeAll(async () => {
  // Per-connection frame rate and per-hotkey rate limits would (rightly) cut a fuzzer off; lift them.
  axon = await startAxon({ limits: { maxFramesPerSecond: 1_000_000, maxBadFramesPerSecond: 1_000_000, maxFrameBytes: 64 * 1024 } });
});
afterAll(() => axon.close());

type Outgoing = { kind: 'binary'; bytes: Uint8Array } | { kind: 'text'; text: string };

const safeEncode = (value: unknown, fallback: Uint8Array): Uint8Array => {
  try {
    return encode(value);
  } catch {
    return fallback;
  }
};

// Signing is the costly part (about 1 ms a frame), so signed frames come from pools made once.
const signers = [keys.alice, keys.bob, keys.charlie, keys.dave, keys.eve];
const ops = ['ping', 'info', 'generate', 'cancel'] as const;
const pingPool: RequestFrame[] = Array.from({ length: 200 }, (_, i) =>
  signRequest(signers[i % signers.length], { op: 'ping', payload: {}, signedFor: keys.miner.address }),
);
const bodies = fc.sample(fc.oneof(fc.anything(), fc.record({ prompt: fc.string(), max_tokens: fc.anything() }, { requiredKeys: [] })), { numRuns: 300, seed: 7 });
const signedPool: RequestFrame[] = bodies.map((body, i) =>
  signRequest(signers[i % signers.length], { op: ops[i % ops.length], body: safeEncode(body, new Uint8Array([0xc1])), signedFor: keys.miner.address }),
);

const fields = ['v', 'id', 'op', 'timestamp', 'signed_by', 'signed_for', 'body', 'signature'] as const;
const interesting = fc.oneof(
  fc.anything(),
  fc.constantFrom(1, 2, 0, -1, 2 ** 53, 2 ** 64, 1.5, NaN, '', '0x', 'ping', 'generate', null, true, new Uint8Array(0)),
  fc.string({ maxLength: 64 }),
  fc.uint8Array({ maxLength: 64 }),
);

const mutatedFrame: fc.Arbitrary<Outgoing> = fc
  .tuple(fc.nat(pingPool.length - 1), fc.constantFrom(...fields), interesting, fc.constantFrom('set', 'delete', 'add'))
  .map(([i, field, value, how]) => {
    const frame: Record<string, unknown> = { ...pingPool[i] };
    if (how === 'set') frame[field] = value;
    else if (how === 'delete') delete frame[field];
    else frame[`x_${field}`] = value;
    return { kind: 'binary', bytes: safeEncode(frame, new Uint8Array([0xc1])) };
  });

const damagedBytes: fc.Arbitrary<Outgoing> = fc
  .tuple(fc.nat(pingPool.length - 1), fc.nat(), fc.integer({ min: 0, max: 255 }), fc.boolean())
  .map(([i, at, byte, truncate]) => {
    const bytes = Uint8Array.from(encodeFrame(pingPool[i]));
    const pos = at % bytes.length;
    if (truncate) return { kind: 'binary', bytes: bytes.subarray(0, pos) };
    bytes[pos] = byte;
    return { kind: 'binary', bytes };
  });

const outgoing: fc.Arbitrary<Outgoing> = fc.oneof(
  { weight: 3, arbitrary: fc.uint8Array({ maxLength: 512 }).map((bytes) => ({ kind: 'binary' as const, bytes })) },
  { weight: 3, arbitrary: fc.anything().map((v) => ({ kind: 'binary' as const, bytes: safeEncode(v, new Uint8Array([0xc1])) })) },
  { weight: 6, arbitrary: mutatedFrame },
  { weight: 4, arbitrary: damagedBytes },
  { weight: 1, arbitrary: fc.string({ maxLength: 200 }).map((text) => ({ kind: 'text' as const, text })) },
  { weight: 2, arbitrary: fc.nat(signedPool.length - 1).map((i) => ({ kind: 'binary' as const, bytes: encodeFrame(signedPool[i]) })) },
);

test(`server survives ${BATCHES * BATCH} malformed or random frames and still serves`, async () => {
  const peer = await RawPeer.connect(axon.url, { verify: false });
  const codes = new Map<string, number>();
  let frames = 0;
  const t0 = performance.now();
  await fc.assert(
    fc.asyncProperty(fc.array(outgoing, { minLength: BATCH, maxLength: BATCH }), async (batch) => {
      for (const out of batch) {
        if (out.kind === 'text') peer.sendText(out.text);
        else peer.send(out.bytes);
      }
      frames += batch.length;
      for (let i = 0; i < batch.length; i++) {
        const { frame, parsed } = await peer.next(20_000);
        expect(['error', 'pong', 'info']).toContain(frame.type);
        expect(frame.signed_by).toBe(keys.miner.address);
        const code = parsed.type === 'error' ? parsed.body.code : parsed.type;
        if (parsed.type === 'error') expect(ERROR_CODES).toContain(parsed.body.code);
        codes.set(code, (codes.get(code) ?? 0) + 1);
      }
      expect(peer.ws.readyState).toBe(WebSocket.OPEN);
    }),
    { numRuns: BATCHES, seed: Number(process.env.FUZZ_SEED ?? 20240601), endOnFailure: true },
  );
  const seconds = (performance.now() - t0) / 1000;
  expect(frames).toBeGreaterThanOrEqual(10_000);
  expect(peer.pending).toBe(0); // exactly one answer per frame
  console.log(`fuzz: ${frames} frames in ${seconds.toFixed(1)} s; answers by code: ${JSON.stringify(Object.fromEntries([...codes].sort()))}`);

  // The same connection still serves a good request ...
  const good = signRequest(keys.alice, { op: 'ping', payload: {}, signedFor: keys.miner.address });
  peer.send(good);
  const pong = await peer.next();
  expect(pong.frame.type).toBe('pong');
  expect(pong.frame.id).toBe(good.id);
  peer.close();
  // ... and so does a new one.
  const client = await ValidatorClient.connect({ url: axon.url, signer: keys.alice, minerHotkey: keys.miner.address });
  await client.ping();
  const result = await client.generate({ prompt: 'after the storm', maxTokens: 8, seed: 1 }).collect();
  expect(result.usage.completionTokens).toBe(result.tokens.length);
  expect(['length', 'stop']).toContain(result.finishReason);
  await client.close();
  expect(axon.server.stats().activeRequests).toBe(0);
});

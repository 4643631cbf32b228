// The axon over a real WebSocket on loopback with real sr25519 keys: every policy step rejects with
// its code and the good frame is accepted right after on the same connection; replay, wrong miner,
// altered body; cancel, disconnect, slow reader, timeouts, limits, metrics, logs, shutdown, the
// client's own verification (each client test twice: verifying on the test's thread, and on a pool of
// worker threads that every pooled client of the file shares), and the ping/query commands.
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, writeFile, rename } from 'node:fs/promises';
import { connect as tcpConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { encode } from '@msgpack/msgpack';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { WebSocket, WebSocketServer } from 'ws';
import { BadRequestError, OverloadedError } from '../src/errors.ts';
import type { GenerateOptions, GenerateRequest, GeneratedToken, GenerationSummary, TextGenerator } from '../src/engine/types.ts';
import { AxonError, VerificationError, decodeRequestFrame, encodeBody, encodeFrame, type RequestFrame } from '../src/axon/protocol.ts';
import type { CryptoPool } from '../src/axon/crypto-pool.ts';
import { serve } from '../src/axon/serve.ts';
import { signRequest, signResponse, type Signer } from '../src/axon/signing.ts';
import { ValidatorClient, createVerifyPool } from '../src/validator/client.ts';
import { pingCommand, queryCommand } from '../src/validator/commands.ts';
import { LONG, RawPeer, captureLogger, devKeys, metagraphJson, sleep, startAxon, waitFor, type TestAxon } from './support/axon-harness.ts';
import { createTestGenerator } from './support/test-engine.ts';

const keys = await devKeys();

let sharedPool: CryptoPool | undefined;
beforeAll(async () => {
  sharedPool = await createVerifyPool({ workers: 2 });
});
afterAll(() => sharedPool?.close());
/** How a client verifies the miner's signatures: its `cryptoPool` option. */
const verifying: Array<[string, () => CryptoPool | undefined]> = [
  ['inline', () => undefined],
  ['on a shared pool', () => sharedPool],
];

/** Wraps any generator to fail, or to count what it is asked for. */
function wrapGenerator(inner: TextGenerator, hooks: { throws?: () => Error }): TextGenerator {
  return {
    info: () => inner.info(),
    close: (g) => inner.close(g),
    generate(request: GenerateRequest, options?: GenerateOptions) {
      if (hooks.throws) {
        const err = hooks.throws();
        return (async function* (): AsyncGenerator<GeneratedToken, GenerationSummary> {
          throw err;
        })();
      }
      return inner.generate(request, options);
    },
  };
}

const ping = (signer: Signer = keys.alice, fields: Partial<Parameters<typeof signRequest>[1]> = {}) =>
  signRequest(signer, { op: 'ping', payload: {}, signedFor: keys.miner.address, ...fields });
const generate = (payload: Record<string, unknown>, signer: Signer = keys.alice) =>
  signRequest(signer, { op: 'generate', payload, signedFor: keys.miner.address });

describe('policy steps over a socket', () => {
  let axon: TestAxon;
  let peer: RawPeer;
  const now = { offset: 0 };
  beforeAll(async () => {
    axon = await startAxon({
      clock: () => Date.now() + now.offset,
      limits: { maxFrameBytes: 64 * 1024, maxPromptBytes: 1000, requestTimeoutMs: 4000, maxBadFramesPerSecond: 1000 },
      policy: { minStake: 10, requirePermit: false },
    });
    peer = await RawPeer.connect(axon.url);
  });
  afterAll(async () => {
    peer.close();
    await axon.close();
  });

  /** Send a bad frame, expect its code, then prove the connection still serves a good ping. */
  async function rejects(frame: RequestFrame | Uint8Array | string, code: string, id?: string): Promise<void> {
    if (typeof frame === 'string') peer.sendText(frame);
    else peer.send(frame);
    const r = await peer.next();
    expect(r.frame.type).toBe('error');
    expect(r.verified).toBe(true); // error frames are signed by the miner too
    expect(r.frame.signed_by).toBe(keys.miner.address);
    expect(r.parsed.type === 'error' && r.parsed.body.code).toBe(code);
    if (id !== undefined) expect(r.frame.id).toBe(id);
    const good = ping();
    peer.send(good);
    const ok = await peer.next();
    expect(ok.frame.type).toBe('pong');
    expect(ok.frame.id).toBe(good.id);
    expect(ok.frame.signed_for).toBe(keys.alice.address);
    expect(ok.verified).toBe(true);
  }

  test('BAD_FRAME: text frame, non-map, missing field', async () => {
    await rejects('{"v":1}', 'BAD_FRAME', '');
    await rejects(encode([1, 2, 3]), 'BAD_FRAME', '');
    const { signature: _s, ...noSig } = ping();
    await rejects(encode(noSig), 'BAD_FRAME', noSig.id);
  });

  test('UNSUPPORTED_VERSION', async () => {
    const frame = ping();
    await rejects(encode({ ...frame, v: 2 }), 'UNSUPPORTED_VERSION', frame.id);
  });

  test('TOO_LARGE: a prompt over the limit is refused, a frame over maxPayload closes with 1009', async () => {
    await rejects(generate({ prompt: 'x'.repeat(1001), max_tokens: 1 }), 'TOO_LARGE');
    const big = await RawPeer.connect(axon.url);
    big.send(ping(keys.alice, { body: new Uint8Array(64 * 1024) }));
    expect((await big.closed).code).toBe(1009);
    await rejects(ping(keys.bob), 'FORBIDDEN'); // the server is still up and the first connection untouched
  });

  test('STALE: too old and too far in the future', async () => {
    const window = 8000 + 4000;
    await rejects(ping(keys.alice, { timestamp: Date.now() - window - 50 }), 'STALE');
    await rejects(ping(keys.alice, { timestamp: Date.now() + 2500 }), 'STALE');
    // Inside the window at both ends is fine.
    peer.send(ping(keys.alice, { timestamp: Date.now() - window + 1000 }));
    expect((await peer.next()).frame.type).toBe('pong');
    peer.send(ping(keys.alice, { timestamp: Date.now() + 1500 }));
    expect((await peer.next()).frame.type).toBe('pong');
  });

  test('WRONG_MINER: signed for another hotkey', async () => {
    await rejects(ping(keys.alice, { signedFor: keys.bob.address }), 'WRONG_MINER');
  });

  test('NOT_REGISTERED: a hotkey outside the metagraph and allow list', async () => {
    await rejects(ping(keys.charlie), 'NOT_REGISTERED');
  });

  test('BAD_SIGNATURE: empty, malformed, by another key, altered body', async () => {
    const frame = ping();
    await rejects({ ...frame, signature: '' }, 'BAD_SIGNATURE', frame.id);
    await rejects({ ...ping(), signature: '0x' }, 'BAD_SIGNATURE');
    await rejects({ ...ping(), signature: 'not hex at all' }, 'BAD_SIGNATURE');
    const byBob = ping(keys.bob);
    await rejects({ ...ping(), signature: byBob.signature }, 'BAD_SIGNATURE');
    const gen = generate({ prompt: 'a', max_tokens: 2 });
    await rejects({ ...gen, body: encodeBody({ prompt: 'b', max_tokens: 2 }) }, 'BAD_SIGNATURE');
    // A frame whose signature failed was not remembered: the genuine one still goes through.
    peer.send(frame);
    expect((await peer.next()).frame.type).toBe('pong');
  });

  test('REPLAY: the same frame twice, also on another connection', async () => {
    const frame = ping();
    peer.send(frame);
    expect((await peer.next()).frame.type).toBe('pong');
    await rejects(frame, 'REPLAY', frame.id);
    const other = await RawPeer.connect(axon.url);
    other.send(frame);
    const r = await other.next();
    expect(r.parsed.type === 'error' && r.parsed.body.code).toBe('REPLAY');
    other.close();
  });

  test('FORBIDDEN: deny list, stake below the minimum', async () => {
    await rejects(ping(keys.dave), 'FORBIDDEN');
    await rejects(ping(keys.bob), 'FORBIDDEN'); // stake 5 < 10
  });

  test('allow-listed hotkeys need no metagraph entry', async () => {
    peer.send(ping(keys.eve));
    const r = await peer.next();
    expect(r.frame.type).toBe('pong');
    expect(r.frame.signed_for).toBe(keys.eve.address);
  });

  test('BAD_REQUEST: payloads, and cancel of nothing', async () => {
    await rejects(generate({ prompt: 'a' }), 'BAD_REQUEST');
    await rejects(generate({ prompt: 'a', messages: [{ role: 'user', content: 'b' }], max_tokens: 1 }), 'BAD_REQUEST');
    await rejects(generate({ prompt: 'a', max_tokens: 1, logprobs: 21 }), 'BAD_REQUEST');
    await rejects(signRequest(keys.alice, { op: 'ping', payload: { x: 1 }, signedFor: keys.miner.address }), 'BAD_REQUEST');
    await rejects(signRequest(keys.alice, { op: 'cancel', payload: { target: crypto.randomUUID() }, signedFor: keys.miner.address }), 'BAD_REQUEST');
  });

  test('a good generate streams signed tokens in order and a verified done', async () => {
    const frame = generate({ prompt: 'hello', max_tokens: 12, seed: 5, logprobs: 3 });
    peer.send(frame);
    const frames = await peer.until(frame.id);
    expect(frames.every((r) => r.verified && r.frame.signed_for === keys.alice.address)).toBe(true);
    const tokens = frames.flatMap((r) => (r.parsed.type === 'token' ? r.parsed.body.tokens : []));
    expect(tokens.length).toBeGreaterThan(0);
    expect(tokens.length).toBeLessThanOrEqual(12);
    expect(tokens.map((t) => t.index)).toEqual([...Array(tokens.length).keys()]);
    expect(tokens.every((t) => t.top_logprobs.length === 3)).toBe(true);
    const done = frames.at(-1)!;
    expect(done.parsed.type).toBe('done');
  });
});

describe('engine errors and limits', () => {
  test('OVERLOADED, BAD_REQUEST and INTERNAL from the engine; the server stays up', async () => {
    let throws: (() => Error) | undefined;
    const inner = await createTestGenerator();
    const generator: TextGenerator = {
      info: () => inner.info(),
      close: (g) => inner.close(g),
      generate: (req, opts) => (throws ? wrapGenerator(inner, { throws }).generate(req, opts) : inner.generate(req, opts)),
    };
    const { logger, lines } = captureLogger();
    const axon = await startAxon({ generator, logger });
    const peer = await RawPeer.connect(axon.url);
    for (const [make, code] of [
      [() => new OverloadedError('KV cache full'), 'OVERLOADED'],
      [() => new BadRequestError('prompt longer than the context'), 'BAD_REQUEST'],
      [() => new TypeError('bug in the engine'), 'INTERNAL'],
    ] as const) {
      throws = make;
      const frame = generate({ prompt: 'a', max_tokens: 3 });
      peer.send(frame);
      const [r] = await peer.until(frame.id);
      expect(r.parsed.type === 'error' && r.parsed.body.code).toBe(code);
      if (code === 'INTERNAL') expect(r.parsed.type === 'error' && r.parsed.body.message).not.toMatch(/bug/);
    }
    throws = undefined;
    const frame = generate({ prompt: 'a', max_tokens: 3 });
    peer.send(frame);
    expect((await peer.until(frame.id)).at(-1)!.frame.type).toBe('done');
    expect(lines.some((l) => l.outcome === 'INTERNAL' && l.level === 50)).toBe(true);
    peer.close();
    await axon.close();
  });

  test('RATE_LIMITED: per-hotkey rate and concurrency cap; other hotkeys unaffected', async () => {
    // A refill (one request per 100 s) that no run, however slow the machine, can see during the test.
    const axon = await startAxon({ policy: { ratePerSecond: 0.01, rateBurst: 3, maxConcurrentPerHotkey: 1, allow: [keys.eve.address] } });
    const peer = await RawPeer.connect(axon.url);
    const long = generate({ prompt: 'long', max_tokens: LONG });
    peer.send(long);
    expect((await peer.next()).frame.type).toBe('token');
    const second = generate({ prompt: 'b', max_tokens: 2 });
    peer.send(second);
    const r1 = (await peer.until(second.id))[0];
    expect(r1.parsed.type === 'error' && r1.parsed.body.code).toBe('RATE_LIMITED');
    expect(r1.parsed.type === 'error' && r1.parsed.body.message).toMatch(/already running/);
    const allowed = ping();
    peer.send(allowed);
    expect((await peer.until(allowed.id))[0].frame.type).toBe('pong');
    // The fourth request within the burst of 3 (long, second, allowed) is over the rate.
    const third = ping();
    peer.send(third);
    const r3 = (await peer.until(third.id))[0];
    expect(r3.parsed.type === 'error' && r3.parsed.body.code).toBe('RATE_LIMITED');
    // Cancel is exempt from the rate limit, and another hotkey is unaffected.
    peer.send(signRequest(keys.alice, { op: 'cancel', payload: { target: long.id }, signedFor: keys.miner.address }));
    const tail = await peer.until(long.id);
    expect(tail.at(-1)!.parsed.type === 'done' && (tail.at(-1)!.parsed.body as { finish_reason: string }).finish_reason).toBe('cancelled');
    const fromEve = ping(keys.eve);
    peer.send(fromEve);
    expect((await peer.until(fromEve.id))[0].frame.type).toBe('pong');
    peer.close();
    await axon.close();
  });

  test('a peer that keeps sending refused frames, or too many frames, is disconnected', async () => {
    // Rates low enough that refills during the burst (each ping costs a signature check, which is slow
    // on a loaded machine) can never cover it: 150 frames against a bucket of 10 refilled at 5/s.
    const axon = await startAxon({ limits: { maxBadFramesPerSecond: 2, maxFramesPerSecond: 5 } });
    const bad = await RawPeer.connect(axon.url);
    for (let i = 0; i < 40; i++) bad.send(new Uint8Array([0xc1]));
    expect(await bad.closed).toEqual({ code: 1008, reason: 'too many bad frames' });
    expect(bad.pending).toBeLessThanOrEqual(8); // one error frame per token of the bucket (4 + refill), then the close
    const chatty = await RawPeer.connect(axon.url);
    const pings = Array.from({ length: 150 }, () => ping()); // signed before sending, so they arrive as one burst
    for (const frame of pings) chatty.send(frame);
    expect(await chatty.closed).toEqual({ code: 1008, reason: 'frame rate limit exceeded' });
    const fine = await RawPeer.connect(axon.url);
    const p = ping();
    fine.send(p);
    expect((await fine.until(p.id))[0].frame.type).toBe('pong');
    fine.close();
    await axon.close();
  });

  test('connection limits, handshake and idle timeouts', async () => {
    const axon = await startAxon({ limits: { maxConnectionsPerIp: 2, handshakeTimeoutMs: 150, idleTimeoutMs: 500 } });
    const a = await RawPeer.connect(axon.url);
    const keepAlive = setInterval(() => a.send(ping()), 50);
    const b = await RawPeer.connect(axon.url);
    await expect(RawPeer.connect(axon.url)).rejects.toThrow(/429/);
    // A TCP connection that never sends its upgrade is dropped.
    const socket = tcpConnect(axon.port, '127.0.0.1');
    const t0 = performance.now();
    await once(socket, 'close');
    expect(performance.now() - t0).toBeLessThan(2000);
    // Idle WebSockets are closed; one that keeps talking is not.
    expect((await b.closed).code).toBe(1000);
    expect(a.ws.readyState).toBe(WebSocket.OPEN);
    clearInterval(keepAlive);
    expect((await a.closed).code).toBe(1000);
    await axon.close();
  });
});

describe('streaming', () => {
  let axon: TestAxon;
  beforeAll(async () => {
    axon = await startAxon();
  });
  afterAll(async () => {
    await axon.close();
  });

  describe.each(verifying)('a client verifying %s', (_mode, cryptoPool) => {
    let client: ValidatorClient;
    beforeAll(async () => {
      client = await ValidatorClient.connect({ url: axon.url, signer: keys.alice, minerHotkey: keys.miner.address, cryptoPool: cryptoPool() });
    });
    afterAll(async () => {
      await client.close();
    });

    test('the client verifies every frame and the transcript; output is deterministic for a seed', async () => {
      const request = { prompt: 'determinism', maxTokens: 24, seed: 11, logprobs: 2 };
      const inPool = () => cryptoPool()?.stats().verifiedInWorkers ?? 0;
      const before = inPool();
      const a = await client.generate(request).collect();
      const b = await client.generate(request).collect();
      expect(inPool() - before).toBe(cryptoPool() ? a.framesVerified + b.framesVerified : 0);
      expect(a.tokens.map((t) => t.tokenId)).toEqual(b.tokens.map((t) => t.tokenId));
      expect(a.text).toBe(b.text);
      expect(a.usage.completionTokens).toBe(a.tokens.length);
      expect(a.usage.completionTokens).toBeLessThanOrEqual(24);
      expect(['length', 'stop']).toContain(a.finishReason);
      expect(a.framesVerified).toBeGreaterThanOrEqual(2);
      expect(a.transcriptSha256).toMatch(/^[0-9a-f]{64}$/);
      expect(a.measured.ttftMs).toBeGreaterThan(0);
      expect(a.tokens.every((t) => t.topLogprobs.length === 2)).toBe(true);
    });

    test('concurrent streams on one connection are routed by id and equal their solo runs', async () => {
      const requests = [1, 2, 3, 4].map((seed) => ({ prompt: `multiplex ${seed}`, maxTokens: 16, seed }));
      const solo = [];
      for (const r of requests) solo.push(await client.generate(r).collect());
      const together = await Promise.all(requests.map((r) => client.generate(r).collect()));
      expect(together.map((r) => r.text)).toEqual(solo.map((r) => r.text));
      expect(new Set(together.map((r) => r.id)).size).toBe(4);
    });

    test('cancel ends the stream with finish_reason cancelled', async () => {
      const stream = client.generate({ prompt: 'cancel me', maxTokens: LONG });
      let n = 0;
      for await (const _ of stream) if (++n === 3) stream.cancel();
      const result = await stream.result;
      expect(result.finishReason).toBe('cancelled');
      expect(result.usage.completionTokens).toBeLessThan(LONG);
      await waitFor('the engine to free the sequence', () => axon.generator.info().activeSequences === 0);
    });

    test('leaving a for-await early cancels', async () => {
      const stream = client.generate({ prompt: 'break', maxTokens: LONG });
      for await (const _ of stream) break;
      expect((await stream.result).finishReason).toBe('cancelled');
    });

    test('an error frame rejects the stream with its code', async () => {
      const stream = client.generate({ prompt: 'x', maxTokens: 99999 });
      await expect(stream.result).rejects.toMatchObject({ name: 'AxonError', code: 'BAD_REQUEST' });
    });
  });

  test('a closed socket aborts the generation and frees it', async () => {
    const { logger, lines } = captureLogger();
    const own = await startAxon({ logger });
    const peer = await RawPeer.connect(own.url);
    const kvBefore = own.generator.info().kvBlocksUsed;
    const frame = generate({ prompt: 'disconnect', max_tokens: LONG });
    peer.send(frame);
    expect((await peer.next()).frame.type).toBe('token');
    expect(own.generator.info().activeSequences).toBe(1);
    peer.ws.terminate();
    await waitFor('the sequence and its KV blocks to be freed', () => {
      const info = own.generator.info();
      return info.activeSequences === 0 && info.kvBlocksUsed <= kvBefore && own.server.stats().activeRequests === 0;
    });
    await waitFor('the log line', () => lines.some((l) => l.outcome === 'disconnected'));
    const line = lines.find((l) => l.outcome === 'disconnected')!;
    expect(line.tokens as number).toBeLessThan(LONG);
    await own.close();
  });

  test('a slow reader is bounded: generation pauses, then the request is dropped', async () => {
    // A generator that produces big tokens as fast as it is asked, and counts how many it was asked for.
    let pulled = 0;
    let aborted = false;
    const firehose: TextGenerator = {
      info: () => ({ modelId: 'firehose', weightsDigest: '', adapter: '', backend: '', queueDepth: 0, activeSequences: 0, kvBlocksUsed: 0, kvBlocksTotal: 0 }),
      close: async () => {},
      async *generate(_req, opts) {
        opts?.signal?.addEventListener('abort', () => (aborted = true));
        for (let index = 0; ; index++) {
          if (opts?.signal?.aborted) return { finishReason: 'cancelled', promptTokens: 1, completionTokens: index, ttftMs: 0, totalMs: 0, tokensPerS: 0 };
          pulled++;
          await new Promise((r) => setImmediate(r));
          yield { index, tokenId: index, text: 'x'.repeat(8192), logprob: -1, topLogprobs: [] };
        }
      },
    };
    const maxBufferedBytes = 256 * 1024;
    const own = await startAxon({ generator: firehose, limits: { maxBufferedBytes, slowReaderTimeoutMs: 400, maxTokens: 1_000_000 } });
    const peer = await RawPeer.connect(own.url);
    peer.ws.pause(); // stop reading: the kernel buffers fill, then the server's
    const frame = generate({ prompt: 'firehose', max_tokens: 1_000_000 });
    peer.send(frame);
    await waitFor('the request to be dropped', () => aborted, 15_000);
    const pulledAtDrop = pulled;
    await sleep(100);
    expect(pulled).toBe(pulledAtDrop); // nothing pulled after the drop
    // ~500 tokens of 8 KiB fill the loopback kernel buffers and the server's mark; far from unbounded.
    expect(pulled).toBeLessThan(1500);
    // The server's own buffer overshoots its mark by at most about one token frame.
    expect(own.server.stats().peakBufferedBytes).toBeLessThanOrEqual(maxBufferedBytes + 2 * 64 * 1024);
    peer.ws.resume();
    const frames = await peer.until(frame.id, 15_000);
    const last = frames.at(-1)!;
    expect(last.parsed.type === 'error' && last.parsed.body.code).toBe('OVERLOADED');
    expect(last.parsed.type === 'error' && last.parsed.body.message).toMatch(/slow/);
    // The connection itself survives and serves again.
    const p = ping();
    peer.send(p);
    expect((await peer.until(p.id))[0].frame.type).toBe('pong');
    peer.close();
    await own.close();
  });
});

describe('operations', () => {
  test('/health, /metrics and one JSON log line per request', async () => {
    const { logger, lines } = captureLogger('info');
    const axon = await startAxon({ logger });
    const client = await ValidatorClient.connect({ url: axon.url, signer: keys.alice }); // hotkey from /health
    expect(client.minerHotkey).toBe(keys.miner.address);
    // The same long prompt twice: the second reuses all but its last token from the first's KV slot.
    const prompt = 'metrics for a prompt long enough to be reused from the cache '.repeat(2);
    await client.generate({ prompt, maxTokens: 2, seed: 1 }).collect();
    const { usage } = await client.generate({ prompt, maxTokens: 8, seed: 1 }).collect();
    expect(usage.promptTokens).toBeGreaterThan(16);
    const health = await (await fetch(`http://127.0.0.1:${axon.port}/health`)).json();
    expect(health).toMatchObject({ status: 'ok', hotkey: keys.miner.address, protocol: 1, model_id: expect.any(String), connections: 1 });
    const metrics = await (await fetch(`http://127.0.0.1:${axon.port}/metrics`)).text();
    expect(metrics).toMatch(/axon_requests_total\{op="generate",outcome="ok"\} 2/);
    expect(metrics).toMatch(new RegExp(`axon_tokens_total ${2 + usage.completionTokens}\\b`));
    expect(metrics).toMatch(new RegExp(`axon_prompt_tokens_total\\{cache="hit"\\} ${usage.promptTokens - 1}\\b`));
    expect(metrics).toMatch(new RegExp(`axon_prompt_tokens_total\\{cache="miss"\\} ${usage.promptTokens + 1}\\b`));
    expect(metrics).toMatch(/engine_active_sequences 0/);
    expect(metrics).toMatch(/axon_connections 1/);
    expect(metrics).toMatch(/axon_ttft_seconds_count 2/);
    expect((await fetch(`http://127.0.0.1:${axon.port}/nope`)).status).toBe(404);
    const line = lines.filter((l) => l.event === 'request' && l.op === 'generate').at(-1);
    expect(line).toMatchObject({ validator: keys.alice.address, outcome: 'ok', tokens: usage.completionTokens, cached_prompt_tokens: usage.promptTokens - 1, finish_reason: expect.stringMatching(/length|stop/) });
    expect(line).toHaveProperty('ttft_ms');
    expect(line).toHaveProperty('tokens_per_s');
    await client.close();
    await axon.close();
  });

  test('graceful shutdown finishes short work, cancels long work, then refuses connections', async () => {
    const axon = await startAxon();
    const client = await ValidatorClient.connect({ url: axon.url, signer: keys.alice, minerHotkey: keys.miner.address });
    // The grace period is sized from the generator's own speed: ample for 5 tokens, far too short for LONG.
    const t0 = performance.now();
    await client.generate({ prompt: 'short', maxTokens: 5 }).collect();
    const graceMs = Math.ceil((performance.now() - t0) * 4) + 200;
    const short = client.generate({ prompt: 'short', maxTokens: 5 });
    const longer = client.generate({ prompt: 'longer', maxTokens: LONG });
    await waitFor('both to start', () => axon.server.stats().activeRequests === 2);
    const closing = axon.server.close(graceMs);
    expect(['length', 'stop']).toContain((await short.collect()).finishReason);
    await expect(longer.result).rejects.toMatchObject({ code: 'OVERLOADED' });
    await closing;
    await expect(ValidatorClient.connect({ url: axon.url, signer: keys.alice, minerHotkey: keys.miner.address, connectTimeoutMs: 1000 })).rejects.toThrow();
    await client.close();
  });

  test('serve(): wallet-less dev key, metagraph file reloaded on change', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'metagraph-'));
    const file = join(dir, 'metagraph.json');
    const only = metagraphJson(keys);
    only.neurons = only.neurons.filter((n) => n.hotkey !== keys.bob.address);
    await writeFile(file, JSON.stringify(only));
    const handle = await serve(await createTestGenerator(), {
      port: 0,
      hotkeyUri: '//Miner',
      metagraph: file,
      metagraphPollMs: 20,
      logger: pino({ level: 'silent' }),
      processMetrics: false,
    });
    expect(handle.hotkey).toBe(keys.miner.address);
    const peer = await RawPeer.connect(handle.url);
    const before = ping(keys.bob);
    peer.send(before);
    expect((await peer.until(before.id))[0].parsed).toMatchObject({ body: { code: 'NOT_REGISTERED' } });
    // Replace the file atomically, as a metagraph syncer would.
    await writeFile(`${file}.tmp`, JSON.stringify(metagraphJson(keys)));
    await rename(`${file}.tmp`, file);
    await waitFor('the reload', () => handle.server.policy.metagraph!.neurons.has(keys.bob.address));
    const after = ping(keys.bob);
    peer.send(after);
    expect((await peer.until(after.id))[0].frame.type).toBe('pong');
    // A broken file keeps the previous metagraph.
    await writeFile(file, '{ not json');
    await sleep(100);
    expect(handle.server.policy.metagraph!.neurons.has(keys.bob.address)).toBe(true);
    peer.close();
    await handle.close(100);
    await expect(serve(await createTestGenerator(), { port: 0, hotkeyUri: '//Miner', logger: pino({ level: 'silent' }) })).rejects.toThrow(/no validator could be admitted/);
  });
});

describe.each(verifying)('client verification, verifying %s', (_mode, cryptoPool) => {
  /** A fake miner that answers every request with frames built by `answer` (then closes the socket when `hangUp`). */
  async function fakeMiner(answer: (request: RequestFrame) => Uint8Array[], hangUp = false): Promise<{ url: string; close: () => void }> {
    const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
    await once(wss, 'listening');
    wss.on('connection', (ws) => {
      ws.on('message', (data) => {
        for (const frame of answer(decodeRequestFrame(data as Buffer))) ws.send(frame);
        if (hangUp) ws.close(1001, 'bye');
      });
    });
    const { port } = wss.address() as { port: number };
    return { url: `ws://127.0.0.1:${port}`, close: () => wss.close() };
  }
  const respond = (signer: Signer, request: RequestFrame, type: 'token' | 'done' | 'pong', body: unknown) =>
    encodeFrame(signResponse(signer, { type, id: request.id, signedFor: request.signed_by, body: encodeBody(body) }));
  const pong = { hotkey: keys.miner.address, protocol: 1, version: '0', model_id: 'm', weights_digest: '', adapter: '', backend: '', queue_depth: 0 };
  const token = (index: number) => ({ tokens: [{ index, token_id: 1, text: 'a', logprob: -1, top_logprobs: [] }] });
  const done = { finish_reason: 'length', usage: { prompt_tokens: 1, completion_tokens: 2 }, timing: { ttft_ms: 1, total_ms: 2, tokens_per_s: 1 }, transcript_sha256: '0'.repeat(64) };

  test('a frame signed by another key, a wrong transcript, tokens out of order', async () => {
    const impostor = await fakeMiner((req) => [respond(keys.bob, req, 'pong', { ...pong, hotkey: keys.bob.address })]);
    const c1 = await ValidatorClient.connect({ url: impostor.url, signer: keys.alice, minerHotkey: keys.miner.address, cryptoPool: cryptoPool() });
    await expect(c1.ping()).rejects.toThrow(VerificationError);
    impostor.close();

    const liar = await fakeMiner((req) => [respond(keys.miner, req, 'token', token(0)), respond(keys.miner, req, 'token', token(1)), respond(keys.miner, req, 'done', done)]);
    const c2 = await ValidatorClient.connect({ url: liar.url, signer: keys.alice, minerHotkey: keys.miner.address, cryptoPool: cryptoPool() });
    await expect(c2.generate({ prompt: 'a', maxTokens: 2 }).collect()).rejects.toThrow(/transcript digest mismatch/);
    liar.close();

    const shuffler = await fakeMiner((req) => [respond(keys.miner, req, 'token', token(1))]);
    const c3 = await ValidatorClient.connect({ url: shuffler.url, signer: keys.alice, minerHotkey: keys.miner.address, cryptoPool: cryptoPool() });
    await expect(c3.generate({ prompt: 'a', maxTokens: 2 }).collect()).rejects.toThrow(/index 1 arrived where 0/);
    shuffler.close();
    await Promise.all([c1.close(), c2.close(), c3.close()]);
  });

  test('frames that arrived before the miner hung up are acted on before the close fails what is left', async () => {
    const transcript = createHash('sha256').update(encodeBody(token(0))).update(encodeBody(token(1))).digest('hex');
    const quitter = await fakeMiner(
      (req) => [respond(keys.miner, req, 'token', token(0)), respond(keys.miner, req, 'token', token(1)), respond(keys.miner, req, 'done', { ...done, transcript_sha256: transcript })],
      true,
    );
    const client = await ValidatorClient.connect({ url: quitter.url, signer: keys.alice, minerHotkey: keys.miner.address, cryptoPool: cryptoPool() });
    const result = await client.generate({ prompt: 'a', maxTokens: 2 }).collect();
    expect([result.tokens.map((t) => t.index), result.transcriptSha256, result.framesVerified]).toEqual([[0, 1], transcript, 3]);
    await expect(client.ping()).rejects.toThrow(/not open|closed/);
    quitter.close();
    await client.close();
  });

  test('an error frame is an AxonError with the wire code', async () => {
    const axon = await startAxon();
    const client = await ValidatorClient.connect({ url: axon.url, signer: keys.charlie, minerHotkey: keys.miner.address, cryptoPool: cryptoPool() });
    await expect(client.ping()).rejects.toSatisfy((err) => err instanceof AxonError && err.code === 'NOT_REGISTERED');
    await client.close();
    await axon.close();
  });
});

describe('CLI commands', () => {
  test('ping and query', async () => {
    const axon = await startAxon();
    const out = new PassThrough();
    const err = new PassThrough();
    const text = (s: PassThrough) => (s.read() ?? '').toString();
    await pingCommand({ url: axon.url, hotkeyUri: '//Alice', count: '3' }, out);
    const pingText = text(out);
    expect(pingText).toMatch(new RegExp(`miner\\s+${keys.miner.address}\\s+\\(signature OK`));
    expect(pingText).toMatch(/latency\s+min .* over 3/);
    await queryCommand('hello', { url: axon.url, miner: keys.miner.address, hotkeyUri: '//Alice', maxTokens: '6', seed: '2', logprobs: '1' }, out, err);
    expect(text(out).length).toBeGreaterThan(1);
    const summary = text(err);
    expect(summary).toMatch(/finish\s+(length|stop) \(\d+ tokens/);
    expect(summary).toMatch(/transcript\s+sha256 [0-9a-f]{64} verified/);
    await queryCommand('hello', { url: axon.url, hotkeyUri: '//Alice', maxTokens: '3', json: true }, out, err);
    expect(JSON.parse(text(out))).toMatchObject({ finishReason: expect.stringMatching(/length|stop/), usage: { completionTokens: expect.any(Number) } });
    await expect(queryCommand('x', { url: axon.url, hotkeyUri: '//Charlie', maxTokens: '3' }, out, err)).rejects.toMatchObject({ code: 'NOT_REGISTERED' });
    await axon.close();
  });
});

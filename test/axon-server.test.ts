// The axon over a real WebSocket on loopback with real sr25519 keys: every policy step rejects with
// its code and the good frame is accepted right after on the same connection; replay, wrong miner,
// altered body; cancel, disconnect, slow reader, timeouts, limits, metrics, logs, shutdown, the
// client's own verification (each client test twice: verifying on the test's thread, and on a pool of
// worker threads that every pooled client of the file shares), and the ping/query commands.
// Nothing here depends on the machine's speed: a generation that must still be running when the test
// acts on it is held (support/held-generator.ts, or the real engine with its decode held), and the
// timeouts, token buckets and grace periods are checked on fake timers at their configured values;
// the test waits for events (a frame, a close, a log line), never for a while.
import { createHash } from 'node:crypto';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { once } from 'node:events';
import { mkdtemp, writeFile, rename } from 'node:fs/promises';
import { connect as tcpConnect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { encode } from '@msgpack/msgpack';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, onTestFinished, test, vi } from 'vitest';
import { WebSocket, WebSocketServer } from 'ws';
import { BadRequestError, OverloadedError } from '../src/errors.ts';
import type { GenerateOptions, GenerateRequest, GeneratedToken, GenerationSummary, TextGenerator } from '../src/engine/types.ts';
import type { Engine } from '../src/engine/engine.ts';
import { AxonError, VerificationError, decodeRequestFrame, encodeBody, encodeFrame, type RequestFrame } from '../src/wire/protocol.ts';
import type { CryptoPool } from '../src/wire/crypto-pool.ts';
import { serve, serveUntilStopped } from '../src/axon/serve.ts';
import { signRequest, signResponse, type Signer } from '../src/wire/signing.ts';
import { ValidatorClient, createVerifyPool } from '../src/validator/client.ts';
import { pingCommand, queryCommand } from '../src/validator/commands.ts';
import { LONG, RawPeer, captureLogger, devKeys, metagraphJson, settle, startAxon, waitFor, type TestAxon } from './support/axon-harness.ts';
import { heldGenerator } from './support/held-generator.ts';
import { createTestGenerator, holdDecode } from './support/test-engine.ts';

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

/** A ping over `peer` is answered with a pong; fails if the server closes the connection instead. */
async function roundTrip(peer: RawPeer, signer: Signer = keys.alice): Promise<void> {
  const p = ping(signer);
  peer.send(p);
  const closedInstead = peer.closed.then(({ code, reason }) => {
    throw new Error(`the connection was closed (${code} ${reason}) instead of answering`);
  });
  const [answer] = await Promise.race([peer.until(p.id), closedInstead]);
  expect([answer.frame.id, answer.frame.type]).toEqual([p.id, 'pong']);
}

/**
 * Fake timers for the rest of the test: the server's timers and performance.now() (what it measures
 * idle time, token buckets and grace periods with) move only when the test advances them, while
 * sockets, worker threads and setImmediate run for real. The harness waits on real timers.
 */
function fakeTime(toFake: Array<'setTimeout' | 'clearTimeout' | 'setInterval' | 'clearInterval' | 'performance'>): void {
  vi.useFakeTimers({ toFake });
  onTestFinished(() => {
    vi.useRealTimers();
  });
}

describe('policy steps over a socket', () => {
  // Long enough for a generation on a loaded machine (its first one compiles the model's shaders).
  const REQUEST_TIMEOUT_MS = 60_000;
  let axon: TestAxon;
  let peer: RawPeer;
  /** The server's clock: the wall clock, or a moment the test holds it at. */
  const now = { frozen: undefined as number | undefined };
  const serverNow = () => now.frozen ?? Date.now();
  beforeAll(async () => {
    axon = await startAxon({
      clock: serverNow,
      limits: { maxFrameBytes: 64 * 1024, maxPromptBytes: 1000, requestTimeoutMs: REQUEST_TIMEOUT_MS, maxBadFramesPerSecond: 1000 },
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
    const good = ping(keys.alice, { timestamp: serverNow() });
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

  test('STALE: too old and too far in the future, to the millisecond', async () => {
    // The server judges every frame at `t` (its clock held there), so the edges are exact however
    // long the frames take to arrive: 8000 ms (Epistula) + requestTimeoutMs back, 2000 ms ahead.
    const window = 8000 + REQUEST_TIMEOUT_MS;
    const skew = 2000;
    const t = Date.now();
    now.frozen = t;
    try {
      await rejects(ping(keys.alice, { timestamp: t - window - 1 }), 'STALE');
      await rejects(ping(keys.alice, { timestamp: t + skew + 1 }), 'STALE');
      // At both edges of the window is fine.
      peer.send(ping(keys.alice, { timestamp: t - window }));
      expect((await peer.next()).frame.type).toBe('pong');
      peer.send(ping(keys.alice, { timestamp: t + skew }));
      expect((await peer.next()).frame.type).toBe('pong');
    } finally {
      now.frozen = undefined;
    }
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
    // The first generation holds (one token, then nothing) until it is cancelled, so it is running
    // whenever the later frames arrive. The bucket refills one request per 100 000 s: more than any
    // run of this test, which the test timeout bounds, could see.
    const held = heldGenerator(1);
    const axon = await startAxon({ generator: held, policy: { ratePerSecond: 1e-5, rateBurst: 3, maxConcurrentPerHotkey: 1, allow: [keys.eve.address] } });
    const peer = await RawPeer.connect(axon.url);
    const long = generate({ prompt: 'long', max_tokens: LONG });
    peer.send(long);
    expect((await peer.next()).frame).toMatchObject({ id: long.id, type: 'token' });
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
    expect(held.calls.map((c) => [c.request.prompt, c.signal?.aborted, c.ended])).toEqual([['long', true, true]]); // the refused one never reached it
    const fromEve = ping(keys.eve);
    peer.send(fromEve);
    expect((await peer.until(fromEve.id))[0].frame.type).toBe('pong');
    peer.close();
    await axon.close();
  });

  test('a peer that keeps sending refused frames, or too many frames, is disconnected', async () => {
    // The buckets refill with performance.now(), held still here: a connection gets exactly its
    // bucket (twice the rate) however long the frames take to arrive and be checked.
    fakeTime(['performance']);
    const maxBadFramesPerSecond = 2;
    const maxFramesPerSecond = 5;
    const axon = await startAxon({ generator: heldGenerator(), limits: { maxBadFramesPerSecond, maxFramesPerSecond } });
    const bad = await RawPeer.connect(axon.url);
    const badBurst = 2 * maxBadFramesPerSecond;
    for (let i = 0; i <= badBurst; i++) bad.send(new Uint8Array([0xc1])); // one more than the bucket
    const answers: string[] = [];
    const answeredAll = (async () => {
      while (answers.length <= badBurst) {
        const r = await bad.next();
        answers.push(r.parsed.type === 'error' ? r.parsed.body.code : r.frame.type);
      }
      return 'every bad frame was answered';
    })();
    expect(await Promise.race([bad.closed, answeredAll])).toEqual({ code: 1008, reason: 'too many bad frames' });
    // At most one error frame per token of the bucket, then the close (answers still being signed when it closed are dropped).
    expect(answers.length).toBeLessThanOrEqual(badBurst);
    expect(answers.every((code) => code === 'BAD_FRAME')).toBe(true);
    // Good frames: the whole bucket is served, the frame after it closes the connection.
    const chatty = await RawPeer.connect(axon.url);
    const burst = 2 * maxFramesPerSecond;
    const pings = Array.from({ length: burst }, () => ping());
    for (const frame of pings) chatty.send(frame);
    for (const frame of pings) await chatty.until(frame.id);
    expect(chatty.ws.readyState).toBe(WebSocket.OPEN);
    const over = ping();
    chatty.send(over);
    const answered = chatty.until(over.id).then(() => 'the frame over the bucket was answered');
    expect(await Promise.race([chatty.closed, answered])).toEqual({ code: 1008, reason: 'frame rate limit exceeded' });
    const fine = await RawPeer.connect(axon.url);
    const p = ping();
    fine.send(p);
    expect((await fine.until(p.id))[0].frame.type).toBe('pong');
    fine.close();
    await axon.close();
  });

  test('connection limits, handshake and idle timeouts', async () => {
    // The server's timers and clock move only when the test advances them: each timeout is checked
    // at its configured value, to the millisecond, with sockets and signature checks running for real.
    fakeTime(['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'performance']);
    const handshakeTimeoutMs = 150;
    const idleTimeoutMs = 500;
    const axon = await startAxon({ generator: heldGenerator(), limits: { maxConnectionsPerIp: 2, handshakeTimeoutMs, idleTimeoutMs } });
    // The server's end of every TCP connection to it, by the client's port.
    const accepted = new Map<number, Socket>();
    const onSocket = (message: unknown) => {
      const { socket } = message as { socket: Socket };
      if (socket.localPort === axon.port) accepted.set(socket.remotePort!, socket);
    };
    subscribe('net.server.socket', onSocket);
    onTestFinished(() => {
      unsubscribe('net.server.socket', onSocket);
    });

    const a = await RawPeer.connect(axon.url);
    const b = await RawPeer.connect(axon.url);
    await expect(RawPeer.connect(axon.url)).rejects.toThrow(/429/);

    // A TCP connection that never sends its upgrade is dropped when the handshake timeout passes.
    const silent = tcpConnect(axon.port, '127.0.0.1');
    silent.on('error', () => {});
    const silentClosed = once(silent, 'close');
    await once(silent, 'connect');
    await waitFor("the server's end of the silent connection", () => accepted.has(silent.localPort!));
    const serverEnd = accepted.get(silent.localPort!)!;
    await vi.advanceTimersByTimeAsync(handshakeTimeoutMs - 1);
    expect(serverEnd.destroyed).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    expect(serverEnd.destroyed).toBe(true);
    await silentClosed;

    // The WebSockets (upgraded in time) are still open. `a` talks at idle - 1 ms ...
    await vi.advanceTimersByTimeAsync(idleTimeoutMs - 1 - handshakeTimeoutMs);
    await roundTrip(a);
    // ... so when the idle timeout passes, the quiet `b` is closed and `a` is not.
    await vi.advanceTimersByTimeAsync(1);
    expect((await b.closed).code).toBe(1000);
    await roundTrip(a);
    // `a`, quiet from now on, is closed once a whole idle timeout has passed since it last talked.
    await vi.advanceTimersByTimeAsync(idleTimeoutMs - 1);
    await roundTrip(a);
    await vi.advanceTimersByTimeAsync(idleTimeoutMs);
    expect((await a.closed).code).toBe(1000);
    await axon.close();
  });
});

describe('streaming', () => {
  let axon: TestAxon;
  let engine: TextGenerator;
  /** Serves prompts starting with 'held:' (generations a test cancels); the real engine serves the rest. */
  const held = heldGenerator(3);
  beforeAll(async () => {
    engine = await createTestGenerator();
    const generator: TextGenerator = {
      info: () => engine.info(),
      close: (g) => engine.close(g),
      generate: (request, options) => (request.prompt?.startsWith('held:') ? held : engine).generate(request, options),
    };
    axon = await startAxon({ generator });
  });
  afterAll(async () => {
    await axon.close();
    await engine.close(0);
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

    // The held generations yield 3 tokens, then nothing until they are aborted: only a cancel ends them.
    test('cancel ends the stream with finish_reason cancelled', async () => {
      const calls = held.calls.length;
      const stream = client.generate({ prompt: 'held: cancel me', maxTokens: LONG });
      let n = 0;
      for await (const _ of stream) if (++n === 3) stream.cancel();
      const result = await stream.result;
      expect(result.finishReason).toBe('cancelled');
      expect(result.usage.completionTokens).toBe(3);
      expect(result.tokens.map((t) => t.index)).toEqual([0, 1, 2]);
      const call = held.calls[calls];
      expect([call.request.prompt, call.signal?.aborted, call.ended]).toEqual(['held: cancel me', true, true]);
      expect(axon.server.stats().activeRequests).toBe(0);
    });

    test('leaving a for-await early cancels', async () => {
      const calls = held.calls.length;
      const stream = client.generate({ prompt: 'held: break', maxTokens: LONG });
      for await (const _ of stream) break;
      expect((await stream.result).finishReason).toBe('cancelled');
      expect([held.calls[calls].signal?.aborted, held.calls[calls].ended]).toEqual([true, true]);
    });

    test('an error frame rejects the stream with its code', async () => {
      const stream = client.generate({ prompt: 'x', maxTokens: 99999 });
      await expect(stream.result).rejects.toMatchObject({ name: 'AxonError', code: 'BAD_REQUEST' });
    });
  });

  test('a closed socket aborts the generation and frees it', async () => {
    const { logger, lines } = captureLogger();
    const own = await startAxon({ logger });
    // The real engine, its decode steps held: the sequence gets its first token (from the prefill)
    // and then stays active, whatever the machine's speed, until the socket is gone.
    const decode = holdDecode(own.generator);
    onTestFinished(() => decode.restore());
    const peer = await RawPeer.connect(own.url);
    const kvBefore = own.generator.info().kvBlocksUsed;
    const frame = generate({ prompt: 'disconnect', max_tokens: LONG, temperature: 0 });
    peer.send(frame);
    expect((await peer.next()).frame).toMatchObject({ id: frame.id, type: 'token' });
    // (With the step after it, fed on the GPU: the engine submits both before reading the first.)
    await waitFor('the first decode step to be held', () => decode.held() >= 1);
    expect(own.generator.info().activeSequences).toBe(1);
    expect(own.generator.info().kvBlocksUsed).toBeGreaterThan(kvBefore);
    peer.ws.terminate();
    await waitFor('the server to see the close', () => own.server.stats().connections === 0);
    decode.release(); // the held step ends; the engine finds the sequence aborted at its next turn
    await waitFor('the sequence and its KV blocks to be freed', () => {
      const info = own.generator.info();
      return info.activeSequences === 0 && info.kvBlocksUsed <= kvBefore && own.server.stats().activeRequests === 0;
    });
    await waitFor('the log line', () => lines.some((l) => l.outcome === 'disconnected'));
    const line = lines.find((l) => l.outcome === 'disconnected')!;
    expect(line.tokens).toBe(1); // the one token frame sent before the close
    await own.close();
  });

  test('a slow reader is bounded: generation pauses, then the request is dropped', async () => {
    // A generator that produces big tokens as fast as it is asked, counts how many it was asked for,
    // and never stops by itself (it ignores the abort signal: the server must stop asking).
    let pulled = 0;
    let pulledAtAbort: number | undefined;
    let returned!: () => void;
    const left = new Promise<void>((resolve) => (returned = resolve));
    const firehose: TextGenerator = {
      info: () => ({ modelId: 'firehose', weightsDigest: '', adapter: '', backend: '', queueDepth: 0, activeSequences: 0, kvBlocksUsed: 0, kvBlocksTotal: 0 }),
      close: async () => {},
      async *generate(_req, opts) {
        opts?.signal?.addEventListener('abort', () => (pulledAtAbort = pulled));
        try {
          for (let index = 0; ; index++) {
            pulled++;
            await new Promise((r) => setImmediate(r));
            yield { index, tokenId: index, text: 'x'.repeat(8192), logprob: -1, topLogprobs: [] };
          }
        } finally {
          returned();
        }
      },
    };
    const maxBufferedBytes = 256 * 1024;
    const own = await startAxon({ generator: firehose, limits: { maxBufferedBytes, slowReaderTimeoutMs: 400, maxTokens: 1_000_000 } });
    const peer = await RawPeer.connect(own.url);
    peer.ws.pause(); // stop reading: the kernel buffers fill, then the server's
    const frame = generate({ prompt: 'firehose', max_tokens: 1_000_000 });
    peer.send(frame);
    await left; // the server gave up on the request and let go of the generator
    expect(pulledAtAbort).toBeDefined(); // by aborting it
    expect(pulled).toBe(pulledAtAbort); // and asked for no token after that
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
    // The KV pool: 16 full contexts of 256 tokens (the test engine's), nothing held now, the prompt's
    // blocks still cached.
    expect(metrics).toMatch(/engine_kv_blocks_total 256\b/);
    expect(metrics).toMatch(/engine_kv_blocks_used 0\b/);
    expect(metrics).toMatch(/engine_kv_blocks_shared 0\b/);
    expect(metrics).toMatch(/engine_kv_blocks_cached [1-9]\d*\b/);
    // The signed info op reports the same pool.
    const info = await client.info();
    expect(info).toMatchObject({ active_sequences: 0, kv_blocks_total: 256, kv_blocks_used: 0, kv_blocks_shared: 0 });
    expect(info.kv_blocks_cached).toBeGreaterThan(0);
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

  test('a lost GPU: the generation in flight fails naming it, /health answers 503 gpu_lost, new requests are refused', async () => {
    const { logger, lines } = captureLogger('info');
    const axon = await startAxon({ logger }); // its own engine, on a device of its own
    const engine = axon.generator as Engine;
    const decode = holdDecode(engine);
    onTestFinished(() => decode.restore());
    const client = await ValidatorClient.connect({ url: axon.url, signer: keys.alice, minerHotkey: keys.miner.address });
    const running = client.generate({ prompt: 'lost', maxTokens: LONG, seed: 1 });
    await waitFor('the first decode step to be held', () => decode.held() >= 1);
    // A real loss of the device, as a driver reset would cause (not through Gpu.destroy, which is a close).
    engine.gpu.device.destroy();
    expect(await engine.gpu.lost).toBe(engine.gpu.lostError);
    decode.release();
    await expect(running.result).rejects.toMatchObject({ code: 'INTERNAL' });
    // The log names the loss (validators get no internals).
    await waitFor('the request log line', () => lines.some((l) => l.event === 'request' && l.outcome === 'INTERNAL'));
    const failed = lines.find((l) => l.event === 'request' && l.outcome === 'INTERNAL') as { err?: { message?: string } };
    expect(failed.err?.message).toMatch(/the GPU device was lost \(destroyed/);
    const health = await fetch(`http://127.0.0.1:${axon.port}/health`);
    expect(health.status).toBe(503);
    expect(await health.json()).toMatchObject({ status: 'gpu_lost', gpu_lost: expect.stringMatching(/GPU device was lost.*restart/) });
    expect(await (await fetch(`http://127.0.0.1:${axon.port}/metrics`)).text()).toMatch(/engine_gpu_lost 1\b/);
    // A new request fails at once with the same loss, without touching the device.
    await expect(client.generate({ prompt: 'after', maxTokens: 2 }).result).rejects.toMatchObject({ code: 'INTERNAL' });
    await expect(async () => {
      for await (const _ of engine.generate({ prompt: 'after', maxTokens: 2 })) { /* refused before any token */ }
    }).rejects.toBe(engine.gpu.lostError);
    await client.close();
    await axon.close();
  });

  test('serveUntilStopped (serve, start): a lost GPU closes the axon at once and throws the loss, for exit status 1', async () => {
    const engine = (await createTestGenerator()) as Engine; // its own device
    const handle = await serve(engine, { port: 0, hotkeyUri: '//Miner', allow: [keys.alice.address], logger: pino({ level: 'silent' }), processMetrics: false });
    const listeners = process.listenerCount('SIGTERM');
    const lines: string[] = [];
    const serving = serveUntilStopped(handle, engine.gpu, (line) => lines.push(line));
    expect((await fetch(`http://127.0.0.1:${handle.port}/health`)).status).toBe(200);
    engine.gpu.device.destroy();
    await expect(serving).rejects.toBe(await engine.gpu.lost);
    expect(lines.join('\n')).toMatch(/^the GPU device was lost \(destroyed.*\nshutting down$/s);
    await expect(fetch(`http://127.0.0.1:${handle.port}/health`)).rejects.toThrow(); // closed
    expect(process.listenerCount('SIGTERM')).toBe(listeners); // its signal handlers are gone
  });

  test('graceful shutdown finishes short work, cancels long work, then refuses connections', async () => {
    // Both generations hold after their first token; the test finishes the short one during the
    // grace period, and moves the server's clock (its grace timer) by hand: the long one is
    // cancelled exactly when the grace period ends, not a millisecond before.
    fakeTime(['setTimeout', 'clearTimeout']);
    const held = heldGenerator(1);
    const axon = await startAxon({ generator: held });
    const client = await ValidatorClient.connect({ url: axon.url, signer: keys.alice, minerHotkey: keys.miner.address });
    const short = client.generate({ prompt: 'short', maxTokens: 5 });
    const longer = client.generate({ prompt: 'longer', maxTokens: LONG });
    const [shortCall, longCall] = [await held.call(0), await held.call(1)];
    expect([shortCall.request.prompt, longCall.request.prompt]).toEqual(['short', 'longer']);
    const graceMs = 5000;
    const closing = axon.server.close(graceMs);
    shortCall.finish();
    const done = await short.collect();
    expect([done.finishReason, done.tokens.length]).toEqual(['length', 1]);
    await vi.advanceTimersByTimeAsync(graceMs - 1);
    await settle();
    expect(longCall.signal?.aborted).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    await expect(longer.result).rejects.toMatchObject({ code: 'OVERLOADED', message: expect.stringMatching(/shutting down/) });
    await closing;
    vi.useRealTimers();
    await expect(ValidatorClient.connect({ url: axon.url, signer: keys.alice, minerHotkey: keys.miner.address })).rejects.toThrow();
    await client.close();
  });

  test('serve(): wallet-less dev key, metagraph file reloaded on change', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'metagraph-'));
    const file = join(dir, 'metagraph.json');
    const only = metagraphJson(keys);
    only.neurons = only.neurons.filter((n) => n.hotkey !== keys.bob.address);
    await writeFile(file, JSON.stringify(only));
    const { logger, lines } = captureLogger();
    const reloads = () => lines.filter((l) => l.event === 'metagraph');
    const handle = await serve(heldGenerator(), {
      port: 0,
      hotkeyUri: '//Miner',
      metagraph: file,
      metagraphPollMs: 20,
      logger,
      processMetrics: false,
    });
    expect(handle.hotkey).toBe(keys.miner.address);
    // Frames signed before the server's start (+ the clock skew it allows) are refused: sign from then on.
    const fresh = () => ping(keys.bob, { timestamp: Math.max(Date.now(), handle.server.policy.notBefore) });
    const peer = await RawPeer.connect(handle.url);
    const before = fresh();
    peer.send(before);
    expect((await peer.until(before.id))[0].parsed).toMatchObject({ body: { code: 'NOT_REGISTERED' } });
    // Replace the file atomically, as a metagraph syncer would.
    await writeFile(`${file}.tmp`, JSON.stringify(metagraphJson(keys)));
    await rename(`${file}.tmp`, file);
    await waitFor('the reload', () => handle.server.policy.metagraph!.neurons.has(keys.bob.address));
    expect(reloads().map((l) => [l.level, l.neurons])).toEqual([[30, 4]]);
    const after = fresh();
    peer.send(after);
    expect((await peer.until(after.id))[0].frame.type).toBe('pong');
    // A broken file keeps the previous metagraph: once the watcher has read it (and said so), Bob is still admitted.
    await writeFile(file, '{ not json');
    await waitFor('the broken file to be read', () => reloads().length > 1);
    expect(reloads().slice(1).every((l) => l.level === 40)).toBe(true); // a warning, no reload
    expect(handle.server.policy.metagraph!.neurons.has(keys.bob.address)).toBe(true);
    const still = fresh();
    peer.send(still);
    expect((await peer.until(still.id))[0].frame.type).toBe('pong');
    peer.close();
    await handle.close(100);
    await expect(serve(heldGenerator(), { port: 0, hotkeyUri: '//Miner', logger: pino({ level: 'silent' }) })).rejects.toThrow(/no validator could be admitted/);
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

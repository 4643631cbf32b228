// Attacks on the axon, each over a real loopback socket with real sr25519 keys, and the guard that
// answers it: decode bombs refused unread, idle TCP sockets capped per address at accept, limits the
// runtime cannot honour refused at start, refused frames paid for by their sender (and error frames
// for unverified frames addressed to no one), a pipelining validator answered rather than cut off,
// over-long prompts refused before tokenisation, frames signed before a restart refused, invalid UTF-8
// text answered like any text frame. Nothing here waits on the wall clock: each step waits for the
// event it needs (a frame, a close, a counter).
import { connect as tcpConnect, type Socket } from 'node:net';
import { Command } from 'commander';
import { afterAll, beforeAll, describe, expect, test, vi } from 'vitest';
import { WebSocket } from 'ws';
import { Engine } from '../src/engine/engine.ts';
import type { TextGenerator } from '../src/engine/types.ts';
import { maxBytesPerToken } from '../src/engine/tokenizer.ts';
import { FRAME_SHAPE, encodeFrame, msgpackShapeError } from '../src/wire/protocol.ts';
import { addServeOptions, parseServeOptions } from '../src/axon/serve.ts';
import { DEFAULT_LIMITS, resolveLimits } from '../src/axon/limits.ts';
import { signRequest, type Signer } from '../src/wire/signing.ts';
import { ValidatorClient } from '../src/validator/client.ts';
import { RawPeer, devKeys, sleep, startAxon, waitFor, type Received, type TestAxon } from './support/axon-harness.ts';
import { warmTestShaders } from './support/test-engine.ts';

const keys = await devKeys();
// The engine's kernels compiled before any test times anything (test/support/test-engine.ts).
beforeAll(warmTestShaders);
const TEST_WORKER = new URL('./support/crypto-test-worker.mjs', import.meta.url);

const ping = (signer: Signer = keys.alice, fields: Partial<Parameters<typeof signRequest>[1]> = {}) =>
  signRequest(signer, { op: 'ping', payload: {}, signedFor: keys.miner.address, ...fields });
const generate = (payload: Record<string, unknown>, signer: Signer = keys.alice) =>
  signRequest(signer, { op: 'generate', payload, signedFor: keys.miner.address });
const codeOf = (r: Received) => (r.parsed.type === 'error' ? r.parsed.body.code : r.frame.type);
const messageOf = (r: Received) => (r.parsed.type === 'error' ? r.parsed.body.message : '');

/** Frames until the peer's socket closes, and the close. */
async function drain(peer: RawPeer): Promise<{ frames: Received[]; close: { code: number; reason: string } }> {
  const frames: Received[] = [];
  let closed: { code: number; reason: string } | undefined;
  void peer.closed.then((c) => (closed = c));
  for (;;) {
    if (peer.pending > 0) frames.push(await peer.next());
    else if (closed) return { frames, close: closed };
    else await sleep(5);
  }
}

/** A flag the test worker waits on before checking a held frame's signature; release() lets it go. */
function holdGate() {
  const buffer = new SharedArrayBuffer(4);
  const flag = new Int32Array(buffer);
  return {
    buffer,
    release: () => {
      Atomics.store(flag, 0, 1);
      Atomics.notify(flag, 0);
    },
  };
}

/** No GPU needed: streams a token every 10 ms until aborted. */
const endless: TextGenerator = {
  info: () => ({ modelId: 'endless', weightsDigest: '', adapter: '', backend: '', queueDepth: 0, activeSequences: 0, kvBlocksUsed: 0, kvBlocksTotal: 0 }),
  close: async () => {},
  async *generate(_request, options) {
    for (let index = 0; ; index++) {
      if (options?.signal?.aborted) return { finishReason: 'cancelled', promptTokens: 1, completionTokens: index, ttftMs: 0, totalMs: 0, tokensPerS: 0 };
      await sleep(10);
      yield { index, tokenId: index, text: 'x', logprob: -1, topLogprobs: [] };
    }
  },
};

describe('decode bombs', () => {
  // A frame under the 1 MiB cap made of nested one-element arrays (or maps): decoding it took about a
  // second of CPU and hundreds of MiB. The frame's shape (one map of scalars) is checked on the bytes first.
  const nested = (header: number[], bytes = (1 << 20) - 64) => {
    const out = new Uint8Array(bytes).fill(0xc0); // nil where the nesting ends
    for (let i = 0; i + header.length < bytes; i += header.length) out.set(header, i);
    return out;
  };
  const arrays = nested([0x91]); // [[[[...]]]]
  const maps = nested([0x81, 0xa1, 0x61]); // {a: {a: {...}}}

  test('the shape scan refuses them at the first level too deep, and passes a real frame', () => {
    expect(msgpackShapeError(arrays, FRAME_SHAPE)).toMatch(/nested deeper than 1/);
    expect(msgpackShapeError(maps, FRAME_SHAPE)).toMatch(/nested deeper than 1/);
    expect(msgpackShapeError(encodeFrame(ping()), FRAME_SHAPE)).toBeUndefined();
    expect(msgpackShapeError(Uint8Array.from([0xdd, 0xff, 0xff, 0xff, 0xff]), { maxDepth: 3, maxLength: 2 ** 32 })).toMatch(/truncated/);
    expect(msgpackShapeError(Uint8Array.from([0xdd, 0xff, 0xff, 0xff, 0xff]), FRAME_SHAPE)).toMatch(/4294967295 entries/);
    expect(msgpackShapeError(Uint8Array.from([0x80, 0x00]), FRAME_SHAPE)).toMatch(/trailing/);
  });

  test('a nested frame of ~1 MiB is refused unread (BAD_FRAME, spending the bad-frame budget); other connections are served', async () => {
    const axon = await startAxon({ limits: { maxBadFramesPerSecond: 1 } }); // a budget of 2
    try {
      const honest = await RawPeer.connect(axon.url);
      const bomber = await RawPeer.connect(axon.url);
      bomber.send(arrays);
      const first = await bomber.next();
      expect([codeOf(first), first.frame.id, first.frame.signed_for, first.verified]).toEqual(['BAD_FRAME', '', '', true]);
      expect(messageOf(first)).toMatch(/refused unread: msgpack nested deeper than 1 level/); // the decoder never ran
      const p = ping();
      honest.send(p);
      expect(codeOf((await honest.until(p.id))[0])).toBe('pong');
      // More of them use up the connection's budget of refused frames, and it is closed.
      for (let i = 0; i < 16; i++) bomber.send(i % 2 ? arrays : maps);
      const { frames, close } = await drain(bomber);
      expect(close).toEqual({ code: 1008, reason: 'too many bad frames' });
      expect(frames.every((r) => codeOf(r) === 'BAD_FRAME' && /refused unread/.test(messageOf(r)))).toBe(true);
      const q = ping();
      honest.send(q);
      expect(codeOf((await honest.until(q.id))[0])).toBe('pong');
      honest.close();
    } finally {
      await axon.close();
    }
  });
});

describe('TCP slots', () => {
  test('idle TCP connections are capped per address at accept: other addresses still get WebSockets and /health', async () => {
    const axon = await startAxon({ limits: { maxConnections: 4, maxPendingConnectionsPerIp: 3, handshakeTimeoutMs: 600_000 } });
    const sockets: Socket[] = [];
    try {
      // 80 sockets from 127.0.0.2 that never send a byte: more than the server's whole connection
      // table (maxConnections + 64). All but 3 are closed at accept.
      let closed = 0;
      for (let i = 0; i < 80; i++) {
        const socket = tcpConnect({ port: axon.port, host: '127.0.0.1', localAddress: '127.0.0.2' });
        socket.on('error', () => {});
        socket.on('close', () => (closed += 1));
        sockets.push(socket);
      }
      await waitFor('all but 3 idle sockets to be closed at accept', () => closed === 77, 30_000);
      // The validator (from 127.0.0.1) connects and is served, and so is /health.
      const peer = await RawPeer.connect(axon.url);
      const p = ping();
      peer.send(p);
      expect(codeOf((await peer.until(p.id))[0])).toBe('pong');
      const health = await fetch(`http://127.0.0.1:${axon.port}/health`);
      expect(health.status).toBe(200);
      peer.close();
      expect(closed).toBe(77); // the 3 idle ones are left to the handshake timeout
    } finally {
      for (const socket of sockets) socket.destroy();
      await axon.close();
    }
  });
});

describe('limits the runtime cannot honour are refused at start', () => {
  test('resolveLimits names the flag', () => {
    expect(() => resolveLimits({ maxFrameBytes: 2 ** 32 })).toThrow(/--max-frame-bytes must be an integer in \[1, 2147483647\] \(got 4294967296\)/);
    expect(() => resolveLimits({ requestTimeoutMs: 2 ** 31 })).toThrow(/--request-timeout-ms must be an integer in \[1, 2147483647\]/);
    expect(() => resolveLimits({ handshakeTimeoutMs: 2 ** 31 })).toThrow(/--handshake-timeout-ms/);
    expect(() => resolveLimits({ idleTimeoutMs: 2 ** 31 })).toThrow(/--idle-timeout-ms/);
    expect(() => resolveLimits({ slowReaderTimeoutMs: 2 ** 31 })).toThrow(/--slow-reader-timeout-ms/);
    expect(() => resolveLimits({ tokenBatchMs: 2 ** 31 })).toThrow(/axon limit tokenBatchMs/);
    expect(resolveLimits({ maxFrameBytes: 2 ** 31 - 1, requestTimeoutMs: 2 ** 31 - 1 })).toMatchObject({ maxFrameBytes: 2 ** 31 - 1, requestTimeoutMs: 2 ** 31 - 1 });
  });

  test('serve flags', () => {
    const parse = (...args: string[]) => parseServeOptions(addServeOptions(new Command()).exitOverride().parse(['node', 'x', ...args]).opts());
    expect(() => parse('--max-frame-bytes', '4294967296')).toThrow(/--max-frame-bytes must be an integer in \[1, 2147483647\]/);
    expect(() => parse('--request-timeout-ms', '2147483648')).toThrow(/--request-timeout-ms/);
    expect(() => parse('--handshake-timeout-ms', '2147483648')).toThrow(/--handshake-timeout-ms/);
    expect(parse('--max-frame-bytes', '2147483647').limits).toEqual({ maxFrameBytes: 2147483647 });
  });
});

describe('refused frames cost their sender', () => {
  test('a registered hotkey below --min-stake is refused before its signature is checked; the refusal is addressed to no one', async () => {
    const axon = await startAxon({ cryptoWorkers: 1, policy: { minStake: 10 }, limits: { maxBadFramesPerSecond: 1 } });
    try {
      const bob = await RawPeer.connect(axon.url); // registered, stake 5
      bob.send(ping(keys.bob));
      const first = await bob.next();
      expect([codeOf(first), first.frame.signed_for, first.verified]).toEqual(['FORBIDDEN', '', true]);
      expect(axon.server.stats().crypto.verifiedInWorkers).toBe(0);
      for (let i = 0; i < 16; i++) bob.send(ping(keys.bob));
      const { frames, close } = await drain(bob);
      expect(close).toEqual({ code: 1008, reason: 'too many bad frames' });
      expect(frames.every((r) => codeOf(r) === 'FORBIDDEN' && r.frame.signed_for === '')).toBe(true);
      expect(axon.server.stats().crypto.verifiedInWorkers).toBe(0); // not one signature check
      const alice = await RawPeer.connect(axon.url);
      const p = ping();
      alice.send(p);
      const pong = (await alice.until(p.id))[0];
      expect([codeOf(pong), pong.frame.signed_for]).toEqual(['pong', keys.alice.address]);
      alice.close();
    } finally {
      await axon.close();
    }
  });

  test("impostors claiming a validator's hotkey get a small share of the checks; the validator is still served", async () => {
    const gate = holdGate();
    // Frames that claim alice but carry a signature over something else.
    const forged = () => ({ ...ping(), signature: ping().signature });
    const impostorFrames = Array.from({ length: 4 }, () => Array.from({ length: 12 }, forged));
    const axon = await startAxon({
      generator: endless,
      cryptoWorkers: 1,
      limits: { maxUnprovenVerifyQueuePerConnection: 2, maxUnprovenVerifyQueue: 4, maxVerifyQueue: 8 },
      cryptoWorkerScript: { url: TEST_WORKER, data: { hold: gate.buffer, holdIds: impostorFrames.flat().map((f) => f.id) } },
    });
    try {
      const alice = await RawPeer.connect(axon.url);
      const first = ping();
      alice.send(first);
      expect(codeOf((await alice.until(first.id))[0])).toBe('pong'); // alice has shown a valid signature
      const impostors = await Promise.all(impostorFrames.map(() => RawPeer.connect(axon.url)));
      impostorFrames.forEach((frames, i) => frames.forEach((f) => impostors[i].send(f)));
      // Their checks fill the unproven share (the worker is stuck on the first one) and no more.
      await waitFor('the unproven share to fill', () => axon.server.stats().crypto.verifying === 4);
      const during = ping();
      alice.send(during);
      await waitFor("alice's check to be queued, not refused", () => axon.server.stats().crypto.verifying === 5);
      gate.release();
      const answer = (await alice.until(during.id))[0];
      expect([codeOf(answer), answer.frame.signed_for]).toEqual(['pong', keys.alice.address]);
      // Each refusal is signed by the miner but addressed to no one: not a statement to alice. (Each
      // also spends its connection's bad-frame budget, as the other tests here show.)
      for (const [i, impostor] of impostors.entries()) {
        for (const frame of impostorFrames[i]) {
          const r = (await impostor.until(frame.id))[0];
          expect([codeOf(r), r.frame.signed_for, r.verified]).toEqual(['BAD_SIGNATURE', '', true]);
        }
        impostor.close();
      }
      alice.close();
    } finally {
      gate.release();
      await axon.close();
    }
  });

  test('a client gets an unaddressed refusal as the error it is', async () => {
    const axon = await startAxon();
    try {
      const client = await ValidatorClient.connect({ url: axon.url, signer: keys.charlie, minerHotkey: keys.miner.address });
      await expect(client.ping()).rejects.toMatchObject({ name: 'AxonError', code: 'NOT_REGISTERED' });
      await client.close();
    } finally {
      await axon.close();
    }
  });
});

describe('a validator pipelining generates', () => {
  test('60 generates on one connection: those over the concurrency cap get RATE_LIMITED, the connection stays, nothing admitted is lost', async () => {
    const axon = await startAxon({ generator: endless, policy: { maxConcurrentPerHotkey: 4 } });
    try {
      const peer = await RawPeer.connect(axon.url);
      const frames = Array.from({ length: 60 }, () => generate({ prompt: 'go', max_tokens: 4096 }));
      for (const frame of frames) peer.send(frame); // signed beforehand: one burst
      const ends = new Map<string, Received>();
      const running: string[] = [];
      while (ends.size + running.length < frames.length) {
        const r = await peer.next(20_000);
        if (r.frame.type === 'token') {
          if (!running.includes(r.frame.id) && !ends.has(r.frame.id)) running.push(r.frame.id);
        } else ends.set(r.frame.id, r);
      }
      expect(running).toEqual(frames.slice(0, 4).map((f) => f.id)); // admitted in arrival order
      for (const frame of frames.slice(4)) {
        const r = ends.get(frame.id)!;
        expect([codeOf(r), r.frame.signed_for]).toEqual(['RATE_LIMITED', keys.alice.address]);
        expect(messageOf(r)).toMatch(/already running/);
      }
      for (const id of running) peer.send(signRequest(keys.alice, { op: 'cancel', payload: { target: id }, signedFor: keys.miner.address }));
      for (const id of running) {
        const last = (await peer.until(id, 20_000)).at(-1)!;
        expect(last.parsed).toMatchObject({ type: 'done', body: { finish_reason: 'cancelled' } });
      }
      expect(peer.ws.readyState).toBe(WebSocket.OPEN);
      peer.close();
    } finally {
      await axon.close();
    }
  });
});

describe('prompts too long for the context', () => {
  let axon: TestAxon;
  beforeAll(async () => {
    axon = await startAxon();
  });
  afterAll(() => axon.close());

  test('are refused without tokenising them, naming the context', async () => {
    const engine = axon.generator as Engine;
    expect(engine.tokenizer.maxBytesPerToken).toBeLessThan(64);
    const encode = vi.spyOn(engine.tokenizer, 'encode');
    try {
      const peer = await RawPeer.connect(axon.url);
      const long = generate({ prompt: 'x'.repeat(256 * 1024), max_tokens: 1 });
      peer.send(long);
      const r = (await peer.until(long.id))[0];
      expect(codeOf(r)).toBe('BAD_REQUEST');
      expect(messageOf(r)).toMatch(/prompt of 262144 bytes is at least \d+ tokens .* does not fit the context of 256 tokens/);
      const chat = generate({ messages: [{ role: 'user', content: 'y'.repeat(200 * 1024) }], max_tokens: 1 });
      peer.send(chat);
      expect(messageOf((await peer.until(chat.id))[0])).toMatch(/does not fit the context of 256 tokens/);
      expect(encode).not.toHaveBeenCalled();
      // A prompt that fits is still tokenised and served.
      const short = generate({ prompt: 'hello', max_tokens: 2 });
      peer.send(short);
      expect((await peer.until(short.id)).at(-1)!.frame.type).toBe('done');
      expect(encode).toHaveBeenCalled();
      peer.close();
    } finally {
      encode.mockRestore();
    }
  });

  test('the bound holds only for tokenizers that keep every byte', () => {
    const bpe = { type: 'BPE', vocab: { a: 0, abc: 1, '\u2581the': 2 }, merges: [] };
    expect(maxBytesPerToken({ model: bpe, normalizer: null, pre_tokenizer: { type: 'ByteLevel' } })).toBe(6);
    expect(maxBytesPerToken({ model: bpe, added_tokens: [{ content: '<|endoftext|>' }] })).toBe(13);
    // A normalizer that replaces 2 bytes by 1 can halve the text: the bound doubles.
    expect(maxBytesPerToken({ model: bpe, normalizer: { type: 'Replace', pattern: { String: '  ' }, content: ' ' } })).toBe(12);
    // Dropping whitespace, Unicode normalization, a fused unknown token: no bound.
    expect(maxBytesPerToken({ model: bpe, pre_tokenizer: { type: 'Whitespace' } })).toBe(Infinity);
    expect(maxBytesPerToken({ model: bpe, normalizer: { type: 'NFKC' } })).toBe(Infinity);
    expect(maxBytesPerToken({ model: { ...bpe, unk_token: '<unk>', fuse_unk: true } })).toBe(Infinity);
    expect(maxBytesPerToken({ model: { type: 'WordPiece', vocab: {} } })).toBe(Infinity);
  });
});

describe('restarts', () => {
  test('frames signed before the server started are STALE (a previous process may have accepted them)', async () => {
    const before = ping(); // signed now, within any window, before the server below exists
    await sleep(1); // a later millisecond for the server's start
    const now = { offset: 0 };
    const axon = await startAxon({ clock: () => Date.now() + now.offset, policy: { notBefore: undefined } });
    try {
      const notBefore = axon.server.policy.notBefore;
      expect(notBefore).toBeGreaterThan(before.timestamp);
      const peer = await RawPeer.connect(axon.url);
      peer.send(before);
      const r = (await peer.until(before.id))[0];
      expect([codeOf(r), r.frame.signed_for]).toEqual(['STALE', '']);
      expect(messageOf(r)).toMatch(/before this miner \(re\)started/);
      // Within the future skew after the start, too: the previous process may have seen those timestamps.
      now.offset = 10_000;
      const early = ping(keys.alice, { timestamp: notBefore - 1 });
      peer.send(early);
      expect(codeOf((await peer.until(early.id))[0])).toBe('STALE');
      const fresh = ping(keys.alice, { timestamp: Date.now() + now.offset });
      peer.send(fresh);
      expect(codeOf((await peer.until(fresh.id))[0])).toBe('pong');
      peer.close();
    } finally {
      await axon.close();
    }
  });
});

describe('text frames', () => {
  test('invalid UTF-8 text gets BAD_FRAME like any text frame, not a 1007 close', async () => {
    const axon = await startAxon();
    try {
      const peer = await RawPeer.connect(axon.url);
      peer.ws.send(Buffer.from([0xc3, 0x28, 0xff]), { binary: false });
      const r = await peer.next();
      expect([codeOf(r), r.frame.signed_for]).toEqual(['BAD_FRAME', '']);
      expect(messageOf(r)).toMatch(/text frames are not accepted/);
      const p = ping();
      peer.send(p);
      expect(codeOf((await peer.until(p.id))[0])).toBe('pong');
      peer.close();
    } finally {
      await axon.close();
    }
  });
});

test('defaults keep the documented values', () => {
  expect(DEFAULT_LIMITS).toMatchObject({ maxPendingConnectionsPerIp: 8, maxUnprovenVerifyQueuePerConnection: 4, maxUnprovenVerifyQueue: 64 });
});

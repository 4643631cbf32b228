// The crypto worker pool (src/wire/crypto-pool.ts) behind the axon, over real sockets with real keys:
// signatures are checked on worker threads while the main thread keeps serving; a connection's frames
// are finished in arrival order whatever order their checks end in (a pipelined cancel included); a
// crashed worker is replaced and only its own frames fail; a connection's share of the verification
// queue, and all connections', is capped (frames beyond it wait, unchecked); shutdown stops the workers. The same pool behind validator clients: their
// response frames are verified on it, several clients share one, each stream's frames are acted on in
// arrival order and only once verified, a tampered frame still fails its stream, close() stops the
// workers. A test worker (support/crypto-test-worker.mjs) holds or crashes jobs on cue, so nothing here
// depends on timing.
import { once } from 'node:events';
import { Command } from 'commander';
import { pino } from 'pino';
import { beforeAll, describe, expect, test } from 'vitest';
import { WebSocket, WebSocketServer, type RawData } from 'ws';
import { CryptoPool } from '../src/wire/crypto-pool.ts';
import { VerificationError, decodeResponseBody, decodeResponseFrame, encodeBody, encodeFrame, type ResponseFrame } from '../src/wire/protocol.ts';
import { addServeOptions, parseServeOptions } from '../src/axon/serve.ts';
import { signRequest, signedMessage, verifySignature, type Signer } from '../src/wire/signing.ts';
import { ValidatorClient, createVerifyPool, type GenerationResult } from '../src/validator/client.ts';
import { RawPeer, captureLogger, devKeys, startAxon, waitFor, type Received } from './support/axon-harness.ts';
import { warmTestShaders } from './support/test-engine.ts';
import { heldGenerator } from './support/held-generator.ts';

const keys = await devKeys();
// The engine's kernels compiled before any test times anything (test/support/test-engine.ts).
beforeAll(warmTestShaders);
const TEST_WORKER = new URL('./support/crypto-test-worker.mjs', import.meta.url);

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

const ping = (signer: Signer = keys.alice) => signRequest(signer, { op: 'ping', payload: {}, signedFor: keys.miner.address });
const badSignature = () => ({ ...ping(), signature: ping(keys.bob).signature });
const codeOf = (r: Received) => (r.parsed.type === 'error' ? r.parsed.body.code : r.frame.type);

describe('the axon with crypto workers', () => {
  test('signatures are checked on worker threads: while one is stuck there, the main thread serves other connections', async () => {
    const gate = holdGate();
    const held = ping();
    const flood = Array.from({ length: 16 }, badSignature);
    // A share of the checks that takes the whole flood at once, so it is spread over both workers.
    const limits = { maxUnprovenVerifyQueuePerConnection: 32 };
    const axon = await startAxon({ generator: heldGenerator(1), limits, cryptoWorkers: 2, cryptoWorkerScript: { url: TEST_WORKER, data: { hold: gate.buffer, holdIds: [held.id] } } });
    try {
      const a = await RawPeer.connect(axon.url);
      a.send(held);
      for (const frame of flood) a.send(frame);
      await waitFor('the held check to start', () => axon.server.stats().waitingFrames === 1 + flood.length);
      // One worker is stuck on `held`: a connection that verified on the main thread would be frozen now.
      const b = await RawPeer.connect(axon.url);
      expect((await fetch(`http://127.0.0.1:${axon.port}/health`)).status).toBe(200);
      const p = ping(keys.eve);
      b.send(p);
      const pong = await b.next();
      expect(pong.frame.id).toBe(p.id);
      expect(pong.frame.type).toBe('pong');
      expect(pong.verified).toBe(true);
      // a's frames are answered in arrival order: nothing yet, since the first is still being checked.
      expect(axon.server.stats().crypto.verifying).toBeGreaterThanOrEqual(1);
      expect(a.pending).toBe(0);
      gate.release();
      const first = await a.next();
      expect([first.frame.id, first.frame.type]).toEqual([held.id, 'pong']);
      for (const frame of flood) {
        const r = await a.next();
        expect([r.frame.id, codeOf(r), r.verified]).toEqual([frame.id, 'BAD_SIGNATURE', true]);
      }
      // Every check and every answer's signature was made on a worker.
      expect(axon.server.stats().crypto).toMatchObject({ verifiedInWorkers: 2 + flood.length, signedInWorkers: 2 + flood.length, signedInline: 0, verifying: 0 });
      a.close();
      b.close();
    } finally {
      gate.release();
      await axon.close();
    }
  });

  test('a cancel pipelined after its generate is handled after it, though its signature check ends first', async () => {
    const gate = holdGate();
    const generate = signRequest(keys.alice, { op: 'generate', payload: { prompt: 'p', max_tokens: 1000 }, signedFor: keys.miner.address });
    const cancel = signRequest(keys.alice, { op: 'cancel', payload: { target: generate.id }, signedFor: keys.miner.address });
    const axon = await startAxon({ generator: heldGenerator(1), cryptoWorkers: 2, cryptoWorkerScript: { url: TEST_WORKER, data: { hold: gate.buffer, holdIds: [generate.id] } } });
    try {
      const peer = await RawPeer.connect(axon.url);
      peer.send(generate);
      peer.send(cancel);
      await waitFor("the cancel's check to end (on the other worker)", () => axon.server.stats().crypto.verifiedInWorkers === 1);
      expect(peer.pending).toBe(0); // not acted on ahead of its generate (that would be BAD_REQUEST: nothing to cancel)
      gate.release();
      const frames: Received[] = [];
      do frames.push(await peer.next());
      while (!(frames.at(-1)!.frame.id === generate.id && frames.at(-1)!.frame.type !== 'token'));
      const done = frames.at(-1)!;
      expect(done.parsed.type === 'done' && done.parsed.body.finish_reason).toBe('cancelled');
      // Anything the cancel earned would have been answered before a later ping's pong.
      const after = ping();
      peer.send(after);
      frames.push(...(await peer.until(after.id)));
      expect([...frames, ...peer.queued].filter((r) => r.frame.id === cancel.id)).toEqual([]); // until() leaves other ids' frames queued
      expect(axon.server.stats().activeRequests).toBe(0);
      peer.close();
    } finally {
      gate.release();
      await axon.close();
    }
  });

  test('a crashed worker is replaced: its check fails with INTERNAL, its signature is made on the main thread; shutdown stops the workers', async () => {
    const crashesVerifying = ping();
    const crashesSigning = ping();
    const { logger, lines } = captureLogger();
    const axon = await startAxon({
      generator: heldGenerator(1),
      logger,
      cryptoWorkers: 1,
      cryptoWorkerScript: { url: TEST_WORKER, data: { crashVerifyIds: [crashesVerifying.id], crashSignIds: [crashesSigning.id] } },
    });
    const peer = await RawPeer.connect(axon.url);
    peer.send(crashesVerifying);
    const r1 = await peer.next();
    expect([r1.frame.id, codeOf(r1), r1.verified]).toEqual([crashesVerifying.id, 'INTERNAL', true]);
    expect(r1.parsed.type === 'error' && r1.parsed.body.message).not.toMatch(/cue/);
    peer.send(crashesSigning);
    const r2 = await peer.next();
    expect([r2.frame.id, r2.frame.type, r2.verified]).toEqual([crashesSigning.id, 'pong', true]);
    const after = ping();
    peer.send(after);
    expect((await peer.next()).frame.type).toBe('pong');
    expect(axon.server.stats().crypto).toMatchObject({ workerExits: 2, signedInline: 1, running: 1 });
    expect(lines.filter((l) => l.event === 'crypto_worker_exit' && l.level === 50)).toHaveLength(2);
    expect(lines.some((l) => l.outcome === 'INTERNAL' && l.level === 50)).toBe(true);
    peer.close();
    await axon.close();
    expect(axon.server.stats().crypto.running).toBe(0);
  });

  test('frames beyond the share of checks (per connection, in all) wait their turn unchecked; none is refused', async () => {
    const gate = holdGate();
    const [held, a1, a2, a3] = [ping(), ping(), ping(), ping()];
    const [b1, b2, b3] = [ping(keys.eve), ping(keys.eve), ping(keys.eve)];
    const axon = await startAxon({
      generator: heldGenerator(1),
      cryptoWorkers: 1,
      limits: { maxVerifyQueuePerConnection: 3, maxUnprovenVerifyQueuePerConnection: 3, maxVerifyQueue: 5, maxUnprovenVerifyQueue: 5 },
      cryptoWorkerScript: { url: TEST_WORKER, data: { hold: gate.buffer, holdIds: [held.id] } },
    });
    try {
      const a = await RawPeer.connect(axon.url);
      const b = await RawPeer.connect(axon.url);
      for (const frame of [held, a1, a2]) a.send(frame);
      await waitFor("a's three checks to be queued", () => axon.server.stats().crypto.verifying === 3);
      a.send(a3); // a's fourth: over its connection's share, it waits (and a is not read meanwhile)
      for (const frame of [b1, b2, b3]) b.send(frame); // b's third: over the share of all connections
      await waitFor('every frame to arrive', () => axon.server.stats().waitingFrames === 7);
      expect(axon.server.stats().crypto.verifying).toBe(5);
      gate.release();
      const answers = async (peer: RawPeer, frames: { id: string }[]) => {
        const out: string[] = [];
        for (const frame of frames) {
          const r = await peer.next();
          expect(r.frame.id).toBe(frame.id); // in arrival order
          out.push(codeOf(r));
        }
        return out;
      };
      expect(await answers(a, [held, a1, a2, a3])).toEqual(['pong', 'pong', 'pong', 'pong']);
      expect(await answers(b, [b1, b2, b3])).toEqual(['pong', 'pong', 'pong']);
      a.close();
      b.close();
    } finally {
      gate.release();
      await axon.close();
    }
  });
});

describe('CryptoPool', () => {
  test('workers verify exactly as the main thread does, and sign with the miner key', async () => {
    const pool = new CryptoPool({ workers: 1, signer: keys.miner, logger: pino({ level: 'silent' }) });
    await pool.start();
    const key = {};
    try {
      const fields = { body: new Uint8Array([1, 2, 3]), id: 'id-1', timestamp: 1_700_000_000_000, signedFor: keys.miner.address };
      const message = signedMessage(fields.body, fields.id, fields.timestamp, fields.signedFor);
      const good = keys.alice.sign(message);
      const wrapped = keys.alice.sign(Buffer.concat([Buffer.from('<Bytes>'), message, Buffer.from('</Bytes>')]));
      const cases: Array<[unknown, string, boolean]> = [
        [good, keys.alice.address, true],
        [wrapped, keys.alice.address, true],
        [good, keys.bob.address, false],
        ['', keys.alice.address, false],
        ['0x', keys.alice.address, false],
        [`0x${'zz'.repeat(64)}`, keys.alice.address, false],
        [good.slice(0, -2), keys.alice.address, false],
        [good, 'not-an-address', false],
        [42, keys.alice.address, false],
      ];
      for (const [signature, address, valid] of cases) {
        expect(verifySignature(message, signature, address)).toBe(valid);
        expect(await pool.verify(key, { ...fields, signature, address })).toBe(valid);
      }
      // A body that is a view into a larger buffer: only its own bytes are signed over.
      const big = new Uint8Array(4096).fill(9);
      const view = big.subarray(100, 103);
      view.set([1, 2, 3]);
      expect(await pool.verify(key, { ...fields, body: view, signature: good, address: keys.alice.address })).toBe(true);
      const signature = await pool.sign(key, { ...fields, signedFor: keys.alice.address });
      expect(verifySignature(signedMessage(fields.body, fields.id, fields.timestamp, keys.alice.address), signature, keys.miner.address)).toBe(true);
      expect(pool.stats()).toMatchObject({ workers: 1, running: 1, verifying: 0, signing: 0, verifiedInWorkers: cases.length + 1, signedInWorkers: 1 });
    } finally {
      await pool.close();
    }
    expect(pool.stats().running).toBe(0);
    expect(await pool.verify(key, { body: new Uint8Array(0), id: '', timestamp: 0, signedFor: '', signature: '', address: '' })).toBeInstanceOf(Error);
  });

  test("keys take turns on a worker: one key's backlog does not hold up another's job", async () => {
    const gate = holdGate();
    const pool = new CryptoPool({ workers: 1, signer: keys.miner, logger: pino({ level: 'silent' }), script: { url: TEST_WORKER, data: { hold: gate.buffer, holdIds: ['held'] } } });
    await pool.start();
    try {
      const [flooder, other] = [{}, {}];
      const job = (id: string) => ({ body: new Uint8Array([1]), id, timestamp: 1, signedFor: keys.miner.address, signature: '', address: keys.alice.address });
      const finished: string[] = [];
      const track = (key: object, id: string) => pool.verify(key, job(id)).then(() => finished.push(id));
      const all = [track(flooder, 'held'), ...Array.from({ length: 6 }, (_, i) => track(flooder, `f${i}`)), track(other, 'other')];
      gate.release();
      await Promise.all(all);
      expect(finished.indexOf('other')).toBeLessThanOrEqual(2); // held, at most one more of the flooder's, then other's
    } finally {
      gate.release();
      await pool.close();
    }
  });

  test('worker count: validated, 0 runs inline, a key that cannot be exported signs inline', () => {
    const logger = pino({ level: 'silent' });
    for (const workers of [-1, 1.5, 65, Number.NaN]) expect(() => new CryptoPool({ workers, signer: keys.miner, logger })).toThrow(/crypto workers/);
    expect(new CryptoPool({ workers: 0, signer: keys.miner, logger })).toMatchObject({ inline: true, signsInline: true });
    expect(new CryptoPool({ workers: 2, signer: keys.miner, logger })).toMatchObject({ inline: false, signsInline: false });
    const opaque: Signer = { address: keys.miner.address, sign: (m) => keys.miner.sign(m) };
    expect(new CryptoPool({ workers: 2, signer: opaque, logger })).toMatchObject({ inline: false, signsInline: true });
    const parse = (argv: string[]) => parseServeOptions(addServeOptions(new Command('serve').exitOverride()).parse(argv, { from: 'user' }).opts());
    expect(parse([]).cryptoWorkers).toBeUndefined();
    expect(parse(['--crypto-workers', '0']).cryptoWorkers).toBe(0);
    expect(parse(['--crypto-workers', '3']).cryptoWorkers).toBe(3);
    expect(() => parse(['--crypto-workers', '-1'])).toThrow(/--crypto-workers/);
    expect(() => parse(['--crypto-workers', '65'])).toThrow(/--crypto-workers must be at most 64/);
  });
});

/**
 * A WebSocket proxy in front of `target` that passes every frame both ways, each of the miner's through
 * `alter` first (a man in the middle).
 */
async function proxy(target: string, alter: (frame: ResponseFrame) => ResponseFrame): Promise<{ url: string; close: () => void }> {
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
  await once(wss, 'listening');
  wss.on('connection', (validator) => {
    const miner = new WebSocket(target, { perMessageDeflate: false });
    const early: RawData[] = [];
    validator.on('message', (data) => (miner.readyState === WebSocket.OPEN ? miner.send(data) : early.push(data)));
    miner.on('open', () => early.splice(0).forEach((data) => miner.send(data)));
    miner.on('message', (data) => validator.send(encodeFrame(alter(decodeResponseFrame(data as Buffer)))));
    for (const [a, b] of [[validator, miner], [miner, validator]]) {
      a.on('error', () => {});
      a.on('close', () => b.close());
    }
  });
  const { port } = wss.address() as { port: number };
  return { url: `ws://127.0.0.1:${port}`, close: () => wss.close() };
}

describe('validator clients on a verify pool', () => {
  const connect = (url: string, cryptoPool?: CryptoPool) => ValidatorClient.connect({ url, signer: keys.alice, minerHotkey: keys.miner.address, cryptoPool });

  test("frames are verified on the pool's workers; clients share it; a stream's frames are acted on in order, each only once verified", async () => {
    const gate = holdGate();
    const axon = await startAxon();
    // Job 1, the first frame any pooled client receives, is held on its worker until release().
    const pool = await createVerifyPool({ workers: 2, script: { url: TEST_WORKER, data: { hold: gate.buffer, holdJobs: [1] } } });
    try {
      const requests = [1, 2, 3, 4, 5, 6].map((seed) => ({ prompt: `shared pool ${seed}`, maxTokens: 12, seed }));
      const inline = await connect(axon.url); // the same requests verified here, for reference
      const expected: GenerationResult[] = await Promise.all(requests.map((r) => inline.generate(r).collect()));
      await inline.close();
      expect(pool.stats().verifiedInWorkers).toBe(0);

      const [c1, c2] = [await connect(axon.url, pool), await connect(axon.url, pool)];
      const delivered: number[][] = requests.map(() => []);
      const consume = (client: ValidatorClient, i: number) => {
        const stream = client.generate(requests[i]);
        return (async () => {
          for await (const token of stream) delivered[i].push(token.index);
          return stream.result;
        })();
      };
      const first = [0, 1, 2].map((i) => consume(c1, i)); // three streams pipelined on c1
      await waitFor("c1's first frame to reach a worker", () => pool.stats().verifying >= 1);
      const second = [3, 4, 5].map((i) => consume(c2, i)); // and three on c2
      await waitFor('later frames to be verified on the other worker', () => pool.stats().verifiedInWorkers >= 4);
      // c1 acts on nothing while its first frame's check is held, however many frames behind it are verified.
      expect(delivered.slice(0, 3)).toEqual([[], [], []]);
      gate.release();
      const results = await Promise.all([...first, ...second]);
      expect(results.map((r) => r.text)).toEqual(expected.map((r) => r.text));
      expect(results.map((r) => r.tokens.map((t) => t.tokenId))).toEqual(expected.map((r) => r.tokens.map((t) => t.tokenId)));
      // The tokens as signed (the transcripts differ where the frames group tokens otherwise: a timing matter).
      expect(results.map((r) => r.tokens)).toEqual(expected.map((r) => r.tokens));
      results.forEach((r, i) => expect(delivered[i]).toEqual([...r.tokens.keys()]));
      // Every frame the six streams received was verified on a worker, none on the test's thread.
      const frames = results.reduce((n, r) => n + r.framesVerified, 0);
      expect(pool.stats()).toMatchObject({ verifiedInWorkers: frames, verifying: 0, workerExits: 0, running: 2 });
      await Promise.all([c1.close(), c2.close()]);
    } finally {
      gate.release();
      await pool.close();
      await axon.close();
    }
  });

  test('a tampered frame verified on the pool fails its stream with VerificationError; the other clients of the pool go on', async () => {
    const axon = await startAxon();
    let tokenFrames = 0;
    let passed = 0; // tokens in the genuine frames ahead of the tampered one
    const mitm = await proxy(axon.url, (frame) => {
      if (frame.type !== 'token') return frame;
      const parsed = decodeResponseBody('token', frame.body);
      if (parsed.type !== 'token') return frame;
      if (++tokenFrames < 3) {
        passed += parsed.body.tokens.length;
        return frame;
      }
      if (tokenFrames > 3) return frame;
      const tokens = parsed.body.tokens.map((t) => ({ ...t, text: `${t.text}!` }));
      return { ...frame, body: encodeBody({ ...parsed.body, tokens }) }; // the miner's signature, over other bytes
    });
    const pool = await createVerifyPool({ workers: 2 });
    try {
      const [fooled, other] = [await connect(mitm.url, pool), await connect(axon.url, pool)];
      // Precondition: untampered, this request runs well past three tokens (the embedded model's
      // greedy answer to some prompts is EOS at once, which would leave nothing to tamper with).
      const request = { prompt: 'tamper with this frame', maxTokens: 12, seed: 3 };
      expect((await other.generate(request).collect()).tokens.length).toBeGreaterThan(6);
      const stream = fooled.generate(request);
      const delivered: number[] = [];
      const failure = await (async () => {
        for await (const token of stream) delivered.push(token.index);
      })().catch((err: unknown) => err);
      expect(failure).toBeInstanceOf(VerificationError);
      expect(failure).toMatchObject({ code: 'VERIFICATION_FAILED', message: expect.stringMatching(/frame token for request .* has a bad signature/) });
      await expect(stream.result).rejects.toBe(failure);
      expect(delivered).toEqual([...Array(passed).keys()]); // the genuine frames before it, in order; nothing from it on
      expect(pool.stats().verifiedInWorkers).toBeGreaterThanOrEqual(3);
      expect(pool.stats().workerExits).toBe(0);
      await expect(fooled.ping()).rejects.toBe(failure); // the connection is done with
      const result = await other.generate(request).collect();
      expect(result.tokens.length).toBeGreaterThan(passed);
      await Promise.all([fooled.close(), other.close()]);
    } finally {
      mitm.close();
      await pool.close();
      await axon.close();
    }
  });

  test('a worker that dies during a check: the client checks that frame itself and goes on', async () => {
    const axon = await startAxon({ generator: heldGenerator(1) });
    const pool = await createVerifyPool({ workers: 1, logger: pino({ level: 'silent' }), script: { url: TEST_WORKER, data: { crashJobs: [1] } } });
    try {
      const client = await connect(axon.url, pool);
      expect((await client.ping()).pong.hotkey).toBe(keys.miner.address);
      expect(pool.stats()).toMatchObject({ workerExits: 1, verifiedInWorkers: 0 });
      await waitFor('the replacement worker', () => pool.stats().running === 1);
      await client.ping();
      expect(pool.stats()).toMatchObject({ workerExits: 1, verifiedInWorkers: 1 });
      await client.close();
    } finally {
      await pool.close();
      await axon.close();
    }
  });

  test('close() stops the workers; a client still holding the closed pool verifies on its own thread', async () => {
    const axon = await startAxon({ generator: heldGenerator(1) });
    const pool = await createVerifyPool({ workers: 2 });
    expect(pool.stats()).toMatchObject({ workers: 2, running: 2 });
    const client = await connect(axon.url, pool);
    await client.ping();
    expect(pool.stats().verifiedInWorkers).toBe(1);
    await pool.close();
    expect(pool.closed).toBe(true);
    expect(pool.stats()).toMatchObject({ running: 0, verifying: 0 });
    expect((await client.ping()).pong.hotkey).toBe(keys.miner.address);
    expect(pool.stats().verifiedInWorkers).toBe(1);
    await client.close();
    await axon.close();
  });

  test('a verify pool has no signing key; cryptoPool must be a pool', async () => {
    const pool = new CryptoPool({ workers: 0 });
    expect(pool.inline).toBe(true);
    const fields = { body: new Uint8Array(0), id: 'x', timestamp: 0, signedFor: keys.alice.address };
    expect(() => pool.sign({}, fields)).toThrow(/only verifies/);
    await expect(connect('ws://127.0.0.1:1', {} as CryptoPool)).rejects.toThrow(/cryptoPool must be a CryptoPool/);
  });
});

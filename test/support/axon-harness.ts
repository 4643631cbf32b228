// Helpers for the axon tests: dev keys, a metagraph, a server on a loopback port, and a raw
// WebSocket peer that sends arbitrary bytes and reads decoded (and verified) response frames.
import { Writable } from 'node:stream';
import { pino, type Logger } from 'pino';
import { onTestFailed, onTestFinished } from 'vitest';
import { WebSocket } from 'ws';
import type { TextGenerator } from '../../src/engine/types.ts';
import type { PolicyConfig } from '../../src/axon/policy.ts';
import { parseMetagraph, type Metagraph } from '../../src/wire/metagraph.ts';
import { decodeResponseBody, decodeResponseFrame, encodeFrame, type RequestFrame, type ResponseBody, type ResponseFrame } from '../../src/wire/protocol.ts';
import type { AxonLimits } from '../../src/axon/limits.ts';
import { AxonServer } from '../../src/axon/server.ts';
import { signerFromUri, verifyFrame, type Signer } from '../../src/wire/signing.ts';
import { createTestGenerator } from './test-engine.ts';

/**
 * max_tokens for a generation that must still be running when a test cancels it, disconnects or
 * shuts down; keep it within the served model's context. (What keeps such a generation running is
 * the generator: support/held-generator.ts, or the real engine with its decode held.)
 */
export const LONG = 1000;

// The real timer functions, taken before any test installs fake ones (vi.useFakeTimers), so the
// harness's own waiting keeps working while a test drives the server's clock by hand.
const realSetTimeout = globalThis.setTimeout;
const realClearTimeout = globalThis.clearTimeout;
const realNow = performance.now.bind(performance);

/** Real time, also under fake timers. Not for waiting on the code under test: wait for an event (waitFor). */
export const sleep = (ms: number) => new Promise((r) => realSetTimeout(r, ms));

/** Lets pending promise callbacks and I/O callbacks run (real setImmediate, never faked by the tests). */
export const settle = () => new Promise<void>((r) => setImmediate(r));

/**
 * Names `what` in the test's failure if the test ends (its timeout, say) while this wait is still
 * open, and marks the wait abandoned then; `close` ends the wait.
 */
function waiting(what: string): { close: () => void; abandoned: () => boolean } {
  let open = true;
  let abandoned = false;
  try {
    onTestFailed(() => {
      if (open) console.error(`the test ended while still waiting for ${what}`);
    });
    onTestFinished(() => {
      abandoned = open;
    });
  } catch {
    // Not inside a test (a beforeAll hook): vitest names the hook that timed out.
  }
  return {
    close: () => {
      open = false;
    },
    abandoned: () => abandoned,
  };
}

/**
 * Polls `cond` every 5 ms (real time) until it holds. Without `timeoutMs` it waits as long as the
 * test may run (vitest's testTimeout ends it, and the failure names `what`): what is awaited is an
 * event the code under test must produce, however slow the machine, not a guess at how fast it is.
 */
export async function waitFor(what: string, cond: () => boolean, timeoutMs?: number): Promise<void> {
  const end = timeoutMs === undefined ? Infinity : realNow() + timeoutMs;
  const wait = waiting(what);
  try {
    while (!cond()) {
      if (realNow() > end) throw new Error(`timed out waiting for ${what}`);
      if (wait.abandoned()) throw new Error(`the test ended while waiting for ${what}`);
      await sleep(5);
    }
  } finally {
    wait.close();
  }
}

export interface Keys {
  miner: Signer;
  /** Registered validator with a permit and stake 1000. */
  alice: Signer;
  /** Registered, no permit, stake 5. */
  bob: Signer;
  /** Not registered anywhere. */
  charlie: Signer;
  /** Registered validator on the deny list. */
  dave: Signer;
  /** Allow-listed, not in the metagraph. */
  eve: Signer;
}

let cached: Promise<Keys> | undefined;
export function devKeys(): Promise<Keys> {
  cached ??= (async () => ({
    miner: await signerFromUri('//Miner'),
    alice: await signerFromUri('//Alice'),
    bob: await signerFromUri('//Bob'),
    charlie: await signerFromUri('//Charlie'),
    dave: await signerFromUri('//Dave'),
    eve: await signerFromUri('//Eve'),
  }))();
  return cached;
}

export function metagraphJson(keys: Keys, extra: Array<{ hotkey: string; stake: number; validator_permit: boolean }> = []) {
  return {
    netuid: 1,
    block: 100,
    neurons: [
      { uid: 0, hotkey: keys.miner.address, stake: 0, validator_permit: false },
      { uid: 1, hotkey: keys.alice.address, stake: 1000, validator_permit: true },
      { uid: 2, hotkey: keys.bob.address, stake: 5, validator_permit: false },
      { uid: 3, hotkey: keys.dave.address, stake: 1000, validator_permit: true },
      ...extra.map((n, i) => ({ uid: 4 + i, ...n })),
    ],
  };
}

export function devMetagraph(keys: Keys): Metagraph {
  return parseMetagraph(metagraphJson(keys));
}

/** A pino logger that keeps its JSON lines in `lines`. */
export function captureLogger(level = 'debug'): { logger: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk, _enc, done) {
      for (const line of String(chunk).split('\n')) if (line.trim()) lines.push(JSON.parse(line));
      done();
    },
  });
  return { logger: pino({ level }, stream), lines };
}

export interface TestAxon {
  server: AxonServer;
  generator: TextGenerator;
  keys: Keys;
  url: string;
  port: number;
  close(): Promise<void>;
}

export async function startAxon(options: {
  generator?: TextGenerator;
  policy?: PolicyConfig;
  limits?: Partial<AxonLimits>;
  logger?: Logger;
  clock?: () => number;
  /** Default: the server's default (a pool of worker threads). */
  cryptoWorkers?: number;
  cryptoWorkerScript?: { url: URL; data?: unknown };
} = {}): Promise<TestAxon> {
  const keys = await devKeys();
  const owned = options.generator === undefined;
  const generator = options.generator ?? (await createTestGenerator());
  const server = new AxonServer({
    generator,
    signer: keys.miner,
    logger: options.logger ?? pino({ level: 'silent' }),
    clock: options.clock,
    limits: options.limits,
    cryptoWorkers: options.cryptoWorkers,
    cryptoWorkerScript: options.cryptoWorkerScript,
    policy: {
      metagraph: devMetagraph(keys),
      allow: [keys.eve.address],
      deny: [keys.dave.address],
      ratePerSecond: 10_000,
      rateBurst: 10_000,
      // Tests sign frames before the server starts (pools made at import, timestamps moved back);
      // the refusal of frames signed before the start (a restart's replay guard) is tested on its own.
      notBefore: 0,
      ...options.policy,
    },
  });
  const { port } = await server.listen(0, '127.0.0.1');
  return {
    server,
    generator,
    keys,
    url: `ws://127.0.0.1:${port}`,
    port,
    close: async () => {
      await server.close(200);
      if (owned) await generator.close(0);
    },
  };
}

export interface Received {
  frame: ResponseFrame;
  parsed: ResponseBody;
  verified: boolean;
}

/**
 * A WebSocket that sends anything and queues what comes back. Frames are taken in arrival order
 * (next) or by request id (until); frames of other requests stay queued for whoever asks for them.
 * Waits have no timeout of their own unless given one (see waitFor).
 */
export class RawPeer {
  readonly ws: WebSocket;
  #queue: Received[] = [];
  #waiters: Array<{ wants: (r: Received) => boolean; take: (r: Received) => void }> = [];
  readonly closed: Promise<{ code: number; reason: string }>;

  private constructor(ws: WebSocket, verify: boolean) {
    this.ws = ws;
    ws.on('error', () => {});
    ws.on('message', (data) => {
      const frame = decodeResponseFrame(data as Buffer, { maxBodyBytes: 1 << 30 });
      const received = { frame, parsed: decodeResponseBody(frame.type, frame.body), verified: verify ? verifyFrame(frame) : false };
      const i = this.#waiters.findIndex((w) => w.wants(received));
      if (i >= 0) this.#waiters.splice(i, 1)[0].take(received);
      else this.#queue.push(received);
    });
    this.closed = new Promise((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  }

  static async connect(url: string, options: { verify?: boolean } = {}): Promise<RawPeer> {
    const ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 1 << 30 });
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    return new RawPeer(ws, options.verify ?? true);
  }

  send(frame: RequestFrame | Uint8Array): void {
    this.ws.send(frame instanceof Uint8Array ? frame : encodeFrame(frame), { binary: true });
  }

  sendText(text: string): void {
    this.ws.send(text, { binary: false });
  }

  /** Frames received and not yet taken. */
  get pending(): number {
    return this.#queue.length;
  }

  /** The frames received and not yet taken, oldest first (a copy). */
  get queued(): Received[] {
    return [...this.#queue];
  }

  #take(wants: (r: Received) => boolean, what: string, timeoutMs?: number): Promise<Received> {
    const i = this.#queue.findIndex(wants);
    if (i >= 0) return Promise.resolve(this.#queue.splice(i, 1)[0]);
    const { close: done } = waiting(`a ${what}`);
    return new Promise((resolve, reject) => {
      const waiter = {
        wants,
        take: (r: Received) => {
          if (timer !== undefined) realClearTimeout(timer);
          done();
          resolve(r);
        },
      };
      const timer =
        timeoutMs === undefined
          ? undefined
          : realSetTimeout(() => {
              this.#waiters.splice(this.#waiters.indexOf(waiter), 1);
              done();
              reject(new Error(`no ${what} within ${timeoutMs} ms`));
            }, timeoutMs);
      this.#waiters.push(waiter);
    });
  }

  /** The next frame, whatever request it belongs to. */
  next(timeoutMs?: number): Promise<Received> {
    return this.#take(() => true, 'frame', timeoutMs);
  }

  /** Frames for request `id` up to its last one (done, error, pong or info); other requests' frames stay queued. */
  async until(id: string, timeoutMs?: number): Promise<Received[]> {
    const frames: Received[] = [];
    for (;;) {
      const r = await this.#take((f) => f.frame.id === id, `frame for ${id}`, timeoutMs);
      frames.push(r);
      if (r.frame.type !== 'token') return frames;
    }
  }

  close(): void {
    this.ws.close();
  }
}

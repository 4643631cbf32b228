// The validator's side of the axon protocol: connect, sign, ping, info, generate (an async iterator
// of tokens), cancel. Every frame the miner sends is checked before it is believed: its shape, that
// it is signed by the miner's hotkey for ours, the signature, token order, and at `done` the
// transcript digest and token count. Anything that fails verification fails every request on the
// connection and closes it: past a bad frame nothing on that socket can be trusted.
//
// A signature check costs about 4 ms of CPU. By default a client checks on its own thread, which is
// right for one stream; a validator querying many miners at once passes a shared pool of worker
// threads (`cryptoPool`, from createVerifyPool). Then each frame's check starts as it arrives, on
// whichever worker is free, and the frames of a connection wait in one queue in arrival order: a frame
// is acted on (a token delivered, a transcript hashed, a done checked) only after its own signature is
// verified and every frame before it has been acted on. Past MAX_UNVERIFIED_FRAMES waiting, the socket
// is no longer read until the queue is half empty (the miner then sees a slow reader). A check the pool
// cannot make (a worker died, the pool was closed) is made here instead.
import { createHash } from 'node:crypto';
import { WebSocket, type RawData } from 'ws';
import { CryptoPool } from '../wire/crypto-pool.ts';
import {
  AxonError,
  ConnectionError,
  VerificationError,
  decodeResponseBody,
  decodeResponseFrame,
  encodeFrame,
  isUuid,
  type DoneBody,
  type GeneratePayload,
  type InfoBody,
  type PongBody,
  type RequestOp,
  type ResponseBody,
  type ResponseFrame,
  type WireFinishReason,
  type WireMessage,
} from '../wire/protocol.ts';
import { cryptoReady, isValidHotkey, signRequest, verifyFrame, type Signer } from '../wire/signing.ts';
import { OptionError } from '../errors.ts';
import { OrderedVerifyQueue, type Verdict } from '../wire/ordered-queue.ts';
import { HttpValidatorClient } from './http-client.ts';

export { CryptoPool, createVerifyPool, type VerifyPoolOptions } from '../wire/crypto-pool.ts';
export { HttpValidatorClient } from './http-client.ts';

/** Frames of one connection waiting for their signature check before the socket stops being read. */
export const MAX_UNVERIFIED_FRAMES = 256;

export interface ValidatorClientOptions {
  /**
   * The miner's axon: ws://host:port speaks protocol v1 (signed msgpack frames over a WebSocket),
   * http://host:port its OpenAI-compatible face (Epistula v2 headers, a signed SSE stream).
   */
  url: string;
  /** The validator's hotkey. */
  signer: Signer;
  /**
   * The miner's ss58 hotkey (from the metagraph). When absent it is read from the miner's
   * GET /health and then held to: every frame must be signed by it (trust on first use).
   */
  minerHotkey?: string;
  /** Default 10 000. */
  connectTimeoutMs?: number;
  /** How long ping/info wait for their answer. Default 10 000. */
  requestTimeoutMs?: number;
  /** Largest frame accepted from the miner. Default 16 MiB. */
  maxFrameBytes?: number;
  /**
   * Worker threads that verify the miner's signatures (createVerifyPool), shared by any number of
   * clients; the caller closes it. Default: none, every frame is verified on this thread.
   */
  cryptoPool?: CryptoPool;
  /**
   * Called with the bytes of every frame sent ('out') and received ('in', before any check), and
   * the performance.now() of the moment: what a validator keeps as evidence of an exchange.
   */
  onWire?: (direction: 'out' | 'in', bytes: Uint8Array, at: number) => void;
}

export interface GenerateParams {
  prompt?: string;
  messages?: WireMessage[];
  maxTokens: number;
  temperature?: number;
  topP?: number;
  topK?: number;
  seed?: number;
  stop?: string[];
  /** Alternatives per token, 0..20. */
  logprobs?: number;
}

export interface ClientTokenLogprob {
  tokenId: number;
  text: string;
  logprob: number;
}

export interface ClientToken {
  index: number;
  tokenId: number;
  text: string;
  logprob: number;
  topLogprobs: ClientTokenLogprob[];
}

export interface Timing {
  ttftMs: number;
  totalMs: number;
  tokensPerS: number;
}

export interface GenerationResult {
  id: string;
  finishReason: WireFinishReason;
  text: string;
  tokens: ClientToken[];
  usage: { promptTokens: number; completionTokens: number };
  /** As reported (and signed) by the miner. */
  minerTiming: Timing;
  /** As measured here, from sending the request. */
  measured: Timing;
  /** Verified against the token frames received. */
  transcriptSha256: string;
  /** Response frames whose signature was verified for this request (token frames and done). */
  framesVerified: number;
}

export interface PingResult {
  /** Round trip, ms, from sending the ping to a verified pong. */
  latencyMs: number;
  pong: PongBody;
}

interface Handler {
  onFrame(frame: ResponseFrame, parsed: ResponseBody, at: number): void;
  onError(err: Error): void;
}

/** A received frame waiting its turn (its signature's verdict travels beside it in the queue), or why it was refused. */
interface Inbound {
  at: number;
  frame?: ResponseFrame;
  refusal?: Error;
}

/** The miner hotkey its /health endpoint reports (unauthenticated: pin it with --miner when you can). */
export async function discoverMinerHotkey(url: string, timeoutMs = 10_000): Promise<string> {
  let health: URL;
  try {
    health = new URL(url);
  } catch {
    throw new ConnectionError(`not a URL: ${url}`);
  }
  if (!['ws:', 'wss:', 'http:', 'https:'].includes(health.protocol)) throw new ConnectionError(`miner URL must start with ws://, wss://, http:// or https:// (got ${url})`);
  health.protocol = health.protocol === 'wss:' || health.protocol === 'https:' ? 'https:' : 'http:';
  health.pathname = '/health';
  health.search = '';
  let body: unknown;
  try {
    const res = await fetch(health, { signal: AbortSignal.timeout(timeoutMs) });
    body = await res.json();
  } catch (err) {
    throw new ConnectionError(`cannot read the miner's hotkey from ${health.href}: ${(err as Error).message}; pass the miner hotkey explicitly`, { cause: err });
  }
  const hotkey = (body as { hotkey?: unknown } | null)?.hotkey;
  if (!isValidHotkey(hotkey)) throw new ConnectionError(`${health.href} did not report a valid ss58 hotkey`);
  return hotkey;
}

/** A client of either transport: the same ping, generate, cancel and close. */
export type MinerClient = ValidatorClient | HttpValidatorClient;

/** Connect to a miner: over its WebSocket for ws:// and wss:// URLs, over its OpenAI-compatible HTTP face for http:// and https://. */
export async function connectMiner(options: ValidatorClientOptions): Promise<MinerClient> {
  if (!/^https?:/i.test(options.url)) return ValidatorClient.connect(options);
  await cryptoReady();
  const timeoutMs = options.connectTimeoutMs ?? 10_000;
  const minerHotkey = options.minerHotkey ?? (await discoverMinerHotkey(options.url, timeoutMs));
  if (!isValidHotkey(minerHotkey)) throw new ConnectionError(`miner hotkey ${minerHotkey} is not an ss58 address (format 42)`);
  return new HttpValidatorClient({ url: options.url, signer: options.signer, minerHotkey, requestTimeoutMs: options.requestTimeoutMs ?? 10_000 });
}

export class ValidatorClient {
  readonly transport = 'ws' as const;
  readonly url: string;
  readonly minerHotkey: string;
  readonly hotkey: string;
  #ws: WebSocket;
  #signer: Signer;
  #requestTimeoutMs: number;
  #pending = new Map<string, Handler>();
  #failure: Error | undefined;
  #closedPromise: Promise<void>;
  /** Verifies on worker threads; undefined: on this thread. */
  #pool: CryptoPool | undefined;
  /** Frames received and not yet acted on, in arrival order (only with a pool do they wait). */
  #inbound: OrderedVerifyQueue<Inbound>;
  #paused = false;
  #onWire: ValidatorClientOptions['onWire'];

  private constructor(ws: WebSocket, url: string, signer: Signer, minerHotkey: string, requestTimeoutMs: number, pool: CryptoPool | undefined, onWire?: ValidatorClientOptions['onWire']) {
    this.#ws = ws;
    this.url = url;
    this.#signer = signer;
    this.hotkey = signer.address;
    this.minerHotkey = minerHotkey;
    this.#requestTimeoutMs = requestTimeoutMs;
    this.#pool = pool;
    this.#onWire = onWire;
    this.#inbound = new OrderedVerifyQueue<Inbound>({
      finish: (entry, verdict) => this.#finish(entry, verdict),
      afterShift: (waiting) => {
        if (this.#paused && waiting <= MAX_UNVERIFIED_FRAMES / 2) {
          this.#paused = false;
          this.#ws.resume();
        }
      },
    });
    this.#closedPromise = new Promise((resolve) => {
      ws.on('close', (code, reason) => {
        // Frames that arrived before the close are acted on first (a done may be among them).
        const end = () => {
          this.#failAll(this.#failure ?? new ConnectionError(`connection to the miner closed (${code}${reason.length ? ` ${reason.toString()}` : ''})`));
          resolve();
        };
        if (this.#inbound.length === 0) end();
        else void this.#inbound.drained.then(end);
      });
    });
    ws.on('message', (data, isBinary) => this.#onMessage(data, isBinary));
  }

  /** Connect to the miner's protocol v1 WebSocket (ws:// or wss://); connectMiner takes either transport. */
  static async connect(options: ValidatorClientOptions): Promise<ValidatorClient> {
    if (!/^wss?:/i.test(options.url)) throw new ConnectionError(`a WebSocket URL starts with ws:// or wss:// (got ${options.url}); connectMiner also takes http://`);
    const pool = options.cryptoPool;
    if (pool !== undefined && !(pool instanceof CryptoPool)) throw new OptionError('cryptoPool must be a CryptoPool (from createVerifyPool)');
    await cryptoReady();
    await pool?.start(); // already started (createVerifyPool) but for a pool made with `new CryptoPool`
    const connectTimeoutMs = options.connectTimeoutMs ?? 10_000;
    const minerHotkey = options.minerHotkey ?? (await discoverMinerHotkey(options.url, connectTimeoutMs));
    if (!isValidHotkey(minerHotkey)) throw new ConnectionError(`miner hotkey ${minerHotkey} is not an ss58 address (format 42)`);
    const ws = new WebSocket(options.url, {
      maxPayload: options.maxFrameBytes ?? 16 << 20,
      perMessageDeflate: false,
      handshakeTimeout: connectTimeoutMs,
    });
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error) => {
        ws.off('open', onOpen);
        reject(new ConnectionError(`cannot connect to ${options.url}: ${err.message}`, { cause: err }));
      };
      const onOpen = () => {
        ws.off('error', onError);
        resolve();
      };
      ws.once('error', onError);
      ws.once('open', onOpen);
    });
    ws.on('error', () => {}); // surfaced through 'close'
    return new ValidatorClient(ws, options.url, options.signer, minerHotkey, options.requestTimeoutMs ?? 10_000, pool && !pool.inline ? pool : undefined, options.onWire);
  }

  /** Fail every open request with `err` (once the connection cannot be trusted or is gone). */
  #failAll(err: Error): void {
    const handlers = [...this.#pending.values()];
    this.#pending.clear();
    for (const h of handlers) h.onError(err);
  }

  #fatal(err: Error): void {
    this.#failure ??= err;
    this.#failAll(err);
    this.#ws.terminate();
    // Nothing still waiting for its check matters now.
    this.#inbound.clear();
    this.#pool?.forget(this);
  }

  #onMessage(data: RawData, isBinary: boolean): void {
    const at = performance.now();
    if (this.#failure) return;
    let entry: Inbound;
    let verdict: Verdict | Promise<Verdict> = false;
    try {
      if (!isBinary) throw new VerificationError('miner sent a text frame');
      const bytes = Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? data : Buffer.from(data);
      this.#onWire?.('in', bytes, at);
      const frame = decodeResponseFrame(bytes, { maxBodyBytes: bytes.length });
      if (frame.signed_by !== this.minerHotkey) throw new VerificationError(`frame signed by ${frame.signed_by}, not the miner ${this.minerHotkey}`);
      entry = { at, frame };
      verdict = this.#verify(frame);
    } catch (err) {
      entry = { at, refusal: err instanceof Error ? err : new VerificationError(String(err)) };
    }
    this.#inbound.push(entry, verdict);
    if (this.#inbound.length >= MAX_UNVERIFIED_FRAMES && !this.#paused) {
      this.#paused = true;
      this.#ws.pause();
    }
  }

  /** The signature's verdict: here, or a promise of a worker's. */
  #verify(frame: ResponseFrame): boolean | Promise<boolean | Error> {
    if (!this.#pool || this.#pool.closed) return verifyFrame(frame);
    return this.#pool.verify(this, { body: frame.body, id: frame.id, timestamp: frame.timestamp, signedFor: frame.signed_for, signature: frame.signature, address: frame.signed_by });
  }

  /** The rest of a frame's checks, in its turn, then hand it to its request. */
  #finish(entry: Inbound, verdict: Verdict): void {
    if (this.#failure) return;
    try {
      if (entry.refusal !== undefined || entry.frame === undefined) throw entry.refusal;
      const frame = entry.frame;
      // A worker died during the check, or the pool was closed: check it here.
      const valid = verdict instanceof Error ? verifyFrame(frame) : verdict === true;
      if (!valid) throw new VerificationError(`frame ${frame.type} for request ${frame.id || '(none)'} has a bad signature`);
      if (frame.id === '') return; // an error about a frame the miner could not read: none of ours
      // The miner addresses a refusal of a frame whose signature it did not (yet) find valid (STALE,
      // NOT_REGISTERED, FORBIDDEN by stake, BAD_SIGNATURE ...) to no one: it cannot know who sent it.
      // Such an error still ends the request it names; anything else must be addressed to us.
      const unaddressedError = frame.signed_for === '' && frame.type === 'error';
      if (frame.signed_for !== this.hotkey && !unaddressedError) {
        throw new VerificationError(`frame signed for ${frame.signed_for}, not for this validator ${this.hotkey}`);
      }
      const parsed = decodeResponseBody(frame.type, frame.body);
      this.#pending.get(frame.id)?.onFrame(frame, parsed, entry.at); // late frames of finished requests are dropped
    } catch (err) {
      this.#fatal(err instanceof Error ? err : new VerificationError(String(err)));
    }
  }

  #send(op: RequestOp, payload: unknown, id?: string): string {
    if (this.#failure) throw this.#failure;
    if (this.#ws.readyState !== WebSocket.OPEN) throw new ConnectionError('connection to the miner is not open');
    const frame = signRequest(this.#signer, { op, payload, signedFor: this.minerHotkey, ...(id ? { id } : {}) });
    const bytes = encodeFrame(frame);
    this.#onWire?.('out', bytes, performance.now());
    this.#ws.send(bytes, { binary: true });
    return frame.id;
  }

  /** A request answered by one frame of type `expect`. */
  #unary<T>(op: 'ping' | 'info', expect: 'pong' | 'info'): Promise<{ body: T; at: number }> {
    return new Promise((resolve, reject) => {
      let id = '';
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new ConnectionError(`no answer to ${op} within ${this.#requestTimeoutMs} ms`));
      }, this.#requestTimeoutMs);
      const handler: Handler = {
        onFrame: (frame, parsed, at) => {
          clearTimeout(timer);
          this.#pending.delete(id);
          if (parsed.type === 'error') reject(new AxonError(parsed.body.code, parsed.body.message, { requestId: id }));
          else if (parsed.type !== expect) reject(new VerificationError(`miner answered ${op} with a ${frame.type} frame`));
          else resolve({ body: parsed.body as T, at });
        },
        onError: (err) => {
          clearTimeout(timer);
          reject(err);
        },
      };
      try {
        id = this.#send(op, {});
        this.#pending.set(id, handler);
      } catch (err) {
        clearTimeout(timer);
        reject(err);
      }
    });
  }

  async ping(): Promise<PingResult> {
    const t0 = performance.now();
    const { body, at } = await this.#unary<PongBody>('ping', 'pong');
    return { latencyMs: at - t0, pong: body };
  }

  async info(): Promise<InfoBody> {
    return (await this.#unary<InfoBody>('info', 'info')).body;
  }

  /** Start a generation; iterate the result for tokens as they arrive, or await `.result`. */
  generate(params: GenerateParams, options: { signal?: AbortSignal } = {}): GenerationStream {
    const stream = new GenerationStream((target) => this.cancel(target));
    const payload = toPayload(params);
    let id: string;
    try {
      id = this.#send('generate', payload);
    } catch (err) {
      stream.handler.onError(err as Error);
      return stream;
    }
    stream.start(id, performance.now());
    this.#pending.set(id, {
      onFrame: (frame, parsed, at) => {
        if (stream.handler.onFrame(frame, parsed, at)) this.#pending.delete(id);
      },
      onError: (err) => stream.handler.onError(err),
    });
    if (options.signal) {
      if (options.signal.aborted) stream.cancel();
      else options.signal.addEventListener('abort', () => stream.cancel(), { once: true });
    }
    return stream;
  }

  /** Ask the miner to stop generation `target`; it answers on that request with done (cancelled). */
  cancel(target: string): void {
    if (!isUuid(target) || this.#ws.readyState !== WebSocket.OPEN || this.#failure) return;
    this.#send('cancel', { target });
  }

  /** Close the connection; open requests fail with ConnectionError. */
  async close(): Promise<void> {
    if (this.#ws.readyState === WebSocket.CLOSED) return;
    this.#ws.close(1000);
    const timer = setTimeout(() => this.#ws.terminate(), 2000);
    await this.#closedPromise;
    clearTimeout(timer);
  }
}

function toPayload(p: GenerateParams): GeneratePayload {
  const payload: GeneratePayload = { max_tokens: p.maxTokens };
  if (p.prompt !== undefined) payload.prompt = p.prompt;
  if (p.messages !== undefined) payload.messages = p.messages;
  if (p.temperature !== undefined) payload.temperature = p.temperature;
  if (p.topP !== undefined) payload.top_p = p.topP;
  if (p.topK !== undefined) payload.top_k = p.topK;
  if (p.seed !== undefined) payload.seed = p.seed;
  if (p.stop !== undefined) payload.stop = p.stop;
  if (p.logprobs !== undefined) payload.logprobs = p.logprobs;
  return payload;
}

/**
 * One generation in flight: an async iterable of verified tokens, and `result`, which resolves at
 * a verified `done` and rejects on an error frame (AxonError with the wire code), a verification
 * failure or a lost connection. Leaving a `for await` early cancels the generation.
 */
export class GenerationStream implements AsyncIterable<ClientToken> {
  id = '';
  readonly result: Promise<GenerationResult>;
  #resolve!: (r: GenerationResult) => void;
  #reject!: (e: Error) => void;
  #queue: ClientToken[] = [];
  #all: ClientToken[] = [];
  #wake: (() => void) | undefined;
  #finished = false;
  #error: Error | undefined;
  #transcript = createHash('sha256');
  #sentAt = 0;
  #firstAt: number | undefined;
  #frames = 0;
  #cancel: (id: string) => void;

  constructor(cancel: (id: string) => void) {
    this.#cancel = cancel;
    this.result = new Promise((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    this.result.catch(() => {}); // iterating callers see the error there; no unhandled rejection
  }

  /** @internal */
  start(id: string, sentAt: number): void {
    this.id = id;
    this.#sentAt = sentAt;
  }

  /** @internal A verified token, from a transport that checks tokens itself (HTTP). */
  deliver(token: ClientToken, at: number): void {
    if (this.#finished) return;
    this.#firstAt ??= at;
    this.#all.push(token);
    this.#queue.push(token);
    this.#wakeUp();
  }

  /** @internal The verified end (or the failure) of a generation, from a transport that checks it itself (HTTP). */
  settle(outcome: GenerationResult | Error): void {
    this.#end(outcome);
  }

  /** @internal What the client feeds; onFrame returns true when the request is over. */
  readonly handler = {
    onFrame: (frame: ResponseFrame, parsed: ResponseBody, at: number): boolean => {
      if (this.#finished) return true;
      if (parsed.type === 'token') {
        this.#frames++;
        this.#transcript.update(frame.body);
        this.#firstAt ??= at;
        for (const t of parsed.body.tokens) {
          if (t.index !== this.#all.length) {
            this.#end(new VerificationError(`token index ${t.index} arrived where ${this.#all.length} was due`));
            return true;
          }
          const token: ClientToken = {
            index: t.index,
            tokenId: t.token_id,
            text: t.text,
            logprob: t.logprob,
            topLogprobs: t.top_logprobs.map((a) => ({ tokenId: a.token_id, text: a.text, logprob: a.logprob })),
          };
          this.#all.push(token);
          this.#queue.push(token);
        }
        this.#wakeUp();
        return false;
      }
      if (parsed.type === 'done') {
        this.#frames++;
        this.#end(this.#verifyDone(parsed.body, at));
        return true;
      }
      if (parsed.type === 'error') {
        this.#end(new AxonError(parsed.body.code, parsed.body.message, { requestId: this.id }));
        return true;
      }
      this.#end(new VerificationError(`miner answered generate with a ${parsed.type} frame`));
      return true;
    },
    onError: (err: Error): void => this.#end(err),
  };

  #verifyDone(done: DoneBody, at: number): GenerationResult | Error {
    const digest = this.#transcript.digest('hex');
    if (digest !== done.transcript_sha256) {
      return new VerificationError(`transcript digest mismatch: received tokens hash to ${digest}, the miner signed ${done.transcript_sha256}`);
    }
    if (done.usage.completion_tokens !== this.#all.length) {
      return new VerificationError(`miner reports ${done.usage.completion_tokens} completion tokens; ${this.#all.length} arrived`);
    }
    const totalMs = at - this.#sentAt;
    const ttftMs = (this.#firstAt ?? at) - this.#sentAt;
    const n = this.#all.length;
    return {
      id: this.id,
      finishReason: done.finish_reason,
      text: this.#all.map((t) => t.text).join(''),
      tokens: this.#all,
      usage: { promptTokens: done.usage.prompt_tokens, completionTokens: done.usage.completion_tokens },
      minerTiming: { ttftMs: done.timing.ttft_ms, totalMs: done.timing.total_ms, tokensPerS: done.timing.tokens_per_s },
      measured: { ttftMs, totalMs, tokensPerS: n > 1 && totalMs > ttftMs ? ((n - 1) * 1000) / (totalMs - ttftMs) : 0 },
      transcriptSha256: digest,
      framesVerified: this.#frames,
    };
  }

  #end(outcome: GenerationResult | Error): void {
    if (this.#finished) return;
    this.#finished = true;
    if (outcome instanceof Error) {
      this.#error = outcome;
      this.#reject(outcome);
    } else {
      this.#resolve(outcome);
    }
    this.#wakeUp();
  }

  #wakeUp(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }

  /** Ask the miner to stop; the stream then ends with finish reason "cancelled". */
  cancel(): void {
    if (!this.#finished && this.id) this.#cancel(this.id);
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<ClientToken, void> {
    try {
      for (;;) {
        const token = this.#queue.shift();
        if (token) {
          yield token;
          continue;
        }
        if (this.#error) throw this.#error;
        if (this.#finished) return;
        await new Promise<void>((resolve) => (this.#wake = resolve));
      }
    } finally {
      if (!this.#finished) this.cancel();
    }
  }

  /** Consume every token and return the verified result. */
  async collect(): Promise<GenerationResult> {
    for await (const _ of this) {
      // tokens are kept in the result
    }
    return this.result;
  }
}

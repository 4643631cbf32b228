// How the validator reaches a miner: one small interface, so that scoring never cares which wire
// the miner speaks. Protocol v1 over WebSocket (through ValidatorClient, which verifies each frame
// as it arrives), and the OpenAI-compatible HTTP face with Epistula v2 (a plain signed POST whose
// event stream is recorded as it arrives and read, verified and judged afterwards from the
// transcript: its signature, when the miner signs, comes only at the end).
import { decodeResponseFrame } from '../wire/protocol.ts';
import { epistulaHeaders, type Signer } from '../wire/signing.ts';
import { ValidatorClient, type CryptoPool } from './client.ts';
import type { Challenge } from './challenges.ts';
import { TRANSCRIPT_FORMAT, challengePayload, httpChallengeRequest, type HttpTranscript, type Transcript } from './transcript.ts';

export interface MinerEndpoint {
  uid: number;
  hotkey: string;
  ip: string;
  port: number;
  protocol: 'ws' | 'http';
}

export interface MinerTransport {
  readonly endpoint: MinerEndpoint;
  /** Send one challenge and keep the exchange as it crossed the wire; never throws for the miner's faults. */
  exchange(challenge: Challenge, round: number): Promise<Transcript>;
  close(): Promise<void>;
}

export interface TransportOptions {
  signer: Signer;
  /** Verifies the miners' signatures on worker threads (shared by all transports). */
  cryptoPool?: CryptoPool;
  /** Longest an exchange may take before it is cancelled and recorded as TIMEOUT. */
  timeoutMs: number;
  connectTimeoutMs?: number;
}

export async function openTransport(endpoint: MinerEndpoint, options: TransportOptions): Promise<MinerTransport> {
  return endpoint.protocol === 'http' ? new HttpTransport(endpoint, options) : WsTransport.open(endpoint, options);
}

const host = (ip: string) => (ip.includes(':') ? `[${ip}]` : ip);

/** Protocol v1: signed msgpack frames over one WebSocket per miner. */
class WsTransport implements MinerTransport {
  readonly endpoint: MinerEndpoint;
  readonly url: string;
  #client: ValidatorClient | undefined;
  #connectError: Error | undefined;
  #options: TransportOptions;
  /** Every frame received and not yet claimed by an exchange: bytes and arrival. */
  #received: Array<{ bytes: Uint8Array; at: number; id: string }> = [];
  /** The last request frame sent (generate sends synchronously, so it is this exchange's). */
  #lastSent: { bytes: Uint8Array; at: number } | undefined;

  private constructor(endpoint: MinerEndpoint, options: TransportOptions) {
    this.endpoint = endpoint;
    this.url = `ws://${host(endpoint.ip)}:${endpoint.port}`;
    this.#options = options;
  }

  static async open(endpoint: MinerEndpoint, options: TransportOptions): Promise<WsTransport> {
    const t = new WsTransport(endpoint, options);
    try {
      t.#client = await ValidatorClient.connect({
        url: t.url,
        signer: options.signer,
        minerHotkey: endpoint.hotkey,
        cryptoPool: options.cryptoPool,
        connectTimeoutMs: options.connectTimeoutMs ?? options.timeoutMs,
        requestTimeoutMs: options.timeoutMs,
        onWire: (direction, bytes, at) => {
          if (direction === 'out') t.#lastSent = { bytes: Uint8Array.from(bytes), at };
          else t.#received.push({ bytes: Uint8Array.from(bytes), at, id: frameId(bytes) });
        },
      });
    } catch (err) {
      // An unreachable miner is a verdict, not a crash: every exchange records the failure.
      t.#connectError = err as Error;
    }
    return t;
  }

  async exchange(challenge: Challenge, round: number): Promise<Transcript> {
    const base = {
      format: TRANSCRIPT_FORMAT,
      round,
      challenge,
      validator: this.#options.signer.address,
      miner: { uid: this.endpoint.uid, hotkey: this.endpoint.hotkey },
      transport: 'ws' as const,
      url: this.url,
    };
    const client = this.#client;
    if (!client) {
      return { ...base, request: '', frames: [], error: { code: 'CONNECTION', message: this.#connectError?.message ?? 'not connected' } };
    }
    const { max_tokens, prompt, messages, temperature, top_p, top_k, seed, logprobs } = challengePayload(challenge);
    this.#lastSent = undefined;
    const stream = client.generate({ maxTokens: max_tokens, prompt, messages, temperature, topP: top_p, topK: top_k, seed, logprobs });
    const sent = this.#lastSent as { bytes: Uint8Array; at: number } | undefined;
    let error: Transcript['error'];
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        stream.result,
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(Object.assign(new Error(`no answer within ${this.#options.timeoutMs} ms`), { code: 'TIMEOUT' })), this.#options.timeoutMs);
        }),
      ]);
    } catch (err) {
      const e = err as Error & { code?: string };
      error = { code: e.code ?? 'ERROR', message: e.message };
      if (e.code === 'TIMEOUT') stream.cancel();
    } finally {
      clearTimeout(timer);
    }
    if (!sent) return { ...base, request: '', frames: [], error: error ?? { code: 'CONNECTION', message: 'the request could not be sent' } };
    const mine = this.#received.filter((r) => r.id === stream.id);
    this.#received = this.#received.filter((r) => r.id !== stream.id);
    return {
      ...base,
      request: Buffer.from(sent.bytes).toString('base64'),
      frames: mine.map((r) => ({ atMs: round3(r.at - sent.at), bytes: Buffer.from(r.bytes).toString('base64') })),
      ...(error ? { error } : {}),
    };
  }

  async close(): Promise<void> {
    await this.#client?.close();
  }
}

const round3 = (x: number) => Math.round(x * 1000) / 1000;

/**
 * The HTTP face: each challenge is one POST with Epistula v2 headers (stream: true), each on its own
 * request so a round's challenges run at once. Nothing is believed here: the request, the status,
 * the headers and every piece of the body with its arrival time go into the transcript, and
 * readTranscript parses and verifies them (the same code `verify` runs offline).
 */
class HttpTransport implements MinerTransport {
  readonly endpoint: MinerEndpoint;
  readonly url: string;
  #options: TransportOptions;
  #open = new Set<AbortController>();
  /** The model id the miner lists, asked once (undefined: it lists none, or could not be asked). */
  #model: Promise<string | undefined> | undefined;

  constructor(endpoint: MinerEndpoint, options: TransportOptions) {
    this.endpoint = endpoint;
    this.url = `http://${host(endpoint.ip)}:${endpoint.port}`;
    this.#options = options;
  }

  /** GET /v1/models (unsigned, as OpenAI servers serve it): the first model's id. */
  async #servedModel(): Promise<string | undefined> {
    try {
      const res = await fetch(new URL('/v1/models', this.url), { signal: AbortSignal.timeout(this.#options.connectTimeoutMs ?? this.#options.timeoutMs) });
      const list = (await res.json()) as { data?: Array<{ id?: unknown }> };
      const id = res.ok ? list.data?.[0]?.id : undefined;
      return typeof id === 'string' && id.length > 0 && id.length <= 256 ? id : undefined;
    } catch {
      // Unreachable or not a list: the request goes without a model, and the miner answers or refuses it.
      return undefined;
    }
  }

  async exchange(challenge: Challenge, round: number): Promise<Transcript> {
    const { path, body: payload } = httpChallengeRequest(challenge, await (this.#model ??= this.#servedModel()));
    const body = Buffer.from(JSON.stringify(payload), 'utf8');
    const headers = { 'Content-Type': 'application/json', Accept: 'text/event-stream', ...epistulaHeaders(this.#options.signer, { body, signedFor: this.endpoint.hotkey }) };
    const transcript: HttpTranscript = {
      format: TRANSCRIPT_FORMAT,
      round,
      challenge,
      validator: this.#options.signer.address,
      miner: { uid: this.endpoint.uid, hotkey: this.endpoint.hotkey },
      transport: 'http',
      url: this.url,
      request: { path, headers, body: body.toString('base64') },
      response: null,
    };
    const abort = new AbortController();
    this.#open.add(abort);
    const timer = setTimeout(() => abort.abort(), this.#options.timeoutMs);
    const sentAt = performance.now();
    try {
      const res = await fetch(new URL(path, this.url), { method: 'POST', headers, body, signal: abort.signal });
      const response: NonNullable<HttpTranscript['response']> = { status: res.status, headers: Object.fromEntries(res.headers), atMs: round3(performance.now() - sentAt), chunks: [] };
      transcript.response = response;
      if (res.body) {
        for await (const bytes of res.body as unknown as AsyncIterable<Uint8Array>) {
          response.chunks.push({ atMs: round3(performance.now() - sentAt), bytes: Buffer.from(bytes).toString('base64') });
        }
      }
    } catch (err) {
      transcript.error = abort.signal.aborted
        ? { code: 'TIMEOUT', message: `no complete answer within ${this.#options.timeoutMs} ms` }
        : { code: 'CONNECTION', message: `${transcript.response ? 'the response broke off' : `cannot reach ${this.url}`}: ${(err as Error).message}` };
    } finally {
      clearTimeout(timer);
      this.#open.delete(abort);
    }
    return transcript;
  }

  async close(): Promise<void> {
    for (const abort of this.#open) abort.abort();
  }
}

/** The request id a received frame names ('' when it does not decode: it then belongs to no exchange). */
function frameId(bytes: Uint8Array): string {
  try {
    return decodeResponseFrame(bytes, { maxBodyBytes: bytes.length }).id;
  } catch {
    return '';
  }
}

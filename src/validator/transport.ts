// How the validator reaches a miner: one small interface, so that scoring never cares which wire
// the miner speaks. Protocol v1 over WebSocket is implemented here (ValidatorClient); a miner whose
// metagraph entry names another protocol is skipped with the reason until its transport exists.
import { decodeResponseFrame } from '../wire/protocol.ts';
import type { Signer } from '../wire/signing.ts';
import { ValidatorClient, type CryptoPool } from './client.ts';
import type { Challenge } from './challenges.ts';
import { TRANSCRIPT_FORMAT, challengePayload, type Transcript } from './transcript.ts';

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

/** Why a transport cannot be opened for this endpoint (undefined: it can). */
export function unsupportedTransport(endpoint: MinerEndpoint): string | undefined {
  return endpoint.protocol === 'ws' ? undefined : `protocol "${endpoint.protocol}" has no transport in this validator yet`;
}

export async function openTransport(endpoint: MinerEndpoint, options: TransportOptions): Promise<MinerTransport> {
  const reason = unsupportedTransport(endpoint);
  if (reason) throw new Error(reason);
  return WsTransport.open(endpoint, options);
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

/** The request id a received frame names ('' when it does not decode: it then belongs to no exchange). */
function frameId(bytes: Uint8Array): string {
  try {
    return decodeResponseFrame(bytes, { maxBodyBytes: bytes.length }).id;
  } catch {
    return '';
  }
}

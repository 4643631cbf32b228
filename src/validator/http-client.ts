// The validator's side of the axon's OpenAI-compatible HTTP face: the same API as the WebSocket
// client (ping, generate, cancel, close), over POST /v1/completions or /v1/chat/completions with
// Epistula v2 request headers and `stream: true`.
//
// What is checked before it is believed: the stream is parsed byte by byte (only `data:` events, each
// ended by a blank line); every chunk carries exactly one token (ids via vLLM's
// return_tokens_as_token_ids); then come a chunk with finish_reason, the usage chunk (whose
// completion_tokens must equal the tokens received), and the miner's extension chunk, whose sha256
// must be the digest of every byte before it and whose signature (by the miner, for this validator,
// for this request's uuid) must verify over `${sha256}.${uuid}.${timestamp}.${signed_for}`; then
// `data: [DONE]` and nothing after it. Ping is a signed POST /detokenize of no tokens, whose
// response headers carry the miner's signature over the body.
import { createHash, randomUUID } from 'node:crypto';
import { AxonError, ConnectionError, ERROR_CODES, VerificationError, type ErrorCode, type PongBody, type InfoBody, type WireFinishReason } from '../wire/protocol.ts';
import { epistulaHeaders, signedMessage, verifySignature, type Signer } from '../wire/signing.ts';
import { GenerationStream, type ClientToken, type GenerateParams, type GenerationResult, type PingResult } from './client.ts';

/** One SSE event of a stream, with where it lies in the stream's bytes. */
export interface SseEvent {
  data: string;
  /** Byte offset of the event's first byte, and one past its blank line. */
  start: number;
  end: number;
}

/**
 * Splits a stream into SSE events as its bytes arrive. Strict: an event is one `data: ` line ended
 * by a blank line ("\n\n"); anything else (other fields, comments, CR line ends) is refused, since
 * this miner sends nothing else and a validator hashing the stream must know exactly what it hashed.
 */
export class SseParser {
  #pending = Buffer.alloc(0);
  #offset = 0;

  /** Feed bytes; returns the events they complete. Throws VerificationError on anything malformed. */
  push(bytes: Uint8Array): SseEvent[] {
    this.#pending = this.#pending.length === 0 ? Buffer.from(bytes) : Buffer.concat([this.#pending, bytes]);
    const events: SseEvent[] = [];
    for (;;) {
      const end = this.#pending.indexOf('\n\n');
      if (end < 0) break;
      const text = this.#pending.subarray(0, end).toString('utf8');
      if (!text.startsWith('data: ') || text.includes('\n') || text.includes('\r')) {
        throw new VerificationError(`malformed server-sent event at byte ${this.#offset}: ${JSON.stringify(text.slice(0, 80))}`);
      }
      events.push({ data: text.slice(6), start: this.#offset, end: this.#offset + end + 2 });
      this.#offset += end + 2;
      this.#pending = this.#pending.subarray(end + 2);
    }
    return events;
  }

  /** Bytes received that do not (yet) complete an event. */
  get leftover(): number {
    return this.#pending.length;
  }
}

/** The miner's signature chunk of a stream (the `epistula` field of the last chunk before [DONE]). */
export interface StreamSignature {
  version: number;
  uuid: string;
  timestamp: number;
  signed_by: string;
  signed_for: string;
  sha256: string;
  signature: string;
}

/**
 * Check a stream's signature chunk against the bytes before it: digest, addressing and the miner's
 * sr25519 signature. Throws VerificationError.
 */
export function verifyStreamSignature(before: Uint8Array, sig: StreamSignature, expect: { miner: string; validator: string; uuid: string }): void {
  const digest = createHash('sha256').update(before).digest('hex');
  if (sig.sha256 !== digest) throw new VerificationError(`stream digest mismatch: the bytes received hash to ${digest}, the miner signed ${String(sig.sha256)}`);
  if (sig.signed_by !== expect.miner) throw new VerificationError(`stream signed by ${String(sig.signed_by)}, not the miner ${expect.miner}`);
  if (sig.signed_for !== expect.validator) throw new VerificationError(`stream signed for ${String(sig.signed_for)}, not for this validator ${expect.validator}`);
  if (sig.uuid !== expect.uuid) throw new VerificationError(`stream signed for request ${String(sig.uuid)}, not ${expect.uuid}`);
  if (!Number.isSafeInteger(sig.timestamp)) throw new VerificationError('stream signature has no integer timestamp');
  if (!verifySignature(signedMessage(before, sig.uuid, sig.timestamp, sig.signed_for), sig.signature, sig.signed_by)) {
    throw new VerificationError('the stream signature does not verify');
  }
}

/** Check the Epistula response headers of a JSON body. Throws VerificationError. */
export function verifyResponseHeaders(headers: Headers, body: Uint8Array, expect: { miner: string; validator: string; uuid: string }): void {
  const get = (name: string) => headers.get(name) ?? '';
  const signedBy = get('epistula-signed-by');
  const signedFor = get('epistula-signed-for');
  const uuid = get('epistula-uuid');
  const timestamp = Number(get('epistula-timestamp'));
  if (signedBy !== expect.miner) throw new VerificationError(`response signed by '${signedBy}', not the miner ${expect.miner}`);
  if (signedFor !== expect.validator) throw new VerificationError(`response signed for '${signedFor}', not for this validator ${expect.validator}`);
  if (uuid !== expect.uuid) throw new VerificationError(`response signed for request '${uuid}', not ${expect.uuid}`);
  if (!Number.isSafeInteger(timestamp)) throw new VerificationError('response has no integer Epistula-Timestamp');
  if (!verifySignature(signedMessage(body, uuid, timestamp, signedFor), get('epistula-response-signature'), signedBy)) {
    throw new VerificationError('the response signature does not verify');
  }
}

/** "token_id:N" (vLLM's return_tokens_as_token_ids) -> N. */
function tokenIdOf(token: unknown): number {
  const m = typeof token === 'string' ? /^token_id:(\d+)$/.exec(token) : null;
  if (!m) throw new VerificationError(`token ${JSON.stringify(token)} is not "token_id:N"`);
  return Number(m[1]);
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** An OpenAI error body (or a status alone) as the AxonError the WebSocket client would raise. */
async function refusalOf(res: Response, requestId: string): Promise<AxonError> {
  let message = `HTTP ${res.status}`;
  let code: ErrorCode = res.status === 429 ? 'RATE_LIMITED' : res.status === 503 ? 'OVERLOADED' : res.status >= 500 ? 'INTERNAL' : 'BAD_REQUEST';
  try {
    const body = (await res.json()) as { error?: { message?: unknown; code?: unknown } };
    if (typeof body.error?.message === 'string') message = body.error.message;
    if ((ERROR_CODES as readonly unknown[]).includes(body.error?.code)) code = body.error!.code as ErrorCode;
  } catch {
    // not JSON: the status says what
  }
  return new AxonError(code, message, { requestId });
}

export interface HttpClientOptions {
  /** http://host:port of the miner's axon. */
  url: string;
  signer: Signer;
  minerHotkey: string;
  requestTimeoutMs: number;
}

export class HttpValidatorClient {
  readonly transport = 'http' as const;
  readonly url: string;
  readonly minerHotkey: string;
  readonly hotkey: string;
  #base: URL;
  #signer: Signer;
  #requestTimeoutMs: number;
  /** Open generations' fetches, by request id. */
  #open = new Map<string, AbortController>();
  #closed = false;

  constructor(options: HttpClientOptions) {
    this.url = options.url;
    this.#base = new URL(options.url);
    this.#signer = options.signer;
    this.hotkey = options.signer.address;
    this.minerHotkey = options.minerHotkey;
    this.#requestTimeoutMs = options.requestTimeoutMs;
  }

  /** POST `path` with a signed JSON body. */
  async #post(path: string, payload: unknown, id: string, signal: AbortSignal): Promise<Response> {
    if (this.#closed) throw new ConnectionError('the client is closed');
    const body = Buffer.from(JSON.stringify(payload), 'utf8');
    const headers = { 'Content-Type': 'application/json', Accept: 'application/json, text/event-stream', ...epistulaHeaders(this.#signer, { body, signedFor: this.minerHotkey, id }) };
    try {
      return await fetch(new URL(path, this.#base), { method: 'POST', headers, body, signal });
    } catch (err) {
      if (signal.aborted) throw new ConnectionError(`request ${id} was cancelled before the miner answered`, { cause: err });
      throw new ConnectionError(`cannot reach ${this.url}: ${(err as Error).message}`, { cause: err });
    }
  }

  /** A signed POST /detokenize of no tokens (the response is signed), then the miner's /health. */
  async ping(): Promise<PingResult> {
    const id = randomUUID();
    const signal = AbortSignal.timeout(this.#requestTimeoutMs);
    const t0 = performance.now();
    const res = await this.#post('/detokenize', { tokens: [] }, id, signal);
    const body = Buffer.from(await res.arrayBuffer());
    const latencyMs = performance.now() - t0;
    if (!res.ok) {
      const err = await refusalOf(new Response(body, { status: res.status }), id);
      throw err;
    }
    verifyResponseHeaders(res.headers, body, { miner: this.minerHotkey, validator: this.hotkey, uuid: id });
    let health: Record<string, unknown>;
    try {
      health = (await (await fetch(new URL('/health', this.#base), { signal })).json()) as Record<string, unknown>;
    } catch (err) {
      throw new ConnectionError(`cannot read ${this.url}/health: ${(err as Error).message}`, { cause: err });
    }
    const str = (key: string) => (typeof health[key] === 'string' ? (health[key] as string) : '');
    const pong: PongBody = {
      hotkey: this.minerHotkey,
      protocol: typeof health.protocol === 'number' ? health.protocol : 0,
      version: str('version'),
      model_id: str('model_id'),
      weights_digest: str('weights_digest'),
      adapter: str('adapter'),
      backend: str('backend'),
      queue_depth: typeof health.queue_depth === 'number' ? health.queue_depth : 0,
    };
    return { latencyMs, pong };
  }

  /** Protocol v1's info (limits, KV cache) has no HTTP route. */
  async info(): Promise<InfoBody> {
    throw new ConnectionError('info is served over the WebSocket protocol only: connect with ws://');
  }

  /** Start a streamed generation; iterate for tokens, or await `.result` (verified as the file header says). */
  generate(params: GenerateParams, options: { signal?: AbortSignal } = {}): GenerationStream {
    const id = randomUUID();
    const abort = new AbortController();
    const stream = new GenerationStream(() => abort.abort(new ConnectionError('cancelled')));
    stream.start(id, performance.now());
    this.#open.set(id, abort);
    if (options.signal) {
      if (options.signal.aborted) abort.abort(options.signal.reason);
      else options.signal.addEventListener('abort', () => abort.abort(options.signal!.reason), { once: true });
    }
    void this.#run(stream, id, params, abort).finally(() => this.#open.delete(id));
    return stream;
  }

  async #run(stream: GenerationStream, id: string, params: GenerateParams, abort: AbortController): Promise<void> {
    const sentAt = performance.now();
    const chat = params.messages !== undefined;
    const payload: Record<string, unknown> = {
      ...(chat ? { messages: params.messages } : { prompt: params.prompt }),
      max_tokens: params.maxTokens,
      stream: true,
      stream_options: { include_usage: true },
      return_tokens_as_token_ids: true,
      ...(chat ? { logprobs: true, top_logprobs: params.logprobs ?? 0 } : { logprobs: params.logprobs ?? 0 }),
    };
    if (params.temperature !== undefined) payload.temperature = params.temperature;
    if (params.topP !== undefined) payload.top_p = params.topP;
    if (params.topK !== undefined) payload.top_k = params.topK;
    if (params.seed !== undefined) payload.seed = params.seed;
    if (params.stop !== undefined) payload.stop = params.stop;
    try {
      const res = await this.#post(chat ? '/v1/chat/completions' : '/v1/completions', payload, id, abort.signal);
      if (!res.ok) throw await refusalOf(res, id);
      if (!res.body || !(res.headers.get('content-type') ?? '').startsWith('text/event-stream')) throw new VerificationError('the miner did not answer with an event stream');
      const parser = new SseParser();
      const received: Buffer[] = [];
      const tokens: ClientToken[] = [];
      let firstAt: number | undefined;
      let finishReason: WireFinishReason | undefined;
      let extraText = '';
      let usage: { prompt_tokens: number; completion_tokens: number } | undefined;
      let signature: StreamSignature | undefined;
      let done = false;
      let before = 0; // bytes before the signature chunk
      for await (const bytes of res.body as unknown as AsyncIterable<Uint8Array>) {
        const at = performance.now();
        received.push(Buffer.from(bytes));
        for (const event of parser.push(bytes)) {
          if (done) throw new VerificationError('the miner sent events after [DONE]');
          if (event.data === '[DONE]') {
            done = true;
            continue;
          }
          if (signature) throw new VerificationError('the miner sent events after its signature chunk');
          let chunk: unknown;
          try {
            chunk = JSON.parse(event.data);
          } catch {
            throw new VerificationError(`an event is not JSON: ${event.data.slice(0, 80)}`);
          }
          if (!isObject(chunk)) throw new VerificationError('an event is not a JSON object');
          if (isObject(chunk.error)) throw new AxonError((ERROR_CODES as readonly unknown[]).includes(chunk.error.code) ? (chunk.error.code as ErrorCode) : 'INTERNAL', String(chunk.error.message), { requestId: id });
          if (isObject(chunk.epistula)) {
            signature = chunk.epistula as unknown as StreamSignature;
            before = event.start;
            continue;
          }
          const choices = chunk.choices;
          if (!Array.isArray(choices)) throw new VerificationError('a chunk has no choices');
          if (choices.length === 0) {
            if (!isObject(chunk.usage)) throw new VerificationError('a chunk without choices carries no usage');
            usage = chunk.usage as typeof usage;
            continue;
          }
          if (finishReason !== undefined) throw new VerificationError('a choice chunk came after the finish chunk');
          const choice = choices[0] as Record<string, unknown>;
          const text = chat ? (isObject(choice.delta) && typeof choice.delta.content === 'string' ? choice.delta.content : '') : typeof choice.text === 'string' ? choice.text : '';
          if (choice.finish_reason !== null && choice.finish_reason !== undefined) {
            if (choice.finish_reason !== 'stop' && choice.finish_reason !== 'length') throw new VerificationError(`unknown finish_reason ${String(choice.finish_reason)}`);
            finishReason = choice.finish_reason;
            extraText = text;
            continue;
          }
          const token = chat ? chatToken(choice, text, tokens.length) : completionToken(choice, text, tokens.length);
          firstAt ??= at;
          tokens.push(token);
          stream.deliver(token, at);
        }
      }
      const end = performance.now();
      if (!done) throw new ConnectionError('the stream ended before data: [DONE]');
      if (parser.leftover > 0) throw new VerificationError('the stream has bytes after its last event');
      if (!signature) throw new VerificationError('the stream carries no miner signature');
      const all = Buffer.concat(received);
      verifyStreamSignature(all.subarray(0, before), signature, { miner: this.minerHotkey, validator: this.hotkey, uuid: id });
      if (finishReason === undefined) throw new VerificationError('the stream has no finish_reason');
      if (!usage) throw new VerificationError('the stream has no usage chunk');
      if (usage.completion_tokens !== tokens.length) throw new VerificationError(`miner reports ${usage.completion_tokens} completion tokens; ${tokens.length} token chunks arrived`);
      const totalMs = end - sentAt;
      const ttftMs = (firstAt ?? end) - sentAt;
      const n = tokens.length;
      const result: GenerationResult = {
        id,
        finishReason,
        text: tokens.map((t) => t.text).join('') + extraText,
        tokens,
        usage: { promptTokens: usage.prompt_tokens, completionTokens: usage.completion_tokens },
        // The HTTP face reports no timing of its own: these are 0, the measured ones are below.
        minerTiming: { ttftMs: 0, totalMs: 0, tokensPerS: 0 },
        measured: { ttftMs, totalMs, tokensPerS: n > 1 && totalMs > ttftMs ? ((n - 1) * 1000) / (totalMs - ttftMs) : 0 },
        transcriptSha256: signature.sha256,
        framesVerified: 1,
      };
      stream.settle(result);
    } catch (err) {
      if (abort.signal.aborted && !(err instanceof AxonError) && !(err instanceof VerificationError)) {
        stream.settle(new ConnectionError(`generation ${id} was cancelled: an HTTP stream closed early carries no miner signature`, { cause: err }));
      } else {
        stream.settle(err instanceof Error ? err : new VerificationError(String(err)));
      }
    }
  }

  /** Stop generation `target` (closes its HTTP stream; the miner frees its slot). */
  cancel(target: string): void {
    this.#open.get(target)?.abort(new ConnectionError('cancelled'));
  }

  async close(): Promise<void> {
    this.#closed = true;
    for (const abort of this.#open.values()) abort.abort(new ConnectionError('the client was closed'));
  }
}

function chatToken(choice: Record<string, unknown>, text: string, index: number): ClientToken {
  const content = isObject(choice.logprobs) ? choice.logprobs.content : undefined;
  if (!Array.isArray(content) || content.length !== 1 || !isObject(content[0])) throw new VerificationError(`chunk ${index} does not carry exactly one token's logprobs`);
  const entry = content[0];
  const tops = Array.isArray(entry.top_logprobs) ? entry.top_logprobs : [];
  return {
    index,
    tokenId: tokenIdOf(entry.token),
    text,
    logprob: Number(entry.logprob),
    topLogprobs: tops.map((a: unknown) => {
      if (!isObject(a)) throw new VerificationError(`chunk ${index} has a malformed top_logprobs entry`);
      const bytes = Array.isArray(a.bytes) ? Buffer.from(a.bytes as number[]).toString('utf8') : '';
      return { tokenId: tokenIdOf(a.token), text: bytes, logprob: Number(a.logprob) };
    }),
  };
}

function completionToken(choice: Record<string, unknown>, text: string, index: number): ClientToken {
  const lp = choice.logprobs;
  if (!isObject(lp) || !Array.isArray(lp.tokens) || lp.tokens.length !== 1 || !Array.isArray(lp.token_logprobs)) {
    throw new VerificationError(`chunk ${index} does not carry exactly one token's logprobs`);
  }
  const tops = Array.isArray(lp.top_logprobs) && isObject(lp.top_logprobs[0]) ? (lp.top_logprobs[0] as Record<string, unknown>) : {};
  return {
    index,
    tokenId: tokenIdOf(lp.tokens[0]),
    text,
    logprob: Number(lp.token_logprobs[0]),
    // Completions' alternatives are a map of token string to logprob: ids only, no text.
    topLogprobs: Object.entries(tops).map(([token, logprob]) => ({ tokenId: tokenIdOf(token), text: '', logprob: Number(logprob) })),
  };
}

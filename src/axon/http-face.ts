// The OpenAI-compatible HTTP face of the axon, on the WebSocket's port: what the validators of
// Targon (SN4) and SN1 spoke to miners, authenticated with Epistula v2 headers.
//
//   POST /v1/chat/completions, /v1/completions   (stream: SSE, one token per chunk; or one JSON body)
//   POST /tokenize, /detokenize                  (vLLM's)
//   GET  /v1/models                              (unsigned)
//
// One request's path is protocol v1's, by the same code: body size (at the Content-Length, then as
// it is read) -> Epistula headers (the frame's fields) -> Policy.precheck (stale window, signed_for,
// registered, deny/permit/stake) -> signature, on a crypto worker -> Policy.authorise (replay, the
// standing again, rate) -> the JSON body -> Policy.acquireSlot (waits in the hotkey's queue past
// --max-concurrent) -> TextGenerator.generate(priority = stake).
//
// Responses to a request whose signature verified are signed by the miner: a JSON body carries
// Epistula-* response headers, with Epistula-Response-Signature over
// `${sha256_hex(body)}.${uuid}.${timestamp}.${signed_for}`; a stream ends, before `data: [DONE]`,
// with an extension chunk (`choices: []`, field `epistula`) holding the sha256 of every byte of the
// stream before it and the signature over the same string with that digest. A refusal before the
// signature verified is not signed: whoever sent it may not hold the hotkey it names.
import { createHash, randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import type { Counter, Histogram } from 'prom-client';
import type { GeneratedToken, TextGenerator } from '../engine/types.ts';
import type { CryptoPool } from '../wire/crypto-pool.ts';
import { newFlight, runGeneration, stopFlight, type Flight } from './generation.ts';
import {
  HttpRefusal,
  SSE_DONE,
  TokenShaper,
  completionBody,
  chunkObject,
  finishChunk,
  openAiError,
  parseCompletionRequest,
  parseDetokenizeRequest,
  parseTokenizeRequest,
  sseEvent,
  tokenChunk,
  usageChunk,
  usageOf,
  type CompletionRequest,
  type Endpoint,
  type ResponseIdentity,
} from './openai.ts';
import type { Admission, Policy } from './policy.ts';
import { AxonError, PROTOCOL_VERSION, isSs58Shaped, isUuid, type ErrorCode, type PayloadLimits, type RequestFrame, type RequestOp } from '../wire/protocol.ts';
import { signedMessage, verifyFrame, type Signer } from '../wire/signing.ts';

export const EPISTULA_VERSION = '2';

/** The request headers Epistula v2 defines (lower case, as node gives them). */
export const EPISTULA_HEADERS = {
  version: 'epistula-version',
  timestamp: 'epistula-timestamp',
  uuid: 'epistula-uuid',
  signedBy: 'epistula-signed-by',
  signedFor: 'epistula-signed-for',
  signature: 'epistula-request-signature',
} as const;

/** The signature header of a signed JSON response (the others keep their request names). */
export const RESPONSE_SIGNATURE_HEADER = 'Epistula-Response-Signature';

/** The face's routes that need Epistula headers, and the op each counts as for the policy and metrics. */
const SIGNED_ROUTES: Readonly<Record<string, { op: RequestOp; name: string }>> = {
  '/v1/chat/completions': { op: 'generate', name: 'chat' },
  '/v1/completions': { op: 'generate', name: 'completions' },
  '/tokenize': { op: 'info', name: 'tokenize' },
  '/detokenize': { op: 'info', name: 'detokenize' },
};

export interface HttpFaceLimits extends PayloadLimits {
  /** Largest request body (413 above), the same as the WebSocket's largest frame. */
  maxFrameBytes: number;
  requestTimeoutMs: number;
  slowReaderTimeoutMs: number;
  /** Signature checks queued or running in all; an HTTP request beyond it gets 503. */
  maxVerifyQueue: number;
  /**
   * Of those, the checks of HTTP requests on sockets that have not yet shown a valid signature of an
   * authorised hotkey (503 beyond it): peers that only send bad signatures get a bounded share.
   */
  maxUnprovenVerifyQueue: number;
}

export interface HttpFaceMetrics {
  requests: Counter<'op' | 'outcome'>;
  tokens: Counter;
  promptTokens: Counter<'cache'>;
  ttft: Histogram;
  tokensPerS: Histogram;
}

/** What the face uses of the server it belongs to. */
export interface HttpFaceHost {
  readonly limits: HttpFaceLimits;
  readonly policy: Policy;
  readonly generator: TextGenerator;
  readonly crypto: CryptoPool;
  readonly signer: Signer;
  readonly logger: Logger;
  readonly metrics: HttpFaceMetrics;
  /** The server's clock (unix ms). */
  clock(): number;
  /** True once shutdown began: new requests get 503. */
  closing(): boolean;
  /** Keep a generation for shutdown to wait for and stop, until forget(flight). */
  track(flight: Flight, task: Promise<void>): void;
  forget(flight: Flight): void;
  /** Unix seconds the server started (the `created` of GET /v1/models). */
  readonly startedAt: number;
}

/** Headers of a signed response. */
export interface ResponseSignature {
  uuid: string;
  timestamp: number;
  signedBy: string;
  signedFor: string;
  signature: string;
}

/** A request that passed the policy: who asked, and what the response is signed for. */
interface Authorised {
  frame: RequestFrame;
  admission: Admission;
  receivedAt: number;
  route: { op: RequestOp; name: string };
}

const round = (x: number) => Math.round(x * 100) / 100;

export class HttpFace {
  #host: HttpFaceHost;
  /** Sockets that carried a request with a valid signature of an authorised hotkey. */
  #proven = new WeakSet<object>();
  /** Signature checks in flight for requests on sockets not (yet) proven. */
  #unprovenVerifying = 0;

  constructor(host: HttpFaceHost) {
    this.#host = host;
  }

  /** Whether `path` is one of the face's routes (the server answers the rest). */
  static serves(path: string): boolean {
    return path === '/v1/models' || path in SIGNED_ROUTES || path.startsWith('/v1/');
  }

  /** Answer one request on a face route. Never throws. */
  async handle(req: IncomingMessage, res: ServerResponse, path: string): Promise<void> {
    const receivedAt = performance.now();
    const route = SIGNED_ROUTES[path];
    try {
      if (path === '/v1/models') {
        if (req.method !== 'GET' && req.method !== 'HEAD') return this.#plainError(res, 405, 'GET /v1/models', 'BAD_REQUEST', { Allow: 'GET' });
        return this.#models(res);
      }
      if (!route) {
        return this.#plainError(res, 404, `no route ${path.slice(0, 100)}: this miner serves POST /v1/chat/completions, /v1/completions, /tokenize, /detokenize and GET /v1/models`, 'BAD_REQUEST');
      }
      if (req.method !== 'POST') return this.#plainError(res, 405, `${path} takes POST`, 'BAD_REQUEST', { Allow: 'POST' });
    } catch (err) {
      this.#host.logger.error({ event: 'http_error', err }, 'HTTP handler failed');
      if (!res.headersSent) res.writeHead(500).end();
      return;
    }
    let authorised: Authorised | undefined;
    try {
      authorised = await this.#authorise(req, res, route, receivedAt);
      if (authorised === undefined) return; // answered (the body was too large)
      switch (route.name) {
        case 'chat':
        case 'completions':
          return await this.#complete(req, res, authorised, route.name === 'chat' ? 'chat' : 'completions');
        case 'tokenize':
        case 'detokenize':
          return await this.#tokenizer(res, authorised, route.name);
      }
    } catch (err) {
      await this.#refuse(res, err, route.name, authorised);
    }
  }

  // -------------------------------------------------------------------------------------------
  // The policy path

  /** Read the body, build the frame the headers describe, and run it through the policy. */
  async #authorise(req: IncomingMessage, res: ServerResponse, route: { op: RequestOp; name: string }, receivedAt: number): Promise<Authorised | undefined> {
    const host = this.#host;
    const now = host.clock();
    const limit = host.limits.maxFrameBytes;
    const declared = Number(req.headers['content-length']);
    if (Number.isFinite(declared) && declared > limit) {
      this.#tooLarge(res, `request body is ${declared} bytes; the limit is ${limit}`, route.name);
      return undefined;
    }
    const body = await readBody(req, limit);
    if (body === undefined) {
      // Over the limit as it was read (a chunked body): answer, then drop the connection rather than read the rest.
      this.#tooLarge(res, `request body is over ${limit} bytes`, route.name);
      res.once('finish', () => req.socket.destroy());
      return undefined;
    }
    const frame = epistulaFrame(req, body, route.op);
    if (host.closing()) throw new AxonError('OVERLOADED', 'miner is shutting down', { requestId: frame.id, signedBy: frame.signed_by });
    host.policy.precheck(frame, now);
    const valid = await this.#verify(frame, req);
    const admission = host.policy.authorise(frame, valid, now);
    this.#proven.add(req.socket);
    return { frame, admission, receivedAt, route };
  }

  async #verify(frame: RequestFrame, req: IncomingMessage): Promise<boolean> {
    const crypto = this.#host.crypto;
    if (crypto.inline) return verifyFrame(frame);
    const unproven = !this.#proven.has(req.socket);
    if (crypto.verifying >= this.#host.limits.maxVerifyQueue || (unproven && this.#unprovenVerifying >= this.#host.limits.maxUnprovenVerifyQueue)) {
      throw new AxonError('OVERLOADED', 'too many signature checks waiting; retry shortly', { requestId: frame.id, signedBy: frame.signed_by });
    }
    if (unproven) this.#unprovenVerifying += 1;
    const verdict = await crypto.verify(req.socket, {
      body: frame.body,
      id: frame.id,
      timestamp: frame.timestamp,
      signedFor: frame.signed_for,
      signature: frame.signature,
      address: frame.signed_by,
    });
    if (unproven) this.#unprovenVerifying -= 1;
    if (verdict instanceof Error) throw verdict; // a worker died during the check: INTERNAL
    return verdict;
  }

  // -------------------------------------------------------------------------------------------
  // Responses

  #models(res: ServerResponse): void {
    const info = this.#host.generator.info();
    const body = {
      object: 'list',
      data: [{ id: info.modelId, object: 'model', created: this.#host.startedAt, owned_by: 'webgpu-miner', root: info.modelId, weights_sha256: info.weightsDigest }],
    };
    res.writeHead(200, { 'Content-Type': 'application/json' }).end(JSON.stringify(body));
  }

  #plainError(res: ServerResponse, status: number, message: string, code: ErrorCode, headers: Record<string, string> = {}): void {
    const { body } = openAiError(code, message, new HttpRefusal(code, message, { status }));
    res.writeHead(status, { 'Content-Type': 'application/json', ...headers }).end(JSON.stringify(body));
  }

  #tooLarge(res: ServerResponse, message: string, op: string): void {
    this.#host.metrics.requests.inc({ op, outcome: 'TOO_LARGE' });
    // The rest of the body is not read: the connection closes after the answer.
    res.setHeader('Connection', 'close');
    this.#plainError(res, 413, message, 'TOO_LARGE');
  }

  /** Send a signed JSON body (unsigned when `authorised` is undefined). */
  async #json(res: ServerResponse, status: number, value: unknown, authorised: Authorised | undefined, extraHeaders: Record<string, string> = {}): Promise<void> {
    const body = Buffer.from(JSON.stringify(value), 'utf8');
    const headers: Record<string, string> = { 'Content-Type': 'application/json', ...extraHeaders };
    if (authorised) {
      const signed = await signBody(this.#host, res.socket ?? res, body, authorised.frame);
      if (signed) Object.assign(headers, signatureHeaders(signed));
    }
    if (res.destroyed || res.headersSent) return;
    res.writeHead(status, headers).end(body);
  }

  async #refuse(res: ServerResponse, err: unknown, op: string, authorised: Authorised | undefined): Promise<void> {
    const code = httpCode(err);
    const message = code === 'INTERNAL' ? 'internal error; the miner has logged it' : (err as Error).message;
    const refusal = err instanceof HttpRefusal ? err : undefined;
    const { status, body } = openAiError(code, message, refusal);
    this.#host.metrics.requests.inc({ op, outcome: code });
    const axon = err instanceof AxonError ? err : undefined;
    const fields = { event: 'request', transport: 'http', validator: authorised?.frame.signed_by ?? (axon?.signedBy || undefined), op, id: authorised?.frame.id ?? (axon?.requestId || undefined), outcome: code, message };
    if (code === 'INTERNAL') this.#host.logger.error({ ...fields, err }, 'request');
    else this.#host.logger[authorised ? 'info' : 'debug'](fields, 'request');
    if (res.headersSent || res.destroyed) return;
    await this.#json(res, status, body, authorised, code === 'RATE_LIMITED' ? { 'Retry-After': '1' } : {});
  }

  async #tokenizer(res: ServerResponse, a: Authorised, which: 'tokenize' | 'detokenize'): Promise<void> {
    const host = this.#host;
    const json = parseJson(a.frame.body);
    const info = host.generator.info();
    const generator = host.generator;
    let value: unknown;
    if (which === 'tokenize') {
      if (!generator.tokenize) throw new HttpRefusal('BAD_REQUEST', 'this miner does not serve /tokenize', { status: 404 });
      const input = parseTokenizeRequest(json, info.modelId, host.limits);
      const tokens = generator.tokenize(input, input.addSpecialTokens);
      value = { count: tokens.length, tokens };
    } else {
      if (!generator.detokenize) throw new HttpRefusal('BAD_REQUEST', 'this miner does not serve /detokenize', { status: 404 });
      value = { prompt: generator.detokenize(parseDetokenizeRequest(json, info.modelId, host.limits.maxTokens * 64)) };
    }
    await this.#json(res, 200, value, a);
    host.metrics.requests.inc({ op: which, outcome: 'ok' });
    host.logger.info({ event: 'request', transport: 'http', validator: a.frame.signed_by, uid: a.admission.uid, op: which, id: a.frame.id, outcome: 'ok' }, 'request');
  }

  // -------------------------------------------------------------------------------------------
  // Generation

  async #complete(req: IncomingMessage, res: ServerResponse, a: Authorised, endpoint: Endpoint): Promise<void> {
    const host = this.#host;
    const { frame, admission } = a;
    const context = { requestId: frame.id, signedBy: frame.signed_by };
    const info = host.generator.info();
    const request = parseCompletionRequest(endpoint, parseJson(frame.body), info.modelId, host.limits);
    const flight = newFlight();
    // Refused here (RATE_LIMITED, 429) when the hotkey's slots and its queue are all taken.
    const slot = host.policy.acquireSlot(frame.signed_by, context, flight.abort.signal);
    const task = new Generation(host, res, a, request, flight, slot).run();
    host.track(flight, task);
    await task;
  }
}

/** One completion request from its slot to the end of its response. */
class Generation {
  readonly #host: HttpFaceHost;
  readonly #res: ServerResponse;
  readonly #a: Authorised;
  readonly #request: CompletionRequest;
  readonly #flight: Flight;
  readonly #slot: Promise<() => void>;
  readonly #who: ResponseIdentity;
  readonly #shaper: TokenShaper;
  /** Every byte of the stream so far, for the final signature. */
  readonly #sent: Buffer[] = [];
  readonly #digest = createHash('sha256');
  /** Resolves on the response's 'drain' or 'close'. */
  #drainWaiters = new Set<() => void>();

  constructor(host: HttpFaceHost, res: ServerResponse, a: Authorised, request: CompletionRequest, flight: Flight, slot: Promise<() => void>) {
    this.#host = host;
    this.#res = res;
    this.#a = a;
    this.#request = request;
    this.#flight = flight;
    this.#slot = slot;
    const prefix = request.endpoint === 'chat' ? 'chatcmpl' : 'cmpl';
    this.#who = { id: `${prefix}-${randomUUID().replace(/-/g, '')}`, created: Math.floor(host.clock() / 1000), model: request.model };
    this.#shaper = new TokenShaper(request, host.generator.tokenText?.bind(host.generator));
    // A client that goes away stops the generation (its slot and KV cache are freed at the next step).
    res.on('close', () => {
      if (!res.writableFinished) stopFlight(flight, 'closed');
      this.#wake();
    });
    res.on('drain', () => this.#wake());
  }

  #wake(): void {
    for (const wake of this.#drainWaiters) wake();
    this.#drainWaiters.clear();
  }

  /** Write SSE bytes; false when the response is gone. Waits while the client is not reading. */
  async #write(bytes: Buffer): Promise<boolean> {
    const res = this.#res;
    if (res.destroyed) return false;
    this.#sent.push(bytes);
    this.#digest.update(bytes);
    if (res.write(bytes)) return true;
    // The socket's buffer is full: wait for the reader, at most slowReaderTimeoutMs.
    const drained = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => {
        this.#drainWaiters.delete(done);
        resolve(false);
      }, this.#host.limits.slowReaderTimeoutMs);
      const done = () => {
        clearTimeout(timer);
        resolve(!res.destroyed);
      };
      this.#drainWaiters.add(done);
    });
    if (!drained && !res.destroyed) stopFlight(this.#flight, 'slow');
    return drained;
  }

  async run(): Promise<void> {
    const host = this.#host;
    const { frame, admission, receivedAt } = this.#a;
    const flight = this.#flight;
    const r = this.#request;
    const tokens: GeneratedToken[] = [];
    let heldText = ''; // text released without a token (held back for a stop string), sent with the finish
    let firstTokenAt: number | undefined;
    let textOffset = 0;
    const run = await runGeneration({
      generator: host.generator,
      request: r.engine,
      priority: admission.stake,
      flight,
      slot: this.#slot,
      timeoutMs: host.limits.requestTimeoutMs,
      // One token per SSE chunk; #write waits while the client is not reading.
      deliver: async (t) => {
        if (t.tokenId < 0) {
          heldText += t.text;
          return true;
        }
        firstTokenAt ??= performance.now();
        tokens.push(t);
        if (!r.stream) return true;
        if (tokens.length === 1) this.#startStream();
        const written = await this.#write(sseEvent(tokenChunk(this.#who, this.#shaper, t, tokens.length === 1, textOffset)));
        textOffset += t.text.length;
        return written;
      },
    });
    host.forget(flight);
    const { summary, reason } = run;
    let failure = run.failure;

    const name = this.#a.route.name;
    const base = { event: 'request', transport: 'http', validator: frame.signed_by, uid: admission.uid, op: name, id: frame.id, priority: admission.stake };
    host.metrics.tokens.inc(tokens.length);
    if (reason === 'closed') {
      host.metrics.requests.inc({ op: name, outcome: 'disconnected' });
      host.logger.info({ ...base, outcome: 'disconnected', tokens: tokens.length, total_ms: round(performance.now() - receivedAt) }, 'request');
      return;
    }
    if (failure === undefined && reason !== undefined) {
      failure = new AxonError(
        'OVERLOADED',
        reason === 'timeout'
          ? `generation exceeded the ${host.limits.requestTimeoutMs} ms request timeout`
          : reason === 'slow'
            ? `reader too slow: the response was not read for ${host.limits.slowReaderTimeoutMs} ms`
            : 'miner is shutting down',
        { requestId: frame.id, signedBy: frame.signed_by },
      );
    }
    const usage = usageOf(summary, tokens.length);
    const finishReason = summary?.finishReason ?? 'stop';
    if (failure !== undefined) {
      if (!this.#res.headersSent) throw failure; // answered as a plain refusal (the status says what)
      // Mid-stream: OpenAI's error event, then the signature over everything sent, then [DONE].
      const code = httpCode(failure);
      const message = code === 'INTERNAL' ? 'internal error; the miner has logged it' : (failure as Error).message;
      host.metrics.requests.inc({ op: name, outcome: code });
      host.logger[code === 'INTERNAL' ? 'error' : 'info']({ ...base, outcome: code, message, tokens: tokens.length, ...(code === 'INTERNAL' ? { err: failure } : {}) }, 'request');
      if (reason !== 'slow') await this.#write(sseEvent(openAiError(code, message).body));
      await this.#endStream();
      return;
    }
    if (r.stream) {
      if (tokens.length === 0) this.#startStream();
      await this.#write(sseEvent(finishChunk(this.#who, r, finishReason, heldText, tokens.length === 0)));
      if (r.includeUsage) await this.#write(sseEvent(usageChunk(this.#who, r, usage)));
      await this.#endStream();
    } else {
      const body = completionBody(this.#who, this.#shaper, tokens, heldText, finishReason, usage);
      const bytes = Buffer.from(JSON.stringify(body), 'utf8');
      const signed = await signBody(this.#host, this.#res.socket ?? this.#res, bytes, this.#a.frame);
      if (!this.#res.destroyed) this.#res.writeHead(200, { 'Content-Type': 'application/json', ...(signed ? signatureHeaders(signed) : {}) }).end(bytes);
    }
    const totalMs = performance.now() - receivedAt;
    const ttftMs = firstTokenAt === undefined ? totalMs : firstTokenAt - receivedAt;
    const tokensPerS = tokens.length > 1 && totalMs > ttftMs ? ((tokens.length - 1) * 1000) / (totalMs - ttftMs) : 0;
    host.metrics.requests.inc({ op: name, outcome: 'ok' });
    const cached = summary?.cachedPromptTokens ?? 0;
    host.metrics.promptTokens.inc({ cache: 'hit' }, cached);
    host.metrics.promptTokens.inc({ cache: 'miss' }, usage.prompt_tokens - cached);
    if (tokens.length > 0) host.metrics.ttft.observe(ttftMs / 1000);
    if (tokens.length > 1) host.metrics.tokensPerS.observe(tokensPerS);
    host.logger.info({ ...base, outcome: 'ok', finish_reason: finishReason, tokens: tokens.length, cached_prompt_tokens: cached, ttft_ms: round(ttftMs), total_ms: round(totalMs), tokens_per_s: round(tokensPerS) }, 'request');
  }

  #startStream(): void {
    if (this.#res.headersSent || this.#res.destroyed) return;
    this.#res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache', 'X-Accel-Buffering': 'no' });
    this.#res.flushHeaders();
  }

  /** The signature chunk over every byte sent so far, then [DONE]. */
  async #endStream(): Promise<void> {
    const res = this.#res;
    if (res.destroyed) return;
    const sha256 = this.#digest.digest('hex');
    const signed = await signBody(this.#host, res.socket ?? res, Buffer.concat(this.#sent), this.#a.frame);
    if (res.destroyed) return;
    if (signed) {
      const chunk = {
        id: this.#who.id,
        object: chunkObject(this.#request.endpoint),
        created: this.#who.created,
        model: this.#who.model,
        choices: [],
        epistula: {
          version: Number(EPISTULA_VERSION),
          uuid: signed.uuid,
          timestamp: signed.timestamp,
          signed_by: signed.signedBy,
          signed_for: signed.signedFor,
          sha256,
          signature: signed.signature,
        },
      };
      res.write(sseEvent(chunk));
    }
    res.end(SSE_DONE);
  }
}

/**
 * Sign `body` (a JSON response, or every byte of a stream) for the request's signer, on a crypto
 * worker when there are some: the Epistula string with the request's uuid and the miner's clock.
 * Null when it cannot be (the pool dropped the job).
 */
async function signBody(host: HttpFaceHost, key: object, body: Uint8Array, frame: RequestFrame): Promise<ResponseSignature | null> {
  const fields = { body, id: frame.id, timestamp: host.clock(), signedFor: frame.signed_by };
  const signature = host.crypto.signsInline
    ? host.signer.sign(signedMessage(fields.body, fields.id, fields.timestamp, fields.signedFor))
    : await host.crypto.sign(key, fields);
  if (signature === null) return null;
  return { uuid: frame.id, timestamp: fields.timestamp, signedBy: host.signer.address, signedFor: frame.signed_by, signature };
}

/** The Epistula response headers of a signed JSON body. */
export function signatureHeaders(s: ResponseSignature): Record<string, string> {
  return {
    'Epistula-Version': EPISTULA_VERSION,
    'Epistula-Timestamp': String(s.timestamp),
    'Epistula-Uuid': s.uuid,
    'Epistula-Signed-By': s.signedBy,
    'Epistula-Signed-For': s.signedFor,
    [RESPONSE_SIGNATURE_HEADER]: s.signature,
  };
}

function header(req: IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

/**
 * The protocol v1 request frame an Epistula v2 request stands for: the same fields, the raw body
 * bytes as `body`, so the same policy and signature code judge it. Throws AxonError BAD_FRAME
 * (401: a header missing or malformed) or UNSUPPORTED_VERSION (400).
 */
export function epistulaFrame(req: IncomingMessage, body: Buffer, op: RequestOp): RequestFrame {
  const h = EPISTULA_HEADERS;
  const missing = Object.values(h).filter((name) => header(req, name) === undefined);
  const uuid = header(req, h.uuid);
  const signedBy = header(req, h.signedBy);
  const context = { requestId: isUuid(uuid) ? uuid : '', signedBy: isSs58Shaped(signedBy) ? signedBy : '' };
  if (missing.length > 0) {
    throw new AxonError('BAD_FRAME', `missing Epistula header(s) ${missing.join(', ')}: sign the request with Epistula v2`, context);
  }
  const version = header(req, h.version)!;
  if (version.trim() !== EPISTULA_VERSION) {
    throw new AxonError('UNSUPPORTED_VERSION', `Epistula-Version ${version.slice(0, 20)} is not supported; this miner speaks Epistula ${EPISTULA_VERSION}`, context);
  }
  if (!isUuid(uuid)) throw new AxonError('BAD_FRAME', 'Epistula-Uuid must be a uuid', context);
  const timestampText = header(req, h.timestamp)!.trim();
  const timestamp = /^\d{1,16}$/.test(timestampText) ? Number(timestampText) : NaN;
  if (!Number.isSafeInteger(timestamp)) throw new AxonError('BAD_FRAME', 'Epistula-Timestamp must be unix milliseconds (an integer)', context);
  if (!isSs58Shaped(signedBy)) throw new AxonError('BAD_FRAME', 'Epistula-Signed-By must be an ss58 hotkey', context);
  const signedFor = header(req, h.signedFor)!.trim();
  if (!isSs58Shaped(signedFor)) throw new AxonError('BAD_FRAME', 'Epistula-Signed-For must be an ss58 hotkey', context);
  const signature = header(req, h.signature)!.trim();
  if (signature.length > 256) throw new AxonError('BAD_FRAME', 'Epistula-Request-Signature must be "0x" + 128 hex digits', context);
  return { v: PROTOCOL_VERSION, id: uuid, op, timestamp, signed_by: signedBy, signed_for: signedFor, body, signature };
}

/** The request body, or undefined once it passes `limit` bytes (reading then stops). Throws BAD_REQUEST when the client goes away mid-body. */
function readBody(req: IncomingMessage, limit: number): Promise<Buffer | undefined> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let size = 0;
    const done = () => {
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('close', onClose);
      req.off('error', onClose);
    };
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        done();
        req.pause();
        resolve(undefined);
        return;
      }
      parts.push(chunk);
    };
    const onEnd = () => {
      done();
      resolve(Buffer.concat(parts));
    };
    const onClose = () => {
      done();
      reject(new AxonError('BAD_REQUEST', 'the request body did not arrive whole'));
    };
    req.on('data', onData);
    req.once('end', onEnd);
    req.once('close', onClose);
    req.once('error', onClose);
  });
}

function parseJson(body: Uint8Array): unknown {
  try {
    return JSON.parse(Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString('utf8'));
  } catch (err) {
    throw new HttpRefusal('BAD_REQUEST', `the request body is not JSON: ${(err as Error).message}`);
  }
}

/** The wire code for anything thrown while serving an HTTP request. */
function httpCode(err: unknown): ErrorCode {
  if (err instanceof AxonError) return err.code;
  const code = (err as { code?: unknown } | null)?.code;
  if (code === 'BAD_REQUEST' || code === 'BAD_OPTION') return 'BAD_REQUEST';
  if (code === 'OVERLOADED') return 'OVERLOADED';
  return 'INTERNAL';
}

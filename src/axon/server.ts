// The axon: a WebSocket server validators query with signed msgpack frames, streaming signed tokens
// back; on the same port the OpenAI-compatible HTTP face (http-face.ts), GET /metrics (Prometheus,
// metrics.ts) and GET /health. Connection counts and limits: connection-limits.ts; the generation
// loop both transports share: generation.ts.
//
// One frame's path: ws maxPayload (at the length header) -> decode -> policy up to "registered"
// (policy.ts precheck) -> signature, on a crypto worker (wire/crypto-pool.ts) -> the rest of the policy
// (authorise) -> payload -> concurrency slot (waiting in the hotkey's queue past --max-concurrent)
// -> TextGenerator.generate(priority = stake) -> token frames (batched, signed on a crypto worker) -> done.
// Order: a connection's frames are finished (authorised, then answered or started) in the order they
// arrived, whatever order their signatures come back in (Connection.inbound, wire/ordered-queue.ts), and its response frames
// leave in the order they were made (Connection.outbound). So a cancel pipelined after its generate is
// handled after it, and a request's token frames and done go out in order.
// Nothing a peer sends can crash the process: every handler ends in an error frame or a close.
// What a peer has not proven costs it, not the validators: a frame is checked for shape before it is
// decoded (protocol.ts), every check that only reads (policy precheck, stake included) runs before
// its signature is worth a worker's time, a refusal before a valid signature spends the connection's
// bad-frame budget and is addressed to no one (signed_for ""), and a connection that has not shown a
// valid signature gets only a small share of the signature checks.
// Memory per connection is bounded: frames beyond a connection's share of the signature checks wait
// unchecked while the socket is not read; tokens are pulled from the generator only
// while the socket's unsent bytes (frames waiting for their signature included) are under
// maxBufferedBytes and fewer than maxSignQueuePerConnection frames wait to be signed (and the socket is
// not read meanwhile); a reader that stays behind for slowReaderTimeoutMs loses the request, and one
// past four times the mark loses the connection.
import { createHash } from 'node:crypto';
import { createServer, STATUS_CODES, type IncomingMessage, type Server as HttpServer, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { readFileSync } from 'node:fs';
import { pino, type Logger } from 'pino';
import { Registry } from 'prom-client';
import { WebSocket, WebSocketServer, type RawData } from 'ws';
import { BadRequestError, CryptoWorkerError, MinerError, OptionError, OverloadedError } from '../errors.ts';
import type { TextGenerator } from '../engine/types.ts';
import { CryptoPool, defaultCryptoWorkers, type CryptoPoolStats } from '../wire/crypto-pool.ts';
import { HttpFace } from './http-face.ts';
import { createAxonMetrics, type AxonMetrics } from './metrics.ts';
import { TokenBucket } from './token-bucket.ts';
import { ConnectionLimits } from './connection-limits.ts';
import { OrderedVerifyQueue, type Verdict } from '../wire/ordered-queue.ts';
import { newFlight, runGeneration, stopFlight, toEngineRequest, toWireToken, type Flight, type StopReason } from './generation.ts';
import { Policy, type Admission, type PolicyConfig } from './policy.ts';
import {
  AxonError,
  MAX_LOGPROBS,
  PROTOCOL_VERSION,
  decodeCancelPayload,
  decodeEmptyPayload,
  decodeGeneratePayload,
  decodeRequestFrame,
  encodeBody,
  encodeFrame,
  type DoneBody,
  type ErrorBody,
  type ErrorCode,
  type GeneratePayload,
  type InfoBody,
  type PongBody,
  type RequestFrame,
  type ResponseType,
  type WireToken,
} from '../wire/protocol.ts';
import { cryptoReady, responseFrame, signResponse, verifyFrame, type Signer } from '../wire/signing.ts';

export interface AxonLimits {
  /** Largest frame (ws maxPayload, enforced at the length header; the connection closes with 1009). */
  maxFrameBytes: number;
  /** UTF-8 bytes of a prompt or of all message contents (TOO_LARGE above). */
  maxPromptBytes: number;
  maxMessages: number;
  /** Largest max_tokens a request may ask for (BAD_REQUEST above). */
  maxTokens: number;
  maxStop: number;
  maxStopBytes: number;
  maxConnections: number;
  /** WebSocket connections per address (429 at the upgrade). */
  maxConnectionsPerIp: number;
  /**
   * TCP connections per address that have not (yet) become WebSockets: counted from accept, so idle
   * sockets from one address cannot fill the server's connection table; beyond it a new one is
   * closed at once.
   */
  maxPendingConnectionsPerIp: number;
  /** A TCP connection must complete its WebSocket upgrade (or HTTP request) within this. */
  handshakeTimeoutMs: number;
  /** A connection with no frame received and nothing in flight for this long is closed. */
  idleTimeoutMs: number;
  /** Longest a generation may run (then OVERLOADED); also widens the timestamp window. */
  requestTimeoutMs: number;
  /** Frames a connection may send per second (bucket of twice this); beyond it the connection is closed (1008). */
  maxFramesPerSecond: number;
  /**
   * Frames per second refused before a valid signature (BAD_FRAME ... REPLAY; bucket of twice this).
   * Each costs a signed error frame, so a peer that keeps sending them is closed (1008) instead.
   */
  maxBadFramesPerSecond: number;
  /** Unsent bytes on a socket above which tokens are not pulled and the socket is not read. */
  maxBufferedBytes: number;
  /** How long a generation waits for a slow reader before it is dropped with OVERLOADED. */
  slowReaderTimeoutMs: number;
  /** Tokens produced within this many ms of the last token frame share the next frame (the first token is sent at once). */
  tokenBatchMs: number;
  /**
   * Token frames per second across all requests the batching aims to stay under: every frame costs
   * an sr25519 signature (about a millisecond of CPU), so with many streams the window widens to
   * max(tokenBatchMs, 1000 * active requests / this).
   */
  tokenFramesPerSecond: number;
  tokenBatchMax: number;
  tokenBatchBytes: number;
  /**
   * Frames of one connection in a signature check on the crypto workers (queued or running), once
   * that connection has shown a valid signature of an authorised hotkey; frames beyond it wait
   * their turn, unchecked, and the socket is not read meanwhile (nothing is refused for it).
   */
  maxVerifyQueuePerConnection: number;
  /** The same for a connection that has not shown one yet: small, so unproven peers cost little. */
  maxUnprovenVerifyQueuePerConnection: number;
  /** Signature checks in all; frames beyond it wait as above. */
  maxVerifyQueue: number;
  /** Of those, the checks for connections that have not shown a valid signature yet: the rest is kept for those that have. */
  maxUnprovenVerifyQueue: number;
  /**
   * Response frames of one connection waiting for their signature from the crypto workers; at this
   * many the socket is not read and no tokens are pulled for it, as with unsent bytes.
   */
  maxSignQueuePerConnection: number;
}

export const DEFAULT_LIMITS: Readonly<AxonLimits> = Object.freeze({
  maxFrameBytes: 1 << 20,
  maxPromptBytes: 256 * 1024,
  maxMessages: 256,
  maxTokens: 4096,
  maxStop: 16,
  maxStopBytes: 256,
  maxConnections: 256,
  maxConnectionsPerIp: 16,
  maxPendingConnectionsPerIp: 8,
  handshakeTimeoutMs: 5000,
  idleTimeoutMs: 60_000,
  requestTimeoutMs: 60_000,
  maxFramesPerSecond: 100,
  maxBadFramesPerSecond: 10,
  maxBufferedBytes: 1 << 20,
  slowReaderTimeoutMs: 10_000,
  tokenBatchMs: 20,
  tokenFramesPerSecond: 500,
  tokenBatchMax: 16,
  tokenBatchBytes: 64 * 1024,
  maxVerifyQueuePerConnection: 32,
  maxUnprovenVerifyQueuePerConnection: 4,
  maxVerifyQueue: 256,
  maxUnprovenVerifyQueue: 64,
  maxSignQueuePerConnection: 64,
});

/**
 * The largest value the runtime honours for a limit: a timer (setTimeout) of more than 2^31 - 1 ms
 * fires after 1 ms, and ws reads maxPayload as a 32-bit signed integer (`maxPayload | 0`, so 4 GiB
 * would mean "no limit"). Limits not listed are bounded by Number.MAX_SAFE_INTEGER only.
 */
export const MAX_TIMER_MS = 2 ** 31 - 1;
export const LIMIT_MAX: Readonly<Partial<Record<keyof AxonLimits, number>>> = Object.freeze({
  maxFrameBytes: 2 ** 31 - 1,
  maxBufferedBytes: 2 ** 31 - 1,
  handshakeTimeoutMs: MAX_TIMER_MS,
  idleTimeoutMs: MAX_TIMER_MS,
  requestTimeoutMs: MAX_TIMER_MS,
  slowReaderTimeoutMs: MAX_TIMER_MS,
  tokenBatchMs: MAX_TIMER_MS,
});

/** The serve flag that sets a limit, named in refusals so an operator knows what to change. */
export const LIMIT_FLAGS: Readonly<Partial<Record<keyof AxonLimits, string>>> = Object.freeze({
  maxConnections: '--max-connections',
  maxConnectionsPerIp: '--max-connections-per-ip',
  maxFrameBytes: '--max-frame-bytes',
  maxTokens: '--max-tokens',
  requestTimeoutMs: '--request-timeout-ms',
  idleTimeoutMs: '--idle-timeout-ms',
  handshakeTimeoutMs: '--handshake-timeout-ms',
  maxBufferedBytes: '--max-buffered-bytes',
  slowReaderTimeoutMs: '--slow-reader-timeout-ms',
});

/** Fill in defaults and check every limit is an integer the runtime honours (no `| 0` wrap-arounds, no 1 ms timers). */
export function resolveLimits(partial: Partial<AxonLimits> = {}): AxonLimits {
  const limits = { ...DEFAULT_LIMITS };
  for (const [key, value] of Object.entries(partial) as [keyof AxonLimits, number | undefined][]) {
    if (value === undefined) continue;
    if (!(key in DEFAULT_LIMITS)) throw new OptionError(`unknown axon limit '${key}'`);
    const min = key === 'tokenBatchMs' ? 0 : 1;
    const max = LIMIT_MAX[key] ?? Number.MAX_SAFE_INTEGER;
    if (!Number.isSafeInteger(value) || value < min || value > max) {
      const flag = LIMIT_FLAGS[key];
      throw new OptionError(`${flag ?? `axon limit ${key}`} must be an integer in [${min}, ${max}] (got ${value})`);
    }
    limits[key] = value;
  }
  return limits;
}

export interface AxonServerOptions {
  generator: TextGenerator;
  /** The miner's hotkey. */
  signer: Signer;
  policy?: PolicyConfig;
  limits?: Partial<AxonLimits>;
  /** pino logger; default JSON to stdout at info. */
  logger?: Logger;
  /** Reported in pong/info; default: package.json's version. */
  version?: string;
  /** Also export Node process metrics (CPU, memory, event loop lag). Default false. */
  processMetrics?: boolean;
  /** Unix-ms clock for timestamps (tests move it). */
  clock?: () => number;
  /**
   * Worker threads that verify request signatures and sign responses, so neither blocks the event
   * loop; 0 does both on the main thread. Default min(4, max(1, cores - 1)).
   */
  cryptoWorkers?: number;
  /** Replaces the crypto worker script (tests use one that stalls or dies on cue); `data` reaches it as workerData.test. */
  cryptoWorkerScript?: { url: URL; data?: unknown };
  /**
   * Serve GET /metrics on its own address instead of the axon's port (which then answers 404 there),
   * so the metrics can stay on a private interface while the axon faces the network.
   */
  metrics?: { host: string; port: number };
}

export interface AxonStats {
  connections: number;
  activeRequests: number;
  /** Largest unsent byte count seen on any socket after a send. */
  peakBufferedBytes: number;
  replayCacheEntries: number;
  /** Frames received and not yet finished: waiting for their signature check, or behind one that is. */
  waitingFrames: number;
  crypto: CryptoPoolStats;
}

/** A frame that passed what could be checked at once, waiting its turn on its connection. */
interface Inbound {
  /** performance.now() at arrival. */
  readonly receivedAt: number;
  /** The server clock at arrival: the time the policy judges the frame at. */
  readonly now: number;
  op: string;
  frame?: RequestFrame;
  /** Why the frame was refused before its signature was checked (it is answered in its turn all the same). */
  refusal?: unknown;
  /** The signature's verdict (set when the frame's turn comes); an Error when none could be made. */
  signature?: Verdict;
}

/** A response frame's bytes beyond its body, counted as unsent while it waits for its signature. */
const FRAME_OVERHEAD = 512;

class Connection {
  readonly requests = new Map<string, Flight>();
  /** Frames finished strictly in arrival order; the head may still be waiting for its signature. */
  readonly inbound: OrderedVerifyQueue<Inbound>;
  /** This connection's frames queued or running on the crypto workers. */
  verifying = 0;
  /** Frames waiting for room to start their signature check (the socket is not read meanwhile): call with true to start, false to drop. */
  readonly unchecked: Array<(run: boolean) => void> = [];
  /** A frame of an authorised hotkey with a valid signature was seen: the connection gets the larger share of checks. */
  proven = false;
  /** Response frames waiting for their signature, and their bytes (unsent, for backpressure). */
  signing = 0;
  signingBytes = 0;
  /** Settles once every response frame handed to the crypto workers so far has been sent or dropped. */
  outbound: Promise<void> = Promise.resolve();
  lastInbound = performance.now();
  /** Frames this connection may send (maxFramesPerSecond, burst of twice that). */
  readonly frames: TokenBucket;
  /** Frames refused before a valid signature that it may still cause (maxBadFramesPerSecond, likewise). */
  readonly badFrames: TokenBucket;
  idleTimer: NodeJS.Timeout | undefined;
  drainTimer: NodeJS.Timeout | undefined;
  readonly drainWaiters = new Set<(drained: boolean) => void>();
  inboundPaused = false;
  closed = false;
  constructor(
    readonly ws: WebSocket,
    readonly ip: string,
    framesPerSecond: number,
    badFramesPerSecond: number,
    finish: (conn: Connection, entry: Inbound) => void,
  ) {
    this.inbound = new OrderedVerifyQueue<Inbound>({
      finish: (entry, verdict) => {
        if (entry.refusal === undefined) entry.signature = verdict;
        finish(this, entry);
      },
      stopped: () => this.closed,
    });
    this.frames = new TokenBucket(framesPerSecond, framesPerSecond * 2, performance.now());
    this.badFrames = new TokenBucket(badFramesPerSecond, badFramesPerSecond * 2, performance.now());
  }
}

const requestKey = (hotkey: string, id: string) => `${hotkey}\u0000${id}`;

function packageVersion(): string {
  try {
    return JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')).version ?? '0.0.0';
  } catch {
    return '0.0.0';
  }
}

/** The wire code for anything thrown while serving a request. */
export function wireCode(err: unknown): ErrorCode {
  if (err instanceof AxonError) return err.code;
  if (err instanceof BadRequestError || err instanceof OptionError) return 'BAD_REQUEST';
  if (err instanceof OverloadedError) return 'OVERLOADED';
  if (err instanceof MinerError && (err.code === 'BAD_REQUEST' || err.code === 'OVERLOADED')) return err.code;
  return 'INTERNAL';
}

// Codes a peer earns before it has shown a valid signature: logged at debug, since anyone can cause them.
const UNAUTHENTICATED = new Set<ErrorCode>(['BAD_FRAME', 'UNSUPPORTED_VERSION', 'TOO_LARGE', 'STALE', 'WRONG_MINER', 'NOT_REGISTERED', 'BAD_SIGNATURE', 'REPLAY']);

export class AxonServer {
  readonly limits: AxonLimits;
  readonly policy: Policy;
  readonly registry = new Registry();
  readonly logger: Logger;
  readonly hotkey: string;
  #generator: TextGenerator;
  #signer: Signer;
  #crypto: CryptoPool;
  #version: string;
  #clock: () => number;
  #http: HttpServer;
  #wss: WebSocketServer;
  #connections = new Set<Connection>();
  /** Connection counts and limits: pending TCP sockets, WebSockets and HTTP-face sockets, per address. */
  #sockets: ConnectionLimits;
  #face: HttpFace;
  #metricsAt: { host: string; port: number } | undefined;
  #metricsServer: HttpServer | undefined;
  /** Connections with frames waiting for room in the signature checks, in the order they take turns. */
  #awaitingVerifyRoom = new Set<Connection>();
  /** Signature checks queued or running for connections that had not shown a valid signature. */
  #unprovenVerifying = 0;
  #tasks = new Set<Promise<void>>();
  #flights = new Set<Flight>();
  #closing = false;
  #closed: Promise<void> | undefined;
  #peakBuffered = 0;
  #port = 0;
  #metrics: AxonMetrics;

  constructor(options: AxonServerOptions) {
    this.limits = resolveLimits(options.limits);
    this.#generator = options.generator;
    this.#signer = options.signer;
    this.hotkey = options.signer.address;
    this.#version = options.version ?? packageVersion();
    this.#clock = options.clock ?? Date.now;
    this.logger = options.logger ?? pino({ name: 'axon' });
    this.#sockets = new ConnectionLimits(this.limits, this.logger, () => this.#closing);
    // startedAt: frames signed before this process started are refused, since the replay cache of a
    // previous process (in memory) is gone and it may have accepted them (PolicyConfig.notBefore).
    this.policy = new Policy({ ...options.policy, minerHotkey: this.hotkey, requestTimeoutMs: this.limits.requestTimeoutMs, startedAt: this.#clock() });
    this.#crypto = new CryptoPool({
      workers: options.cryptoWorkers ?? defaultCryptoWorkers(),
      signer: this.#signer,
      logger: this.logger,
      script: options.cryptoWorkerScript,
    });
    this.#metrics = createAxonMetrics(this.registry, options.processMetrics ?? false, {
      engine: () => this.#generator.info(),
      connections: () => this.#connections.size,
      httpConnections: () => this.#sockets.httpSockets,
      activeRequests: () => this.#flights.size,
      policy: this.policy,
      crypto: () => this.#crypto.stats(),
    });
    this.#metricsAt = options.metrics;
    this.#face = new HttpFace({
      limits: this.limits,
      policy: this.policy,
      generator: this.#generator,
      crypto: this.#crypto,
      signer: this.#signer,
      logger: this.logger,
      metrics: this.#metrics,
      clock: () => this.#clock(),
      closing: () => this.#closing,
      startedAt: Math.floor(this.#clock() / 1000),
      track: (flight, task) => {
        this.#flights.add(flight);
        const settled = task.catch(() => {}); // the face answers its own failures
        this.#tasks.add(settled);
        void settled.finally(() => this.#tasks.delete(settled));
      },
      forget: (flight) => this.#flights.delete(flight),
    });

    // Time to the first byte and to the end of the headers are bounded by the handshake timer armed at
    // accept; node's own header and request timeouts back it up.
    const headersTimeout = this.limits.handshakeTimeoutMs;
    this.#http = createServer({ requestTimeout: Math.min(headersTimeout * 2, MAX_TIMER_MS), headersTimeout }, (req, res) => {
      void this.#onHttp(req, res);
    });
    this.#http.maxConnections = this.limits.maxConnections + 64;
    this.#http.on('connection', (socket: Socket) => this.#sockets.accept(socket));
    this.#http.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => this.#onUpgrade(req, socket, head));
    this.#http.on('clientError', (_err, socket: Duplex) => socket.destroy());
    // skipUTF8Validation: a text frame of invalid UTF-8 then reaches #onMessage and gets BAD_FRAME
    // like any text frame, instead of ws closing the connection with 1007 (text is never read).
    this.#wss = new WebSocketServer({
      noServer: true,
      maxPayload: this.limits.maxFrameBytes,
      perMessageDeflate: false,
      clientTracking: false,
      skipUTF8Validation: true,
    });
  }

  /** Start listening; resolves with the bound port (pass 0 for any free one). */
  async listen(port = 8091, host = '127.0.0.1'): Promise<{ port: number; host: string }> {
    if (!Number.isSafeInteger(port) || port < 0 || port > 65535) throw new OptionError(`port must be an integer in [0, 65535] (got ${port})`);
    await cryptoReady();
    await this.#crypto.start();
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error) => reject(new OptionError(`cannot listen on ${host}:${port}: ${err.message}`));
      this.#http.once('error', onError);
      this.#http.listen(port, host, () => {
        this.#http.off('error', onError);
        resolve();
      });
    });
    const address = this.#http.address();
    this.#port = typeof address === 'object' && address ? address.port : port;
    this.logger.info(
      { event: 'listening', host, port: this.#port, hotkey: this.hotkey, protocol: PROTOCOL_VERSION, cryptoWorkers: this.#crypto.workers },
      'axon listening',
    );
    if (this.#metricsAt) {
      const at = this.#metricsAt;
      const metrics = createServer((req, res) => {
        const path = (req.url ?? '/').split('?')[0];
        if (path !== '/metrics' || (req.method !== 'GET' && req.method !== 'HEAD')) return void res.writeHead(404).end();
        this.registry.metrics().then(
          (text) => res.writeHead(200, { 'Content-Type': this.registry.contentType }).end(text),
          () => res.writeHead(500).end(),
        );
      });
      this.#metricsServer = metrics;
      await new Promise<void>((resolve, reject) => {
        metrics.once('error', (err) => reject(new OptionError(`cannot listen for metrics on ${at.host}:${at.port}: ${err.message}`)));
        metrics.listen(at.port, at.host, () => resolve());
      });
      this.logger.info({ event: 'metrics_listening', host: at.host, port: at.port }, 'metrics listening');
    }
    return { port: this.#port, host };
  }

  get port(): number {
    return this.#port;
  }

  /** Where /metrics is served when it has its own address (the bound port, if 0 was asked for). */
  get metricsAddress(): { host: string; port: number } | undefined {
    const address = this.#metricsServer?.address();
    if (!this.#metricsAt || typeof address !== 'object' || !address) return this.#metricsAt;
    return { host: this.#metricsAt.host, port: address.port };
  }

  stats(): AxonStats {
    let waitingFrames = 0;
    for (const conn of this.#connections) waitingFrames += conn.inbound.length;
    return {
      connections: this.#connections.size,
      activeRequests: this.#flights.size,
      peakBufferedBytes: this.#peakBuffered,
      replayCacheEntries: this.policy.replay.size,
      waitingFrames,
      crypto: this.#crypto.stats(),
    };
  }

  // -------------------------------------------------------------------------------------------
  // Metrics and HTTP

  async #onHttp(req: IncomingMessage, res: ServerResponse): Promise<void> {
    this.#sockets.clearHandshakeTimer(req.socket);
    try {
      const path = (req.url ?? '/').split('?')[0];
      if (HttpFace.serves(path)) {
        const refusal = path === '/v1/models' ? null : this.#sockets.promoteHttp(req.socket);
        if (refusal) {
          res.setHeader('Connection', 'close');
          res.writeHead(refusal.status, { 'Content-Type': 'application/json', ...(refusal.status === 429 ? { 'Retry-After': '1' } : {}) });
          const type = refusal.status === 429 ? 'rate_limit_error' : 'overloaded_error';
          res.end(JSON.stringify({ error: { message: refusal.message, type, param: null, code: refusal.status === 429 ? 'RATE_LIMITED' : 'OVERLOADED' } }));
          return;
        }
        return await this.#face.handle(req, res, path);
      }
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { Allow: 'GET', 'Content-Type': 'text/plain' }).end('method not allowed\n');
      } else if (path === '/metrics' && !this.#metricsAt) {
        const text = await this.registry.metrics();
        res.writeHead(200, { 'Content-Type': this.registry.contentType }).end(text);
      } else if (path === '/health') {
        let info: ReturnType<TextGenerator['info']> | undefined;
        try {
          info = this.#generator.info();
        } catch {
          info = undefined;
        }
        const body = {
          status: this.#closing ? 'closing' : 'ok',
          hotkey: this.hotkey,
          protocol: PROTOCOL_VERSION,
          version: this.#version,
          model_id: info?.modelId ?? null,
          weights_digest: info?.weightsDigest ?? null,
          adapter: info?.adapter ?? null,
          backend: info?.backend ?? null,
          queue_depth: info?.queueDepth ?? null,
          connections: this.#connections.size,
          http_connections: this.#sockets.httpSockets,
          active_requests: this.#flights.size,
        };
        res.writeHead(this.#closing ? 503 : 200, { 'Content-Type': 'application/json' }).end(JSON.stringify(body) + '\n');
      } else {
        res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found: connect with a WebSocket, use the OpenAI routes under /v1/, or GET /health or /metrics\n');
      }
    } catch (err) {
      this.logger.error({ event: 'http_error', err }, 'HTTP handler failed');
      if (!res.headersSent) res.writeHead(500).end();
      else res.destroy();
    }
  }

  // -------------------------------------------------------------------------------------------
  // Connections

  #rejectUpgrade(socket: Duplex, status: number, message: string): void {
    socket.once('finish', () => socket.destroy());
    socket.end(
      `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nConnection: close\r\nContent-Type: text/plain\r\n` +
        `Content-Length: ${Buffer.byteLength(message)}\r\n\r\n${message}`,
    );
  }

  #onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', () => socket.destroy());
    const ip = req.socket.remoteAddress ?? 'unknown';
    const refusal = this.#sockets.admit(ip);
    if (refusal) return this.#rejectUpgrade(socket, refusal.status, refusal.message);
    this.#wss.handleUpgrade(req, socket, head, (ws) => {
      this.#sockets.clearHandshakeTimer(req.socket);
      this.#sockets.unpend(req.socket);
      this.#onConnection(ws, ip);
    });
  }

  #onConnection(ws: WebSocket, ip: string): void {
    // Checked again: handshakes that started together may finish together.
    const refusal = this.#sockets.admit(ip);
    if (refusal) {
      ws.on('error', () => {});
      ws.close(1013, refusal.message);
      return;
    }
    const conn = new Connection(ws, ip, this.limits.maxFramesPerSecond, this.limits.maxBadFramesPerSecond, (c, entry) => this.#finish(c, entry));
    this.#connections.add(conn);
    this.#sockets.addWebSocket(ip);
    ws.on('message', (data, isBinary) => this.#onMessage(conn, data, isBinary));
    ws.on('close', () => this.#onClose(conn));
    // ws closes the socket itself after a protocol error (1009 for an oversized frame, 1002 ...).
    ws.on('error', (err) => this.logger.debug({ event: 'ws_error', ip, err: err.message }, 'WebSocket error'));
    this.#armIdleTimer(conn, this.limits.idleTimeoutMs);
  }

  #armIdleTimer(conn: Connection, ms: number): void {
    conn.idleTimer = setTimeout(() => {
      if (conn.closed) return;
      const quietFor = performance.now() - conn.lastInbound;
      if (conn.requests.size > 0 || quietFor < this.limits.idleTimeoutMs) {
        this.#armIdleTimer(conn, Math.max(1, this.limits.idleTimeoutMs - (conn.requests.size > 0 ? 0 : quietFor)));
        return;
      }
      conn.ws.close(1000, 'idle timeout');
    }, ms);
    conn.idleTimer.unref();
  }

  #onClose(conn: Connection): void {
    if (conn.closed) return;
    conn.closed = true;
    clearTimeout(conn.idleTimer);
    clearInterval(conn.drainTimer);
    for (const resolve of conn.drainWaiters) resolve(false);
    conn.drainWaiters.clear();
    for (const flight of conn.requests.values()) this.#stop(flight, 'closed');
    for (const start of conn.unchecked.splice(0)) start(false);
    this.#awaitingVerifyRoom.delete(conn);
    this.#crypto.forget(conn);
    this.#connections.delete(conn);
    this.#sockets.removeWebSocket(conn.ip);
  }

  #stop(flight: Flight, reason: StopReason): void {
    stopFlight(flight, reason);
  }

  // -------------------------------------------------------------------------------------------
  // Backpressure

  /** Bytes not yet handed to the kernel: in the socket's buffer, or in frames waiting for their signature. */
  #unsent(conn: Connection): number {
    return conn.ws.bufferedAmount + conn.signingBytes;
  }

  /** Too much unsent: pull no tokens for this connection and do not read it. */
  #backlogged(conn: Connection): boolean {
    return this.#unsent(conn) > this.limits.maxBufferedBytes || conn.signing >= this.limits.maxSignQueuePerConnection;
  }

  /** Send one encoded frame; false when the socket is gone (or was just terminated for hoarding). */
  #sendBytes(conn: Connection, bytes: Uint8Array): boolean {
    if (conn.closed || conn.ws.readyState !== WebSocket.OPEN) return false;
    conn.ws.send(bytes, { binary: true });
    const unsent = this.#unsent(conn);
    if (unsent > this.#peakBuffered) this.#peakBuffered = unsent;
    if (unsent > this.limits.maxBufferedBytes * 4) {
      this.logger.warn({ event: 'slow_reader', ip: conn.ip, buffered: unsent }, 'connection dropped: unsent bytes past four times the limit');
      conn.ws.terminate();
      return false;
    }
    this.#pauseIfBacklogged(conn);
    return true;
  }

  #pauseIfBacklogged(conn: Connection): void {
    if (conn.inboundPaused || !this.#backlogged(conn)) return;
    // Stop reading what this peer sends until it reads what we sent.
    conn.inboundPaused = true;
    conn.ws.pause();
    this.#watchDrain(conn);
  }

  #watchDrain(conn: Connection): void {
    if (conn.drainTimer) return;
    conn.drainTimer = setInterval(() => {
      if (conn.closed) return;
      if (this.#unsent(conn) > this.limits.maxBufferedBytes / 2 || conn.signing > this.limits.maxSignQueuePerConnection / 2) return;
      clearInterval(conn.drainTimer);
      conn.drainTimer = undefined;
      if (conn.inboundPaused && conn.unchecked.length === 0) {
        conn.inboundPaused = false;
        conn.ws.resume();
      }
      for (const resolve of conn.drainWaiters) resolve(true);
      conn.drainWaiters.clear();
    }, 10);
  }

  /** Resolves true once the socket's unsent bytes (and frames to sign) fall to half the limit, false on timeout or close. */
  #drained(conn: Connection, timeoutMs: number): Promise<boolean> {
    if (conn.closed) return Promise.resolve(false);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        conn.drainWaiters.delete(done);
        resolve(false);
      }, timeoutMs);
      const done = (drained: boolean) => {
        clearTimeout(timer);
        resolve(drained);
      };
      conn.drainWaiters.add(done);
      this.#watchDrain(conn);
    });
  }

  /**
   * Encode, sign and send a response; returns the body bytes sent (for the transcript), or null when
   * the socket is gone. With crypto workers the frame is signed there and sent after every frame
   * this connection handed over before it (conn.outbound); until then it counts as unsent.
   */
  #respond(conn: Connection, type: ResponseType, id: string, signedFor: string, payload: unknown): Uint8Array | null {
    if (conn.closed || conn.ws.readyState !== WebSocket.OPEN) return null;
    const body = encodeBody(payload);
    const fields = { type, id, signedFor, body, timestamp: this.#clock() };
    if (this.#crypto.signsInline) return this.#sendBytes(conn, encodeFrame(signResponse(this.#signer, fields))) ? body : null;
    const cost = body.length + FRAME_OVERHEAD;
    conn.signing += 1;
    conn.signingBytes += cost;
    const signature = this.#crypto.sign(conn, fields);
    conn.outbound = conn.outbound.then(async () => {
      const signed = await signature; // never rejects: null when dropped (connection closed)
      conn.signing -= 1;
      conn.signingBytes -= cost;
      try {
        if (signed !== null) this.#sendBytes(conn, encodeFrame(responseFrame(this.hotkey, fields, signed)));
      } catch (err) {
        this.logger.error({ event: 'internal', err }, 'failed to send a response frame');
      }
    });
    this.#pauseIfBacklogged(conn);
    return body;
  }

  // -------------------------------------------------------------------------------------------
  // Requests

  #log(fields: Record<string, unknown>, level: 'debug' | 'info' | 'warn' | 'error' = 'info'): void {
    this.logger[level]({ event: 'request', ...fields }, 'request');
  }

  /**
   * Answer a failed request with an error frame, count it and log it. A frame refused before its
   * signature was shown valid (`beforeSignature`, or a code only such frames get) spends the
   * connection's bad-frame budget.
   */
  #fail(conn: Connection, err: unknown, op: string, frame?: RequestFrame, admission?: Admission, beforeSignature = false): void {
    const code = wireCode(err);
    const unauthenticated = beforeSignature || UNAUTHENTICATED.has(code);
    const axon = err instanceof AxonError ? err : undefined;
    const message = code === 'INTERNAL' ? 'internal error; the miner has logged it' : (err as Error).message;
    const id = frame?.id ?? axon?.requestId ?? '';
    const claimed = frame?.signed_by ?? axon?.signedBy ?? '';
    // A refusal of a frame whose signature was not shown valid is addressed to no one (signed_for
    // ""): whoever sent it may not be the hotkey it names, and must not get a miner-signed statement
    // addressed to that hotkey.
    const signedFor = unauthenticated ? '' : claimed;
    this.#metrics.requests.inc({ op, outcome: code });
    if (unauthenticated && !conn.badFrames.take(performance.now())) {
      this.logger.warn({ event: 'bad_frame_rate', ip: conn.ip }, `connection closed: more than ${this.limits.maxBadFramesPerSecond} refused frames/s`);
      conn.ws.close(1008, 'too many bad frames');
      return;
    }
    this.#respond(conn, 'error', id, signedFor, { code, message } satisfies ErrorBody);
    const fields = { validator: claimed || undefined, uid: admission?.uid ?? undefined, ip: conn.ip, op, id: id || undefined, outcome: code, message };
    if (code === 'INTERNAL') this.#log({ ...fields, err }, 'error');
    else this.#log(fields, unauthenticated ? 'debug' : 'info');
  }

  #onMessage(conn: Connection, data: RawData, isBinary: boolean): void {
    const receivedAt = performance.now();
    conn.lastInbound = receivedAt;
    if (conn.closed) return;
    if (!conn.frames.take(performance.now())) {
      this.#metrics.requests.inc({ op: 'unknown', outcome: 'FRAME_RATE' });
      this.logger.warn({ event: 'frame_rate', ip: conn.ip }, `connection closed: more than ${this.limits.maxFramesPerSecond} frames/s`);
      conn.ws.close(1008, 'frame rate limit exceeded');
      return;
    }
    const entry: Inbound = { receivedAt, now: this.#clock(), op: 'unknown' };
    let verdict: Verdict | Promise<Verdict> = false; // a refused frame's is never read
    try {
      if (!isBinary) throw new AxonError('BAD_FRAME', 'text frames are not accepted: send each frame as one binary message of msgpack');
      const bytes = Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? data : Buffer.from(data);
      const frame = decodeRequestFrame(bytes, { maxBodyBytes: this.limits.maxFrameBytes });
      entry.frame = frame;
      entry.op = frame.op;
      if (this.#closing) throw new AxonError('OVERLOADED', 'miner is shutting down', { requestId: frame.id, signedBy: frame.signed_by });
      this.policy.precheck(frame, entry.now);
      verdict = this.#verify(conn, frame);
    } catch (err) {
      entry.refusal = err;
    }
    // Finished at once when nothing on this connection is waiting; else in its turn.
    conn.inbound.push(entry, verdict);
  }

  /**
   * Check a frame's signature: on a crypto worker (a promise) unless there are none. A connection
   * gets a share of the workers' queue (small until it has shown a valid signature of an authorised
   * hotkey), and all unproven connections together a part of it, so peers that only send frames
   * with bad signatures never crowd out validators. A frame beyond its share is not refused (an
   * honest validator may pipeline): it waits, unchecked, and the socket is not read until it starts.
   */
  #verify(conn: Connection, frame: RequestFrame): boolean | Promise<boolean | Error> {
    if (this.#crypto.inline) return verifyFrame(frame);
    if (conn.unchecked.length === 0 && this.#hasVerifyRoom(conn)) return this.#check(conn, frame);
    return new Promise((resolve) => {
      conn.unchecked.push((run) => resolve(run ? this.#check(conn, frame) : new CryptoWorkerError('dropped: its connection closed')));
      this.#awaitingVerifyRoom.add(conn);
      if (!conn.inboundPaused) {
        conn.inboundPaused = true;
        conn.ws.pause();
      }
    });
  }

  #hasVerifyRoom(conn: Connection): boolean {
    const l = this.limits;
    if (conn.verifying >= (conn.proven ? l.maxVerifyQueuePerConnection : l.maxUnprovenVerifyQueuePerConnection)) return false;
    if (this.#crypto.verifying >= l.maxVerifyQueue) return false;
    return conn.proven || this.#unprovenVerifying < l.maxUnprovenVerifyQueue;
  }

  /** Hand a frame's signature check to the crypto workers now. */
  #check(conn: Connection, frame: RequestFrame): Promise<boolean | Error> {
    const unproven = !conn.proven;
    conn.verifying += 1;
    if (unproven) this.#unprovenVerifying += 1;
    const job = { body: frame.body, id: frame.id, timestamp: frame.timestamp, signedFor: frame.signed_for, signature: frame.signature, address: frame.signed_by };
    return this.#crypto.verify(conn, job).then((valid) => {
      conn.verifying -= 1;
      if (unproven) this.#unprovenVerifying -= 1;
      this.#startUnchecked();
      return valid;
    });
  }

  /** Start the checks of waiting frames while there is room, one connection at a time in turn. */
  #startUnchecked(): void {
    for (const conn of this.#awaitingVerifyRoom) {
      if (conn.unchecked.length > 0 && this.#hasVerifyRoom(conn)) {
        conn.unchecked.shift()!(true);
        this.#awaitingVerifyRoom.delete(conn); // to the back of the line (iteration reaches it again)
        if (conn.unchecked.length > 0) this.#awaitingVerifyRoom.add(conn);
      }
      if (conn.unchecked.length === 0) {
        this.#awaitingVerifyRoom.delete(conn);
        this.#resumeIfClear(conn);
      }
    }
  }

  /** Read the socket again once no frame of it waits for a check and it is not backlogged. */
  #resumeIfClear(conn: Connection): void {
    if (!conn.inboundPaused || conn.closed || conn.unchecked.length > 0) return;
    if (this.#backlogged(conn)) return this.#watchDrain(conn); // it resumes once drained
    conn.inboundPaused = false;
    conn.ws.resume();
  }

  /** The rest of a frame's path, in its turn: the policy from the signature on, then the op. */
  #finish(conn: Connection, entry: Inbound): void {
    const { frame, receivedAt, op } = entry;
    let admission: Admission | undefined;
    try {
      if (entry.refusal !== undefined || frame === undefined) throw entry.refusal;
      if (entry.signature instanceof Error) throw entry.signature; // a crypto worker died during the check: INTERNAL
      if (this.#closing) throw new AxonError('OVERLOADED', 'miner is shutting down', { requestId: frame.id, signedBy: frame.signed_by });
      admission = this.policy.authorise(frame, entry.signature === true, entry.now);
      if (!conn.proven) {
        conn.proven = true; // its larger share of the signature checks may start waiting frames
        this.#startUnchecked();
      }
      const context = { requestId: frame.id, signedBy: frame.signed_by };
      switch (frame.op) {
        case 'ping':
        case 'info': {
          decodeEmptyPayload(frame.body, frame.op, context);
          const body = frame.op === 'ping' ? this.#pongBody() : this.#infoBody();
          this.#respond(conn, frame.op === 'ping' ? 'pong' : 'info', frame.id, frame.signed_by, body);
          this.#metrics.requests.inc({ op, outcome: 'ok' });
          this.#log({ validator: frame.signed_by, uid: admission.uid, ip: conn.ip, op, id: frame.id, outcome: 'ok', total_ms: round(performance.now() - receivedAt) });
          return;
        }
        case 'cancel': {
          const { target } = decodeCancelPayload(frame.body, context);
          const flight = conn.requests.get(requestKey(frame.signed_by, target));
          if (!flight) throw new AxonError('BAD_REQUEST', `no generation ${target} of yours is running on this connection`, context);
          this.#stop(flight, 'cancel');
          this.#metrics.requests.inc({ op, outcome: 'ok' });
          this.#log({ validator: frame.signed_by, uid: admission.uid, ip: conn.ip, op, id: frame.id, target, outcome: 'ok' });
          return;
        }
        case 'generate': {
          const payload = decodeGeneratePayload(frame.body, this.limits, context);
          const flight = newFlight();
          // Refused here (RATE_LIMITED) when the hotkey's slots and queue are all taken; else it
          // waits for a slot in #generate, where a cancel or a closed connection ends the wait.
          const slot = this.policy.acquireSlot(frame.signed_by, context, flight.abort.signal);
          // #generate registers the flight before its first await, so a cancel finished next finds it.
          const task = this.#generate(conn, frame, admission, payload, receivedAt, flight, slot).catch((err) => {
            this.logger.error({ event: 'internal', err }, 'generation task failed');
          });
          this.#tasks.add(task);
          void task.finally(() => this.#tasks.delete(task));
          return;
        }
      }
    } catch (err) {
      try {
        this.#fail(conn, err, op, frame, admission, entry.refusal !== undefined);
      } catch (inner) {
        this.logger.error({ event: 'internal', err: inner }, 'failed to send an error frame');
      }
    }
  }

  #pongBody(): PongBody {
    const info = this.#generator.info();
    return {
      hotkey: this.hotkey,
      protocol: PROTOCOL_VERSION,
      version: this.#version,
      model_id: info.modelId,
      weights_digest: info.weightsDigest,
      adapter: info.adapter,
      backend: info.backend,
      queue_depth: info.queueDepth,
    };
  }

  #infoBody(): InfoBody {
    const info = this.#generator.info();
    const l = this.limits;
    return {
      ...this.#pongBody(),
      active_sequences: info.activeSequences,
      kv_blocks_used: info.kvBlocksUsed,
      kv_blocks_total: info.kvBlocksTotal,
      limits: {
        max_frame_bytes: l.maxFrameBytes,
        max_prompt_bytes: l.maxPromptBytes,
        max_messages: l.maxMessages,
        max_tokens: l.maxTokens,
        max_stop: l.maxStop,
        max_logprobs: MAX_LOGPROBS,
      },
    };
  }

  async #generate(conn: Connection, frame: RequestFrame, admission: Admission, payload: GeneratePayload, receivedAt: number, flight: Flight, slot: Promise<() => void>): Promise<void> {
    const key = requestKey(frame.signed_by, frame.id);
    conn.requests.set(key, flight);
    this.#flights.add(flight);
    const topN = payload.logprobs ?? 0;
    const transcript = createHash('sha256');
    let pending: WireToken[] = [];
    let pendingBytes = 0;
    let sent = 0;
    let firstTokenAt: number | undefined;
    let lastFlushAt = receivedAt;
    let flushTimer: NodeJS.Timeout | undefined;
    const flush = () => {
      clearTimeout(flushTimer);
      flushTimer = undefined;
      if (pending.length === 0) return;
      const tokens = pending;
      pending = [];
      pendingBytes = 0;
      lastFlushAt = performance.now();
      const body = this.#respond(conn, 'token', frame.id, frame.signed_by, { tokens });
      if (!body) return;
      transcript.update(body);
      firstTokenAt ??= lastFlushAt;
      sent += tokens.length;
    };

    const { summary, failure, reason } = await runGeneration({
      generator: this.#generator,
      request: toEngineRequest(payload),
      priority: admission.stake,
      flight,
      slot,
      timeoutMs: this.limits.requestTimeoutMs,
      // Pull no token while the socket (or the signing queue) is backlogged; a reader that stays behind loses the request.
      ready: async () => {
        while (this.#backlogged(conn) && !flight.abort.signal.aborted) {
          const drained = await this.#drained(conn, this.limits.slowReaderTimeoutMs);
          if (!drained) this.#stop(flight, conn.closed ? 'closed' : 'slow');
        }
      },
      // Tokens are batched into frames: the first at once, then whatever came within the window.
      deliver: (t) => {
        const token = toWireToken(t, topN);
        pending.push(token);
        pendingBytes += 48 + Buffer.byteLength(token.text) + token.top_logprobs.reduce((n, a) => n + 32 + a.text.length * 3, 0);
        const now = performance.now();
        const windowMs = Math.max(this.limits.tokenBatchMs, (1000 * this.#flights.size) / this.limits.tokenFramesPerSecond);
        if (firstTokenAt === undefined || pending.length >= this.limits.tokenBatchMax || pendingBytes >= this.limits.tokenBatchBytes || now - lastFlushAt >= windowMs) {
          flush();
        } else {
          flushTimer ??= setTimeout(flush, Math.max(0, windowMs - (now - lastFlushAt)));
        }
        return true;
      },
    });
    clearTimeout(flushTimer);
    conn.requests.delete(key);
    this.#flights.delete(flight);

    const base = { validator: frame.signed_by, uid: admission.uid, ip: conn.ip, op: 'generate', id: frame.id, priority: admission.stake };
    if (reason === 'closed') {
      this.#metrics.requests.inc({ op: 'generate', outcome: 'disconnected' });
      this.#log({ ...base, outcome: 'disconnected', tokens: sent, total_ms: round(performance.now() - receivedAt) });
      return;
    }
    if (reason !== 'slow') flush(); // a slow reader gets no more tokens, only the (small) error
    this.#metrics.tokens.inc(sent);
    if (failure !== undefined || (reason !== undefined && reason !== 'cancel')) {
      const err =
        failure ??
        new AxonError(
          'OVERLOADED',
          reason === 'timeout'
            ? `generation exceeded the ${this.limits.requestTimeoutMs} ms request timeout`
            : reason === 'slow'
              ? `reader too slow: more than ${this.limits.maxBufferedBytes} bytes unread for ${this.limits.slowReaderTimeoutMs} ms`
              : 'miner is shutting down',
          { requestId: frame.id, signedBy: frame.signed_by },
        );
      this.#fail(conn, err, 'generate', frame, admission);
      return;
    }
    const totalMs = performance.now() - receivedAt;
    const ttftMs = firstTokenAt === undefined ? totalMs : firstTokenAt - receivedAt;
    const tokensPerS = sent > 1 && totalMs > ttftMs ? ((sent - 1) * 1000) / (totalMs - ttftMs) : 0;
    const finishReason = reason === 'cancel' ? 'cancelled' : (summary?.finishReason ?? 'cancelled');
    const done: DoneBody = {
      finish_reason: finishReason,
      usage: { prompt_tokens: summary?.promptTokens ?? 0, completion_tokens: sent },
      timing: { ttft_ms: round(ttftMs), total_ms: round(totalMs), tokens_per_s: round(tokensPerS) },
      transcript_sha256: transcript.digest('hex'),
    };
    this.#respond(conn, 'done', frame.id, frame.signed_by, done);
    const outcome = finishReason === 'cancelled' ? 'cancelled' : 'ok';
    this.#metrics.requests.inc({ op: 'generate', outcome });
    const cachedPromptTokens = summary?.cachedPromptTokens ?? 0;
    this.#metrics.promptTokens.inc({ cache: 'hit' }, cachedPromptTokens);
    this.#metrics.promptTokens.inc({ cache: 'miss' }, done.usage.prompt_tokens - cachedPromptTokens);
    if (sent > 0) this.#metrics.ttft.observe(ttftMs / 1000);
    if (sent > 1) this.#metrics.tokensPerS.observe(tokensPerS);
    this.#log({ ...base, outcome, finish_reason: finishReason, tokens: sent, cached_prompt_tokens: cachedPromptTokens, ttft_ms: done.timing.ttft_ms, total_ms: done.timing.total_ms, tokens_per_s: done.timing.tokens_per_s });
  }

  // -------------------------------------------------------------------------------------------
  // Shutdown

  /**
   * Stop accepting connections and requests, let generations in flight finish for up to `graceMs`,
   * cancel the rest (they get an OVERLOADED error frame), then close every socket. Idempotent.
   */
  close(graceMs = 5000): Promise<void> {
    this.#closed ??= this.#close(graceMs);
    return this.#closed;
  }

  async #close(graceMs: number): Promise<void> {
    this.#closing = true;
    const httpClosed = new Promise<void>((resolve) => this.#http.close(() => resolve()));
    const settle = (ms: number) => Promise.race([Promise.allSettled([...this.#tasks]), sleep(ms)]);
    if (this.#tasks.size > 0) {
      this.logger.info({ event: 'shutdown', inFlight: this.#tasks.size, graceMs }, 'waiting for generations in flight');
      await settle(graceMs);
    }
    for (const flight of this.#flights) this.#stop(flight, 'shutdown');
    await settle(2000);
    // Frames still being checked get their answers, and answers still being signed go out, before the sockets close.
    const flushed = async (conn: Connection) => {
      await conn.inbound.drained;
      await conn.outbound;
    };
    await Promise.race([Promise.all([...this.#connections].map(flushed)), sleep(1000)]);
    const closes = [...this.#connections].map(
      (conn) =>
        new Promise<void>((resolve) => {
          if (conn.closed) return resolve();
          conn.ws.once('close', () => resolve());
          conn.ws.close(1001, 'miner shutting down');
        }),
    );
    await Promise.race([Promise.all(closes), sleep(1000)]);
    for (const conn of this.#connections) conn.ws.terminate();
    this.#http.closeAllConnections();
    await httpClosed;
    if (this.#metricsServer?.listening) await new Promise<void>((resolve) => this.#metricsServer!.close(() => resolve()));
    await this.#crypto.close();
    this.logger.info({ event: 'closed' }, 'axon closed');
  }
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms).unref());
const round = (x: number) => Math.round(x * 100) / 100;

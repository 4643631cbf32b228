// The axon: one port, one policy, one queue and one engine behind two faces, both signed both ways:
// protocol v1 (msgpack frames over a WebSocket: ws-face.ts) and the OpenAI-compatible HTTP face with
// Epistula v2 (http-face.ts); plus GET /health, and GET /metrics (Prometheus: metrics.ts; or on its
// own address). This file owns what the faces share: the HTTP server and its routing, the policy, the
// crypto workers, the connection limits (connection-limits.ts), every generation in flight
// (generation.ts), and the order of shutdown.
import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server as HttpServer, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { pino, type Logger } from 'pino';
import { Registry } from 'prom-client';
import { OptionError } from '../errors.ts';
import type { TextGenerator } from '../engine/types.ts';
import { CryptoPool, defaultCryptoWorkers, type CryptoPoolStats } from '../wire/crypto-pool.ts';
import { PROTOCOL_VERSION } from '../wire/protocol.ts';
import { cryptoReady, type Signer } from '../wire/signing.ts';
import { ConnectionLimits } from './connection-limits.ts';
import { stopFlight, type Flight } from './generation.ts';
import { HttpFace } from './http-face.ts';
import { MAX_TIMER_MS, resolveLimits, type AxonLimits } from './limits.ts';
import { createAxonMetrics, type AxonMetrics } from './metrics.ts';
import { Policy, type PolicyConfig } from './policy.ts';
import { WsFace } from './ws-face.ts';

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

function packageVersion(): string {
  try {
    return JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')).version ?? '0.0.0';
  } catch {
    return '0.0.0';
  }
}

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
  /** Protocol v1 over WebSockets. */
  #ws: WsFace;
  /** Connection counts and limits: pending TCP sockets, WebSockets and HTTP-face sockets, per address. */
  #sockets: ConnectionLimits;
  #face: HttpFace;
  #metricsAt: { host: string; port: number } | undefined;
  #metricsServer: HttpServer | undefined;
  #tasks = new Set<Promise<void>>();
  #flights = new Set<Flight>();
  #closing = false;
  #closed: Promise<void> | undefined;
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
      connections: () => this.#ws.connections.size,
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
    this.#http.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => this.#ws.upgrade(req, socket, head));
    this.#http.on('clientError', (_err, socket: Duplex) => socket.destroy());
    this.#ws = new WsFace({
      limits: this.limits,
      policy: this.policy,
      generator: this.#generator,
      crypto: this.#crypto,
      signer: this.#signer,
      hotkey: this.hotkey,
      logger: this.logger,
      metrics: this.#metrics,
      sockets: this.#sockets,
      version: this.#version,
      flights: this.#flights,
      tasks: this.#tasks,
      clock: () => this.#clock(),
      closing: () => this.#closing,
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
    return {
      connections: this.#ws.connections.size,
      activeRequests: this.#flights.size,
      peakBufferedBytes: this.#ws.peakBufferedBytes,
      replayCacheEntries: this.policy.replay.size,
      waitingFrames: this.#ws.waitingFrames,
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
        // A lost GPU serves nothing again: 503, so that a supervisor or load balancer takes it out.
        const lost = info?.gpuLost;
        const status = lost ? 'gpu_lost' : this.#closing ? 'closing' : 'ok';
        const body = {
          status,
          ...(lost ? { gpu_lost: lost } : {}),
          hotkey: this.hotkey,
          protocol: PROTOCOL_VERSION,
          version: this.#version,
          model_id: info?.modelId ?? null,
          weights_digest: info?.weightsDigest ?? null,
          adapter: info?.adapter ?? null,
          backend: info?.backend ?? null,
          queue_depth: info?.queueDepth ?? null,
          connections: this.#ws.connections.size,
          http_connections: this.#sockets.httpSockets,
          active_requests: this.#flights.size,
        };
        res.writeHead(status === 'ok' ? 200 : 503, { 'Content-Type': 'application/json' }).end(JSON.stringify(body) + '\n');
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
    for (const flight of this.#flights) stopFlight(flight, 'shutdown');
    await settle(2000);
    // Frames still being checked get their answers, and answers still being signed go out, before the sockets close.
    await this.#ws.closeAll();
    this.#http.closeAllConnections();
    await httpClosed;
    if (this.#metricsServer?.listening) await new Promise<void>((resolve) => this.#metricsServer!.close(() => resolve()));
    await this.#crypto.close();
    this.logger.info({ event: 'closed' }, 'axon closed');
  }
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms).unref());

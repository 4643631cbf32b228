// Protocol v1 over WebSockets: the axon's frame path, from a connection's upgrade to its close.
//
// One frame's path: ws maxPayload (at the length header) -> decode -> policy up to "registered"
// (policy.ts precheck) -> signature, on a crypto worker (wire/crypto-pool.ts) -> the rest of the policy
// (authorise) -> payload -> concurrency slot (waiting in the hotkey's queue past --max-concurrent)
// -> TextGenerator.generate(priority = stake) (generation.ts) -> token frames (batched, signed on a
// crypto worker) -> done.
// Order: a connection's frames are finished (authorised, then answered or started) in the order they
// arrived, whatever order their signatures come back in (Connection.inbound, wire/ordered-queue.ts),
// and its response frames leave in the order they were made (Connection.outbound). So a cancel
// pipelined after its generate is handled after it, and a request's token frames and done go out in order.
// Nothing a peer sends can crash the process: every handler ends in an error frame or a close.
// What a peer has not proven costs it, not the validators: a frame is checked for shape before it is
// decoded (wire/protocol.ts), every check that only reads (policy precheck, stake included) runs
// before its signature is worth a worker's time, a refusal before a valid signature spends the
// connection's bad-frame budget and is addressed to no one (signed_for ""), and a connection that has
// not shown a valid signature gets only a small share of the signature checks.
// Memory per connection is bounded: frames beyond a connection's share of the signature checks wait
// unchecked while the socket is not read; tokens are pulled from the generator only while the
// socket's unsent bytes (frames waiting for their signature included) are under maxBufferedBytes and
// fewer than maxSignQueuePerConnection frames wait to be signed (and the socket is not read
// meanwhile); a reader that stays behind for slowReaderTimeoutMs loses the request, and one past four
// times the mark loses the connection.
import { createHash } from 'node:crypto';
import { STATUS_CODES, type IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { WebSocket, WebSocketServer, type RawData } from 'ws';
import { BadRequestError, CryptoWorkerError, MinerError, OptionError, OverloadedError } from '../errors.ts';
import type { TextGenerator } from '../engine/types.ts';
import type { CryptoPool } from '../wire/crypto-pool.ts';
import { OrderedVerifyQueue, type Verdict } from '../wire/ordered-queue.ts';
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
import { responseFrame, signResponse, verifyFrame, type Signer } from '../wire/signing.ts';
import type { ConnectionLimits } from './connection-limits.ts';
import { newFlight, runGeneration, stopFlight, toEngineRequest, toWireToken, type Flight, type StopReason } from './generation.ts';
import type { AxonLimits } from './limits.ts';
import type { AxonMetrics } from './metrics.ts';
import type { Admission, Policy } from './policy.ts';
import { TokenBucket } from './token-bucket.ts';

/** What the WebSocket face uses of the server it belongs to. */
export interface WsFaceHost {
  readonly limits: AxonLimits;
  readonly policy: Policy;
  readonly generator: TextGenerator;
  readonly crypto: CryptoPool;
  readonly signer: Signer;
  readonly hotkey: string;
  readonly logger: Logger;
  readonly metrics: AxonMetrics;
  readonly sockets: ConnectionLimits;
  /** Reported in pong/info. */
  readonly version: string;
  /** Every generation in flight (both transports): shutdown stops them. */
  readonly flights: Set<Flight>;
  /** Every generation task: shutdown waits for them. */
  readonly tasks: Set<Promise<void>>;
  clock(): number;
  closing(): boolean;
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

export class WsFace {
  #host: WsFaceHost;
  #wss: WebSocketServer;
  readonly connections = new Set<Connection>();
  /** Connections with frames waiting for room in the signature checks, in the order they take turns. */
  #awaitingVerifyRoom = new Set<Connection>();
  /** Signature checks queued or running for connections that had not shown a valid signature. */
  #unprovenVerifying = 0;
  #peakBuffered = 0;

  constructor(host: WsFaceHost) {
    this.#host = host;
    // skipUTF8Validation: a text frame of invalid UTF-8 then reaches #onMessage and gets BAD_FRAME
    // like any text frame, instead of ws closing the connection with 1007 (text is never read).
    this.#wss = new WebSocketServer({
      noServer: true,
      maxPayload: host.limits.maxFrameBytes,
      perMessageDeflate: false,
      clientTracking: false,
      skipUTF8Validation: true,
    });
  }

  /** Largest unsent byte count seen on any socket after a send. */
  get peakBufferedBytes(): number {
    return this.#peakBuffered;
  }

  /** Frames received and not yet finished, on every connection. */
  get waitingFrames(): number {
    let n = 0;
    for (const conn of this.connections) n += conn.inbound.length;
    return n;
  }

  /**
   * Shutdown, once generations are stopped: frames still being checked get their answers and answers
   * still being signed go out (for up to a second), then every connection is closed (1001), and
   * whatever has not closed a second later is terminated.
   */
  async closeAll(): Promise<void> {
    const flushed = async (conn: Connection) => {
      await conn.inbound.drained;
      await conn.outbound;
    };
    await Promise.race([Promise.all([...this.connections].map(flushed)), sleep(1000)]);
    const closes = [...this.connections].map(
      (conn) =>
        new Promise<void>((resolve) => {
          if (conn.closed) return resolve();
          conn.ws.once('close', () => resolve());
          conn.ws.close(1001, 'miner shutting down');
        }),
    );
    await Promise.race([Promise.all(closes), sleep(1000)]);
    for (const conn of this.connections) conn.ws.terminate();
  }

  #rejectUpgrade(socket: Duplex, status: number, message: string): void {
    socket.once('finish', () => socket.destroy());
    socket.end(
      `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nConnection: close\r\nContent-Type: text/plain\r\n` +
        `Content-Length: ${Buffer.byteLength(message)}\r\n\r\n${message}`,
    );
  }

  /** An HTTP upgrade request: a WebSocket if the connection limits admit it. */
  upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', () => socket.destroy());
    const ip = req.socket.remoteAddress ?? 'unknown';
    const refusal = this.#host.sockets.admit(ip);
    if (refusal) return this.#rejectUpgrade(socket, refusal.status, refusal.message);
    this.#wss.handleUpgrade(req, socket, head, (ws) => {
      this.#host.sockets.clearHandshakeTimer(req.socket);
      this.#host.sockets.unpend(req.socket);
      this.#onConnection(ws, ip);
    });
  }

  #onConnection(ws: WebSocket, ip: string): void {
    // Checked again: handshakes that started together may finish together.
    const refusal = this.#host.sockets.admit(ip);
    if (refusal) {
      ws.on('error', () => {});
      ws.close(1013, refusal.message);
      return;
    }
    const conn = new Connection(ws, ip, this.#host.limits.maxFramesPerSecond, this.#host.limits.maxBadFramesPerSecond, (c, entry) => this.#finish(c, entry));
    this.connections.add(conn);
    this.#host.sockets.addWebSocket(ip);
    ws.on('message', (data, isBinary) => this.#onMessage(conn, data, isBinary));
    ws.on('close', () => this.#onClose(conn));
    // ws closes the socket itself after a protocol error (1009 for an oversized frame, 1002 ...).
    ws.on('error', (err) => this.#host.logger.debug({ event: 'ws_error', ip, err: err.message }, 'WebSocket error'));
    this.#armIdleTimer(conn, this.#host.limits.idleTimeoutMs);
  }

  #armIdleTimer(conn: Connection, ms: number): void {
    conn.idleTimer = setTimeout(() => {
      if (conn.closed) return;
      const quietFor = performance.now() - conn.lastInbound;
      if (conn.requests.size > 0 || quietFor < this.#host.limits.idleTimeoutMs) {
        this.#armIdleTimer(conn, Math.max(1, this.#host.limits.idleTimeoutMs - (conn.requests.size > 0 ? 0 : quietFor)));
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
    this.#host.crypto.forget(conn);
    this.connections.delete(conn);
    this.#host.sockets.removeWebSocket(conn.ip);
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
    return this.#unsent(conn) > this.#host.limits.maxBufferedBytes || conn.signing >= this.#host.limits.maxSignQueuePerConnection;
  }

  /** Send one encoded frame; false when the socket is gone (or was just terminated for hoarding). */
  #sendBytes(conn: Connection, bytes: Uint8Array): boolean {
    if (conn.closed || conn.ws.readyState !== WebSocket.OPEN) return false;
    conn.ws.send(bytes, { binary: true });
    const unsent = this.#unsent(conn);
    if (unsent > this.#peakBuffered) this.#peakBuffered = unsent;
    if (unsent > this.#host.limits.maxBufferedBytes * 4) {
      this.#host.logger.warn({ event: 'slow_reader', ip: conn.ip, buffered: unsent }, 'connection dropped: unsent bytes past four times the limit');
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
      if (this.#unsent(conn) > this.#host.limits.maxBufferedBytes / 2 || conn.signing > this.#host.limits.maxSignQueuePerConnection / 2) return;
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
    const fields = { type, id, signedFor, body, timestamp: this.#host.clock() };
    if (this.#host.crypto.signsInline) return this.#sendBytes(conn, encodeFrame(signResponse(this.#host.signer, fields))) ? body : null;
    const cost = body.length + FRAME_OVERHEAD;
    conn.signing += 1;
    conn.signingBytes += cost;
    const signature = this.#host.crypto.sign(conn, fields);
    conn.outbound = conn.outbound.then(async () => {
      const signed = await signature; // never rejects: null when dropped (connection closed)
      conn.signing -= 1;
      conn.signingBytes -= cost;
      try {
        if (signed !== null) this.#sendBytes(conn, encodeFrame(responseFrame(this.#host.hotkey, fields, signed)));
      } catch (err) {
        this.#host.logger.error({ event: 'internal', err }, 'failed to send a response frame');
      }
    });
    this.#pauseIfBacklogged(conn);
    return body;
  }

  // -------------------------------------------------------------------------------------------
  // Requests

  #log(fields: Record<string, unknown>, level: 'debug' | 'info' | 'warn' | 'error' = 'info'): void {
    this.#host.logger[level]({ event: 'request', ...fields }, 'request');
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
    this.#host.metrics.requests.inc({ op, outcome: code });
    if (unauthenticated && !conn.badFrames.take(performance.now())) {
      this.#host.logger.warn({ event: 'bad_frame_rate', ip: conn.ip }, `connection closed: more than ${this.#host.limits.maxBadFramesPerSecond} refused frames/s`);
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
      this.#host.metrics.requests.inc({ op: 'unknown', outcome: 'FRAME_RATE' });
      this.#host.logger.warn({ event: 'frame_rate', ip: conn.ip }, `connection closed: more than ${this.#host.limits.maxFramesPerSecond} frames/s`);
      conn.ws.close(1008, 'frame rate limit exceeded');
      return;
    }
    const entry: Inbound = { receivedAt, now: this.#host.clock(), op: 'unknown' };
    let verdict: Verdict | Promise<Verdict> = false; // a refused frame's is never read
    try {
      if (!isBinary) throw new AxonError('BAD_FRAME', 'text frames are not accepted: send each frame as one binary message of msgpack');
      const bytes = Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? data : Buffer.from(data);
      const frame = decodeRequestFrame(bytes, { maxBodyBytes: this.#host.limits.maxFrameBytes });
      entry.frame = frame;
      entry.op = frame.op;
      if (this.#host.closing()) throw new AxonError('OVERLOADED', 'miner is shutting down', { requestId: frame.id, signedBy: frame.signed_by });
      this.#host.policy.precheck(frame, entry.now);
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
    if (this.#host.crypto.inline) return verifyFrame(frame);
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
    const l = this.#host.limits;
    if (conn.verifying >= (conn.proven ? l.maxVerifyQueuePerConnection : l.maxUnprovenVerifyQueuePerConnection)) return false;
    if (this.#host.crypto.verifying >= l.maxVerifyQueue) return false;
    return conn.proven || this.#unprovenVerifying < l.maxUnprovenVerifyQueue;
  }

  /** Hand a frame's signature check to the crypto workers now. */
  #check(conn: Connection, frame: RequestFrame): Promise<boolean | Error> {
    const unproven = !conn.proven;
    conn.verifying += 1;
    if (unproven) this.#unprovenVerifying += 1;
    const job = { body: frame.body, id: frame.id, timestamp: frame.timestamp, signedFor: frame.signed_for, signature: frame.signature, address: frame.signed_by };
    return this.#host.crypto.verify(conn, job).then((valid) => {
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
      if (this.#host.closing()) throw new AxonError('OVERLOADED', 'miner is shutting down', { requestId: frame.id, signedBy: frame.signed_by });
      admission = this.#host.policy.authorise(frame, entry.signature === true, entry.now);
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
          this.#host.metrics.requests.inc({ op, outcome: 'ok' });
          this.#log({ validator: frame.signed_by, uid: admission.uid, ip: conn.ip, op, id: frame.id, outcome: 'ok', total_ms: round(performance.now() - receivedAt) });
          return;
        }
        case 'cancel': {
          const { target } = decodeCancelPayload(frame.body, context);
          const flight = conn.requests.get(requestKey(frame.signed_by, target));
          if (!flight) throw new AxonError('BAD_REQUEST', `no generation ${target} of yours is running on this connection`, context);
          this.#stop(flight, 'cancel');
          this.#host.metrics.requests.inc({ op, outcome: 'ok' });
          this.#log({ validator: frame.signed_by, uid: admission.uid, ip: conn.ip, op, id: frame.id, target, outcome: 'ok' });
          return;
        }
        case 'generate': {
          const payload = decodeGeneratePayload(frame.body, this.#host.limits, context);
          const flight = newFlight();
          // Refused here (RATE_LIMITED) when the hotkey's slots and queue are all taken; else it
          // waits for a slot in #generate, where a cancel or a closed connection ends the wait.
          const slot = this.#host.policy.acquireSlot(frame.signed_by, context, flight.abort.signal);
          // #generate registers the flight before its first await, so a cancel finished next finds it.
          const task = this.#generate(conn, frame, admission, payload, receivedAt, flight, slot).catch((err) => {
            this.#host.logger.error({ event: 'internal', err }, 'generation task failed');
          });
          this.#host.tasks.add(task);
          void task.finally(() => this.#host.tasks.delete(task));
          return;
        }
      }
    } catch (err) {
      try {
        this.#fail(conn, err, op, frame, admission, entry.refusal !== undefined);
      } catch (inner) {
        this.#host.logger.error({ event: 'internal', err: inner }, 'failed to send an error frame');
      }
    }
  }

  #pongBody(): PongBody {
    const info = this.#host.generator.info();
    return {
      hotkey: this.#host.hotkey,
      protocol: PROTOCOL_VERSION,
      version: this.#host.version,
      model_id: info.modelId,
      weights_digest: info.weightsDigest,
      adapter: info.adapter,
      backend: info.backend,
      queue_depth: info.queueDepth,
    };
  }

  #infoBody(): InfoBody {
    const info = this.#host.generator.info();
    const l = this.#host.limits;
    return {
      ...this.#pongBody(),
      active_sequences: info.activeSequences,
      kv_blocks_used: info.kvBlocksUsed,
      kv_blocks_total: info.kvBlocksTotal,
      kv_blocks_shared: info.kvBlocksShared ?? 0,
      kv_blocks_cached: info.kvBlocksCached ?? 0,
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
    this.#host.flights.add(flight);
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
      generator: this.#host.generator,
      request: toEngineRequest(payload),
      priority: admission.stake,
      flight,
      slot,
      timeoutMs: this.#host.limits.requestTimeoutMs,
      // Pull no token while the socket (or the signing queue) is backlogged; a reader that stays behind loses the request.
      ready: async () => {
        while (this.#backlogged(conn) && !flight.abort.signal.aborted) {
          const drained = await this.#drained(conn, this.#host.limits.slowReaderTimeoutMs);
          if (!drained) this.#stop(flight, conn.closed ? 'closed' : 'slow');
        }
      },
      // Tokens are batched into frames: the first at once, then whatever came within the window.
      deliver: (t) => {
        const token = toWireToken(t, topN);
        pending.push(token);
        pendingBytes += 48 + Buffer.byteLength(token.text) + token.top_logprobs.reduce((n, a) => n + 32 + a.text.length * 3, 0);
        const now = performance.now();
        const windowMs = Math.max(this.#host.limits.tokenBatchMs, (1000 * this.#host.flights.size) / this.#host.limits.tokenFramesPerSecond);
        if (firstTokenAt === undefined || pending.length >= this.#host.limits.tokenBatchMax || pendingBytes >= this.#host.limits.tokenBatchBytes || now - lastFlushAt >= windowMs) {
          flush();
        } else {
          flushTimer ??= setTimeout(flush, Math.max(0, windowMs - (now - lastFlushAt)));
        }
        return true;
      },
    });
    clearTimeout(flushTimer);
    conn.requests.delete(key);
    this.#host.flights.delete(flight);

    const base = { validator: frame.signed_by, uid: admission.uid, ip: conn.ip, op: 'generate', id: frame.id, priority: admission.stake };
    if (reason === 'closed') {
      this.#host.metrics.requests.inc({ op: 'generate', outcome: 'disconnected' });
      this.#log({ ...base, outcome: 'disconnected', tokens: sent, total_ms: round(performance.now() - receivedAt) });
      return;
    }
    if (reason !== 'slow') flush(); // a slow reader gets no more tokens, only the (small) error
    this.#host.metrics.tokens.inc(sent);
    if (failure !== undefined || (reason !== undefined && reason !== 'cancel')) {
      const err =
        failure ??
        new AxonError(
          'OVERLOADED',
          reason === 'timeout'
            ? `generation exceeded the ${this.#host.limits.requestTimeoutMs} ms request timeout`
            : reason === 'slow'
              ? `reader too slow: more than ${this.#host.limits.maxBufferedBytes} bytes unread for ${this.#host.limits.slowReaderTimeoutMs} ms`
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
    this.#host.metrics.requests.inc({ op: 'generate', outcome });
    const cachedPromptTokens = summary?.cachedPromptTokens ?? 0;
    this.#host.metrics.promptTokens.inc({ cache: 'hit' }, cachedPromptTokens);
    this.#host.metrics.promptTokens.inc({ cache: 'miss' }, done.usage.prompt_tokens - cachedPromptTokens);
    if (sent > 0) this.#host.metrics.ttft.observe(ttftMs / 1000);
    if (sent > 1) this.#host.metrics.tokensPerS.observe(tokensPerS);
    this.#log({ ...base, outcome, finish_reason: finishReason, tokens: sent, cached_prompt_tokens: cachedPromptTokens, ttft_ms: done.timing.ttft_ms, total_ms: done.timing.total_ms, tokens_per_s: done.timing.tokens_per_s });
  }
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms).unref());
const round = (x: number) => Math.round(x * 100) / 100;

// How many connections the axon holds, and from whom: every TCP socket from accept until it becomes
// a WebSocket or a socket of the HTTP face (the pending ones, capped per address, each with a
// handshake timer), then the WebSockets and HTTP-face sockets together (capped in all and per
// address). Counted from accept because sockets that never upgrade (idle, or plain HTTP) would
// otherwise let one address fill the server's connection table and lock out everyone.
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';

/** Why a connection is not admitted: the HTTP status and a message naming the limit. */
export interface Refusal {
  status: number;
  message: string;
}

export interface ConnectionLimitSettings {
  maxConnections: number;
  maxConnectionsPerIp: number;
  maxPendingConnectionsPerIp: number;
  handshakeTimeoutMs: number;
}

export class ConnectionLimits {
  #limits: ConnectionLimitSettings;
  #logger: Logger;
  #closing: () => boolean;
  /** WebSockets and HTTP-face sockets, per address. */
  #perIp = new Map<string, number>();
  #webSockets = 0;
  #httpSockets = new Set<Socket>();
  /** TCP connections not (yet) WebSockets or HTTP-face sockets, per address, and the address of each. */
  #pendingPerIp = new Map<string, number>();
  #pendingSockets = new Map<Socket, string>();
  #handshakeTimers = new WeakMap<Socket, NodeJS.Timeout>();

  constructor(limits: ConnectionLimitSettings, logger: Logger, closing: () => boolean) {
    this.#limits = limits;
    this.#logger = logger;
    this.#closing = closing;
  }

  get webSockets(): number {
    return this.#webSockets;
  }

  get httpSockets(): number {
    return this.#httpSockets.size;
  }

  /** A TCP connection is accepted: counted as pending for its address (closed at once beyond the cap) until it upgrades, sends an API request, or closes. */
  accept(socket: Socket): void {
    const ip = socket.remoteAddress ?? 'unknown';
    const pending = this.#pendingPerIp.get(ip) ?? 0;
    if (pending >= this.#limits.maxPendingConnectionsPerIp) {
      this.#logger.debug({ event: 'tcp_refused', ip, pending }, 'too many connections from this address that are not WebSockets');
      socket.destroy();
      return;
    }
    this.#pendingPerIp.set(ip, pending + 1);
    this.#pendingSockets.set(socket, ip);
    socket.once('close', () => this.unpend(socket));
    // The socket must upgrade or send its request within the handshake timeout.
    const timer = setTimeout(() => socket.destroy(), this.#limits.handshakeTimeoutMs);
    timer.unref();
    this.#handshakeTimers.set(socket, timer);
    socket.once('close', () => clearTimeout(timer));
  }

  /** The socket is no longer pending (it became a WebSocket or an HTTP-face socket, or closed). Idempotent. */
  unpend(socket: Socket | Duplex): void {
    const ip = this.#pendingSockets.get(socket as Socket);
    if (ip === undefined) return;
    this.#pendingSockets.delete(socket as Socket);
    this.#decrement(this.#pendingPerIp, ip);
  }

  /** The socket sent its request (or upgraded) in time. */
  clearHandshakeTimer(socket: Socket | Duplex): void {
    const timer = this.#handshakeTimers.get(socket as Socket);
    if (timer) clearTimeout(timer);
  }

  /** Whether one more WebSocket or HTTP-face socket from `ip` may be held (null: yes). */
  admit(ip: string): Refusal | null {
    if (this.#closing()) return { status: 503, message: 'miner is shutting down' };
    if (this.#webSockets + this.#httpSockets.size >= this.#limits.maxConnections) {
      return { status: 503, message: `connection limit (${this.#limits.maxConnections}) reached` };
    }
    if ((this.#perIp.get(ip) ?? 0) >= this.#limits.maxConnectionsPerIp) {
      return { status: 429, message: `at most ${this.#limits.maxConnectionsPerIp} connections per address` };
    }
    return null;
  }

  addWebSocket(ip: string): void {
    this.#webSockets += 1;
    this.#perIp.set(ip, (this.#perIp.get(ip) ?? 0) + 1);
  }

  removeWebSocket(ip: string): void {
    this.#webSockets -= 1;
    this.#decrement(this.#perIp, ip);
  }

  /**
   * A socket's first request to a signed route of the HTTP face: from then on it counts, like a
   * WebSocket, against the connection limits (in all and per address) instead of the pending ones,
   * so a validator can hold as many streams open as it may hold WebSockets. Null when admitted.
   */
  promoteHttp(socket: Socket): Refusal | null {
    if (this.#httpSockets.has(socket)) return null;
    const ip = socket.remoteAddress ?? 'unknown';
    const refusal = this.admit(ip);
    if (refusal) return refusal;
    this.unpend(socket);
    this.#httpSockets.add(socket);
    this.#perIp.set(ip, (this.#perIp.get(ip) ?? 0) + 1);
    socket.once('close', () => {
      this.#httpSockets.delete(socket);
      this.#decrement(this.#perIp, ip);
    });
    return null;
  }

  #decrement(map: Map<string, number>, ip: string): void {
    const n = (map.get(ip) ?? 1) - 1;
    if (n <= 0) map.delete(ip);
    else map.set(ip, n);
  }
}

// The axon's limits (AxonLimits): their defaults, the largest values the runtime honours, the serve
// flag that sets each, and resolveLimits, which checks them at start.
import { OptionError } from '../errors.ts';

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

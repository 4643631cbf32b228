// Who may ask this miner for work, and how often. Cheap checks first:
//
//   timestamp window (and not before this process started) -> signed_for is this miner -> signer
//   registered (metagraph or allow list) -> deny list / validator permit / minimum stake
//   -> signature -> replay cache -> (deny / permit / stake again) -> per-hotkey rate limit (every op
//   but cancel) -> [server] payload -> concurrency cap -> queue
//
// admit() runs them all; the server runs precheck() (up to the stake) when a frame arrives, has the
// signature checked on a crypto worker, then authorise() (from the signature on) in arrival order.
// precheck() only reads: a hotkey that would be refused anyway costs no signature check, and
// nothing an unverified frame claims changes any state (counters, caches) of the hotkey it names.
// Each step throws an AxonError with its wire code. The (signed_by, id) pair is remembered once the
// frame has passed the deny/permit/stake step, so only authorised validators fill the replay cache,
// each within a quota, and a frame that was rate limited cannot be replayed later in its window.
import { unwatchFile, watchFile, type Stats } from 'node:fs';
import { OptionError } from '../errors.ts';
import { AxonError, type RequestFrame } from '../wire/protocol.ts';
import { TokenBucket } from './token-bucket.ts';
import { isValidHotkey, verifyFrame } from '../wire/signing.ts';
import { loadMetagraphFile, type Metagraph, type MetagraphNeuron } from '../wire/metagraph.ts';

export interface MetagraphWatcherOptions {
  /** How often the file's mtime and size are polled. Default 2000 ms. */
  intervalMs?: number;
  onReload?: (metagraph: Metagraph) => void;
  /** A changed file that does not parse: the previous metagraph stays in force. */
  onError?: (error: Error) => void;
}

/**
 * A metagraph JSON file, loaded now (throws if it is bad) and reloaded whenever it changes. Polls
 * (fs.watchFile) rather than fs.watch, so a file replaced by rename (atomic writes) is still seen.
 */
export class MetagraphWatcher {
  readonly path: string;
  #current: Metagraph;
  #listener: (curr: Stats, prev: Stats) => void;
  #closed = false;

  constructor(path: string, options: MetagraphWatcherOptions = {}) {
    this.path = path;
    this.#current = loadMetagraphFile(path);
    const intervalMs = options.intervalMs ?? 2000;
    if (!Number.isSafeInteger(intervalMs) || intervalMs < 1) throw new OptionError(`metagraph poll interval must be a positive integer of ms (got ${intervalMs})`);
    this.#listener = (curr, prev) => {
      if (this.#closed || (curr.mtimeMs === prev.mtimeMs && curr.size === prev.size && curr.ino === prev.ino)) return;
      try {
        this.#current = loadMetagraphFile(path);
        options.onReload?.(this.#current);
      } catch (err) {
        options.onError?.(err as Error);
      }
    };
    watchFile(path, { interval: intervalMs, persistent: false }, this.#listener);
  }

  get current(): Metagraph {
    return this.#current;
  }

  close(): void {
    this.#closed = true;
    unwatchFile(this.path, this.#listener);
  }
}

// ---------------------------------------------------------------------------------------------
// Replay cache

export type ReplayVerdict = 'ok' | 'full' | 'quota';

/**
 * (signed_by, id) pairs seen within the timestamp window. Bounded in time (an entry lives until its
 * frame's timestamp leaves the window, after which the timestamp check rejects the frame anyway)
 * and in size: when the cache or a hotkey's quota is full, new requests are refused rather than
 * old entries dropped, because dropping one would reopen it to replay.
 */
export class ReplayCache {
  readonly maxEntries: number;
  readonly maxPerHotkey: number;
  #entries = new Map<string, { expiresAt: number; hotkey: string }>();
  #perHotkey = new Map<string, number>();
  #lastSweep = -Infinity;

  constructor(options: { maxEntries: number; maxPerHotkey: number }) {
    this.maxEntries = options.maxEntries;
    this.maxPerHotkey = options.maxPerHotkey;
  }

  get size(): number {
    return this.#entries.size;
  }

  #key(hotkey: string, id: string): string {
    return `${hotkey}\u0000${id}`;
  }

  has(hotkey: string, id: string, now: number): boolean {
    const entry = this.#entries.get(this.#key(hotkey, id));
    return entry !== undefined && entry.expiresAt > now;
  }

  #delete(key: string, hotkey: string): void {
    this.#entries.delete(key);
    const n = (this.#perHotkey.get(hotkey) ?? 1) - 1;
    if (n <= 0) this.#perHotkey.delete(hotkey);
    else this.#perHotkey.set(hotkey, n);
  }

  /** Drop expired entries: from the oldest insertions, and (at most once a second) a full sweep. */
  prune(now: number, full = false): void {
    for (const [key, entry] of this.#entries) {
      if (entry.expiresAt > now) break;
      this.#delete(key, entry.hotkey);
    }
    if (full && now - this.#lastSweep >= 1000) {
      this.#lastSweep = now;
      for (const [key, entry] of this.#entries) if (entry.expiresAt <= now) this.#delete(key, entry.hotkey);
    }
  }

  /** Remember a pair until `expiresAt`. */
  add(hotkey: string, id: string, expiresAt: number, now: number): ReplayVerdict {
    this.prune(now);
    const count = () => this.#perHotkey.get(hotkey) ?? 0;
    if (this.#entries.size >= this.maxEntries || count() >= this.maxPerHotkey) this.prune(now, true);
    if (count() >= this.maxPerHotkey) return 'quota';
    if (this.#entries.size >= this.maxEntries) return 'full';
    const key = this.#key(hotkey, id);
    if (this.#entries.has(key)) this.#delete(key, hotkey);
    this.#entries.set(key, { expiresAt, hotkey });
    this.#perHotkey.set(hotkey, count() + 1);
    return 'ok';
  }
}

// ---------------------------------------------------------------------------------------------
// Per-hotkey rate limit (token bucket) and concurrency cap

export class RateLimiter {
  readonly ratePerSecond: number;
  readonly burst: number;
  #buckets = new Map<string, TokenBucket>();

  constructor(ratePerSecond: number, burst: number) {
    this.ratePerSecond = ratePerSecond;
    this.burst = burst;
  }

  /** Take one token for `key`; false when its bucket is empty. */
  take(key: string, now: number): boolean {
    let bucket = this.#buckets.get(key);
    if (!bucket) {
      if (this.#buckets.size >= 10_000) this.#forgetFull(now);
      bucket = new TokenBucket(this.ratePerSecond, this.burst, now);
      this.#buckets.set(key, bucket);
    }
    return bucket.take(now);
  }

  /** Drop buckets that have refilled: forgetting them changes nothing. */
  #forgetFull(now: number): void {
    for (const [key, bucket] of this.#buckets) if (bucket.fullAt(now)) this.#buckets.delete(key);
  }
}

// ---------------------------------------------------------------------------------------------
// The policy

export interface PolicyConfig {
  /** The metagraph in force (a watcher's `current`), or a fixed one. Absent: only the allow list is admitted. */
  metagraph?: Metagraph | (() => Metagraph | undefined);
  /** Minimum stake of a metagraph signer (allow-listed hotkeys are exempt). Default 0. */
  minStake?: number;
  /** Require validator_permit in the metagraph (allow-listed hotkeys are exempt). Default false. */
  requirePermit?: boolean;
  /** Hotkeys admitted without metagraph membership, stake or permit (e.g. your own validator). */
  allow?: readonly string[];
  /** Hotkeys always refused (FORBIDDEN), even when allowed or staked. */
  deny?: readonly string[];
  /** Age beyond which a frame is stale, before adding requestTimeoutMs (Epistula: 8000). */
  staleMs?: number;
  /** How far in the future a timestamp may be (clock skew). Default 2000. */
  futureSkewMs?: number;
  /**
   * Unix ms before which every timestamp is STALE. The replay cache lives in memory, so a frame a
   * previous process accepted could be replayed to this one within its window; a previous process
   * accepted no timestamp past (its last moment + futureSkewMs), so the server sets this to its
   * start + futureSkewMs. Default (Policy on its own): 0. Tests that sign frames before starting a
   * server set 0.
   */
  notBefore?: number;
  replayCacheSize?: number;
  replayPerHotkey?: number;
  /** Requests per second per hotkey (token bucket refill), and the bucket size. Defaults 10 and 20. */
  ratePerSecond?: number;
  rateBurst?: number;
  /** Generations in flight per hotkey. Default 8. */
  maxConcurrentPerHotkey?: number;
  /**
   * Generations of one hotkey that wait for one of its slots when all maxConcurrentPerHotkey are
   * taken (in arrival order; the engine then orders everyone's work by stake). Beyond it a request
   * is refused with RATE_LIMITED. Default 0: refused at once.
   */
  maxQueuedPerHotkey?: number;
}

export interface PolicyOptions extends PolicyConfig {
  minerHotkey: string;
  /** Longest a request may run; the timestamp window is [now - (staleMs + this), now + futureSkewMs]. */
  requestTimeoutMs: number;
  /** Unix ms the serving process started: notBefore defaults to this + futureSkewMs. */
  startedAt?: number;
}

export interface Admission {
  hotkey: string;
  /** Metagraph stake (0 for allow-listed hotkeys not in it): the scheduler priority. */
  stake: number;
  uid: number | null;
}

function safeInt(name: string, value: number, min: number): number {
  if (!Number.isSafeInteger(value) || value < min) throw new OptionError(`${name} must be an integer >= ${min} (got ${value})`);
  return value;
}

function hotkeySet(name: string, list: readonly string[] | undefined): ReadonlySet<string> {
  for (const hotkey of list ?? []) {
    if (!isValidHotkey(hotkey)) throw new OptionError(`${name}: '${hotkey}' is not an ss58 hotkey (format 42)`);
  }
  return new Set(list);
}

export class Policy {
  readonly minerHotkey: string;
  readonly windowMs: number;
  readonly futureSkewMs: number;
  readonly notBefore: number;
  readonly minStake: number;
  readonly requirePermit: boolean;
  readonly maxConcurrentPerHotkey: number;
  readonly maxQueuedPerHotkey: number;
  readonly replay: ReplayCache;
  #metagraph: () => Metagraph | undefined;
  #allow: ReadonlySet<string>;
  #deny: ReadonlySet<string>;
  #rate: RateLimiter;
  #inFlight = new Map<string, number>();
  /** Per hotkey, the requests waiting for one of its slots, oldest first. */
  #waiting = new Map<string, Array<(release: () => void) => void>>();

  constructor(options: PolicyOptions) {
    if (!isValidHotkey(options.minerHotkey)) throw new OptionError(`miner hotkey ${options.minerHotkey} is not an ss58 address (format 42)`);
    this.minerHotkey = options.minerHotkey;
    const staleMs = safeInt('staleMs', options.staleMs ?? 8000, 0);
    this.windowMs = staleMs + safeInt('requestTimeoutMs', options.requestTimeoutMs, 1);
    this.futureSkewMs = safeInt('futureSkewMs', options.futureSkewMs ?? 2000, 0);
    this.notBefore = safeInt('notBefore', options.notBefore ?? (options.startedAt === undefined ? 0 : options.startedAt + this.futureSkewMs), 0);
    const minStake = options.minStake ?? 0;
    if (typeof minStake !== 'number' || !Number.isFinite(minStake) || minStake < 0) throw new OptionError(`min stake must be a finite number >= 0 (got ${minStake})`);
    this.minStake = minStake;
    this.requirePermit = options.requirePermit ?? false;
    const metagraph = options.metagraph;
    this.#metagraph = typeof metagraph === 'function' ? metagraph : () => metagraph;
    this.#allow = hotkeySet('allow list', options.allow);
    this.#deny = hotkeySet('deny list', options.deny);
    this.replay = new ReplayCache({
      maxEntries: safeInt('replayCacheSize', options.replayCacheSize ?? 100_000, 1),
      maxPerHotkey: safeInt('replayPerHotkey', options.replayPerHotkey ?? 8192, 1),
    });
    const ratePerSecond = options.ratePerSecond ?? 10;
    if (typeof ratePerSecond !== 'number' || !(ratePerSecond > 0) || !Number.isFinite(ratePerSecond)) {
      throw new OptionError(`rate limit must be a positive number of requests per second (got ${ratePerSecond})`);
    }
    this.#rate = new RateLimiter(ratePerSecond, safeInt('rateBurst', options.rateBurst ?? 20, 1));
    this.maxConcurrentPerHotkey = safeInt('maxConcurrentPerHotkey', options.maxConcurrentPerHotkey ?? 8, 1);
    this.maxQueuedPerHotkey = safeInt('maxQueuedPerHotkey', options.maxQueuedPerHotkey ?? 0, 0);
  }

  get metagraph(): Metagraph | undefined {
    return this.#metagraph();
  }

  /** Run every check on a decoded frame, in order. Returns who asked, or throws AxonError. */
  admit(frame: RequestFrame, now: number): Admission {
    this.precheck(frame, now);
    return this.authorise(frame, verifyFrame(frame), now);
  }

  /**
   * The checks before the signature (timestamp window, signed_for, signer registered, deny list,
   * permit, stake): all a frame must pass before its signature is worth the CPU. They only read, so
   * a frame that claims someone else's hotkey changes nothing for that hotkey. Throws AxonError.
   */
  precheck(frame: RequestFrame, now: number): void {
    const context = { requestId: frame.id, signedBy: frame.signed_by };
    const age = now - frame.timestamp;
    if (age > this.windowMs) {
      throw new AxonError('STALE', `timestamp is ${age} ms old; frames older than ${this.windowMs} ms are refused (check your clock)`, context);
    }
    if (-age > this.futureSkewMs) {
      throw new AxonError('STALE', `timestamp is ${-age} ms in the future; at most ${this.futureSkewMs} ms of clock skew is accepted`, context);
    }
    if (frame.timestamp < this.notBefore) {
      throw new AxonError('STALE', `timestamp ${frame.timestamp} is from before this miner (re)started; sign the request again with a current timestamp`, context);
    }
    if (frame.signed_for !== this.minerHotkey) {
      throw new AxonError('WRONG_MINER', `frame is signed for ${frame.signed_for}, but this miner is ${this.minerHotkey}`, context);
    }
    this.#standing(frame, this.#registration(frame, context), context);
  }

  /**
   * The checks from the signature on, for a frame that passed precheck at time `now`, given the
   * signature's verdict (checked here by admit, or on a crypto worker by the server). Registration is
   * looked up again: the metagraph may have been reloaded while the signature was being checked.
   */
  authorise(frame: RequestFrame, signatureValid: boolean, now: number): Admission {
    const context = { requestId: frame.id, signedBy: frame.signed_by };
    const { neuron, allowListed } = this.#registration(frame, context);
    if (!signatureValid) {
      throw new AxonError('BAD_SIGNATURE', 'signature does not verify: sign sha256_hex(body).id.timestamp.signed_for with your hotkey (sr25519, "0x" + hex)', context);
    }
    if (this.replay.has(frame.signed_by, frame.id, now)) {
      throw new AxonError('REPLAY', `request ${frame.id} from this hotkey was already received`, context);
    }
    // Again: the metagraph or the lists may have changed while the signature was being checked.
    this.#standing(frame, { neuron, allowListed }, context);
    const verdict = this.replay.add(frame.signed_by, frame.id, frame.timestamp + this.windowMs + 1, now);
    if (verdict === 'quota') throw new AxonError('RATE_LIMITED', `too many requests from ${frame.signed_by} within the ${this.windowMs} ms window`, context);
    if (verdict === 'full') throw new AxonError('OVERLOADED', 'the replay cache is full; retry shortly', context);
    if (frame.op !== 'cancel' && !this.#rate.take(frame.signed_by, now)) {
      throw new AxonError('RATE_LIMITED', `more than ${this.#rate.ratePerSecond} requests/s (burst ${this.#rate.burst}) from ${frame.signed_by}`, context);
    }
    return { hotkey: frame.signed_by, stake: neuron?.stake ?? 0, uid: neuron?.uid ?? null };
  }

  /** Deny list, validator permit, minimum stake (FORBIDDEN). Allow-listed hotkeys skip permit and stake, never the deny list. */
  #standing(frame: RequestFrame, { neuron, allowListed }: { neuron: MetagraphNeuron | undefined; allowListed: boolean }, context: { requestId: string; signedBy: string }): void {
    if (this.#deny.has(frame.signed_by)) throw new AxonError('FORBIDDEN', `hotkey ${frame.signed_by} is on this miner's deny list`, context);
    if (allowListed) return;
    // neuron is defined here: not allow-listed and not registered was refused by #registration.
    if (this.requirePermit && !neuron!.validatorPermit) {
      throw new AxonError('FORBIDDEN', `hotkey ${frame.signed_by} has no validator permit`, context);
    }
    if (neuron!.stake < this.minStake) {
      throw new AxonError('FORBIDDEN', `hotkey ${frame.signed_by} has stake ${neuron!.stake}; this miner requires ${this.minStake}`, context);
    }
  }

  #registration(frame: RequestFrame, context: { requestId: string; signedBy: string }): { neuron: MetagraphNeuron | undefined; allowListed: boolean } {
    const neuron = this.#metagraph()?.neurons.get(frame.signed_by);
    const allowListed = this.#allow.has(frame.signed_by);
    if (!neuron && !allowListed) {
      throw new AxonError('NOT_REGISTERED', `hotkey ${frame.signed_by} is not in this miner's metagraph or allow list`, context);
    }
    return { neuron, allowListed };
  }

  /**
   * Reserve one of a hotkey's generation slots. Resolves with the function that gives it back
   * (idempotent): at once when one is free, else when one of the hotkey's generations ends, the
   * request having waited its turn among at most maxQueuedPerHotkey others. Throws (synchronously)
   * RATE_LIMITED when the slots and the queue are all taken. Aborting `signal` while waiting rejects
   * with the signal's reason and leaves the queue.
   */
  acquireSlot(hotkey: string, context: { requestId?: string; signedBy?: string } = {}, signal?: AbortSignal): Promise<() => void> {
    const n = this.#inFlight.get(hotkey) ?? 0;
    if (n < this.maxConcurrentPerHotkey) return Promise.resolve(this.#take(hotkey));
    const waiting = this.#waiting.get(hotkey) ?? [];
    if (waiting.length >= this.maxQueuedPerHotkey) {
      const queue = this.maxQueuedPerHotkey > 0 ? `, and ${waiting.length} wait for a slot (at most ${this.maxQueuedPerHotkey})` : '';
      throw new AxonError('RATE_LIMITED', `${n} generations from ${hotkey} are already running (at most ${this.maxConcurrentPerHotkey})${queue}`, context);
    }
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        const list = this.#waiting.get(hotkey);
        const i = list?.indexOf(grant) ?? -1;
        if (i >= 0) list!.splice(i, 1);
        if (list?.length === 0) this.#waiting.delete(hotkey);
        reject(signal!.reason);
      };
      const grant = (release: () => void) => {
        signal?.removeEventListener('abort', onAbort);
        resolve(release);
      };
      if (signal?.aborted) return reject(signal.reason);
      signal?.addEventListener('abort', onAbort, { once: true });
      waiting.push(grant);
      this.#waiting.set(hotkey, waiting);
    });
  }

  /** Generations of `hotkey` waiting for a slot. */
  waitingFor(hotkey: string): number {
    return this.#waiting.get(hotkey)?.length ?? 0;
  }

  #take(hotkey: string): () => void {
    this.#inFlight.set(hotkey, (this.#inFlight.get(hotkey) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.#inFlight.get(hotkey) ?? 1) - 1;
      if (left <= 0) this.#inFlight.delete(hotkey);
      else this.#inFlight.set(hotkey, left);
      // The slot goes to the oldest waiting request of the same hotkey.
      const waiting = this.#waiting.get(hotkey);
      const next = waiting?.shift();
      if (waiting?.length === 0) this.#waiting.delete(hotkey);
      if (next) next(this.#take(hotkey));
    };
  }
}

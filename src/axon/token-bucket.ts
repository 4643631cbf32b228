// The one token bucket of the axon: a connection's frame rate and refused-frame budget (server.ts) and
// each validator hotkey's request rate (policy.ts's RateLimiter) all draw from one of these.

export class TokenBucket {
  readonly ratePerSecond: number;
  readonly burst: number;
  #tokens: number;
  #at: number;

  /** Starts full at time `now` (ms, any monotonic or wall clock the caller keeps using). */
  constructor(ratePerSecond: number, burst: number, now: number) {
    this.ratePerSecond = ratePerSecond;
    this.burst = burst;
    this.#tokens = burst;
    this.#at = now;
  }

  /** Refill for the time since the last call, then take one token; false when there is none. */
  take(now: number): boolean {
    this.#tokens = Math.min(this.burst, this.#tokens + (Math.max(0, now - this.#at) * this.ratePerSecond) / 1000);
    this.#at = now;
    if (this.#tokens < 1) return false;
    this.#tokens -= 1;
    return true;
  }

  /** Whether the bucket would be full again at `now` (forgetting it then changes nothing). */
  fullAt(now: number): boolean {
    return this.#tokens + (Math.max(0, now - this.#at) * this.ratePerSecond) / 1000 >= this.burst;
  }
}

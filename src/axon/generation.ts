// What a generation is to the axon, whichever transport carries it: a flight (aborted by a cancel, a
// closed connection, the request timeout, a slow reader or shutdown), the engine request made from
// a validated payload, and the token as the wire carries it.
import type { GenerateRequest, GeneratedToken, GenerationSummary, TextGenerator } from '../engine/types.ts';
import type { GeneratePayload, WireToken } from '../wire/protocol.ts';

export type StopReason = 'cancel' | 'closed' | 'timeout' | 'slow' | 'shutdown';

/** One generation in flight; the server keeps every flight so shutdown can stop them. */
export interface Flight {
  readonly abort: AbortController;
  /** Why it was stopped (the first reason wins). */
  reason: StopReason | undefined;
}

export function newFlight(): Flight {
  return { abort: new AbortController(), reason: undefined };
}

export function stopFlight(flight: Flight, reason: StopReason): void {
  if (flight.reason === undefined) flight.reason = reason;
  flight.abort.abort(reason);
}

/** Protocol v1's generate payload as an engine request. */
export function toEngineRequest(p: GeneratePayload): GenerateRequest {
  const request: GenerateRequest = { maxTokens: p.max_tokens };
  if (p.prompt !== undefined) request.prompt = p.prompt;
  if (p.messages !== undefined) request.messages = p.messages;
  if (p.temperature !== undefined) request.temperature = p.temperature;
  if (p.top_p !== undefined) request.topP = p.top_p;
  if (p.top_k !== undefined) request.topK = p.top_k;
  if (p.seed !== undefined) request.seed = p.seed;
  if (p.stop !== undefined) request.stop = p.stop;
  if (p.logprobs !== undefined) request.logprobs = p.logprobs;
  return request;
}

/** An engine token as protocol v1's token frame carries it, with `topN` alternatives. */
export function toWireToken(t: GeneratedToken, topN: number): WireToken {
  return {
    index: t.index,
    token_id: t.tokenId,
    text: t.text,
    logprob: t.logprob,
    top_logprobs: t.topLogprobs.slice(0, topN).map((a) => ({ token_id: a.tokenId, text: a.text, logprob: a.logprob })),
  };
}

export interface GenerationRun {
  /** The engine's summary, when the generation ran to its end (or was cancelled and said so). */
  summary: GenerationSummary | undefined;
  /** What the engine threw, unless it threw because the flight was aborted. */
  failure: unknown;
  /** Why the flight was stopped before the engine finished it (undefined when it finished). */
  reason: StopReason | undefined;
}

export interface RunOptions {
  generator: TextGenerator;
  request: GenerateRequest;
  /** The scheduler priority: the validator's stake. */
  priority: number;
  flight: Flight;
  /** The hotkey's slot (Policy.acquireSlot): waited for first; given back at the end, however it ends. */
  slot: Promise<() => void>;
  /** The whole request, the wait for a slot included, ends with 'timeout' after this long. */
  timeoutMs: number;
  /** Before each token is pulled: wait while the reader is behind (stop the flight to give up). */
  ready?: () => Promise<void>;
  /** Hand one token to the transport; false ends the generation (the reader is gone). */
  deliver: (token: GeneratedToken) => boolean | Promise<boolean>;
}

/**
 * The one generation loop of both transports: wait for the slot, pull tokens from the engine while
 * the flight is not stopped, and hand each to the transport (a protocol v1 token frame, or an SSE
 * chunk); then let the engine free its sequence and give the slot back.
 */
export async function runGeneration(o: RunOptions): Promise<GenerationRun> {
  const { flight } = o;
  const timeout = setTimeout(() => stopFlight(flight, 'timeout'), o.timeoutMs);
  let summary: GenerationSummary | undefined;
  let failure: unknown;
  let iterator: AsyncGenerator<GeneratedToken, GenerationSummary> | undefined;
  let release: (() => void) | undefined;
  try {
    release = await o.slot;
    iterator = o.generator.generate(o.request, { signal: flight.abort.signal, priority: o.priority });
    for (;;) {
      if (flight.abort.signal.aborted) break;
      if (o.ready) {
        await o.ready();
        if (flight.abort.signal.aborted) break;
      }
      const step = await iterator.next();
      if (step.done) {
        summary = step.value;
        break;
      }
      if (!(await o.deliver(step.value))) break;
    }
  } catch (err) {
    // An engine that throws because it was aborted has done what it was asked.
    if (!flight.abort.signal.aborted) failure = err;
  } finally {
    clearTimeout(timeout);
    // Let the generator run its finally (free its sequence) if it stopped mid-stream.
    if (iterator && summary === undefined) await iterator.return(undefined as never).catch(() => {});
    release?.();
  }
  const reason = summary && summary.finishReason !== 'cancelled' ? undefined : flight.reason;
  return { summary, failure, reason };
}

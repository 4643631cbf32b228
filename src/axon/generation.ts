// What a generation is to the axon, whichever transport carries it: a flight (aborted by a cancel, a
// closed connection, the request timeout, a slow reader or shutdown), the engine request made from
// a validated payload, and the token as the wire carries it.
import type { GenerateRequest, GeneratedToken } from '../engine/types.ts';
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

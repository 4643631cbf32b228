// The evidence of one exchange, and how it is read back.
//
// A transcript keeps the validator's signed request frame and every frame the miner sent for it, as
// the bytes that crossed the wire, with the moment each arrived (ms after the request left; these
// times are the validator's own measurement, which no signature can vouch for). Everything else a
// verdict rests on (the tokens, their logprobs, finish reason, usage) is read again from those
// signed bytes by readTranscript, so `validate` and the offline `verify` judge the same thing and a
// third party can check that the miner really said it.
import { createHash } from 'node:crypto';
import {
  decodeGeneratePayload,
  decodeRequestFrame,
  decodeResponseBody,
  decodeResponseFrame,
  type GeneratePayload,
  type WireFinishReason,
} from '../wire/protocol.ts';
import { verifyFrame } from '../wire/signing.ts';
import { MinerError } from '../errors.ts';
import type { Challenge } from './challenges.ts';

export const TRANSCRIPT_FORMAT = 'webgpu-miner-transcript/1' as const;

export interface TranscriptFrame {
  /** Milliseconds after the request frame was sent. */
  atMs: number;
  /** The frame's bytes, base64. */
  bytes: string;
}

export interface Transcript {
  format: typeof TRANSCRIPT_FORMAT;
  round: number;
  challenge: Challenge;
  /** The validator's hotkey (signs the request). */
  validator: string;
  miner: { uid: number; hotkey: string };
  transport: 'ws';
  url: string;
  /** The signed request frame, base64. */
  request: string;
  frames: TranscriptFrame[];
  /** What the transport ended with when the exchange did not end in a verified done (timeout, bad frame, closed). */
  error?: { code: string; message: string };
}

export interface ResponseToken {
  index: number;
  /** -1: a text-only piece (text held back for a stop string). */
  tokenId: number;
  text: string;
  logprob: number;
  top: Array<{ tokenId: number; logprob: number }>;
  /** When the frame carrying it arrived (ms after the request). */
  atMs: number;
}

/** An exchange as read back from its transcript. */
export interface MinerResponse {
  /** Every frame signed by the miner for this validator, in order, the transcript digest and the token count verified. */
  integrity: { pass: boolean | null; detail?: string; framesVerified: number };
  /** The miner's error frame, or the transport's failure, if the exchange did not end in done. */
  error?: { code: string; message: string };
  finishReason?: WireFinishReason;
  usage?: { promptTokens: number; completionTokens: number };
  tokens: ResponseToken[];
  /** Token frames: arrival and how many tokens each carried. */
  frames: Array<{ atMs: number; tokens: number }>;
  /** Arrival of done (or of the last frame). */
  endMs: number;
}

export class TranscriptError extends MinerError {
  constructor(message: string) {
    super('BAD_TRANSCRIPT', message);
  }
}

const b64 = (s: string) => new Uint8Array(Buffer.from(s, 'base64'));

/** The payload fields a challenge asks for, as the request must carry them. */
export function challengePayload(c: Challenge): GeneratePayload {
  const payload: GeneratePayload = { max_tokens: c.maxTokens, temperature: c.temperature, seed: c.seed };
  if (c.prompt !== undefined) payload.prompt = c.prompt;
  if (c.messages !== undefined) payload.messages = c.messages;
  if (c.topP !== undefined) payload.top_p = c.topP;
  if (c.topK !== undefined) payload.top_k = c.topK;
  if (c.logprobs > 0) payload.logprobs = c.logprobs;
  return payload;
}

/** A transcript file's JSON, checked for shape (the frames are checked by readTranscript). */
export function parseTranscript(value: unknown, source = 'transcript'): Transcript {
  const fail = (detail: string): never => {
    throw new TranscriptError(`${source}: ${detail}`);
  };
  if (typeof value !== 'object' || value === null) fail('not a JSON object');
  const t = value as Record<string, unknown>;
  if (t.format !== TRANSCRIPT_FORMAT) fail(`format must be "${TRANSCRIPT_FORMAT}" (got ${JSON.stringify(t.format)})`);
  if (typeof t.request !== 'string') fail('request must be a base64 string');
  if (!Array.isArray(t.frames) || t.frames.some((f) => typeof f?.bytes !== 'string' || !Number.isFinite(f?.atMs))) fail('frames must be [{atMs, bytes}]');
  if (typeof t.challenge !== 'object' || t.challenge === null) fail('challenge is missing');
  const miner = t.miner as Record<string, unknown> | undefined;
  if (typeof miner?.hotkey !== 'string' || !Number.isSafeInteger(miner?.uid)) fail('miner must be {uid, hotkey}');
  if (typeof t.validator !== 'string') fail('validator must be a hotkey');
  return value as Transcript;
}

/**
 * Read an exchange back from its transcript: the request must be the challenge, signed by the
 * validator for the miner; every response frame must be signed by the miner for the validator, its
 * tokens in order, and done's digest and count must match the token frames. `verifySignatures`
 * false skips the sr25519 checks (the client has already made them as the frames arrived);
 * everything else is checked either way.
 */
export function readTranscript(t: Transcript, options: { verifySignatures: boolean }): MinerResponse {
  const response: MinerResponse = { integrity: { pass: true, framesVerified: 0 }, tokens: [], frames: [], endMs: 0 };
  const broken = (detail: string): MinerResponse => {
    response.integrity = { pass: false, detail, framesVerified: response.integrity.framesVerified };
    response.error ??= t.error;
    return response;
  };
  // Nothing crossed the wire (the miner could not be reached): nothing to verify, nothing answered.
  if (t.request === '') {
    response.integrity.pass = null;
    response.error = t.error ?? { code: 'CONNECTION', message: 'no request was sent' };
    return response;
  }
  // The request: what was asked, by whom, of whom.
  let request;
  try {
    request = decodeRequestFrame(b64(t.request), { maxBodyBytes: 1 << 24 });
  } catch (err) {
    throw new TranscriptError(`the request frame does not decode: ${(err as Error).message}`);
  }
  if (request.op !== 'generate') throw new TranscriptError(`the request is a ${request.op}, not a generate`);
  if (request.signed_by !== t.validator) throw new TranscriptError(`the request is signed by ${request.signed_by}, not the validator ${t.validator}`);
  if (request.signed_for !== t.miner.hotkey) throw new TranscriptError(`the request is addressed to ${request.signed_for}, not the miner ${t.miner.hotkey}`);
  if (options.verifySignatures && !verifyFrame(request)) throw new TranscriptError('the request frame has a bad signature');
  let payload: GeneratePayload;
  try {
    payload = decodeGeneratePayload(request.body);
  } catch (err) {
    throw new TranscriptError(`the request payload does not decode: ${(err as Error).message}`);
  }
  if (JSON.stringify(canonical(payload)) !== JSON.stringify(canonical(challengePayload(t.challenge)))) {
    throw new TranscriptError('the signed request does not carry the challenge the transcript names');
  }

  const digest = createHash('sha256');
  let done = false;
  for (const [i, f] of t.frames.entries()) {
    if (done) return broken(`frame ${i} arrived after done`);
    let frame;
    try {
      frame = decodeResponseFrame(b64(f.bytes), { maxBodyBytes: 1 << 24 });
    } catch (err) {
      return broken(`frame ${i}: ${(err as Error).message}`);
    }
    if (frame.signed_by !== t.miner.hotkey) return broken(`frame ${i} is signed by ${frame.signed_by}, not the miner ${t.miner.hotkey}`);
    if (options.verifySignatures && !verifyFrame(frame)) return broken(`frame ${i} (${frame.type}) has a bad signature`);
    response.integrity.framesVerified++;
    if (frame.id !== request.id) return broken(`frame ${i} answers request ${frame.id}, not ${request.id}`);
    if (frame.signed_for !== t.validator && !(frame.type === 'error' && frame.signed_for === '')) {
      return broken(`frame ${i} is addressed to ${frame.signed_for}, not the validator ${t.validator}`);
    }
    let parsed;
    try {
      parsed = decodeResponseBody(frame.type, frame.body);
    } catch (err) {
      return broken(`frame ${i}: ${(err as Error).message}`);
    }
    response.endMs = f.atMs;
    if (parsed.type === 'token') {
      digest.update(frame.body);
      for (const tok of parsed.body.tokens) {
        if (tok.index !== response.tokens.length) return broken(`token index ${tok.index} arrived where ${response.tokens.length} was due`);
        response.tokens.push({
          index: tok.index,
          tokenId: tok.token_id,
          text: tok.text,
          logprob: tok.logprob,
          top: tok.top_logprobs.map((a) => ({ tokenId: a.token_id, logprob: a.logprob })),
          atMs: f.atMs,
        });
      }
      response.frames.push({ atMs: f.atMs, tokens: parsed.body.tokens.length });
    } else if (parsed.type === 'done') {
      const hex = digest.digest('hex');
      if (hex !== parsed.body.transcript_sha256) return broken(`transcript digest mismatch: the token frames hash to ${hex}, done says ${parsed.body.transcript_sha256}`);
      if (parsed.body.usage.completion_tokens !== response.tokens.length) {
        return broken(`done reports ${parsed.body.usage.completion_tokens} completion tokens; ${response.tokens.length} arrived`);
      }
      response.finishReason = parsed.body.finish_reason;
      response.usage = { promptTokens: parsed.body.usage.prompt_tokens, completionTokens: parsed.body.usage.completion_tokens };
      done = true;
    } else if (parsed.type === 'error') {
      response.error = { code: parsed.body.code, message: parsed.body.message };
      done = true;
    } else {
      return broken(`frame ${i} is a ${parsed.type} frame, not an answer to generate`);
    }
  }
  if (!done) {
    response.error = t.error ?? { code: 'INCOMPLETE', message: 'the exchange ended without done' };
    // A transport failure that is a verification failure means the miner's frames did not check out.
    if (t.error?.code === 'VERIFICATION_FAILED') return broken(t.error.message);
  }
  return response;
}

/** Payload fields in a fixed order, absent and undefined alike (for comparing requests). */
function canonical(p: GeneratePayload): Record<string, unknown> {
  const keys = ['prompt', 'messages', 'max_tokens', 'temperature', 'top_p', 'top_k', 'seed', 'stop', 'logprobs'] as const;
  return Object.fromEntries(keys.filter((k) => p[k] !== undefined).map((k) => [k, p[k]]));
}

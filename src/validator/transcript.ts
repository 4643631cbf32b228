// The evidence of one exchange, and how it is read back.
//
// A transcript keeps the validator's signed request and everything the miner sent for it, as the
// bytes that crossed the wire, with the moment each arrived (ms after the request left; these times
// are the validator's own measurement, which no signature can vouch for). Protocol v1 keeps the
// request frame and every response frame; the HTTP face keeps the request's path, headers and body
// and the response's status, headers and body bytes in the pieces they arrived in. Everything else a
// verdict rests on (the tokens, their logprobs, finish reason, usage) is read again from those bytes
// by readTranscript, so `validate` and the offline `verify` judge the same thing and a third party
// can check that the miner really said it (where the miner signed: a plain OpenAI server does not).
import { createHash } from 'node:crypto';
import { isDeepStrictEqual } from 'node:util';
import {
  decodeGeneratePayload,
  decodeRequestFrame,
  decodeResponseBody,
  decodeResponseFrame,
  type GeneratePayload,
  type WireFinishReason,
} from '../wire/protocol.ts';
import { ERROR_CODES, type ErrorCode } from '../wire/protocol.ts';
import { signedMessage, verifyFrame, verifySignature } from '../wire/signing.ts';
import { MinerError } from '../errors.ts';
import type { Challenge } from './challenges.ts';
import { SseParser, verifyStreamSignature, type StreamSignature } from './http-client.ts';

export const TRANSCRIPT_FORMAT = 'webgpu-miner-transcript/1' as const;

export interface TranscriptFrame {
  /** Milliseconds after the request frame was sent. */
  atMs: number;
  /** The frame's bytes, base64. */
  bytes: string;
}

interface TranscriptCommon {
  format: typeof TRANSCRIPT_FORMAT;
  round: number;
  challenge: Challenge;
  /** The validator's hotkey (signs the request). */
  validator: string;
  miner: { uid: number; hotkey: string };
  url: string;
  /** What the transport ended with when the exchange did not end in a verified done (timeout, bad frame, closed). */
  error?: { code: string; message: string };
}

/** Protocol v1 over WebSocket. */
export interface WsTranscript extends TranscriptCommon {
  transport: 'ws';
  /** The signed request frame, base64 ('' when nothing was sent). */
  request: string;
  frames: TranscriptFrame[];
}

/** The OpenAI-compatible HTTP face, with Epistula v2 request headers. */
export interface HttpTranscript extends TranscriptCommon {
  transport: 'http';
  /** The request as sent: path, headers (the Epistula ones sign the body) and body, base64. */
  request: { path: string; headers: Record<string, string>; body: string };
  /** null: no response came (the miner could not be reached). */
  response: {
    status: number;
    headers: Record<string, string>;
    /** When the response's headers arrived. */
    atMs: number;
    /** The body as it arrived, piece by piece. */
    chunks: TranscriptFrame[];
  } | null;
}

export type Transcript = WsTranscript | HttpTranscript;

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
  /**
   * Every frame signed by the miner for this validator, in order, the transcript digest and the token
   * count verified (over HTTP: the stream well formed and its signature, when there is one, verified).
   * `unsigned`: an HTTP stream that carries no signature (a plain OpenAI server): it is read and
   * judged all the same, but nothing proves to a third party that the miner sent it.
   */
  integrity: { pass: boolean | null; detail?: string; framesVerified: number; unsigned?: true };
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
  const badFrames = (list: unknown) => !Array.isArray(list) || list.some((f) => typeof f?.bytes !== 'string' || !Number.isFinite(f?.atMs));
  if (t.transport === 'http') {
    const r = t.request as Record<string, unknown> | undefined;
    if (typeof r?.path !== 'string' || typeof r?.body !== 'string' || !isStringMap(r?.headers)) fail('request must be {path, headers, body} (body base64)');
    const res = t.response as Record<string, unknown> | null | undefined;
    if (res !== null) {
      if (!Number.isSafeInteger(res?.status) || !isStringMap(res?.headers) || !Number.isFinite(res?.atMs)) fail('response must be null or {status, headers, atMs, chunks}');
      if (badFrames(res?.chunks)) fail('response.chunks must be [{atMs, bytes}]');
    }
  } else if (t.transport === 'ws') {
    if (typeof t.request !== 'string') fail('request must be a base64 string');
    if (badFrames(t.frames)) fail('frames must be [{atMs, bytes}]');
  } else {
    fail(`transport must be "ws" or "http" (got ${JSON.stringify(t.transport)})`);
  }
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
 * false skips protocol v1's sr25519 checks (the client has already made them as the frames
 * arrived); everything else is checked either way. An HTTP exchange is always verified here (its
 * transport only records): see readHttpTranscript.
 */
export function readTranscript(t: Transcript, options: { verifySignatures: boolean }): MinerResponse {
  return t.transport === 'http' ? readHttpTranscript(t) : readWsTranscript(t, options);
}

function readWsTranscript(t: WsTranscript, options: { verifySignatures: boolean }): MinerResponse {
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

// ---------------------------------------------------------------------------------------------
// The HTTP face

const isStringMap = (v: unknown): v is Record<string, string> => typeof v === 'object' && v !== null && !Array.isArray(v) && Object.values(v).every((x) => typeof x === 'string');
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * The OpenAI request a challenge is sent as: chat when it has messages, else completions; streamed,
 * with usage, the token's logprob and `challenge.logprobs` alternatives, and token ids as vLLM's
 * return_tokens_as_token_ids writes them ("token_id:N"). `model`: the id the miner lists at
 * GET /v1/models (vLLM refuses a request without it); recomputation, not the name, judges whether
 * it is the validator's model.
 */
export function httpChallengeRequest(c: Challenge, model?: string): { path: '/v1/chat/completions' | '/v1/completions'; body: Record<string, unknown> } {
  const chat = c.messages !== undefined;
  const body: Record<string, unknown> = model === undefined ? {} : { model };
  if (chat) body.messages = c.messages;
  else body.prompt = c.prompt;
  body.max_tokens = c.maxTokens;
  body.temperature = c.temperature;
  if (c.topP !== undefined) body.top_p = c.topP;
  if (c.topK !== undefined) body.top_k = c.topK;
  body.seed = c.seed;
  body.stream = true;
  body.stream_options = { include_usage: true };
  if (chat) {
    body.logprobs = true;
    body.top_logprobs = c.logprobs;
  } else {
    body.logprobs = c.logprobs;
  }
  body.return_tokens_as_token_ids = true;
  return { path: chat ? '/v1/chat/completions' : '/v1/completions', body };
}

/** "token_id:N" -> N (undefined: not in that form). */
function tokenIdOf(token: unknown): number | undefined {
  const m = typeof token === 'string' ? /^token_id:(\d{1,10})$/.exec(token) : null;
  return m ? Number(m[1]) : undefined;
}

/** The tokens one choice of a chunk carries: ids, logprobs, alternatives (chat or completions shape). */
function choiceTokens(choice: Record<string, unknown>, chat: boolean): Array<{ tokenId: number; logprob: number; top: Array<{ tokenId: number; logprob: number }> }> | string {
  const lp = choice.logprobs;
  if (lp === null || lp === undefined) return [];
  if (!isObject(lp)) return 'logprobs is not an object';
  const out = [];
  if (chat) {
    if (!Array.isArray(lp.content)) return 'logprobs.content is not a list';
    for (const entry of lp.content) {
      if (!isObject(entry)) return 'a logprobs.content entry is not an object';
      const tokenId = tokenIdOf(entry.token);
      if (tokenId === undefined) return `token ${JSON.stringify(entry.token)} is not "token_id:N" (the miner ignored return_tokens_as_token_ids)`;
      const top = [];
      for (const a of Array.isArray(entry.top_logprobs) ? entry.top_logprobs : []) {
        const id = isObject(a) ? tokenIdOf(a.token) : undefined;
        if (id === undefined) return `an alternative of token ${tokenId} is not "token_id:N"`;
        top.push({ tokenId: id, logprob: Number((a as Record<string, unknown>).logprob) });
      }
      out.push({ tokenId, logprob: Number(entry.logprob), top });
    }
  } else {
    if (!Array.isArray(lp.tokens) || !Array.isArray(lp.token_logprobs) || lp.tokens.length !== lp.token_logprobs.length) return 'logprobs.tokens and token_logprobs are not lists of one length';
    for (const [k, token] of lp.tokens.entries()) {
      const tokenId = tokenIdOf(token);
      if (tokenId === undefined) return `token ${JSON.stringify(token)} is not "token_id:N" (the miner ignored return_tokens_as_token_ids)`;
      const alternatives = Array.isArray(lp.top_logprobs) && isObject(lp.top_logprobs[k]) ? (lp.top_logprobs[k] as Record<string, unknown>) : {};
      const top = [];
      for (const [name, logprob] of Object.entries(alternatives)) {
        const id = tokenIdOf(name);
        if (id === undefined) return `an alternative of token ${tokenId} is not "token_id:N"`;
        top.push({ tokenId: id, logprob: Number(logprob) });
      }
      out.push({ tokenId, logprob: Number(lp.token_logprobs[k]), top });
    }
  }
  return out;
}

/**
 * Read an HTTP exchange back. The request must be the challenge's, its Epistula headers signed by
 * the validator for the miner (the signature verified). The response must be an event stream of
 * `data:` events: chunks of tokens (ids as "token_id:N", each with its logprob), a chunk with
 * finish_reason, a usage chunk whose completion_tokens is the tokens received, then, when the miner
 * signs, its `epistula` chunk, whose sha256 must be that of every byte before it and whose sr25519
 * signature by the miner, for this validator and this request's uuid, must verify; then
 * `data: [DONE]`. A signature present and wrong fails integrity; none at all marks the exchange
 * `unsigned` and it is judged on everything else (README, "Validating miners").
 */
function readHttpTranscript(t: HttpTranscript): MinerResponse {
  const response: MinerResponse = { integrity: { pass: true, framesVerified: 0 }, tokens: [], frames: [], endMs: 0 };
  const broken = (detail: string): MinerResponse => {
    response.integrity = { pass: false, detail, framesVerified: 0 };
    response.error ??= t.error;
    return response;
  };
  // The request: what was asked, by whom, of whom.
  const headers = Object.fromEntries(Object.entries(t.request.headers).map(([k, v]) => [k.toLowerCase(), v]));
  const body = b64(t.request.body);
  const uuid = headers['epistula-uuid'] ?? '';
  const signedBy = headers['epistula-signed-by'];
  const signedFor = headers['epistula-signed-for'];
  const timestamp = Number(headers['epistula-timestamp']);
  if (headers['epistula-version'] !== '2') throw new TranscriptError(`the request is not signed with Epistula v2 (Epistula-Version ${JSON.stringify(headers['epistula-version'])})`);
  if (signedBy !== t.validator) throw new TranscriptError(`the request is signed by ${signedBy}, not the validator ${t.validator}`);
  if (signedFor !== t.miner.hotkey) throw new TranscriptError(`the request is addressed to ${signedFor}, not the miner ${t.miner.hotkey}`);
  if (!Number.isSafeInteger(timestamp) || !verifySignature(signedMessage(body, uuid, timestamp, signedFor), headers['epistula-request-signature'], signedBy)) {
    throw new TranscriptError('the request has a bad Epistula signature');
  }
  let sent: unknown;
  try {
    sent = JSON.parse(Buffer.from(body).toString('utf8'));
  } catch (err) {
    throw new TranscriptError(`the request body is not JSON: ${(err as Error).message}`);
  }
  const expected = httpChallengeRequest(t.challenge, isObject(sent) && typeof sent.model === 'string' ? sent.model : undefined);
  if (t.request.path !== expected.path || !isDeepStrictEqual(sent, expected.body)) {
    throw new TranscriptError('the signed request does not carry the challenge the transcript names');
  }

  // Nothing came back (the miner could not be reached): nothing to verify, nothing answered.
  const res = t.response;
  if (res === null) {
    response.integrity.pass = null;
    response.error = t.error ?? { code: 'CONNECTION', message: 'no response' };
    return response;
  }
  const received = Buffer.concat(res.chunks.map((c) => b64(c.bytes)));
  if (res.status !== 200) {
    // A refusal: OpenAI's error body names the wire code. It scores 0 whoever sent it, so the
    // signature headers some refusals carry are kept but not checked.
    let error = { code: `HTTP_${res.status}`, message: `HTTP ${res.status}` };
    try {
      const e = (JSON.parse(received.toString('utf8')) as { error?: { code?: unknown; message?: unknown } }).error;
      if (typeof e?.message === 'string') error = { code: (ERROR_CODES as readonly unknown[]).includes(e.code) ? (e.code as ErrorCode) : error.code, message: e.message };
    } catch {
      // not JSON: the status says what
    }
    response.integrity = { pass: null, detail: `refused with HTTP ${res.status}`, framesVerified: 0 };
    response.error = error;
    return response;
  }
  const contentType = Object.entries(res.headers).find(([k]) => k.toLowerCase() === 'content-type')?.[1] ?? '';
  if (!contentType.startsWith('text/event-stream')) return broken(`the miner answered ${contentType || 'without a content type'}, not an event stream`);

  const chat = expected.path === '/v1/chat/completions';
  const parser = new SseParser();
  let done = false;
  let signature: StreamSignature | undefined;
  let signedBytes = 0; // bytes before the signature chunk
  let events = 0;
  let finished = false;
  for (const chunk of res.chunks) {
    let parsed;
    try {
      parsed = parser.push(b64(chunk.bytes));
    } catch (err) {
      return broken((err as Error).message);
    }
    for (const event of parsed) {
      if (done) return broken('an event came after [DONE]');
      response.endMs = chunk.atMs;
      if (event.data === '[DONE]') {
        done = true;
        continue;
      }
      if (signature) return broken('an event came after the signature chunk');
      events++;
      let data: unknown;
      try {
        data = JSON.parse(event.data);
      } catch {
        return broken(`event ${events - 1} is not JSON: ${event.data.slice(0, 80)}`);
      }
      if (!isObject(data)) return broken(`event ${events - 1} is not a JSON object`);
      if (isObject(data.error)) {
        response.error = { code: (ERROR_CODES as readonly unknown[]).includes(data.error.code) ? (data.error.code as string) : 'INTERNAL', message: String(data.error.message) };
        continue;
      }
      if (isObject(data.epistula)) {
        signature = data.epistula as unknown as StreamSignature;
        signedBytes = event.start;
        continue;
      }
      if (!Array.isArray(data.choices)) return broken(`event ${events - 1} has no choices`);
      if (data.choices.length === 0) {
        const u = data.usage;
        if (!isObject(u) || !Number.isSafeInteger(u.prompt_tokens) || !Number.isSafeInteger(u.completion_tokens)) return broken(`event ${events - 1} has neither choices nor usage`);
        response.usage = { promptTokens: u.prompt_tokens as number, completionTokens: u.completion_tokens as number };
        continue;
      }
      if (finished) return broken(`event ${events - 1} carries a choice after finish_reason`);
      const choice = data.choices[0];
      if (!isObject(choice)) return broken(`event ${events - 1}: choices[0] is not an object`);
      const text = chat ? (isObject(choice.delta) && typeof choice.delta.content === 'string' ? choice.delta.content : '') : typeof choice.text === 'string' ? choice.text : '';
      const tokens = choiceTokens(choice, chat);
      if (typeof tokens === 'string') return broken(`event ${events - 1}: ${tokens}`);
      const last = choice.finish_reason;
      if (tokens.length > 0) {
        // One token per chunk is what the face sends; a chunk of several keeps its text on the first.
        tokens.forEach((tok, k) => response.tokens.push({ index: response.tokens.length, tokenId: tok.tokenId, text: k === 0 ? text : '', logprob: tok.logprob, top: tok.top, atMs: chunk.atMs }));
        response.frames.push({ atMs: chunk.atMs, tokens: tokens.length });
      } else if (text !== '') {
        // Text without a token: released at the end (held back for a stop string), as protocol v1's text pieces.
        if (last === null || last === undefined) return broken(`event ${events - 1} carries text without its token`);
        response.tokens.push({ index: response.tokens.length, tokenId: -1, text, logprob: 0, top: [], atMs: chunk.atMs });
      }
      if (last !== null && last !== undefined) {
        if (last !== 'stop' && last !== 'length') return broken(`event ${events - 1}: unknown finish_reason ${JSON.stringify(last)}`);
        response.finishReason = last;
        finished = true;
      }
    }
  }
  if (parser.leftover > 0 && done) return broken('the stream has bytes after [DONE]');
  if (signature) {
    try {
      verifyStreamSignature(received.subarray(0, signedBytes), signature, { miner: t.miner.hotkey, validator: t.validator, uuid });
    } catch (err) {
      return broken((err as Error).message);
    }
    response.integrity.framesVerified = events - 1;
  } else if (done) {
    response.integrity.unsigned = true;
  } else {
    // Cut off before the end: whatever came is not signed (yet), and proves nothing.
    response.integrity = { pass: null, detail: 'the stream ended before the miner signed it', framesVerified: 0 };
  }
  if (!done) {
    response.error ??= t.error ?? { code: 'INCOMPLETE', message: 'the stream ended before data: [DONE]' };
    response.finishReason = undefined;
    return response;
  }
  if (response.error) return response;
  if (!response.finishReason) return broken('the stream has no finish_reason');
  const counted = response.tokens.filter((tok) => tok.tokenId >= 0).length;
  if (response.usage && response.usage.completionTokens !== counted) return broken(`usage reports ${response.usage.completionTokens} completion tokens; ${counted} arrived`);
  return response;
}

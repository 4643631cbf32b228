// Wire protocol v1: the frame codec and the validation of every field. Pure: no sockets, no keys.
//
// A frame is one msgpack map in one binary WebSocket message. Requests carry an op and a payload
// (`body`, itself msgpack); responses carry a type and a body. Both are signed over Epistula v2's
// string (see signing.ts). Everything here either returns a fully checked value or throws an
// AxonError whose `code` is one of ERROR_CODES, so the server and the client branch on codes, never
// on message text. The protocol is documented for humans in docs/protocol.md.
import { Packr, Unpackr } from 'msgpackr';
import { MinerError } from '../errors.ts';
import { MAX_LOGPROBS } from '../engine/types.ts';

export const PROTOCOL_VERSION = 1;

export const ERROR_CODES = [
  'BAD_FRAME',
  'UNSUPPORTED_VERSION',
  'TOO_LARGE',
  'STALE',
  'WRONG_MINER',
  'NOT_REGISTERED',
  'BAD_SIGNATURE',
  'REPLAY',
  'FORBIDDEN',
  'RATE_LIMITED',
  'OVERLOADED',
  'BAD_REQUEST',
  'INTERNAL',
] as const;
export type ErrorCode = (typeof ERROR_CODES)[number];

export const REQUEST_OPS = ['ping', 'info', 'generate', 'cancel'] as const;
export type RequestOp = (typeof REQUEST_OPS)[number];

export const RESPONSE_TYPES = ['pong', 'info', 'token', 'done', 'error'] as const;
export type ResponseType = (typeof RESPONSE_TYPES)[number];

export const FINISH_REASONS = ['stop', 'length', 'cancelled'] as const;
export type WireFinishReason = (typeof FINISH_REASONS)[number];

export { MAX_LOGPROBS };

/**
 * An error with a wire code. Raised by the codec and the policy on the server (and sent back as an
 * error frame), and by the client when the miner answers with an error frame. `requestId` and
 * `signedBy` are whatever could be read from the offending frame ('' when nothing could), so the
 * error frame can still be addressed.
 */
export class AxonError extends MinerError {
  declare readonly code: ErrorCode;
  readonly requestId: string;
  readonly signedBy: string;
  constructor(code: ErrorCode, message: string, context: { requestId?: string; signedBy?: string } = {}) {
    super(code, message);
    this.requestId = context.requestId ?? '';
    this.signedBy = context.signedBy ?? '';
  }
}

/** The client could not verify what a miner sent: bad signature, digest, order or shape. */
export class VerificationError extends MinerError {
  constructor(message: string) {
    super('VERIFICATION_FAILED', message);
  }
}

/** The connection to the miner failed, closed or timed out before the answer arrived. */
export class ConnectionError extends MinerError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('CONNECTION', message, options);
  }
}

// ---------------------------------------------------------------------------------------------
// Frames

export interface RequestFrame {
  v: typeof PROTOCOL_VERSION;
  /** uuid chosen by the validator; (signed_by, id) is unique within the timestamp window. */
  id: string;
  op: RequestOp;
  /** Unix milliseconds on the validator's clock. */
  timestamp: number;
  /** ss58 hotkey of the validator. */
  signed_by: string;
  /** ss58 hotkey of the miner the request is meant for. */
  signed_for: string;
  /** msgpack of the op's payload. */
  body: Uint8Array;
  /** "0x" + 128 hex digits: sr25519 over the signed string. Checked by the policy, not the codec. */
  signature: string;
}

export interface ResponseFrame {
  v: typeof PROTOCOL_VERSION;
  /** The request's id ('' when the request could not be read far enough to know it). */
  id: string;
  type: ResponseType;
  timestamp: number;
  /** The miner's hotkey. */
  signed_by: string;
  /** The validator's hotkey ('' when unknown). */
  signed_for: string;
  body: Uint8Array;
  signature: string;
}

const REQUEST_KEYS = ['v', 'id', 'op', 'timestamp', 'signed_by', 'signed_for', 'body', 'signature'] as const;
const RESPONSE_KEYS = ['v', 'id', 'type', 'timestamp', 'signed_by', 'signed_for', 'body', 'signature'] as const;

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
// The shape of an ss58 address (base58 alphabet, plausible length). The checksum is checked where
// an address is trusted: metagraph and allow/deny lists at load, signatures at verification.
const SS58_SHAPE = /^[1-9A-HJ-NP-Za-km-z]{40,50}$/;
const MAX_SIGNATURE_CHARS = 256;

export function isUuid(value: unknown): value is string {
  return typeof value === 'string' && UUID.test(value);
}

export function isSs58Shaped(value: unknown): value is string {
  return typeof value === 'string' && SS58_SHAPE.test(value);
}

export interface FrameLimits {
  /** Largest `body` accepted, in bytes (TOO_LARGE above). */
  maxBodyBytes: number;
}

export const DEFAULT_FRAME_LIMITS: FrameLimits = { maxBodyBytes: 1 << 20 };

function isPlainMap(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Uint8Array) &&
    Object.getPrototypeOf(value) === Object.prototype;
}

/**
 * How deep and how long a msgpack value may nest. Depth 1: a map or array of scalars; 0: a scalar.
 * Every frame and body of this protocol has a fixed, shallow shape, so anything deeper is refused
 * before a single object is built.
 */
export interface MsgpackShape {
  maxDepth: number;
  /** Entries of any one map or array. */
  maxLength: number;
}

/** A request or response frame: one map of scalars (its 8 fields; extra ones are refused after decoding). */
export const FRAME_SHAPE: MsgpackShape = { maxDepth: 1, maxLength: 16 };
/** A request payload: generate's {messages: [{role, content}], stop: [str]} is the deepest. */
const PAYLOAD_SHAPE_DEPTH = 3;
/** A response body: token's {tokens: [{top_logprobs: [{...}]}]} is the deepest. */
const RESPONSE_BODY_SHAPE: MsgpackShape = { maxDepth: 5, maxLength: 4096 };

/**
 * Walk the msgpack headers of `bytes` without building anything, and return why the value is
 * malformed, deeper or longer than `shape` allows, or followed by trailing bytes (undefined when
 * none of these). A msgpack decoder caps lengths but not depth, and decoding a frame of
 * nested one-element arrays costs about a second of CPU and a lot of memory per MiB: this scan costs
 * one pass over the headers, and a deep value is refused at its first container past maxDepth.
 */
export function msgpackShapeError(bytes: Uint8Array, shape: MsgpackShape): string | undefined {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const end = bytes.length;
  // Values still to read at each open container (the root counts as one value).
  const pending: number[] = [1];
  let pos = 0;
  while (pending.length > 0) {
    if (pending[pending.length - 1] === 0) {
      pending.pop();
      continue;
    }
    pending[pending.length - 1] -= 1;
    if (pos >= end) return 'truncated msgpack';
    const b = bytes[pos++];
    let skip = 0; // payload bytes after the header
    let entries = -1; // values inside, for a container
    if (b <= 0x7f || b >= 0xe0 || b === 0xc0 || b === 0xc2 || b === 0xc3) skip = 0;
    else if (b >= 0xa0 && b <= 0xbf) skip = b & 0x1f;
    else if (b >= 0x80 && b <= 0x8f) entries = 2 * (b & 0x0f);
    else if (b >= 0x90 && b <= 0x9f) entries = b & 0x0f;
    else {
      const need = (n: number) => pos + n <= end;
      switch (b) {
        case 0xcc: case 0xd0: skip = 1; break;
        case 0xcd: case 0xd1: skip = 2; break;
        case 0xca: case 0xce: case 0xd2: skip = 4; break;
        case 0xcb: case 0xcf: case 0xd3: skip = 8; break;
        case 0xc4: case 0xd9: if (!need(1)) return 'truncated msgpack'; skip = 1 + view.getUint8(pos); break;
        case 0xc5: case 0xda: if (!need(2)) return 'truncated msgpack'; skip = 2 + view.getUint16(pos); break;
        case 0xc6: case 0xdb: if (!need(4)) return 'truncated msgpack'; skip = 4 + view.getUint32(pos); break;
        case 0xdc: if (!need(2)) return 'truncated msgpack'; entries = view.getUint16(pos); pos += 2; break;
        case 0xdd: if (!need(4)) return 'truncated msgpack'; entries = view.getUint32(pos); pos += 4; break;
        case 0xde: if (!need(2)) return 'truncated msgpack'; entries = 2 * view.getUint16(pos); pos += 2; break;
        case 0xdf: if (!need(4)) return 'truncated msgpack'; entries = 2 * view.getUint32(pos); pos += 4; break;
        // Extension types (0xc7-0xc9, 0xd4-0xd8) appear nowhere in this protocol; 0xc1 is never used.
        default: return `msgpack type 0x${b.toString(16)} is not used by this protocol`;
      }
    }
    if (entries >= 0) {
      if (pending.length > shape.maxDepth) return `msgpack nested deeper than ${shape.maxDepth} level(s)`;
      const length = b >= 0x80 && b <= 0x8f ? entries / 2 : b === 0xde || b === 0xdf ? entries / 2 : entries;
      if (length > shape.maxLength) return `a msgpack map or array of ${length} entries (at most ${shape.maxLength} here)`;
      // Every value takes at least one byte: a count past what is left is a lie (or truncation).
      if (entries > end - pos) return 'truncated msgpack';
      pending.push(entries);
    } else {
      if (pos + skip > end) return 'truncated msgpack';
      pos += skip;
    }
  }
  if (pos !== end) return `${end - pos} trailing byte(s) after the msgpack value`;
  return undefined;
}

// The msgpack codec (msgpackr), configured to read and write plain msgpack that any library speaks:
//  - no records, structures or bundled strings (msgpackr's own extensions, which other decoders cannot
//    read); maps decode to plain objects, whose prototype the field checks verify;
//  - variableMapSize: the smallest map header (fixmap for frames), as other encoders write;
//  - 64-bit integers decode to numbers; one beyond 2^53 is no longer safe and fails the safe-integer
//    checks of the field it lands in;
//  - copyBuffers: a decoded bin (a frame's body) is a copy, not a view that pins or aliases the
//    socket's receive buffer.
// Extension types never reach the decoder: the header scan above refuses them first.
const packr = new Packr({ useRecords: false, variableMapSize: true });
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number', copyBuffers: true });

/**
 * msgpackr writes an integer outside the 32-bit ranges as a float64, and the protocol says `int`
 * (a timestamp in milliseconds is one: about 2^40). A BigInt is written as a msgpack int64, so
 * such integers travel as BigInts; everything else is passed through, unchanged and uncopied.
 */
function wideIntegersAsBigInt(value: unknown): unknown {
  if (typeof value === 'number') {
    return Number.isSafeInteger(value) && (value > 0xffffffff || value < -0x80000000) ? BigInt(value) : value;
  }
  if (typeof value !== 'object' || value === null || value instanceof Uint8Array) return value;
  if (Array.isArray(value)) {
    let copy: unknown[] | undefined;
    value.forEach((item, i) => {
      const wire = wideIntegersAsBigInt(item);
      if (wire !== item) (copy ??= [...value])[i] = wire;
    });
    return copy ?? value;
  }
  let copy: Record<string, unknown> | undefined;
  for (const [key, item] of Object.entries(value)) {
    const wire = wideIntegersAsBigInt(item);
    if (wire !== item) (copy ??= { ...value })[key] = wire;
  }
  return copy ?? value;
}

function encodeMsgpack(value: unknown): Uint8Array {
  return packr.pack(wideIntegersAsBigInt(value));
}

function decodeMsgpack(bytes: Uint8Array, what: string, code: ErrorCode, context: { requestId?: string; signedBy?: string } = {}, shape?: MsgpackShape): unknown {
  if (shape) {
    const problem = msgpackShapeError(bytes, shape);
    if (problem !== undefined) throw new AxonError(code, `${what} is refused unread: ${problem}`, context);
  }
  try {
    return unpackr.unpack(bytes);
  } catch (err) {
    throw new AxonError(code, `${what} is not valid msgpack: ${(err as Error).message}`, context);
  }
}

function checkKeys(map: Record<string, unknown>, allowed: readonly string[], what: string, code: ErrorCode, context: { requestId?: string; signedBy?: string }): void {
  for (const key of Object.keys(map)) {
    if (!allowed.includes(key)) throw new AxonError(code, `${what} has an unknown field '${key.slice(0, 40)}'`, context);
  }
}

function describe(value: unknown): string {
  if (value === null) return 'nil';
  if (value instanceof Uint8Array) return `bin(${value.length})`;
  if (Array.isArray(value)) return 'array';
  if (typeof value === 'string') return `string(${value.length})`;
  if (typeof value === 'number') return Number.isFinite(value) ? String(value) : 'non-finite number';
  return typeof value;
}

/** The fields every frame shares, checked in order; `kind` names the frame in messages. */
function checkFrameCommon(map: Record<string, unknown>, limits: FrameLimits, kind: string, context: { requestId?: string; signedBy?: string }): void {
  if (!isUuid(map.id) && !(kind === 'response' && map.id === '')) {
    throw new AxonError('BAD_FRAME', `${kind} frame: id must be a uuid string (got ${describe(map.id)})`, context);
  }
  if (!Number.isSafeInteger(map.timestamp) || (map.timestamp as number) < 0) {
    throw new AxonError('BAD_FRAME', `${kind} frame: timestamp must be a non-negative safe integer of unix milliseconds (got ${describe(map.timestamp)})`, context);
  }
  if (!isSs58Shaped(map.signed_by)) {
    throw new AxonError('BAD_FRAME', `${kind} frame: signed_by must be an ss58 hotkey (got ${describe(map.signed_by)})`, context);
  }
  if (!isSs58Shaped(map.signed_for) && !(kind === 'response' && map.signed_for === '')) {
    throw new AxonError('BAD_FRAME', `${kind} frame: signed_for must be an ss58 hotkey (got ${describe(map.signed_for)})`, context);
  }
  if (!(map.body instanceof Uint8Array)) {
    throw new AxonError('BAD_FRAME', `${kind} frame: body must be bin (msgpack of the payload) (got ${describe(map.body)})`, context);
  }
  if (map.body.length > limits.maxBodyBytes) {
    throw new AxonError('TOO_LARGE', `${kind} frame: body is ${map.body.length} bytes; the limit is ${limits.maxBodyBytes}`, context);
  }
  if (typeof map.signature !== 'string' || map.signature.length > MAX_SIGNATURE_CHARS) {
    throw new AxonError('BAD_FRAME', `${kind} frame: signature must be a string of at most ${MAX_SIGNATURE_CHARS} characters (got ${describe(map.signature)})`, context);
  }
}

/** Decode one request frame. Throws AxonError: BAD_FRAME, UNSUPPORTED_VERSION or TOO_LARGE. */
export function decodeRequestFrame(bytes: Uint8Array, limits: FrameLimits = DEFAULT_FRAME_LIMITS): RequestFrame {
  const value = decodeMsgpack(bytes, 'frame', 'BAD_FRAME', {}, FRAME_SHAPE);
  if (!isPlainMap(value)) throw new AxonError('BAD_FRAME', `a frame must be a msgpack map (got ${describe(value)})`);
  // Whatever identifies the sender is kept for the error frame, once it has the right shape.
  const context = { requestId: isUuid(value.id) ? value.id : '', signedBy: isSs58Shaped(value.signed_by) ? value.signed_by : '' };
  if (!('v' in value)) throw new AxonError('BAD_FRAME', 'frame has no protocol version field v', context);
  if (value.v !== PROTOCOL_VERSION) {
    if (Number.isSafeInteger(value.v)) {
      throw new AxonError('UNSUPPORTED_VERSION', `protocol version ${value.v} is not supported; this miner speaks v${PROTOCOL_VERSION}`, context);
    }
    throw new AxonError('BAD_FRAME', `v must be the integer ${PROTOCOL_VERSION} (got ${describe(value.v)})`, context);
  }
  checkKeys(value, REQUEST_KEYS, 'request frame', 'BAD_FRAME', context);
  if (typeof value.op !== 'string' || !(REQUEST_OPS as readonly string[]).includes(value.op)) {
    throw new AxonError('BAD_FRAME', `op must be one of ${REQUEST_OPS.join(', ')} (got ${describe(value.op)})`, context);
  }
  checkFrameCommon(value, limits, 'request', context);
  return value as unknown as RequestFrame;
}

/** Decode one response frame (the client's side). Throws VerificationError on any malformation. */
export function decodeResponseFrame(bytes: Uint8Array, limits: FrameLimits = DEFAULT_FRAME_LIMITS): ResponseFrame {
  try {
    const value = decodeMsgpack(bytes, 'response frame', 'BAD_FRAME', {}, FRAME_SHAPE);
    if (!isPlainMap(value)) throw new AxonError('BAD_FRAME', `a frame must be a msgpack map (got ${describe(value)})`);
    if (value.v !== PROTOCOL_VERSION) throw new AxonError('UNSUPPORTED_VERSION', `response frame has version ${describe(value.v)}`);
    checkKeys(value, RESPONSE_KEYS, 'response frame', 'BAD_FRAME', {});
    if (typeof value.type !== 'string' || !(RESPONSE_TYPES as readonly string[]).includes(value.type)) {
      throw new AxonError('BAD_FRAME', `response type must be one of ${RESPONSE_TYPES.join(', ')} (got ${describe(value.type)})`);
    }
    checkFrameCommon(value, limits, 'response', {});
    return value as unknown as ResponseFrame;
  } catch (err) {
    if (err instanceof AxonError) throw new VerificationError(`miner sent a malformed frame: ${err.message}`);
    throw err;
  }
}

export function encodeFrame(frame: RequestFrame | ResponseFrame): Uint8Array {
  return encodeMsgpack(frame);
}

export function encodeBody(payload: unknown): Uint8Array {
  return encodeMsgpack(payload);
}

// ---------------------------------------------------------------------------------------------
// Request payloads. Each op has a disjoint shape, so rewriting the (unsigned) `op` field of a
// signed frame cannot turn one valid request into another, except ping <-> info, both read-only.

export interface WireMessage {
  role: string;
  content: string;
}

export interface GeneratePayload {
  messages?: WireMessage[];
  prompt?: string;
  max_tokens: number;
  temperature?: number;
  top_p?: number;
  top_k?: number;
  seed?: number;
  stop?: string[];
  logprobs?: number;
}

export interface CancelPayload {
  target: string;
}

export interface PayloadLimits {
  /** UTF-8 bytes of the prompt, or of all message contents together. */
  maxPromptBytes: number;
  maxMessages: number;
  /** Largest max_tokens a request may ask for. */
  maxTokens: number;
  maxStop: number;
  /** UTF-8 bytes of one stop string. */
  maxStopBytes: number;
}

export const DEFAULT_PAYLOAD_LIMITS: PayloadLimits = {
  maxPromptBytes: 256 * 1024,
  maxMessages: 256,
  maxTokens: 4096,
  maxStop: 16,
  maxStopBytes: 256,
};

const GENERATE_KEYS = ['messages', 'prompt', 'max_tokens', 'temperature', 'top_p', 'top_k', 'seed', 'stop', 'logprobs'];
const ROLE = /^[a-z_]{1,32}$/;

function decodePayloadMap(body: Uint8Array, op: string, context: { requestId?: string; signedBy?: string }): Record<string, unknown> {
  // Lists are checked against their own limits (TOO_LARGE) after decoding; the scan only bounds the work.
  const value = decodeMsgpack(body, `${op} payload`, 'BAD_REQUEST', context, { maxDepth: PAYLOAD_SHAPE_DEPTH, maxLength: 65536 });
  if (!isPlainMap(value)) throw new AxonError('BAD_REQUEST', `${op} payload must be a msgpack map (got ${describe(value)})`, context);
  // nil means "absent" for optional fields (msgpack encoders of None/null).
  for (const key of Object.keys(value)) if (value[key] === null) delete value[key];
  return value;
}

function numberIn(map: Record<string, unknown>, key: string, min: number, max: number, integer: boolean, context: { requestId?: string; signedBy?: string }): number | undefined {
  const value = map[key];
  if (value === undefined) return undefined;
  const ok = typeof value === 'number' && (integer ? Number.isSafeInteger(value) : Number.isFinite(value)) && value >= min && value <= max;
  if (!ok) throw new AxonError('BAD_REQUEST', `${key} must be ${integer ? 'an integer' : 'a number'} in [${min}, ${max}] (got ${describe(value)})`, context);
  return value as number;
}

const utf8Length = (text: string) => Buffer.byteLength(text, 'utf8');

/** Validate a generate payload. Throws AxonError BAD_REQUEST (malformed, out of range) or TOO_LARGE (over a size limit). */
export function decodeGeneratePayload(body: Uint8Array, limits: PayloadLimits = DEFAULT_PAYLOAD_LIMITS, context: { requestId?: string; signedBy?: string } = {}): GeneratePayload {
  const map = decodePayloadMap(body, 'generate', context);
  checkKeys(map, GENERATE_KEYS, 'generate payload', 'BAD_REQUEST', context);
  const payload: GeneratePayload = { max_tokens: 0 };
  if ((map.messages === undefined) === (map.prompt === undefined)) {
    throw new AxonError('BAD_REQUEST', 'generate payload needs exactly one of messages and prompt', context);
  }
  if (map.prompt !== undefined) {
    if (typeof map.prompt !== 'string') throw new AxonError('BAD_REQUEST', `prompt must be a string (got ${describe(map.prompt)})`, context);
    if (utf8Length(map.prompt) > limits.maxPromptBytes) {
      throw new AxonError('TOO_LARGE', `prompt is ${utf8Length(map.prompt)} bytes; the limit is ${limits.maxPromptBytes}`, context);
    }
    payload.prompt = map.prompt;
  } else {
    const messages = map.messages;
    if (!Array.isArray(messages) || messages.length === 0) {
      throw new AxonError('BAD_REQUEST', `messages must be a non-empty array (got ${describe(messages)})`, context);
    }
    if (messages.length > limits.maxMessages) {
      throw new AxonError('TOO_LARGE', `${messages.length} messages; the limit is ${limits.maxMessages}`, context);
    }
    let bytes = 0;
    payload.messages = messages.map((m: unknown, i: number) => {
      if (!isPlainMap(m)) throw new AxonError('BAD_REQUEST', `messages[${i}] must be a map {role, content}`, context);
      checkKeys(m, ['role', 'content'], `messages[${i}]`, 'BAD_REQUEST', context);
      if (typeof m.role !== 'string' || !ROLE.test(m.role)) {
        throw new AxonError('BAD_REQUEST', `messages[${i}].role must be 1-32 characters of a-z and _ (got ${describe(m.role)})`, context);
      }
      if (typeof m.content !== 'string') throw new AxonError('BAD_REQUEST', `messages[${i}].content must be a string`, context);
      bytes += utf8Length(m.content);
      return { role: m.role, content: m.content };
    });
    if (bytes > limits.maxPromptBytes) {
      throw new AxonError('TOO_LARGE', `message contents are ${bytes} bytes; the limit is ${limits.maxPromptBytes}`, context);
    }
  }
  if (map.max_tokens === undefined) throw new AxonError('BAD_REQUEST', 'max_tokens is required', context);
  payload.max_tokens = numberIn(map, 'max_tokens', 1, limits.maxTokens, true, context)!;
  const temperature = numberIn(map, 'temperature', 0, 100, false, context);
  if (temperature !== undefined) payload.temperature = temperature;
  const topP = numberIn(map, 'top_p', 0, 1, false, context);
  if (topP !== undefined) payload.top_p = topP;
  const topK = numberIn(map, 'top_k', 0, 2 ** 30, true, context);
  if (topK !== undefined) payload.top_k = topK;
  const seed = numberIn(map, 'seed', Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER, true, context);
  if (seed !== undefined) payload.seed = seed;
  const logprobs = numberIn(map, 'logprobs', 0, MAX_LOGPROBS, true, context);
  if (logprobs !== undefined) payload.logprobs = logprobs;
  if (map.stop !== undefined) {
    if (!Array.isArray(map.stop)) throw new AxonError('BAD_REQUEST', `stop must be an array of strings (got ${describe(map.stop)})`, context);
    if (map.stop.length > limits.maxStop) throw new AxonError('TOO_LARGE', `${map.stop.length} stop strings; the limit is ${limits.maxStop}`, context);
    payload.stop = map.stop.map((s: unknown, i: number) => {
      if (typeof s !== 'string' || s.length === 0) throw new AxonError('BAD_REQUEST', `stop[${i}] must be a non-empty string`, context);
      if (utf8Length(s) > limits.maxStopBytes) {
        throw new AxonError('TOO_LARGE', `stop[${i}] is ${utf8Length(s)} bytes; the limit is ${limits.maxStopBytes}`, context);
      }
      return s;
    });
  }
  return payload;
}

export function decodeCancelPayload(body: Uint8Array, context: { requestId?: string; signedBy?: string } = {}): CancelPayload {
  const map = decodePayloadMap(body, 'cancel', context);
  checkKeys(map, ['target'], 'cancel payload', 'BAD_REQUEST', context);
  if (!isUuid(map.target)) throw new AxonError('BAD_REQUEST', `cancel target must be the uuid of a request (got ${describe(map.target)})`, context);
  return { target: map.target };
}

/** ping and info take an empty map. */
export function decodeEmptyPayload(body: Uint8Array, op: string, context: { requestId?: string; signedBy?: string } = {}): Record<string, never> {
  const map = decodePayloadMap(body, op, context);
  checkKeys(map, [], `${op} payload`, 'BAD_REQUEST', context);
  return {};
}

// ---------------------------------------------------------------------------------------------
// Response bodies

export interface PongBody {
  hotkey: string;
  protocol: number;
  version: string;
  model_id: string;
  weights_digest: string;
  adapter: string;
  backend: string;
  queue_depth: number;
}

export interface InfoBody extends PongBody {
  active_sequences: number;
  /** KV-cache blocks (16 tokens each) held by running sequences, in the pool, shared by two or more, and cached (held by none, keeping a prefix). */
  kv_blocks_used: number;
  kv_blocks_total: number;
  kv_blocks_shared: number;
  kv_blocks_cached: number;
  limits: {
    max_frame_bytes: number;
    max_prompt_bytes: number;
    max_messages: number;
    max_tokens: number;
    max_stop: number;
    max_logprobs: number;
  };
}

export interface WireTokenLogprob {
  token_id: number;
  text: string;
  logprob: number;
}

export interface WireToken {
  index: number;
  /** -1 for a text-only piece: text held back for a possible stop string, released at the end. */
  token_id: number;
  text: string;
  logprob: number;
  top_logprobs: WireTokenLogprob[];
}

export interface TokenBody {
  tokens: WireToken[];
}

export interface DoneBody {
  finish_reason: WireFinishReason;
  usage: { prompt_tokens: number; completion_tokens: number };
  timing: { ttft_ms: number; total_ms: number; tokens_per_s: number };
  /** sha256 hex over the `body` bytes of this request's token frames, concatenated in order. */
  transcript_sha256: string;
}

export interface ErrorBody {
  code: ErrorCode;
  message: string;
}

export type ResponseBody =
  | { type: 'pong'; body: PongBody }
  | { type: 'info'; body: InfoBody }
  | { type: 'token'; body: TokenBody }
  | { type: 'done'; body: DoneBody }
  | { type: 'error'; body: ErrorBody };

const PONG_KEYS = ['hotkey', 'protocol', 'version', 'model_id', 'weights_digest', 'adapter', 'backend', 'queue_depth'];
const INFO_KEYS = [...PONG_KEYS, 'active_sequences', 'kv_blocks_used', 'kv_blocks_total', 'kv_blocks_shared', 'kv_blocks_cached', 'limits'];

class Shape {
  constructor(readonly what: string) {}
  fail(detail: string): never {
    throw new VerificationError(`miner sent a malformed ${this.what} body: ${detail}`);
  }
  map(value: unknown, keys: readonly string[], where: string): Record<string, unknown> {
    if (!isPlainMap(value)) this.fail(`${where} is not a map`);
    for (const key of keys) if (!(key in value)) this.fail(`${where} lacks ${key}`);
    for (const key of Object.keys(value)) if (!keys.includes(key)) this.fail(`${where} has an unknown field ${key.slice(0, 40)}`);
    return value;
  }
  str(value: unknown, where: string): string {
    if (typeof value !== 'string') this.fail(`${where} is not a string`);
    return value;
  }
  int(value: unknown, where: string): number {
    if (!Number.isSafeInteger(value) || (value as number) < 0) this.fail(`${where} is not a non-negative integer`);
    return value as number;
  }
  num(value: unknown, where: string): number {
    // Logprobs may be -Infinity; NaN is never meaningful.
    if (typeof value !== 'number' || Number.isNaN(value)) this.fail(`${where} is not a number`);
    return value;
  }
}

/** Decode and check a response body against its frame's type (the client's side). */
export function decodeResponseBody(type: ResponseType, body: Uint8Array): ResponseBody {
  const s = new Shape(type);
  const problem = msgpackShapeError(body, RESPONSE_BODY_SHAPE);
  if (problem !== undefined) s.fail(`refused unread: ${problem}`);
  let value: unknown;
  try {
    value = unpackr.unpack(body);
  } catch (err) {
    s.fail(`not msgpack (${(err as Error).message})`);
  }
  switch (type) {
    case 'pong':
    case 'info': {
      const m = s.map(value, type === 'pong' ? PONG_KEYS : INFO_KEYS, 'body');
      for (const key of ['hotkey', 'version', 'model_id', 'weights_digest', 'adapter', 'backend']) s.str(m[key], key);
      for (const key of ['protocol', 'queue_depth']) s.int(m[key], key);
      if (type === 'info') {
        for (const key of ['active_sequences', 'kv_blocks_used', 'kv_blocks_total', 'kv_blocks_shared', 'kv_blocks_cached']) s.int(m[key], key);
        const limits = s.map(m.limits, ['max_frame_bytes', 'max_prompt_bytes', 'max_messages', 'max_tokens', 'max_stop', 'max_logprobs'], 'limits');
        for (const [key, v] of Object.entries(limits)) s.int(v, `limits.${key}`);
        return { type, body: m as unknown as InfoBody };
      }
      return { type, body: m as unknown as PongBody };
    }
    case 'token': {
      const m = s.map(value, ['tokens'], 'body');
      if (!Array.isArray(m.tokens) || m.tokens.length === 0) s.fail('tokens is not a non-empty array');
      for (const [i, t] of (m.tokens as unknown[]).entries()) {
        const tm = s.map(t, ['index', 'token_id', 'text', 'logprob', 'top_logprobs'], `tokens[${i}]`);
        s.int(tm.index, `tokens[${i}].index`);
        // -1: a text-only piece (text held back for a possible stop string, released at the end).
        if (tm.token_id !== -1) s.int(tm.token_id, `tokens[${i}].token_id`);
        s.str(tm.text, `tokens[${i}].text`);
        s.num(tm.logprob, `tokens[${i}].logprob`);
        if (!Array.isArray(tm.top_logprobs) || tm.top_logprobs.length > MAX_LOGPROBS) s.fail(`tokens[${i}].top_logprobs is not an array of at most ${MAX_LOGPROBS}`);
        for (const [j, a] of (tm.top_logprobs as unknown[]).entries()) {
          const am = s.map(a, ['token_id', 'text', 'logprob'], `tokens[${i}].top_logprobs[${j}]`);
          s.int(am.token_id, 'token_id');
          s.str(am.text, 'text');
          s.num(am.logprob, 'logprob');
        }
      }
      return { type, body: m as unknown as TokenBody };
    }
    case 'done': {
      const m = s.map(value, ['finish_reason', 'usage', 'timing', 'transcript_sha256'], 'body');
      if (!(FINISH_REASONS as readonly unknown[]).includes(m.finish_reason)) s.fail('finish_reason is not stop, length or cancelled');
      const usage = s.map(m.usage, ['prompt_tokens', 'completion_tokens'], 'usage');
      s.int(usage.prompt_tokens, 'usage.prompt_tokens');
      s.int(usage.completion_tokens, 'usage.completion_tokens');
      const timing = s.map(m.timing, ['ttft_ms', 'total_ms', 'tokens_per_s'], 'timing');
      for (const [key, v] of Object.entries(timing)) {
        if (!Number.isFinite(v) || (v as number) < 0) s.fail(`timing.${key} is not a non-negative number`);
      }
      if (typeof m.transcript_sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(m.transcript_sha256)) s.fail('transcript_sha256 is not 64 hex digits');
      return { type, body: m as unknown as DoneBody };
    }
    case 'error': {
      const m = s.map(value, ['code', 'message'], 'body');
      if (!(ERROR_CODES as readonly unknown[]).includes(m.code)) s.fail(`unknown error code ${describe(m.code)}`);
      s.str(m.message, 'message');
      return { type, body: m as unknown as ErrorBody };
    }
  }
}

// The OpenAI-compatible face's request and response shapes. Pure: no sockets, no keys.
//
// Requests are read the way vLLM's OpenAI server reads them (the server Targon and SN1 validators
// scored miners against): unknown fields are ignored, since validators add their own (SN1's
// `task`, `timeout`, `sampling_parameters`); fields that would change the output and that this
// miner does not implement (n > 1, tools, penalties other than repetition_penalty, logit_bias, a
// JSON response_format, echo, suffix) are refused, so a validator never scores an answer to a
// question it did not ask. Every refusal is an HttpRefusal: an AxonError (the wire code, for the
// status and the metrics) with OpenAI's `param` and `type`.
//
// Responses follow OpenAI's chat.completion / text_completion objects. A stream carries exactly one
// token per chunk (validators count chunks as tokens and score the gaps between them), the first
// chunk's delta includes the role, then a chunk with finish_reason, then usage when asked.
import type { ChatMessage, GenerateRequest, GeneratedToken, GenerationSummary } from '../engine/types.ts';
import { MAX_LOGPROBS } from '../engine/types.ts';
import { AxonError, type ErrorCode, type PayloadLimits } from '../wire/protocol.ts';

/** HTTP status of each wire code. */
export const HTTP_STATUS: Readonly<Record<ErrorCode, number>> = Object.freeze({
  BAD_FRAME: 401, // missing or malformed Epistula headers
  UNSUPPORTED_VERSION: 400,
  TOO_LARGE: 413,
  STALE: 401,
  WRONG_MINER: 403,
  NOT_REGISTERED: 403,
  BAD_SIGNATURE: 401,
  REPLAY: 409,
  FORBIDDEN: 403,
  RATE_LIMITED: 429,
  OVERLOADED: 503,
  BAD_REQUEST: 400,
  INTERNAL: 500,
});

/** OpenAI's error `type` for each status. */
function errorType(status: number): string {
  if (status === 400 || status === 404 || status === 409 || status === 413) return 'invalid_request_error';
  if (status === 401) return 'authentication_error';
  if (status === 403) return 'permission_error';
  if (status === 429) return 'rate_limit_error';
  if (status === 503) return 'overloaded_error';
  return 'server_error';
}

/**
 * A refusal with what OpenAI's error object says besides the message. The object's `code` is the
 * wire code (BAD_REQUEST, RATE_LIMITED ...), so clients of both transports branch on the same codes.
 */
export class HttpRefusal extends AxonError {
  readonly param: string | null;
  /** Overrides the code's status (404 for an unknown model or route). */
  readonly status: number;
  constructor(code: ErrorCode, message: string, options: { param?: string; status?: number; requestId?: string; signedBy?: string } = {}) {
    super(code, message, options);
    this.param = options.param ?? null;
    this.status = options.status ?? HTTP_STATUS[code];
  }
}

export interface OpenAiError {
  error: { message: string; type: string; param: string | null; code: string | null };
}

/** OpenAI's error body and status for a wire code (and, from an HttpRefusal, its param and status). */
export function openAiError(code: ErrorCode, message: string, refusal?: HttpRefusal): { status: number; body: OpenAiError } {
  const status = refusal?.status ?? HTTP_STATUS[code];
  return { status, body: { error: { message, type: errorType(status), param: refusal?.param ?? null, code } } };
}

// ---------------------------------------------------------------------------------------------
// Requests

export type Endpoint = 'chat' | 'completions';

/** A validated completion request: what the engine is asked, and how the answer is shaped. */
export interface CompletionRequest {
  endpoint: Endpoint;
  model: string;
  engine: GenerateRequest;
  stream: boolean;
  includeUsage: boolean;
  /** Whether each token carries its logprob (chat `logprobs: true`, completions `logprobs: k`). */
  logprobs: boolean;
  /** Alternatives per token (chat top_logprobs, completions logprobs). */
  topLogprobs: number;
  /** vLLM's return_tokens_as_token_ids: token strings become "token_id:N". */
  tokenIds: boolean;
}

const ROLE = /^[a-z_]{1,32}$/;
const utf8Length = (text: string) => Buffer.byteLength(text, 'utf8');

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function bad(param: string, message: string): never {
  throw new HttpRefusal('BAD_REQUEST', message, { param });
}

function tooLarge(param: string, message: string): never {
  throw new HttpRefusal('TOO_LARGE', message, { param });
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'string') return `a string of ${value.length} characters`;
  if (typeof value === 'number') return String(value);
  return typeof value;
}

function numberField(body: Record<string, unknown>, key: string, min: number, max: number, integer: boolean): number | undefined {
  const value = body[key];
  if (value === undefined || value === null) return undefined;
  const ok = typeof value === 'number' && (integer ? Number.isSafeInteger(value) : Number.isFinite(value)) && value >= min && value <= max;
  if (!ok) bad(key, `${key} must be ${integer ? 'an integer' : 'a number'} in [${min}, ${max}] (got ${describe(value)})`);
  return value as number;
}

function boolField(body: Record<string, unknown>, key: string): boolean | undefined {
  const value = body[key];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'boolean') bad(key, `${key} must be true or false (got ${describe(value)})`);
  return value;
}

/** Refuse what would change the output and is not implemented; a field at its neutral value is fine. */
function refuseUnsupported(body: Record<string, unknown>, endpoint: Endpoint): void {
  const set = (key: string) => body[key] !== undefined && body[key] !== null;
  if (set('n') && body.n !== 1) bad('n', `n must be 1: this miner returns one choice per request (got ${describe(body.n)})`);
  if (set('best_of') && body.best_of !== 1) bad('best_of', 'best_of must be 1');
  for (const key of ['presence_penalty', 'frequency_penalty']) {
    if (set(key) && body[key] !== 0) bad(key, `${key} is not supported (use repetition_penalty)`);
  }
  if (set('logit_bias') && !(isObject(body.logit_bias) && Object.keys(body.logit_bias).length === 0)) bad('logit_bias', 'logit_bias is not supported');
  if (set('tools') && !(Array.isArray(body.tools) && body.tools.length === 0)) bad('tools', 'tools are not supported');
  if (set('response_format') && !(isObject(body.response_format) && body.response_format.type === 'text')) {
    bad('response_format', 'only response_format {"type": "text"} is supported');
  }
  if (endpoint === 'completions') {
    if (set('echo') && body.echo !== false) bad('echo', 'echo is not supported');
    if (set('suffix')) bad('suffix', 'suffix is not supported');
  }
}

function messageContent(content: unknown, i: number): string {
  if (typeof content === 'string') return content;
  // The content-parts form: text parts only.
  if (Array.isArray(content)) {
    return content
      .map((part: unknown, j) => {
        if (!isObject(part) || part.type !== 'text' || typeof part.text !== 'string') {
          bad(`messages[${i}].content[${j}]`, `messages[${i}].content[${j}] must be a text part {"type": "text", "text": ...}`);
        }
        return part.text as string;
      })
      .join('');
  }
  bad(`messages[${i}].content`, `messages[${i}].content must be a string or an array of text parts`);
}

function readMessages(value: unknown, limits: PayloadLimits): ChatMessage[] {
  if (!Array.isArray(value) || value.length === 0) bad('messages', `messages must be a non-empty array (got ${describe(value)})`);
  if (value.length > limits.maxMessages) tooLarge('messages', `${value.length} messages; the limit is ${limits.maxMessages}`);
  let bytes = 0;
  const messages = value.map((m: unknown, i) => {
    if (!isObject(m)) bad(`messages[${i}]`, `messages[${i}] must be an object {role, content}`);
    if (typeof m.role !== 'string' || !ROLE.test(m.role)) bad(`messages[${i}].role`, `messages[${i}].role must be 1-32 characters of a-z and _`);
    const content = messageContent(m.content, i);
    bytes += utf8Length(content);
    return { role: m.role, content };
  });
  if (bytes > limits.maxPromptBytes) tooLarge('messages', `message contents are ${bytes} bytes; the limit is ${limits.maxPromptBytes}`);
  return messages;
}

function readPrompt(value: unknown, limits: PayloadLimits): string {
  // A list of one prompt is what the OpenAI client sends for batch-of-one calls.
  const prompt = Array.isArray(value) && value.length === 1 ? value[0] : value;
  if (typeof prompt !== 'string') bad('prompt', `prompt must be a string (a list of several prompts is not supported) (got ${describe(value)})`);
  if (prompt.length === 0) bad('prompt', 'prompt is empty');
  if (utf8Length(prompt) > limits.maxPromptBytes) tooLarge('prompt', `prompt is ${utf8Length(prompt)} bytes; the limit is ${limits.maxPromptBytes}`);
  return prompt;
}

function readStop(value: unknown, limits: PayloadLimits): string[] | undefined {
  if (value === undefined || value === null) return undefined;
  const list = typeof value === 'string' ? [value] : value;
  if (!Array.isArray(list)) bad('stop', `stop must be a string or an array of strings (got ${describe(value)})`);
  if (list.length > limits.maxStop) tooLarge('stop', `${list.length} stop strings; the limit is ${limits.maxStop}`);
  return list.map((s: unknown, i) => {
    if (typeof s !== 'string' || s.length === 0) bad('stop', `stop[${i}] must be a non-empty string`);
    if (utf8Length(s) > limits.maxStopBytes) tooLarge('stop', `stop[${i}] is ${utf8Length(s)} bytes; the limit is ${limits.maxStopBytes}`);
    return s;
  });
}

/**
 * Validate a chat or completions request body (already parsed JSON) for the model `modelId`.
 * Throws HttpRefusal: BAD_REQUEST (400), TOO_LARGE (413), or 404 for another model.
 */
export function parseCompletionRequest(endpoint: Endpoint, body: unknown, modelId: string, limits: PayloadLimits): CompletionRequest {
  if (!isObject(body)) bad('', 'the request body must be a JSON object');
  if (body.model !== undefined && body.model !== null && body.model !== modelId) {
    if (typeof body.model !== 'string') bad('model', `model must be a string (got ${describe(body.model)})`);
    throw new HttpRefusal('BAD_REQUEST', `the model '${body.model.slice(0, 200)}' does not exist here; this miner serves '${modelId}'`, {
      param: 'model',
      status: 404
    });
  }
  refuseUnsupported(body, endpoint);
  const engine: GenerateRequest = { maxTokens: limits.maxTokens };
  if (endpoint === 'chat') {
    if (body.prompt !== undefined) bad('prompt', 'chat completions take messages, not prompt (POST /v1/completions takes a prompt)');
    engine.messages = readMessages(body.messages, limits);
  } else {
    if (body.messages !== undefined) bad('messages', 'completions take a prompt, not messages (POST /v1/chat/completions takes messages)');
    engine.prompt = readPrompt(body.prompt, limits);
  }
  // max_completion_tokens is the newer name (chat); when both are given they must agree.
  const maxTokens = numberField(body, 'max_tokens', 1, limits.maxTokens, true);
  const maxCompletion = numberField(body, 'max_completion_tokens', 1, limits.maxTokens, true);
  if (maxTokens !== undefined && maxCompletion !== undefined && maxTokens !== maxCompletion) {
    bad('max_completion_tokens', `max_tokens (${maxTokens}) and max_completion_tokens (${maxCompletion}) disagree`);
  }
  engine.maxTokens = maxCompletion ?? maxTokens ?? limits.maxTokens;
  const temperature = numberField(body, 'temperature', 0, 2, false);
  if (temperature !== undefined) engine.temperature = temperature;
  const topP = numberField(body, 'top_p', 0, 1, false);
  if (topP !== undefined) engine.topP = topP;
  // vLLM's top_k: -1 (or 0) means no limit.
  const topK = numberField(body, 'top_k', -1, 2 ** 30, true);
  if (topK !== undefined && topK > 0) engine.topK = topK;
  const minP = numberField(body, 'min_p', 0, 1, false);
  if (minP !== undefined) engine.minP = minP;
  const repetitionPenalty = numberField(body, 'repetition_penalty', 0.01, 100, false);
  if (repetitionPenalty !== undefined) engine.repetitionPenalty = repetitionPenalty;
  const seed = numberField(body, 'seed', Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER, true);
  if (seed !== undefined) engine.seed = seed;
  const stop = readStop(body.stop, limits);
  if (stop !== undefined && stop.length > 0) engine.stop = stop;

  const stream = boolField(body, 'stream') ?? false;
  let includeUsage = false;
  if (body.stream_options !== undefined && body.stream_options !== null) {
    if (!stream) bad('stream_options', 'stream_options is only allowed with stream: true');
    if (!isObject(body.stream_options)) bad('stream_options', 'stream_options must be an object');
    includeUsage = boolField(body.stream_options, 'include_usage') ?? false;
  }
  let logprobs: boolean;
  let topLogprobs: number;
  if (endpoint === 'chat') {
    logprobs = boolField(body, 'logprobs') ?? false;
    topLogprobs = numberField(body, 'top_logprobs', 0, MAX_LOGPROBS, true) ?? 0;
    if (topLogprobs > 0 && !logprobs) bad('top_logprobs', 'top_logprobs needs logprobs: true');
  } else {
    const k = numberField(body, 'logprobs', 0, MAX_LOGPROBS, true);
    logprobs = k !== undefined;
    topLogprobs = k ?? 0;
  }
  if (topLogprobs > 0) engine.logprobs = topLogprobs;
  const tokenIds = boolField(body, 'return_tokens_as_token_ids') ?? false;
  return { endpoint, model: modelId, engine, stream, includeUsage, logprobs, topLogprobs, tokenIds };
}

// ---------------------------------------------------------------------------------------------
// Responses

/** OpenAI writes -9999 for a logprob of -infinity (JSON has no infinity). */
export const jsonLogprob = (lp: number) => (Number.isFinite(lp) ? lp : -9999);

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export function usageOf(summary: GenerationSummary | undefined, completionTokens: number): Usage {
  const prompt = summary?.promptTokens ?? 0;
  return { prompt_tokens: prompt, completion_tokens: completionTokens, total_tokens: prompt + completionTokens };
}

/** How a request's tokens are written: its logprob options and the token's own text (one id decoded). */
export class TokenShaper {
  constructor(
    readonly request: CompletionRequest,
    /** The text of one token id on its own; absent: the streamed text stands for the token. */
    readonly tokenText?: (id: number) => string,
  ) {}

  #name(id: number, fallback: string): string {
    if (this.request.tokenIds) return `token_id:${id}`;
    return this.tokenText ? this.tokenText(id) : fallback;
  }

  /** Chat's logprobs.content entry for one token. */
  chatLogprob(t: GeneratedToken) {
    const token = this.#name(t.tokenId, t.text);
    const text = this.tokenText ? this.tokenText(t.tokenId) : t.text;
    return {
      token,
      logprob: jsonLogprob(t.logprob),
      bytes: [...Buffer.from(text, 'utf8')],
      top_logprobs: t.topLogprobs.slice(0, this.request.topLogprobs).map((a) => ({
        token: this.#name(a.tokenId, a.text),
        logprob: jsonLogprob(a.logprob),
        bytes: [...Buffer.from(a.text, 'utf8')],
      })),
    };
  }

  /** Completions' logprobs for a run of tokens, `offset` being the text offset of the first. */
  completionLogprobs(tokens: GeneratedToken[], offset: number) {
    const textOffset: number[] = [];
    let at = offset;
    for (const t of tokens) {
      textOffset.push(at);
      at += t.text.length;
    }
    return {
      tokens: tokens.map((t) => this.#name(t.tokenId, t.text)),
      token_logprobs: tokens.map((t) => jsonLogprob(t.logprob)),
      top_logprobs: tokens.map((t) => Object.fromEntries(t.topLogprobs.slice(0, this.request.topLogprobs).map((a) => [this.#name(a.tokenId, a.text), jsonLogprob(a.logprob)]))),
      text_offset: textOffset,
    };
  }
}

export interface ResponseIdentity {
  /** chatcmpl-… or cmpl-… */
  id: string;
  /** Unix seconds. */
  created: number;
  model: string;
}

export function chunkObject(endpoint: Endpoint): string {
  return endpoint === 'chat' ? 'chat.completion.chunk' : 'text_completion';
}

/** A streamed chunk carrying one token (`first`: the chat delta also names the role). */
export function tokenChunk(who: ResponseIdentity, shaper: TokenShaper, t: GeneratedToken, first: boolean, textOffset: number): unknown {
  const r = shaper.request;
  const head = { id: who.id, object: chunkObject(r.endpoint), created: who.created, model: who.model };
  if (r.endpoint === 'chat') {
    const delta = first ? { role: 'assistant', content: t.text } : { content: t.text };
    return { ...head, choices: [{ index: 0, delta, logprobs: r.logprobs ? { content: [shaper.chatLogprob(t)] } : null, finish_reason: null }] };
  }
  return { ...head, choices: [{ index: 0, text: t.text, logprobs: r.logprobs ? shaper.completionLogprobs([t], textOffset) : null, finish_reason: null }] };
}

/** The chunk that ends the choice; `text` is text released without a token (held back for a stop string). */
export function finishChunk(who: ResponseIdentity, r: CompletionRequest, finishReason: string, text: string, first: boolean): unknown {
  const head = { id: who.id, object: chunkObject(r.endpoint), created: who.created, model: who.model };
  if (r.endpoint === 'chat') {
    const delta = text.length > 0 ? (first ? { role: 'assistant', content: text } : { content: text }) : first ? { role: 'assistant' } : {};
    return { ...head, choices: [{ index: 0, delta, logprobs: null, finish_reason: finishReason }] };
  }
  return { ...head, choices: [{ index: 0, text, logprobs: null, finish_reason: finishReason }] };
}

export function usageChunk(who: ResponseIdentity, r: CompletionRequest, usage: Usage): unknown {
  return { id: who.id, object: chunkObject(r.endpoint), created: who.created, model: who.model, choices: [], usage };
}

/** The whole answer of a request that did not ask to stream. */
export function completionBody(who: ResponseIdentity, shaper: TokenShaper, tokens: GeneratedToken[], extraText: string, finishReason: string, usage: Usage): unknown {
  const r = shaper.request;
  const text = tokens.map((t) => t.text).join('') + extraText;
  if (r.endpoint === 'chat') {
    return {
      id: who.id,
      object: 'chat.completion',
      created: who.created,
      model: who.model,
      choices: [{ index: 0, message: { role: 'assistant', content: text }, logprobs: r.logprobs ? { content: tokens.map((t) => shaper.chatLogprob(t)) } : null, finish_reason: finishReason }],
      usage,
    };
  }
  return {
    id: who.id,
    object: 'text_completion',
    created: who.created,
    model: who.model,
    choices: [{ index: 0, text, logprobs: r.logprobs ? shaper.completionLogprobs(tokens, 0) : null, finish_reason: finishReason }],
    usage,
  };
}

/** One SSE event: `data: <json>` and a blank line. */
export function sseEvent(data: unknown): Buffer {
  return Buffer.from(`data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`, 'utf8');
}

export const SSE_DONE = sseEvent('[DONE]');

// ---------------------------------------------------------------------------------------------
// Tokenizer endpoints (vLLM's /tokenize and /detokenize)

export function parseTokenizeRequest(body: unknown, modelId: string, limits: PayloadLimits): { prompt?: string; messages?: ChatMessage[]; addSpecialTokens: boolean } {
  if (!isObject(body)) bad('', 'the request body must be a JSON object');
  if (body.model !== undefined && body.model !== null && body.model !== modelId) {
    throw new HttpRefusal('BAD_REQUEST', `the model '${String(body.model).slice(0, 200)}' does not exist here; this miner serves '${modelId}'`, { param: 'model', status: 404 });
  }
  const addSpecialTokens = boolField(body, 'add_special_tokens') ?? true;
  if ((body.prompt === undefined) === (body.messages === undefined)) bad('prompt', 'give exactly one of prompt and messages');
  if (body.messages !== undefined) return { messages: readMessages(body.messages, limits), addSpecialTokens };
  return { prompt: readPrompt(body.prompt, limits), addSpecialTokens };
}

export function parseDetokenizeRequest(body: unknown, modelId: string, maxTokens: number): number[] {
  if (!isObject(body)) bad('', 'the request body must be a JSON object');
  if (body.model !== undefined && body.model !== null && body.model !== modelId) {
    throw new HttpRefusal('BAD_REQUEST', `the model '${String(body.model).slice(0, 200)}' does not exist here; this miner serves '${modelId}'`, { param: 'model', status: 404 });
  }
  const tokens = body.tokens;
  if (!Array.isArray(tokens)) bad('tokens', `tokens must be an array of token ids (got ${describe(tokens)})`);
  if (tokens.length > maxTokens) tooLarge('tokens', `${tokens.length} tokens; the limit is ${maxTokens}`);
  for (const [i, id] of tokens.entries()) {
    if (!Number.isSafeInteger(id) || (id as number) < 0) bad('tokens', `tokens[${i}] must be a non-negative integer (got ${describe(id)})`);
  }
  return tokens as number[];
}

// The engine's public contract: what a caller (the CLI, the axon) asks for and what comes back.
import type { ChatMessage } from './tokenizer.ts';

export type { ChatMessage };

/** Most alternatives a request may ask to see per token with their logprobs. */
export const MAX_LOGPROBS = 20;

export interface GenerateRequest {
  /** A plain prompt (tokenised with the model's special tokens) ... */
  prompt?: string;
  /** ... or chat messages, rendered with the model's own chat template. Exactly one of the two. */
  messages?: ChatMessage[];
  maxTokens: number;
  temperature?: number;
  topP?: number;
  topK?: number;
  minP?: number;
  repetitionPenalty?: number;
  seed?: number;
  /** Generation stops when the output text contains one of these (the stop text is not emitted). */
  stop?: string[];
  /** How many alternatives to report per token with their logprobs (0..20). */
  logprobs?: number;
}

export interface TokenLogprob {
  tokenId: number;
  text: string;
  logprob: number;
}

export interface GeneratedToken {
  /** 0-based position in the completion. */
  index: number;
  /** The token's id; -1 for a text-only piece released at the end (text held back for a stop string). */
  tokenId: number;
  /** The text this token completes (may be '' while a multi-byte character is incomplete). */
  text: string;
  /** Model log-probability of this token (temperature 1, no penalties). */
  logprob: number;
  topLogprobs: TokenLogprob[];
}

export type FinishReason = 'stop' | 'length' | 'cancelled';

export interface GenerationSummary {
  finishReason: FinishReason;
  promptTokens: number;
  /**
   * Prompt tokens whose K/V were reused from a previous sequence's cache (a shared prefix) rather
   * than computed; the rest of the prompt was prefilled. Absent from generators without a prompt cache.
   */
  cachedPromptTokens?: number;
  completionTokens: number;
  /** Milliseconds from the request's arrival to its first token. */
  ttftMs: number;
  totalMs: number;
  /** Completion tokens per second after the first token. */
  tokensPerS: number;
}

export interface GenerateOptions {
  /** Aborting cancels the generation; its KV cache is freed at the next step. */
  signal?: AbortSignal;
  /** Higher runs first when requests queue (the axon passes the validator's stake). */
  priority?: number;
}

export interface EngineInfo {
  modelId: string;
  /** sha256 over the weights as loaded, hex. */
  weightsDigest: string;
  adapter: string;
  backend: string;
  queueDepth: number;
  activeSequences: number;
  /** KV blocks held by running sequences. */
  kvBlocksUsed: number;
  /** KV blocks in the pool. */
  kvBlocksTotal: number;
  /** KV blocks held by two or more sequences (a shared prompt prefix). */
  kvBlocksShared?: number;
  /** KV blocks held by no sequence but keeping a cached prefix (reused by a matching prompt, evicted when needed). */
  kvBlocksCached?: number;
  /** Tokens per KV block. */
  kvBlockTokens?: number;
  /** Prompt tokens taken from a cached prefix instead of prefilled, since start (a counter). */
  promptTokensReused?: number;
  /** Prompt tokens prefilled, since start (a counter); with promptTokensReused, the prefix cache's hit rate. */
  promptTokensComputed?: number;
  /** Set once the GPU device is lost: what happened. No request can run again in this process. */
  gpuLost?: string;
}

/** What the axon serves. The scheduler implements it over a loaded model. */
export interface TextGenerator {
  info(): EngineInfo;
  /** Yields tokens as they are produced and returns the summary when the generation ends. */
  generate(request: GenerateRequest, options?: GenerateOptions): AsyncGenerator<GeneratedToken, GenerationSummary>;
  /** Stop accepting work; finish (or cancel, after `graceMs`) what is in flight. */
  close(graceMs?: number): Promise<void>;
  /**
   * The token ids generate() would see for this prompt or these chat messages (the axon's
   * /tokenize; absent: not served). `addSpecialTokens` false leaves out the BOS a plain prompt gets.
   */
  tokenize?(input: { prompt?: string; messages?: ChatMessage[] }, addSpecialTokens?: boolean): number[];
  /** The text of token ids, special tokens skipped (the axon's /detokenize; absent: not served). */
  detokenize?(ids: number[]): string;
  /** One token's own text, special tokens included (the token strings of OpenAI logprobs). */
  tokenText?(id: number): string;
}

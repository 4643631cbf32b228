// Text <-> token ids through @huggingface/tokenizers, chat prompts through @huggingface/jinja with
// the model's own template, and streaming detokenisation that never emits half a UTF-8 character.
import { Tokenizer } from '@huggingface/tokenizers';
import { Template } from '@huggingface/jinja';
import { ModelFormatError, OptionError } from '../errors.ts';
import type { TokenizerFiles } from '../../models/source.ts';

export type { TokenizerFiles };

export interface ChatMessage {
  role: string;
  content: string;
}


function tokenContent(value: unknown): string | undefined {
  if (typeof value === 'string') return value;
  if (value && typeof value === 'object' && typeof (value as { content?: unknown }).content === 'string') {
    return (value as { content: string }).content;
  }
  return undefined;
}

type Json = Record<string, unknown>;
const isJson = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);
const utf8Bytes = (text: string) => Buffer.byteLength(text, 'utf8');

/** Normalizers that never shorten text; the Replace factor is worked out below. */
const GROWING_NORMALIZERS = new Set(['Prepend', 'Replace', 'Sequence']);
/** Pre-tokenizers that keep every character (each piece becomes tokens; none is dropped). */
const KEEPING_PRE_TOKENIZERS = new Set(['ByteLevel', 'Metaspace', 'Split', 'Digits', 'Punctuation', 'Sequence', 'UnicodeScripts']);

/**
 * An upper bound on the bytes of input text one token can stand for, or Infinity when the tokenizer
 * could drop or shrink text (so no bound holds). A text of N UTF-8 bytes is then at least
 * ceil(N / bound) tokens, so a prompt can be refused for the context without tokenising it.
 *
 * A BPE token's vocabulary string has at least as many UTF-8 bytes as the text it covers in the
 * schemes that keep every character: byte-level (one char, 1-2 bytes, per input byte), SentencePiece
 * ("▁", 3 bytes, for a space), byte fallback ("<0x41>" for one byte). Normalizers that replace text
 * can shrink it (counted as a factor), Unicode normalization can shrink it by up to 3x, pre-tokenizers
 * such as Whitespace drop characters, and a fused or word-level unknown token covers any run of text:
 * those give no bound.
 */
export function maxBytesPerToken(json: Json): number {
  const model = json.model;
  if (!isJson(model) || model.type !== 'BPE' || !isJson(model.vocab)) return Infinity;
  // An unknown token without byte fallback covers a character (4 bytes), or a whole run when fused.
  const unk = typeof model.unk_token === 'string' && model.byte_fallback !== true;
  if (unk && model.fuse_unk === true) return Infinity;
  let longest = unk ? 4 : 1;
  for (const token of Object.keys(model.vocab)) longest = Math.max(longest, utf8Bytes(token));
  for (const added of Array.isArray(json.added_tokens) ? json.added_tokens : []) {
    if (isJson(added) && typeof added.content === 'string') longest = Math.max(longest, utf8Bytes(added.content));
  }
  let shrink = 1;
  const normalizers = (n: unknown): boolean => {
    if (n === null || n === undefined) return true;
    if (!isJson(n) || typeof n.type !== 'string' || !GROWING_NORMALIZERS.has(n.type)) return false;
    if (n.type === 'Sequence') return Array.isArray(n.normalizers) && n.normalizers.every(normalizers);
    if (n.type === 'Replace') {
      const pattern = isJson(n.pattern) ? n.pattern.String : undefined;
      if (typeof pattern !== 'string' || typeof n.content !== 'string' || n.content === '') return false;
      shrink *= Math.max(1, utf8Bytes(pattern) / utf8Bytes(n.content));
    }
    return true;
  };
  const preTokenizers = (p: unknown): boolean => {
    if (p === null || p === undefined) return true;
    if (!isJson(p) || typeof p.type !== 'string' || !KEEPING_PRE_TOKENIZERS.has(p.type)) return false;
    if (p.type === 'Sequence') return Array.isArray(p.pretokenizers) && p.pretokenizers.every(preTokenizers);
    if (p.type === 'Split') return p.behavior !== 'Removed';
    return true;
  };
  if (!normalizers(json.normalizer) || !preTokenizers(json.pre_tokenizer)) return Infinity;
  return Math.ceil(longest * shrink);
}

export class TextTokenizer {
  readonly #tokenizer: Tokenizer;
  readonly #template?: Template;
  readonly #config: Record<string, unknown>;
  readonly bosToken?: string;
  readonly eosToken?: string;
  readonly source: string;
  /** The most bytes of text one token stands for (Infinity: no bound): see maxBytesPerToken. */
  readonly maxBytesPerToken: number;

  constructor(files: TokenizerFiles) {
    this.source = files.source;
    this.maxBytesPerToken = maxBytesPerToken(files.tokenizer);
    this.#config = files.config ?? {};
    try {
      this.#tokenizer = new Tokenizer(files.tokenizer, this.#config);
    } catch (err) {
      throw new ModelFormatError(`${files.source}: tokenizer.json could not be loaded: ${(err as Error).message}`, { cause: err });
    }
    this.bosToken = tokenContent(this.#config.bos_token);
    this.eosToken = tokenContent(this.#config.eos_token);
    const template = this.#config.chat_template;
    if (typeof template === 'string') {
      try {
        this.#template = new Template(template);
      } catch (err) {
        throw new ModelFormatError(`${files.source}: chat_template does not parse: ${(err as Error).message}`, { cause: err });
      }
    }
  }

  get hasChatTemplate(): boolean {
    return this.#template !== undefined;
  }

  /** Token ids for `text`; `addSpecialTokens` adds what the tokenizer's post-processor adds (BOS). */
  encode(text: string, addSpecialTokens = true): number[] {
    return this.#tokenizer.encode(text, { add_special_tokens: addSpecialTokens }).ids;
  }

  decode(ids: number[], skipSpecialTokens = true): string {
    if (ids.length === 0) return '';
    return this.#tokenizer.decode(ids, { skip_special_tokens: skipSpecialTokens });
  }

  tokenId(token: string): number | undefined {
    return this.#tokenizer.token_to_id(token);
  }

  /** Render the model's chat template with a generation prompt appended. */
  applyChatTemplate(messages: ChatMessage[]): string {
    if (!this.#template) throw new OptionError(`${this.source}: this model has no chat_template; send a plain prompt instead`);
    return this.#template.render({
      messages,
      add_generation_prompt: true,
      bos_token: this.bosToken ?? '',
      eos_token: this.eosToken ?? '',
    });
  }

  /**
   * The fewest tokens `text` can encode to (special tokens only add to it), without encoding it:
   * encoding a 256 KiB prompt takes over a second of the main thread.
   */
  minTokens(text: string): number {
    return Number.isFinite(this.maxBytesPerToken) ? Math.ceil(utf8Bytes(text) / this.maxBytesPerToken) : 0;
  }

  /** Token ids for a chat: the rendered template carries its own special tokens. */
  encodeChat(messages: ChatMessage[]): number[] {
    return this.encode(this.applyChatTemplate(messages), false);
  }

  /** A streaming decoder for one generation. */
  stream(): TokenStream {
    return new TokenStream(this);
  }
}

/**
 * Turns tokens into text pieces as they arrive, decoding a short window rather than the whole
 * output each time. A byte-level token can end inside a multi-byte character; decoding then shows
 * U+FFFD at the end, so that text is held back until the character completes. The window starts
 * one emitted piece back so decoders that treat a leading space specially see the same context
 * in both decodes they compare.
 */
export class TokenStream {
  readonly #tokenizer: TextTokenizer;
  readonly #ids: number[] = [];
  #prefix = 0;
  #read = 0;
  #text = '';

  constructor(tokenizer: TextTokenizer) {
    this.#tokenizer = tokenizer;
  }

  /** Add one token; returns the text it completes (possibly ''). */
  push(id: number): string {
    this.#ids.push(id);
    const before = this.#tokenizer.decode(this.#ids.slice(this.#prefix, this.#read));
    const after = this.#tokenizer.decode(this.#ids.slice(this.#prefix));
    if (after.length <= before.length || after.endsWith('\uFFFD') || !after.startsWith(before)) return '';
    const piece = after.slice(before.length);
    this.#prefix = this.#read;
    this.#read = this.#ids.length;
    this.#text += piece;
    return piece;
  }

  /** Whatever is still held back when the stream ends. */
  flush(): string {
    const before = this.#tokenizer.decode(this.#ids.slice(this.#prefix, this.#read));
    const after = this.#tokenizer.decode(this.#ids.slice(this.#prefix));
    const piece = after.startsWith(before) ? after.slice(before.length) : '';
    this.#prefix = this.#read = this.#ids.length;
    this.#text += piece;
    return piece;
  }

  /** All text emitted so far. */
  get text(): string {
    return this.#text;
  }
}

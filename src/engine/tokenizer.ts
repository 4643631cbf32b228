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

export class TextTokenizer {
  readonly #tokenizer: Tokenizer;
  readonly #template?: Template;
  readonly #config: Record<string, unknown>;
  readonly bosToken?: string;
  readonly eosToken?: string;
  readonly source: string;

  constructor(files: TokenizerFiles) {
    this.source = files.source;
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

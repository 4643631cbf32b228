// Text <-> token ids through @huggingface/tokenizers, chat prompts through @huggingface/jinja with
// the model's own template, and streaming detokenisation whose pieces always add up to decode(ids):
// it never emits half a UTF-8 character, and never emits text that a later token's clean-up could
// still rewrite.
import { Tokenizer } from '@huggingface/tokenizers';
import { Template } from '@huggingface/jinja';
import { ModelFormatError, OptionError } from '../errors.ts';
import type { TokenizerFiles } from '../../models/source.ts';
import { openTokenizerFiles } from '../../models/tokenizer-files.ts';

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

/**
 * The clean-up a decode applies to the decoder's text: literal replacements, in order, each over the
 * whole text, each deleting spaces only.
 * - 'hf': transformers' clean_up_tokenization (tokenizer_config.json's clean_up_tokenization_spaces;
 *   Meta sets it true for Llama 3), exactly as @huggingface/tokenizers applies it in decode().
 * - 'llama.cpp': the clean_spaces passes of llama.cpp's detokenizer (llama_vocab::impl::detokenize),
 *   which GGUF byte-level vocabularies get for most pre-tokenizers: one pass drops a space before
 *   ? ! . and ,; the next turns " ' " into "'"; the last drops a space before 's 'm 're 've (but, unlike
 *   transformers, not before n't). Each pass reads the text its previous pass wrote, as a chain of
 *   replaceAll calls does: no replacement can create or break another's match within a pass.
 */
export type Cleanup = 'hf' | 'llama.cpp' | 'none';

const CLEANUP_RULES: Record<Cleanup, ReadonlyArray<readonly [string, string]>> = {
  hf: [[' .', '.'], [' ?', '?'], [' !', '!'], [' ,', ','], [" ' ", "'"], [" n't", "n't"], [" 'm", "'m"], [" 's", "'s"], [" 've", "'ve"], [" 're", "'re"]],
  'llama.cpp': [[' ?', '?'], [' !', '!'], [' .', '.'], [' ,', ','], [" ' ", "'"], [" 's", "'s"], [" 'm", "'m"], [" 're", "'re"], [" 've", "'ve"]],
  none: [],
};

/**
 * Which clean-up a tokenizer_config.json asks for: clean_up_tokenization_spaces true (or absent:
 * @huggingface/tokenizers' default) is transformers'; "llama.cpp" is what a GGUF file's tokenizer asks for.
 */
function cleanupOf(config: Record<string, unknown>): Cleanup {
  const setting = config.clean_up_tokenization_spaces ?? true;
  if (setting === 'llama.cpp') return 'llama.cpp';
  return setting ? 'hf' : 'none';
}

export function cleanUpSpaces(text: string, cleanup: Cleanup): string {
  for (const [pattern, replacement] of CLEANUP_RULES[cleanup]) text = text.replaceAll(pattern, replacement);
  return text;
}

/**
 * Applies a clean-up to text that arrives in pieces, so that the pieces it returns add up to the
 * clean-up of the whole text. Deletions only ever remove spaces, and a rule can only rewrite text it
 * matches, so the clean-up of the text before a position q is final, whatever follows, when no match
 * of any rule (at any step) can span q. That holds when the character before q is in no pattern (it
 * is never deleted and no match can contain it), or, since every pattern starts with a space and is
 * at most `reach + 1` long, when the `reach` characters before q hold no space (they are never
 * deleted, and a match spanning q would have to start among them). Text after the last such
 * position is held until more arrives or the stream ends.
 */
class CleanupStream {
  readonly #cleanup: Cleanup;
  readonly #matchable: Set<string>;
  /** Characters before a position that must be non-spaces for it to end a final stretch (0: never by this rule). */
  readonly #reach: number;
  #pending = '';

  constructor(cleanup: Cleanup) {
    this.#cleanup = cleanup;
    const rules = CLEANUP_RULES[cleanup];
    this.#matchable = new Set(rules.flatMap(([pattern]) => [...pattern]));
    const spaceLed = rules.every(([pattern]) => pattern.startsWith(' '));
    this.#reach = spaceLed ? Math.max(1, ...rules.map(([pattern]) => pattern.length)) - 1 : 0;
  }

  /** Whether no match can span position q of the pending text (whose start is such a position). */
  #final(q: number): boolean {
    const text = this.#pending;
    if (!this.#matchable.has(text[q - 1])) return true;
    return this.#reach > 0 && !text.slice(Math.max(0, q - this.#reach), q).includes(' ');
  }

  push(text: string): string {
    this.#pending += text;
    let end = this.#pending.length;
    while (end > 0 && !this.#final(end)) end--;
    if (end === 0) return '';
    const done = this.#pending.slice(0, end);
    this.#pending = this.#pending.slice(end);
    return cleanUpSpaces(done, this.#cleanup);
  }

  flush(): string {
    const rest = cleanUpSpaces(this.#pending, this.#cleanup);
    this.#pending = '';
    return rest;
  }
}

export class TextTokenizer {
  readonly #tokenizer: Tokenizer;
  readonly #template?: Template;
  readonly #config: Record<string, unknown>;
  /** Token strings that decode() leaves out: special added tokens and additional_special_tokens. */
  readonly #special: Set<string>;
  readonly bosToken?: string;
  readonly eosToken?: string;
  readonly source: string;
  /** What decode() does to the decoder's text (see Cleanup). */
  readonly cleanup: Cleanup;
  /** Tokens in the vocabulary, added tokens included (ids run from 0 to vocabSize - 1). */
  readonly vocabSize: number;
  /** The most bytes of text one token stands for (Infinity: no bound): see maxBytesPerToken. */
  readonly maxBytesPerToken: number;
  /**
   * decodeUncleaned of one token, by id: [special tokens kept, special tokens skipped]. A generation
   * decodes every token it emits alone (the stream's window) and each logprob alternative alone,
   * between two GPU steps, and one decode call costs 3-15 µs in the tokenizer library; a token's
   * text alone never changes. Filled as tokens come up (at most the vocabulary).
   */
  readonly #singleTokenText = [new Map<number, string>(), new Map<number, string>()];

  constructor(files: TokenizerFiles) {
    this.source = files.source;
    this.maxBytesPerToken = maxBytesPerToken(files.tokenizer);
    this.#config = files.config ?? {};
    this.cleanup = cleanupOf(this.#config);
    try {
      this.#tokenizer = new Tokenizer(files.tokenizer, this.#config);
    } catch (err) {
      throw new ModelFormatError(`${files.source}: tokenizer.json could not be loaded: ${(err as Error).message}`, { cause: err });
    }
    let highest = -1;
    for (const id of this.#tokenizer.get_vocab(true).values()) highest = Math.max(highest, id);
    this.vocabSize = highest + 1;
    this.#special = new Set([...this.#tokenizer.get_added_tokens_decoder().values()].filter((t) => t.special).map((t) => t.content));
    const additional = this.#config.additional_special_tokens;
    if (Array.isArray(additional)) for (const t of additional) if (typeof t === 'string') this.#special.add(t);
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

  /** The token strings of `ids`, as the vocabulary spells them ("Ġworld", "▁world", "<0x0A>"). */
  tokens(ids: number[]): string[] {
    return ids.map((id) => this.#tokenizer.id_to_token(id) ?? '');
  }

  /** Text for `ids`: the decoder's text, then the clean-up (see Cleanup). */
  decode(ids: number[], skipSpecialTokens = true): string {
    return cleanUpSpaces(this.decodeUncleaned(ids, skipSpecialTokens), this.cleanup);
  }

  /** The decoder's text before the clean-up: what the stream decodes, since a clean-up can rewrite earlier text. */
  decodeUncleaned(ids: number[], skipSpecialTokens = true): string {
    if (ids.length === 0) return '';
    if (ids.length > 1) return this.#tokenizer.decode(ids, { skip_special_tokens: skipSpecialTokens, clean_up_tokenization_spaces: false });
    const cache = this.#singleTokenText[skipSpecialTokens ? 1 : 0];
    const cached = cache.get(ids[0]);
    if (cached !== undefined) return cached;
    const text: string = this.#tokenizer.decode(ids, { skip_special_tokens: skipSpecialTokens, clean_up_tokenization_spaces: false });
    cache.set(ids[0], text);
    return text;
  }

  /** Whether decode() leaves this id out (a special token). */
  isSkipped(id: number): boolean {
    const token = this.#tokenizer.id_to_token(id);
    return token !== undefined && this.#special.has(token);
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
 * Token ids typed by a user: separated by spaces or commas, or one JSON array; each must be a token
 * of a vocabulary of `vocabSize`.
 */
export function parseTokenIds(text: string, vocabSize: number): number[] {
  const trimmed = text.trim();
  let values: unknown;
  if (trimmed.startsWith('[')) {
    try {
      values = JSON.parse(trimmed);
    } catch {
      throw new OptionError(`token ids: not a JSON array of integers (got ${JSON.stringify(trimmed)})`);
    }
    if (!Array.isArray(values)) throw new OptionError(`token ids: not a JSON array of integers (got ${JSON.stringify(trimmed)})`);
  } else {
    values = trimmed.split(/[\s,]+/).filter((t) => t !== '').map((t) => (/^\d+$/.test(t) ? Number(t) : t));
  }
  const ids = values as unknown[];
  if (ids.length === 0) throw new OptionError('give at least one token id');
  const bad = ids.find((v) => typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0 || v >= vocabSize);
  if (bad !== undefined) {
    throw new OptionError(`token id ${JSON.stringify(bad)} is not an integer in [0, ${vocabSize - 1}] (this model has ${vocabSize} tokens)`);
  }
  return ids as number[];
}

/** The tokenizer of the model at `path` (HF folder, .gguf file, or the embedded model), without its weights. */
export async function openTokenizer(path: string): Promise<TextTokenizer> {
  return new TextTokenizer(await openTokenizerFiles(path));
}

/**
 * Turns tokens into text pieces as they arrive; the pieces always add up to decode() of the ids
 * pushed (after flush()). It decodes a short window rather than the whole output each time, before
 * the clean-up: the clean-up can rewrite text an earlier token produced (" '" then "s" is "'s" for
 * Llama 3), so it runs on the pieces through a CleanupStream, which holds back what a later token
 * could still change. A byte-level token can end inside a multi-byte character; decoding then shows
 * U+FFFD at the end, so that text is held back until the character completes. The window starts
 * one emitted piece back so decoders that treat a leading space specially (Strip, Metaspace) see
 * the same first token in both decodes they compare; special tokens, which decode() skips, never
 * enter it, so that first token is one that shows.
 */
export class TokenStream {
  readonly #tokenizer: TextTokenizer;
  readonly #cleanup: CleanupStream;
  /** The pushed ids that decode to text. */
  readonly #ids: number[] = [];
  #prefix = 0;
  #read = 0;
  /** Everything emitted, before the clean-up. */
  #uncleaned = '';
  #text = '';

  constructor(tokenizer: TextTokenizer) {
    this.#tokenizer = tokenizer;
    this.#cleanup = new CleanupStream(tokenizer.cleanup);
  }

  /** Add one token; returns the text it completes (possibly ''). */
  push(id: number): string {
    if (this.#tokenizer.isSkipped(id)) return '';
    this.#ids.push(id);
    const before = this.#tokenizer.decodeUncleaned(this.#ids.slice(this.#prefix, this.#read));
    const after = this.#tokenizer.decodeUncleaned(this.#ids.slice(this.#prefix));
    let piece: string | undefined;
    if (after.startsWith(before)) piece = after.slice(before.length);
    else {
      // A decoder the window does not suit: compare the whole text instead (slow, but never stalls).
      const whole = this.#tokenizer.decodeUncleaned(this.#ids);
      if (whole.startsWith(this.#uncleaned)) piece = whole.slice(this.#uncleaned.length);
    }
    if (!piece || piece.endsWith('\uFFFD')) return '';
    this.#prefix = this.#read;
    this.#read = this.#ids.length;
    this.#uncleaned += piece;
    return this.#emit(this.#cleanup.push(piece));
  }

  /** Whatever is still held back when the stream ends. */
  flush(): string {
    const whole = this.#tokenizer.decodeUncleaned(this.#ids);
    const rest = whole.startsWith(this.#uncleaned) ? whole.slice(this.#uncleaned.length) : '';
    this.#prefix = this.#read = this.#ids.length;
    this.#uncleaned += rest;
    return this.#emit(this.#cleanup.push(rest) + this.#cleanup.flush());
  }

  #emit(text: string): string {
    this.#text += text;
    return text;
  }

  /** All text emitted so far. */
  get text(): string {
    return this.#text;
  }
}

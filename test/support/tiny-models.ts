// Tiny random Llama models written by the tests themselves: a GGUF file llama.cpp loads (with the
// Q/K row permutation convert_hf_to_gguf.py applies), the same weights in Hugging Face layout and
// naming (dequantised, so a float64 reference on them sees exactly what the file holds), the HF
// config.json, and an HF folder writer (config, safetensors single or sharded, tokenizer files).
// K-quant matrices (Q2_K .. Q6_K) are random valid blocks rather than quantised floats (ggml's
// K-quant quantisers are not reimplemented): the HF weights are those blocks dequantised. The other
// quant types are random floats quantised as ggml's quantize_row_*_ref does.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { decodeGgml, encodeGgml, GgmlType } from '../../models/ggml.ts';
import { TokenType } from '../../models/gguf-tokenizer.ts';
import type { GgufMetadataEntry } from '../../models/gguf.ts';
import { gguf, writeGguf, type GgufWriteTensor } from './gguf-writer.ts';
import { rng } from './reference.ts';
import { permuteRowBytes, randomKQuantBytes, type KQuantDtype } from './kquants.ts';
import { encodeFloats, writeSafetensors, writeShardedSafetensors, type WriteDtype } from './safetensors-writer.ts';

/**
 * A matrix type, or a K-quant mix: 'q4_k_m' / 'q5_k_m' are Q4_K / Q5_K with Q6_K for attn_v,
 * ffn_down and output, like llama.cpp's Q4_K_M / Q5_K_M.
 */
export type TinyDtype = TinyMatrixType | TinyMix;
/** The type of one matrix. */
export type TinyMatrixType = 'f32' | 'f16' | 'q8_0' | 'q4_0' | 'q4_1' | 'q5_0' | 'q5_1' | 'q2_k' | 'q3_k' | 'q4_k' | 'q5_k' | 'q6_k';
export type TinyMix = 'q4_k_m' | 'q5_k_m';

/** GGUF tensor roles ('token_embd', 'attn_q', ..., 'output'): the name without blk.N. and .weight. */
export type TinyRole = 'token_embd' | 'attn_q' | 'attn_k' | 'attn_v' | 'attn_output' | 'ffn_gate' | 'ffn_up' | 'ffn_down' | 'output';

export interface TinyLlamaOptions {
  /**
   * Type of the 2-D weights; norms stay F32 as llama.cpp keeps them. Default f32. K-quants need every
   * matrix width to be a multiple of 256: hidden size and FFN size then default to 256 and 512.
   */
  dtype?: TinyDtype;
  /** Per-role types overriding `dtype` (e.g. { attn_v: 'q6_k' }). */
  tensorTypes?: Partial<Record<TinyRole, TinyMatrixType>>;
  seed?: number;
  tokenizer?: 'llama' | 'gpt2';
  hiddenSize?: number;
  intermediateSize?: number;
  numLayers?: number;
  numHeads?: number;
  numKvHeads?: number;
  contextLength?: number;
  ropeTheta?: number;
  rmsNormEps?: number;
  /** Leave out output.weight so the embeddings double as the LM head. */
  tieEmbeddings?: boolean;
  /** Apply llama.cpp's Q/K row permutation (default true; false writes a deliberately wrong file). */
  permuteQK?: boolean;
  chatTemplate?: string;
  /** Extra GGUF metadata; a key already written is replaced (tokenizer.ggml.pre, add_space_prefix, ...). */
  metadata?: Array<[string, GgufMetadataEntry]>;
  /** Extra tensors written after the model's own (rope_freqs.weight, ...). */
  tensors?: GgufWriteTensor[];
}

export interface TinyVocab {
  model: 'llama' | 'gpt2';
  tokens: string[];
  scores: Float32Array;
  types: Int32Array;
  merges?: string[];
  bosId: number;
  eosId: number;
}

export interface TinyLlama {
  path: string;
  /** Hugging Face config.json contents. */
  config: Record<string, unknown>;
  /** HF-named weights ([out, in] row-major), as the file holds them after dequantisation. */
  weights: Map<string, Float32Array>;
  vocab: TinyVocab;
}

export const TINY_CHAT_TEMPLATE =
  "{{ bos_token }}{% for message in messages %}{{ '[' + message['role'] + '] ' + message['content'] + '\\n' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '[assistant] ' }}{% endif %}";

export const GGML_TYPE: Record<TinyMatrixType, number> = {
  f32: GgmlType.F32,
  f16: GgmlType.F16,
  q8_0: GgmlType.Q8_0,
  q4_0: GgmlType.Q4_0,
  q4_1: GgmlType.Q4_1,
  q5_0: GgmlType.Q5_0,
  q5_1: GgmlType.Q5_1,
  q2_k: GgmlType.Q2_K,
  q3_k: GgmlType.Q3_K,
  q4_k: GgmlType.Q4_K,
  q5_k: GgmlType.Q5_K,
  q6_k: GgmlType.Q6_K,
};
// general.file_type (llama_ftype): ALL_F32, MOSTLY_F16, MOSTLY_Q8_0, MOSTLY_Q4_0, MOSTLY_Q4_1,
// MOSTLY_Q5_0, MOSTLY_Q5_1, MOSTLY_Q2_K, MOSTLY_Q3_K_S, MOSTLY_Q4_K_S, MOSTLY_Q5_K_S, MOSTLY_Q6_K,
// MOSTLY_Q4_K_M, MOSTLY_Q5_K_M.
export const FILE_TYPE: Record<TinyDtype, number> = {
  f32: 0, f16: 1, q8_0: 7, q4_0: 2, q4_1: 3, q5_0: 8, q5_1: 9,
  q2_k: 10, q3_k: 11, q4_k: 14, q5_k: 16, q6_k: 18, q4_k_m: 15, q5_k_m: 17,
};
/**
 * Each mix's base type and the roles it keeps at Q6_K (llama.cpp's Q4_K_M / Q5_K_M pick some
 * layers' attn_v / ffn_down; here all).
 */
const MIXES: Record<TinyMix, { base: TinyMatrixType; roles: Partial<Record<TinyRole, TinyMatrixType>> }> = {
  q4_k_m: { base: 'q4_k', roles: { attn_v: 'q6_k', ffn_down: 'q6_k', output: 'q6_k' } },
  q5_k_m: { base: 'q5_k', roles: { attn_v: 'q6_k', ffn_down: 'q6_k', output: 'q6_k' } },
};

/** The type of most matrices of a `dtype` model (a mix's base type). */
export function tinyBaseType(dtype: TinyDtype): TinyMatrixType {
  return Object.hasOwn(MIXES, dtype) ? MIXES[dtype as TinyMix].base : (dtype as TinyMatrixType);
}

const isKQuant = (type: TinyMatrixType): type is KQuantDtype => type.endsWith('_k');

/** Words whose pieces fill the tiny vocabularies after the special and byte tokens. */
const WORDS = ['the', 'hello', 'world', 'in', 'is', 'a', 'and', 'to', 'of', 'model', 'token', 'miner', 'café'];

/** "llama" (SentencePiece) vocabulary: <unk>, <s>, </s>, <0x00>..<0xFF>, then pieces by falling score. */
export function tinySpmVocab(): TinyVocab {
  const tokens = ['<unk>', '<s>', '</s>'];
  const types: number[] = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL];
  for (let b = 0; b < 256; b++) {
    tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
    types.push(TokenType.BYTE);
  }
  const pieces: string[] = ['\u2581', ...'etaoinshrdlcumwfgypbvkjxqz', 'é', ',', '.'];
  for (const word of WORDS) {
    const chars = Array.from('\u2581' + word);
    // Every prefix, so each word is reachable by merging one character at a time.
    for (let k = 2; k <= chars.length; k++) pieces.push(chars.slice(0, k).join(''));
  }
  pieces.push('he', 'll', 'llo', 'or', 'ld', 'in', 'er');
  const unique = [...new Set(pieces)];
  const scores = [0, 0, 0, ...new Array(256).fill(0)];
  unique.forEach((p, i) => {
    tokens.push(p);
    types.push(TokenType.NORMAL);
    scores.push(-(i + 1));
  });
  return { model: 'llama', tokens, scores: Float32Array.from(scores), types: Int32Array.from(types), bosId: 1, eosId: 2 };
}

/** GPT-2's reversible map from bytes to printable characters. */
export function bytesToUnicode(): string[] {
  const printable = (b: number) => (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  const map: string[] = [];
  let extra = 0;
  for (let b = 0; b < 256; b++) map.push(String.fromCharCode(printable(b) ? b : 256 + extra++));
  return map;
}

/** "gpt2" (byte-level BPE) vocabulary: the 256 byte characters, merged word pieces, <|endoftext|>. */
export function tinyGpt2Vocab(): TinyVocab {
  const byteChar = bytesToUnicode();
  const tokens = [...byteChar];
  const merges: string[] = [];
  const known = new Set(tokens);
  // Pieces without a leading space that pre-tokenizers cut differently (digits in runs of any
  // length, 1..3 or 1; "'LL" only case-insensitively; punctuation glued to a word or not).
  const unspaced = ['1234', "'ll", "'LL", ',the'];
  for (const word of [...WORDS.map((w) => ' ' + w), ...unspaced]) {
    const chars = Array.from(new TextEncoder().encode(word), (b) => byteChar[b]);
    let current = chars[0];
    for (const next of chars.slice(1)) {
      const merged = current + next;
      if (!known.has(merged)) {
        merges.push(`${current} ${next}`);
        tokens.push(merged);
        known.add(merged);
      }
      current = merged;
    }
  }
  tokens.push('<|endoftext|>');
  const types = tokens.map((_, i) => (i === tokens.length - 1 ? TokenType.CONTROL : TokenType.NORMAL));
  const eos = tokens.length - 1;
  return { model: 'gpt2', tokens, scores: new Float32Array(tokens.length), types: Int32Array.from(types), merges, bosId: eos, eosId: eos };
}

/** tokenizer.ggml.* metadata for `vocab` (byte-level BPE gets tokenizer.ggml.pre "gpt-2"). */
export function tokenizerMetadata(vocab: TinyVocab, chatTemplate: string): Array<[string, GgufMetadataEntry]> {
  const m: Array<[string, GgufMetadataEntry]> = [
    ['tokenizer.ggml.model', gguf.string(vocab.model)],
    ['tokenizer.ggml.tokens', gguf.strings(vocab.tokens)],
    ['tokenizer.ggml.scores', gguf.f32s(vocab.scores)],
    ['tokenizer.ggml.token_type', gguf.i32s(vocab.types)],
  ];
  if (vocab.model === 'gpt2') {
    m.push(['tokenizer.ggml.pre', gguf.string('gpt-2')], ['tokenizer.ggml.merges', gguf.strings(vocab.merges!)]);
  }
  m.push(['tokenizer.ggml.bos_token_id', gguf.u32(vocab.bosId)], ['tokenizer.ggml.eos_token_id', gguf.u32(vocab.eosId)]);
  if (vocab.model === 'llama') m.push(['tokenizer.ggml.unknown_token_id', gguf.u32(0)]);
  m.push(['tokenizer.chat_template', gguf.string(chatTemplate)]);
  return m;
}

/** GGUF row order for Q or K: row 2i+t of each head is HF row t*D/2 + i (HF rotates halves, ggml pairs). */
export function permuteQK(w: Float32Array, heads: number, cols: number): Float32Array {
  const rows = w.length / cols;
  const d = rows / heads;
  const out = new Float32Array(w.length);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < d / 2; i++) {
      for (let t = 0; t < 2; t++) {
        const src = h * d + t * (d / 2) + i;
        const dst = h * d + 2 * i + t;
        out.set(w.subarray(src * cols, (src + 1) * cols), dst * cols);
      }
    }
  }
  return out;
}

/**
 * Write a random Llama GGUF (2 layers, 4 heads over 2 KV heads, hidden 64, FFN 128 by default;
 * hidden 256, FFN 512 when any matrix is a K-quant)
 * and return it with its HF-layout weights and config.
 */
export function writeTinyLlamaGguf(path: string, options: TinyLlamaOptions = {}): TinyLlama {
  const dtype = options.dtype ?? 'f32';
  const baseType = tinyBaseType(dtype);
  const roleTypes = { ...(Object.hasOwn(MIXES, dtype) ? MIXES[dtype as TinyMix].roles : {}), ...options.tensorTypes };
  const anyKQuant = [baseType, ...Object.values(roleTypes)].some(isKQuant);
  const C = options.hiddenSize ?? (anyKQuant ? 256 : 64);
  const F = options.intermediateSize ?? (anyKQuant ? 512 : 128);
  const L = options.numLayers ?? 2;
  const H = options.numHeads ?? 4;
  const Hkv = options.numKvHeads ?? 2;
  const D = C / H;
  const ctx = options.contextLength ?? 256;
  const theta = options.ropeTheta ?? 10000;
  const eps = options.rmsNormEps ?? 1e-5;
  const tie = options.tieEmbeddings ?? false;
  const vocab = (options.tokenizer ?? 'llama') === 'llama' ? tinySpmVocab() : tinyGpt2Vocab();
  const V = vocab.tokens.length;

  const next = rng(options.seed ?? 1);
  const normal = () => Math.sqrt(-2 * Math.log(1 - next())) * Math.cos(2 * Math.PI * next());
  const random = (n: number, std: number, mean = 0) => Float32Array.from({ length: n }, () => mean + std * normal());

  const weights = new Map<string, Float32Array>();
  const tensors: GgufWriteTensor[] = [];
  /** A matrix [rows, cols]: stored in the file (rows optionally permuted), returned dequantised. */
  const matrix = (hf: string, gg: string, rows: number, cols: number, std: number, permuteHeads?: number) => {
    const role = gg.replace(/^blk\.\d+\./, '').replace(/\.weight$/, '') as TinyRole;
    const type = roleTypes[role] ?? baseType;
    const ggmlType = GGML_TYPE[type];
    const permute = permuteHeads !== undefined && options.permuteQK !== false;
    if (isKQuant(type)) {
      if (cols % 256 !== 0) throw new RangeError(`${gg}: ${type} needs a width that is a multiple of 256 (got ${cols})`);
      // Random blocks in HF row order; the file holds the same rows, permuted for Q and K.
      const bytes = randomKQuantBytes(type, rows, cols, Math.floor(next() * 2 ** 32), std);
      weights.set(hf, decodeGgml(ggmlType, bytes, rows * cols));
      const order = permute ? permuteQK(Float32Array.from({ length: rows }, (_, i) => i), permuteHeads, 1) : undefined;
      const stored = order ? permuteRowBytes(bytes, bytes.length / rows, order) : bytes;
      tensors.push({ name: gg, type: ggmlType, ne: [cols, rows], data: stored });
      return;
    }
    const w = random(rows * cols, std);
    weights.set(hf, decodeGgml(ggmlType, encodeGgml(ggmlType, w), w.length));
    const stored = permute ? permuteQK(w, permuteHeads, cols) : w;
    tensors.push({ name: gg, type: ggmlType, ne: [cols, rows], data: encodeGgml(ggmlType, stored) });
  };
  const norm = (hf: string, gg: string) => {
    const w = random(C, 0.1, 1);
    weights.set(hf, w);
    tensors.push({ name: gg, type: GgmlType.F32, ne: [C], data: new Uint8Array(w.slice().buffer) });
  };

  matrix('model.embed_tokens.weight', 'token_embd.weight', V, C, 0.5);
  for (let l = 0; l < L; l++) {
    const p = `model.layers.${l}.`;
    const g = `blk.${l}.`;
    norm(`${p}input_layernorm.weight`, `${g}attn_norm.weight`);
    matrix(`${p}self_attn.q_proj.weight`, `${g}attn_q.weight`, H * D, C, 0.1, H);
    matrix(`${p}self_attn.k_proj.weight`, `${g}attn_k.weight`, Hkv * D, C, 0.1, Hkv);
    matrix(`${p}self_attn.v_proj.weight`, `${g}attn_v.weight`, Hkv * D, C, 0.1);
    matrix(`${p}self_attn.o_proj.weight`, `${g}attn_output.weight`, C, H * D, 0.1);
    norm(`${p}post_attention_layernorm.weight`, `${g}ffn_norm.weight`);
    matrix(`${p}mlp.gate_proj.weight`, `${g}ffn_gate.weight`, F, C, 0.1);
    matrix(`${p}mlp.up_proj.weight`, `${g}ffn_up.weight`, F, C, 0.1);
    matrix(`${p}mlp.down_proj.weight`, `${g}ffn_down.weight`, C, F, 0.1);
  }
  norm('model.norm.weight', 'output_norm.weight');
  if (tie) weights.set('lm_head.weight', weights.get('model.embed_tokens.weight')!);
  else matrix('lm_head.weight', 'output.weight', V, C, 0.15);

  const metadata: Array<[string, GgufMetadataEntry]> = [
    ['general.architecture', gguf.string('llama')],
    ['general.name', gguf.string(`tiny-llama-${dtype}-${vocab.model}`)],
    ['general.alignment', gguf.u32(32)],
    ['general.file_type', gguf.u32(FILE_TYPE[dtype])],
    ['llama.vocab_size', gguf.u32(V)],
    ['llama.context_length', gguf.u32(ctx)],
    ['llama.embedding_length', gguf.u32(C)],
    ['llama.block_count', gguf.u32(L)],
    ['llama.feed_forward_length', gguf.u32(F)],
    ['llama.attention.head_count', gguf.u32(H)],
    ['llama.attention.head_count_kv', gguf.u32(Hkv)],
    ['llama.rope.dimension_count', gguf.u32(D)],
    ['llama.rope.freq_base', gguf.f32(theta)],
    ['llama.attention.layer_norm_rms_epsilon', gguf.f32(eps)],
    ...tokenizerMetadata(vocab, options.chatTemplate ?? TINY_CHAT_TEMPLATE),
  ];
  const extra = new Map(options.metadata ?? []);
  const merged = metadata.map(([k, v]): [string, GgufMetadataEntry] => [k, extra.get(k) ?? v]);
  for (const [k, v] of extra) if (!metadata.some(([key]) => key === k)) merged.push([k, v]);
  writeGguf(path, { metadata: merged, tensors: [...tensors, ...(options.tensors ?? [])] });

  const config = {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    vocab_size: V,
    hidden_size: C,
    intermediate_size: F,
    num_hidden_layers: L,
    num_attention_heads: H,
    num_key_value_heads: Hkv,
    head_dim: D,
    max_position_embeddings: ctx,
    rms_norm_eps: eps,
    rope_theta: theta,
    hidden_act: 'silu',
    tie_word_embeddings: tie,
    bos_token_id: vocab.bosId,
    eos_token_id: vocab.eosId,
    torch_dtype: 'float32',
  };
  return { path, config, weights, vocab };
}

export interface HfFolderOptions {
  /** Split the weights over this many model-0000N-of-0000M.safetensors files with an index. */
  shards?: number;
  /** tokenizer_config.json fields (a chat template, bos/eos tokens); sensible ones by default. */
  tokenizerConfig?: Record<string, unknown>;
}

const TORCH_DTYPE: Record<WriteDtype, string> = { F32: 'float32', F16: 'float16', BF16: 'bfloat16' };

/**
 * Write a Hugging Face model folder: config.json, generation_config.json, tokenizer.json,
 * tokenizer_config.json, and the weights as model.safetensors (or shards plus an index).
 */
export function writeHfFolder(
  dir: string,
  config: Record<string, unknown>,
  weights: Map<string, Float32Array>,
  tokenizerJson: Record<string, unknown>,
  dtype: WriteDtype = 'F32',
  options: HfFolderOptions = {},
): void {
  mkdirSync(dir, { recursive: true });
  const json = (name: string, value: unknown) => writeFileSync(join(dir, name), JSON.stringify(value, null, 2) + '\n');
  json('config.json', { ...config, torch_dtype: TORCH_DTYPE[dtype] });
  json('generation_config.json', { bos_token_id: config.bos_token_id, eos_token_id: config.eos_token_id });
  json('tokenizer.json', tokenizerJson);
  const vocab = (tokenizerJson.model as { vocab?: Record<string, number> } | undefined)?.vocab ?? {};
  const byId = new Map(Object.entries(vocab).map(([t, id]) => [id, t]));
  for (const t of (tokenizerJson.added_tokens as Array<{ id: number; content: string }> | undefined) ?? []) byId.set(t.id, t.content);
  json('tokenizer_config.json', {
    tokenizer_class: 'PreTrainedTokenizerFast',
    bos_token: byId.get(config.bos_token_id as number) ?? null,
    eos_token: byId.get(config.eos_token_id as number) ?? null,
    clean_up_tokenization_spaces: false,
    chat_template: TINY_CHAT_TEMPLATE,
    ...options.tokenizerConfig,
  });
  const tensors = [...weights]
    .filter(([name]) => !(config.tie_word_embeddings === true && name === 'lm_head.weight'))
    .map(([name, data]) => ({ name, dtype, shape: shapeOf(name, data, config), data: encodeFloats(data, dtype) }));
  if (options.shards && options.shards > 1) writeShardedSafetensors(dir, tensors, options.shards);
  else writeSafetensors(join(dir, 'model.safetensors'), tensors, { format: 'pt' });
}

/**
 * HF shape of a weight: norms and biases are vectors; Llama/Qwen2 matrices [out, hidden or ffn or
 * heads]; GPT-2's embeddings [rows, n_embd] and its Conv1D weights [in, out].
 */
function shapeOf(name: string, data: Float32Array, config: Record<string, unknown>): number[] {
  if (name.endsWith('.bias') || name.endsWith('norm.weight') || /(^|\.)ln_(\d|f)\.weight$/.test(name)) return [data.length];
  if ((config.architectures as string[] | undefined)?.[0] === 'GPT2LMHeadModel') {
    const C = config.n_embd as number;
    const rows = /(wte|wpe|lm_head)\.weight$/.test(name) || name.endsWith('mlp.c_proj.weight');
    return rows ? [data.length / C, C] : [C, data.length / C];
  }
  const C = config.hidden_size as number;
  // o_proj reads the heads' outputs: heads x head_dim, which need not be the hidden size (Qwen3, Gemma).
  const headsWidth = (config.num_attention_heads as number) * ((config.head_dim as number | undefined) ?? C / (config.num_attention_heads as number));
  const cols = name.endsWith('down_proj.weight') ? (config.intermediate_size as number) : name.endsWith('o_proj.weight') ? headsWidth : C;
  return [data.length / cols, cols];
}

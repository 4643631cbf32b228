// Tiny random Qwen2 and GPT-2 GGUF files, written as llama.cpp's convert_hf_to_gguf.py writes them
// (learned from its conversion/qwen.py, conversion/gpt2.py, conversion/base.py and llama.cpp's
// src/models/{qwen2,gpt2}.cpp), returned with the same weights in Hugging Face naming and layout
// (dequantised, so a float64 reference sees exactly what the file holds) and the HF config.json.
//
// qwen2: general.architecture "qwen2"; qwen2.{block_count, context_length, embedding_length,
//   feed_forward_length, attention.head_count, attention.head_count_kv, rope.freq_base,
//   attention.layer_norm_rms_epsilon}; no rope.dimension_count (llama.cpp uses the head size).
//   Q and K rows are NOT permuted: llama.cpp rotates qwen2 in NEOX order (halves), as HF does.
//   blk.N.attn_{q,k,v}.{weight,bias}, or with --fuse-qkv one blk.N.attn_qkv.{weight,bias} holding
//   Q, K, V rows in that order; output.weight only when the embeddings are not tied.
// gpt2: general.architecture "gpt2"; gpt2.{block_count, context_length (n_ctx), embedding_length,
//   feed_forward_length (4 n_embd), attention.head_count, attention.layer_norm_epsilon}.
//   HF Conv1D weights [in, out] are transposed to [out, in] (ggml ne = [in, out]); every layer
//   has attn_norm/ffn_norm weight and bias, attn_qkv, attn_output, ffn_up, ffn_down with biases;
//   position_embd.weight [n_ctx, n_embd] stays F32 (the converter never quantises it); output_norm
//   weight and bias; output.weight only when not tied.
// Both use the byte-level BPE ("gpt2") vocabulary of tiny-models.ts, tokenizer.ggml.pre "qwen2"
// or "gpt-2". Norms, biases and position embeddings are F32 whatever the matrix type, as the
// converter keeps every 1-D tensor, *_norm.weight and position_embd in F32.
import { decodeGgml, encodeGgml, GgmlType } from '../../models/ggml.ts';
import type { GgufMetadataEntry } from '../../models/gguf.ts';
import { gguf, writeGguf, type GgufWriteTensor } from './gguf-writer.ts';
import { rng } from './reference.ts';
import { FILE_TYPE, GGML_TYPE, TINY_CHAT_TEMPLATE, tinyGpt2Vocab, tokenizerMetadata, type TinyLlama } from './tiny-models.ts';

/** Matrix types these writers quantise to (block types along the input axis: widths % 32 == 0). */
export type TinyArchDtype = 'f32' | 'f16' | 'q8_0' | 'q4_0';

export interface TinyArchOptions {
  dtype?: TinyArchDtype;
  seed?: number;
  hiddenSize?: number;
  /** FFN size; GPT-2 files always get 4 x hidden (the converter writes 4 n_embd). */
  intermediateSize?: number;
  numLayers?: number;
  numHeads?: number;
  /** Qwen2 only (GPT-2 has as many KV heads as heads). */
  numKvHeads?: number;
  contextLength?: number;
  /** Qwen2 only; default 1e6 as Qwen2 ships. */
  ropeTheta?: number;
  normEps?: number;
  /** Leave out output.weight so the embeddings double as the LM head. */
  tieEmbeddings?: boolean;
  /** Qwen2 only: Q, K and V (and their biases) in one attn_qkv tensor, as convert --fuse-qkv writes. */
  fuseQkv?: boolean;
}

/** A tiny model file, its HF-named weights and HF config (same shape as the Llama writer's). */
export type TinyModel = TinyLlama;

interface Writer {
  weights: Map<string, Float32Array>;
  tensors: GgufWriteTensor[];
  /** Random [rows, cols] (HF [out, in]) in `type`: stored [out, in], returned dequantised. */
  matrix(gg: string, rows: number, cols: number, std: number, type?: number): Float32Array;
  /** Random F32 vector, stored and returned as is. */
  vector(gg: string, n: number, std: number, mean?: number): Float32Array;
}

function writer(seed: number, matrixType: number): Writer {
  const next = rng(seed);
  const normal = () => Math.sqrt(-2 * Math.log(1 - next())) * Math.cos(2 * Math.PI * next());
  const random = (n: number, std: number, mean = 0) => Float32Array.from({ length: n }, () => mean + std * normal());
  const tensors: GgufWriteTensor[] = [];
  return {
    weights: new Map(),
    tensors,
    matrix(gg, rows, cols, std, type = matrixType) {
      const bytes = encodeGgml(type, random(rows * cols, std));
      tensors.push({ name: gg, type, ne: [cols, rows], data: bytes });
      return decodeGgml(type, bytes, rows * cols);
    },
    vector(gg, n, std, mean = 0) {
      const v = random(n, std, mean);
      tensors.push({ name: gg, type: GgmlType.F32, ne: [n], data: new Uint8Array(v.slice().buffer) });
      return v;
    },
  };
}

/** Rows [from, to) of a row-major [rows, cols] matrix. */
const rowsOf = (w: Float32Array, cols: number, from: number, to: number) => w.slice(from * cols, to * cols);

/** [rows, cols] -> [cols, rows]. */
function transpose(w: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(w.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = w[r * cols + c];
  return out;
}

function header(arch: string, name: string, dtype: TinyArchDtype, pre: string): Array<[string, GgufMetadataEntry]> {
  const vocab = tinyGpt2Vocab();
  const tok = tokenizerMetadata(vocab, TINY_CHAT_TEMPLATE).map(([k, v]): [string, GgufMetadataEntry] =>
    k === 'tokenizer.ggml.pre' ? [k, gguf.string(pre)] : [k, v],
  );
  return [
    ['general.architecture', gguf.string(arch)],
    ['general.name', gguf.string(name)],
    ['general.alignment', gguf.u32(32)],
    ['general.file_type', gguf.u32(FILE_TYPE[dtype])],
    ...tok,
  ];
}

/**
 * A random Qwen2 GGUF (2 layers, hidden 64, 4 heads of 16 over 2 KV heads, FFN 128, biases on Q, K
 * and V, RoPE theta 1e6, RMSNorm eps 1e-6 by default) with its HF weights and config.
 */
export function writeTinyQwen2Gguf(path: string, options: TinyArchOptions = {}): TinyModel {
  return writeTinyQwenGguf('qwen2', path, options);
}

/**
 * A random Qwen3 GGUF, as convert_hf_to_gguf.py's Qwen3Model writes it (general.architecture
 * "qwen3"; no q/k/v biases; blk.N.attn_q_norm / attn_k_norm.weight of head_dim, F32; head_dim given
 * in config.json and written as qwen3.attention.key_length / value_length, so it need not be
 * hidden / heads). Defaults as writeTinyQwen2Gguf; `headDim` sets head_dim.
 */
export function writeTinyQwen3Gguf(path: string, options: TinyArchOptions & { headDim?: number } = {}): TinyModel {
  return writeTinyQwenGguf('qwen3', path, options);
}

function writeTinyQwenGguf(arch: 'qwen2' | 'qwen3', path: string, options: TinyArchOptions & { headDim?: number }): TinyModel {
  const qwen3 = arch === 'qwen3';
  if (qwen3 && options.fuseQkv) throw new Error('writeTinyQwen3Gguf: no fused-qkv form');
  const dtype = options.dtype ?? 'f32';
  const C = options.hiddenSize ?? 64;
  const F = options.intermediateSize ?? 128;
  const L = options.numLayers ?? 2;
  const H = options.numHeads ?? 4;
  const Hkv = options.numKvHeads ?? 2;
  const D = options.headDim ?? C / H;
  const ctx = options.contextLength ?? 256;
  const theta = options.ropeTheta ?? 1e6;
  const eps = options.normEps ?? 1e-6;
  const tie = options.tieEmbeddings ?? true;
  const vocab = tinyGpt2Vocab();
  const V = vocab.tokens.length;
  const w = writer(options.seed ?? 1, GGML_TYPE[dtype]);
  const hf = w.weights;

  hf.set('model.embed_tokens.weight', w.matrix('token_embd.weight', V, C, 0.5));
  for (let l = 0; l < L; l++) {
    const p = `model.layers.${l}.`;
    const g = `blk.${l}.`;
    hf.set(`${p}input_layernorm.weight`, w.vector(`${g}attn_norm.weight`, C, 0.1, 1));
    const widths = { q: H * D, k: Hkv * D, v: Hkv * D };
    if (options.fuseQkv) {
      const W = widths.q + widths.k + widths.v;
      const qkv = w.matrix(`${g}attn_qkv.weight`, W, C, 0.1);
      const bias = w.vector(`${g}attn_qkv.bias`, W, 0.2);
      let row = 0;
      for (const part of ['q', 'k', 'v'] as const) {
        hf.set(`${p}self_attn.${part}_proj.weight`, rowsOf(qkv, C, row, row + widths[part]));
        hf.set(`${p}self_attn.${part}_proj.bias`, bias.slice(row, row + widths[part]));
        row += widths[part];
      }
    } else {
      for (const part of ['q', 'k', 'v'] as const) {
        hf.set(`${p}self_attn.${part}_proj.weight`, w.matrix(`${g}attn_${part}.weight`, widths[part], C, 0.1));
        if (!qwen3) hf.set(`${p}self_attn.${part}_proj.bias`, w.vector(`${g}attn_${part}.bias`, widths[part], 0.2));
      }
    }
    if (qwen3) {
      hf.set(`${p}self_attn.q_norm.weight`, w.vector(`${g}attn_q_norm.weight`, D, 0.2, 1));
      hf.set(`${p}self_attn.k_norm.weight`, w.vector(`${g}attn_k_norm.weight`, D, 0.2, 1));
    }
    hf.set(`${p}self_attn.o_proj.weight`, w.matrix(`${g}attn_output.weight`, C, H * D, 0.1));
    hf.set(`${p}post_attention_layernorm.weight`, w.vector(`${g}ffn_norm.weight`, C, 0.1, 1));
    hf.set(`${p}mlp.gate_proj.weight`, w.matrix(`${g}ffn_gate.weight`, F, C, 0.1));
    hf.set(`${p}mlp.up_proj.weight`, w.matrix(`${g}ffn_up.weight`, F, C, 0.1));
    hf.set(`${p}mlp.down_proj.weight`, w.matrix(`${g}ffn_down.weight`, C, F, 0.1));
  }
  hf.set('model.norm.weight', w.vector('output_norm.weight', C, 0.1, 1));
  hf.set('lm_head.weight', tie ? hf.get('model.embed_tokens.weight')! : w.matrix('output.weight', V, C, 0.15));

  const key = (k: string) => `${arch}.${k}`;
  const metadata: Array<[string, GgufMetadataEntry]> = [
    ...header(arch, `tiny-${arch}-${dtype}`, dtype, 'qwen2'),
    [key('block_count'), gguf.u32(L)],
    [key('context_length'), gguf.u32(ctx)],
    [key('embedding_length'), gguf.u32(C)],
    [key('feed_forward_length'), gguf.u32(F)],
    [key('attention.head_count'), gguf.u32(H)],
    [key('attention.head_count_kv'), gguf.u32(Hkv)],
    [key('rope.freq_base'), gguf.f32(theta)],
    [key('attention.layer_norm_rms_epsilon'), gguf.f32(eps)],
    ...(options.headDim !== undefined
      ? ([
          [key('attention.key_length'), gguf.u32(D)],
          [key('attention.value_length'), gguf.u32(D)],
        ] as Array<[string, GgufMetadataEntry]>)
      : []),
  ];
  writeGguf(path, { metadata, tensors: w.tensors });
  const config = {
    architectures: [qwen3 ? 'Qwen3ForCausalLM' : 'Qwen2ForCausalLM'],
    model_type: arch,
    vocab_size: V,
    hidden_size: C,
    intermediate_size: F,
    num_hidden_layers: L,
    num_attention_heads: H,
    num_key_value_heads: Hkv,
    ...(options.headDim !== undefined ? { head_dim: D } : {}),
    ...(qwen3 ? { attention_bias: false } : {}),
    max_position_embeddings: ctx,
    rms_norm_eps: eps,
    rope_theta: theta,
    hidden_act: 'silu',
    tie_word_embeddings: tie,
    bos_token_id: vocab.bosId,
    eos_token_id: vocab.eosId,
    torch_dtype: 'float32',
  };
  return { path, config, weights: hf, vocab };
}

/**
 * A random GPT-2 GGUF (2 layers, hidden 64, 4 heads of 16, FFN 256, context 256, LayerNorm eps
 * 1e-5 by default) with its HF weights (transformer.* names, Conv1D [in, out]) and config.
 * HF GPT-2 always ties the LM head to wte: with tieEmbeddings false the file has output.weight and
 * the returned weights hold it as lm_head.weight (for the reference; no HF folder expresses it).
 */
export function writeTinyGpt2Gguf(path: string, options: TinyArchOptions = {}): TinyModel {
  const dtype = options.dtype ?? 'f32';
  const C = options.hiddenSize ?? 64;
  const F = 4 * C;
  const L = options.numLayers ?? 2;
  const H = options.numHeads ?? 4;
  const ctx = options.contextLength ?? 256;
  const eps = options.normEps ?? 1e-5;
  const tie = options.tieEmbeddings ?? true;
  const vocab = tinyGpt2Vocab();
  const V = vocab.tokens.length;
  const w = writer(options.seed ?? 1, GGML_TYPE[dtype]);
  const hf = w.weights;
  /** A Conv1D weight: [out, in] in the file, [in, out] under its HF name. */
  const conv1d = (hfName: string, gg: string, out: number, inp: number, std: number) => {
    hf.set(hfName, transpose(w.matrix(gg, out, inp, std), out, inp));
  };

  hf.set('transformer.wte.weight', w.matrix('token_embd.weight', V, C, 0.5));
  hf.set('transformer.wpe.weight', w.matrix('position_embd.weight', ctx, C, 0.2, GgmlType.F32));
  for (let l = 0; l < L; l++) {
    const p = `transformer.h.${l}.`;
    const g = `blk.${l}.`;
    hf.set(`${p}ln_1.weight`, w.vector(`${g}attn_norm.weight`, C, 0.1, 1));
    hf.set(`${p}ln_1.bias`, w.vector(`${g}attn_norm.bias`, C, 0.1));
    conv1d(`${p}attn.c_attn.weight`, `${g}attn_qkv.weight`, 3 * C, C, 0.1);
    hf.set(`${p}attn.c_attn.bias`, w.vector(`${g}attn_qkv.bias`, 3 * C, 0.2));
    conv1d(`${p}attn.c_proj.weight`, `${g}attn_output.weight`, C, C, 0.1);
    hf.set(`${p}attn.c_proj.bias`, w.vector(`${g}attn_output.bias`, C, 0.1));
    hf.set(`${p}ln_2.weight`, w.vector(`${g}ffn_norm.weight`, C, 0.1, 1));
    hf.set(`${p}ln_2.bias`, w.vector(`${g}ffn_norm.bias`, C, 0.1));
    conv1d(`${p}mlp.c_fc.weight`, `${g}ffn_up.weight`, F, C, 0.1);
    hf.set(`${p}mlp.c_fc.bias`, w.vector(`${g}ffn_up.bias`, F, 0.1));
    conv1d(`${p}mlp.c_proj.weight`, `${g}ffn_down.weight`, C, F, 0.1);
    hf.set(`${p}mlp.c_proj.bias`, w.vector(`${g}ffn_down.bias`, C, 0.1));
  }
  hf.set('transformer.ln_f.weight', w.vector('output_norm.weight', C, 0.1, 1));
  hf.set('transformer.ln_f.bias', w.vector('output_norm.bias', C, 0.1));
  if (!tie) hf.set('lm_head.weight', w.matrix('output.weight', V, C, 0.15));

  const key = (k: string) => `gpt2.${k}`;
  const metadata: Array<[string, GgufMetadataEntry]> = [
    ...header('gpt2', `tiny-gpt2-${dtype}`, dtype, 'gpt-2'),
    [key('block_count'), gguf.u32(L)],
    [key('context_length'), gguf.u32(ctx)],
    [key('embedding_length'), gguf.u32(C)],
    [key('feed_forward_length'), gguf.u32(F)],
    [key('attention.head_count'), gguf.u32(H)],
    [key('attention.layer_norm_epsilon'), gguf.f32(eps)],
  ];
  writeGguf(path, { metadata, tensors: w.tensors });
  const config = {
    architectures: ['GPT2LMHeadModel'],
    model_type: 'gpt2',
    vocab_size: V,
    n_embd: C,
    n_head: H,
    n_layer: L,
    n_positions: ctx,
    n_ctx: ctx,
    n_inner: null,
    layer_norm_epsilon: eps,
    activation_function: 'gelu_new',
    tie_word_embeddings: tie,
    bos_token_id: vocab.bosId,
    eos_token_id: vocab.eosId,
    torch_dtype: 'float32',
  };
  return { path, config, weights: hf, vocab };
}

export interface TinyPhi3Options extends TinyArchOptions {
  /** config.json partial_rotary_factor (Phi-4-mini: 0.75); default 1. */
  partialRotaryFactor?: number;
  /** config.json sliding_window (Phi-3-mini-4k: 2047); default none (Phi-4). */
  slidingWindow?: number;
}

/**
 * A random Phi-3 GGUF, as convert_hf_to_gguf.py's Phi3MiniModel writes it (learned from its
 * Phi3MiniModel.set_gguf_parameters and llama.cpp's src/models/phi3.cpp): general.architecture
 * "phi3"; phi3.{context_length, rope.scaling.original_context_length, embedding_length,
 * feed_forward_length, block_count, attention.head_count, attention.head_count_kv,
 * attention.layer_norm_rms_epsilon, rope.dimension_count (int(partial_rotary_factor * hidden) /
 * heads), rope.freq_base, attention.sliding_window (0 when config.json has none)}. HF's fused
 * self_attn.qkv_proj stays one blk.N.attn_qkv ([q; k; v] rows) and mlp.gate_up_proj one
 * blk.N.ffn_up of 2 x FFN rows ([gate; up]); no biases; NEOX RoPE on the first rotary dims of each
 * head. llama.cpp's phi3 needs heads x head size = hidden (attn_output is [hidden, hidden]).
 * Defaults: 2 layers, hidden 64, 4 heads of 16 over 4 KV heads, FFN 128, theta 1e4, eps 1e-5, untied.
 */
export function writeTinyPhi3Gguf(path: string, options: TinyPhi3Options = {}): TinyModel {
  const dtype = options.dtype ?? 'f32';
  const C = options.hiddenSize ?? 64;
  const F = options.intermediateSize ?? 128;
  const L = options.numLayers ?? 2;
  const H = options.numHeads ?? 4;
  const Hkv = options.numKvHeads ?? H;
  const D = C / H;
  const ctx = options.contextLength ?? 256;
  const theta = options.ropeTheta ?? 1e4;
  const eps = options.normEps ?? 1e-5;
  const tie = options.tieEmbeddings ?? false;
  const partial = options.partialRotaryFactor ?? 1;
  const vocab = tinyGpt2Vocab();
  const V = vocab.tokens.length;
  const w = writer(options.seed ?? 1, GGML_TYPE[dtype]);
  const hf = w.weights;

  hf.set('model.embed_tokens.weight', w.matrix('token_embd.weight', V, C, 0.5));
  for (let l = 0; l < L; l++) {
    const p = `model.layers.${l}.`;
    const g = `blk.${l}.`;
    hf.set(`${p}input_layernorm.weight`, w.vector(`${g}attn_norm.weight`, C, 0.1, 1));
    hf.set(`${p}self_attn.qkv_proj.weight`, w.matrix(`${g}attn_qkv.weight`, (H + 2 * Hkv) * D, C, 0.1));
    hf.set(`${p}self_attn.o_proj.weight`, w.matrix(`${g}attn_output.weight`, C, H * D, 0.1));
    hf.set(`${p}post_attention_layernorm.weight`, w.vector(`${g}ffn_norm.weight`, C, 0.1, 1));
    hf.set(`${p}mlp.gate_up_proj.weight`, w.matrix(`${g}ffn_up.weight`, 2 * F, C, 0.1));
    hf.set(`${p}mlp.down_proj.weight`, w.matrix(`${g}ffn_down.weight`, C, F, 0.1));
  }
  hf.set('model.norm.weight', w.vector('output_norm.weight', C, 0.1, 1));
  hf.set('lm_head.weight', tie ? hf.get('model.embed_tokens.weight')! : w.matrix('output.weight', V, C, 0.15));

  const key = (k: string) => `phi3.${k}`;
  const metadata: Array<[string, GgufMetadataEntry]> = [
    // Not "phi3" in general.name: llama.cpp's vocabulary loader then looks up Phi-3's "</s>", "<unk>"
    // and "<s>" by text (llama-vocab.cpp), which this byte-level vocabulary does not have.
    ...header('phi3', `tiny-phi-${dtype}`, dtype, 'gpt-2'),
    [key('context_length'), gguf.u32(ctx)],
    [key('rope.scaling.original_context_length'), gguf.u32(ctx)],
    [key('embedding_length'), gguf.u32(C)],
    [key('feed_forward_length'), gguf.u32(F)],
    [key('block_count'), gguf.u32(L)],
    [key('attention.head_count'), gguf.u32(H)],
    [key('attention.head_count_kv'), gguf.u32(Hkv)],
    [key('attention.layer_norm_rms_epsilon'), gguf.f32(eps)],
    [key('rope.dimension_count'), gguf.u32(Math.floor(Math.floor(partial * C) / H))],
    [key('rope.freq_base'), gguf.f32(theta)],
    [key('attention.sliding_window'), gguf.u32(options.slidingWindow ?? 0)],
  ];
  writeGguf(path, { metadata, tensors: w.tensors });
  const config = {
    architectures: ['Phi3ForCausalLM'],
    model_type: 'phi3',
    vocab_size: V,
    hidden_size: C,
    intermediate_size: F,
    num_hidden_layers: L,
    num_attention_heads: H,
    num_key_value_heads: Hkv,
    max_position_embeddings: ctx,
    original_max_position_embeddings: ctx,
    rms_norm_eps: eps,
    rope_theta: theta,
    rope_scaling: null,
    ...(partial !== 1 ? { partial_rotary_factor: partial } : {}),
    sliding_window: options.slidingWindow ?? null,
    hidden_act: 'silu',
    tie_word_embeddings: tie,
    bos_token_id: vocab.bosId,
    eos_token_id: vocab.eosId,
    torch_dtype: 'float32',
  };
  return { path, config, weights: hf, vocab };
}

export interface TinyGemma3Options extends TinyArchOptions {
  /** head_dim (Gemma 3: 256, apart from hidden / heads); default 24. */
  headDim?: number;
  /** query_pre_attn_scalar; default head_dim (llama.cpp's scale for every Gemma 3 but the 27B). */
  queryPreAttnScalar?: number;
  /** sliding_window; default 5. */
  slidingWindow?: number;
  /** sliding_window_pattern: every n-th layer is global; default 3 (Gemma 3 ships 6). */
  slidingWindowPattern?: number;
  /** rope_local_base_freq of the sliding layers; default 1e4 (Gemma 3 only). */
  ropeLocalTheta?: number;
  /** Gemma 3: rope_scaling linear with this factor (the 4B and larger: 8), on the global layers only. */
  ropeLinearFactor?: number;
  /** Gemma 2: attn_logit_softcapping (default 50) and final_logit_softcapping (default 30). */
  attnLogitSoftcap?: number;
  finalLogitSoftcap?: number;
}

/**
 * A random Gemma 3 text model GGUF, as convert_hf_to_gguf.py's Gemma3Model writes it (learned from
 * conversion/gemma.py and llama.cpp's src/models/gemma3.cpp): general.architecture "gemma3";
 * gemma3.{context_length, embedding_length, block_count, feed_forward_length, attention.head_count,
 * attention.head_count_kv, attention.layer_norm_rms_epsilon, attention.key_length / value_length
 * (head_dim), rope.freq_base (the global layers'), attention.sliding_window}; no
 * sliding_window_pattern and no rope.freq_base_swa, so llama.cpp takes its defaults (a pattern of 6,
 * base 1e4) unless the file says otherwise: this writer writes the pattern when it is not 6, as a
 * converter that knew it would, and freq_base_swa when not 1e4. Every *norm.weight is stored as
 * 1 + w (Gemma's RMSNorm scales by 1 + w); the returned HF weights hold w. Tensors:
 * blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_q_norm, attn_k_norm, attn_output,
 * post_attention_norm, ffn_norm (pre_feedforward_layernorm), ffn_gate, ffn_up, ffn_down,
 * post_ffw_norm}; tied embeddings (no output.weight) unless asked.
 * Defaults: 4 layers (sliding, sliding, global, sliding with a pattern of 3), hidden 64, 4 heads of
 * 24 over 2 KV heads, FFN 96, theta 1e6, eps 1e-6.
 */
export function writeTinyGemma3Gguf(path: string, options: TinyGemma3Options = {}): TinyModel {
  return writeTinyGemmaGguf('gemma3', path, options);
}

/**
 * A random Gemma 2 GGUF, as convert_hf_to_gguf.py's Gemma2Model writes it (conversion/gemma.py,
 * src/models/gemma2.cpp): as writeTinyGemma3Gguf but general.architecture "gemma2", no q/k norms,
 * one RoPE base (no rope.freq_base written: llama.cpp's default 1e4, Gemma 2's rope_theta), and
 * gemma2.attn_logit_softcapping / final_logit_softcapping; every other layer slides (llama.cpp's
 * default pattern 2, written only when another is asked for); always tied (llama.cpp's gemma2 reads
 * no output.weight). Defaults as writeTinyGemma3Gguf with a pattern of 2.
 */
export function writeTinyGemma2Gguf(path: string, options: TinyGemma3Options = {}): TinyModel {
  return writeTinyGemmaGguf('gemma2', path, { slidingWindowPattern: 2, ropeTheta: 1e4, ...options, tieEmbeddings: true });
}

function writeTinyGemmaGguf(arch: 'gemma2' | 'gemma3', path: string, options: TinyGemma3Options): TinyModel {
  const gemma2 = arch === 'gemma2';
  if (gemma2 && (options.ropeLocalTheta !== undefined || options.ropeTheta !== undefined && options.ropeTheta !== 1e4)) {
    throw new Error('writeTinyGemma2Gguf: Gemma 2 has one RoPE base, 1e4');
  }
  const attnCap = options.attnLogitSoftcap ?? 50;
  const finalCap = options.finalLogitSoftcap ?? 30;
  const defaultPattern = gemma2 ? 2 : 6;
  const dtype = options.dtype ?? 'f32';
  const C = options.hiddenSize ?? 64;
  const F = options.intermediateSize ?? 96;
  const L = options.numLayers ?? 4;
  const H = options.numHeads ?? 4;
  const Hkv = options.numKvHeads ?? 2;
  const D = options.headDim ?? 24;
  const ctx = options.contextLength ?? 256;
  const theta = options.ropeTheta ?? 1e6;
  const localTheta = options.ropeLocalTheta ?? 1e4;
  const eps = options.normEps ?? 1e-6;
  const tie = options.tieEmbeddings ?? true;
  const window = options.slidingWindow ?? 5;
  const pattern = options.slidingWindowPattern ?? 3;
  const vocab = tinyGpt2Vocab();
  const V = vocab.tokens.length;
  const w = writer(options.seed ?? 1, GGML_TYPE[dtype]);
  const hf = w.weights;
  /** A norm weight w near 0 (Gemma's are offsets from 1): stored as 1 + w, returned as w. */
  const norm = (gg: string, n: number) => {
    const stored = w.vector(gg, n, 0.2, 1);
    return stored.map((v) => v - 1);
  };

  hf.set('model.embed_tokens.weight', w.matrix('token_embd.weight', V, C, 0.1));
  for (let l = 0; l < L; l++) {
    const p = `model.layers.${l}.`;
    const g = `blk.${l}.`;
    hf.set(`${p}input_layernorm.weight`, norm(`${g}attn_norm.weight`, C));
    hf.set(`${p}self_attn.q_proj.weight`, w.matrix(`${g}attn_q.weight`, H * D, C, 0.1));
    hf.set(`${p}self_attn.k_proj.weight`, w.matrix(`${g}attn_k.weight`, Hkv * D, C, 0.1));
    hf.set(`${p}self_attn.v_proj.weight`, w.matrix(`${g}attn_v.weight`, Hkv * D, C, 0.1));
    if (!gemma2) {
      hf.set(`${p}self_attn.q_norm.weight`, norm(`${g}attn_q_norm.weight`, D));
      hf.set(`${p}self_attn.k_norm.weight`, norm(`${g}attn_k_norm.weight`, D));
    }
    hf.set(`${p}self_attn.o_proj.weight`, w.matrix(`${g}attn_output.weight`, C, H * D, 0.1));
    hf.set(`${p}post_attention_layernorm.weight`, norm(`${g}post_attention_norm.weight`, C));
    hf.set(`${p}pre_feedforward_layernorm.weight`, norm(`${g}ffn_norm.weight`, C));
    hf.set(`${p}mlp.gate_proj.weight`, w.matrix(`${g}ffn_gate.weight`, F, C, 0.1));
    hf.set(`${p}mlp.up_proj.weight`, w.matrix(`${g}ffn_up.weight`, F, C, 0.1));
    hf.set(`${p}mlp.down_proj.weight`, w.matrix(`${g}ffn_down.weight`, C, F, 0.1));
    hf.set(`${p}post_feedforward_layernorm.weight`, norm(`${g}post_ffw_norm.weight`, C));
  }
  hf.set('model.norm.weight', norm('output_norm.weight', C));
  hf.set('lm_head.weight', tie ? hf.get('model.embed_tokens.weight')! : w.matrix('output.weight', V, C, 0.1));

  const key = (k: string) => `${arch}.${k}`;
  const more = (entries: Array<[string, GgufMetadataEntry]>, when: boolean) => (when ? entries : []);
  const metadata: Array<[string, GgufMetadataEntry]> = [
    ...header(arch, `tiny-${arch}-${dtype}`, dtype, 'gpt-2'),
    [key('context_length'), gguf.u32(ctx)],
    [key('embedding_length'), gguf.u32(C)],
    [key('block_count'), gguf.u32(L)],
    [key('feed_forward_length'), gguf.u32(F)],
    [key('attention.head_count'), gguf.u32(H)],
    [key('attention.head_count_kv'), gguf.u32(Hkv)],
    [key('attention.layer_norm_rms_epsilon'), gguf.f32(eps)],
    [key('attention.key_length'), gguf.u32(D)],
    [key('attention.value_length'), gguf.u32(D)],
    ...more([[key('rope.freq_base'), gguf.f32(theta)]], !gemma2),
    [key('attention.sliding_window'), gguf.u32(window)],
    ...more([[key('attention.sliding_window_pattern'), gguf.u32(pattern)]], pattern !== defaultPattern),
    ...more([[key('rope.freq_base_swa'), gguf.f32(localTheta)]], !gemma2 && localTheta !== 1e4),
    ...more(
      [
        [key('rope.scaling.type'), gguf.string('linear')],
        [key('rope.scaling.factor'), gguf.f32(options.ropeLinearFactor ?? 1)],
      ],
      options.ropeLinearFactor !== undefined,
    ),
    ...more(
      [
        [key('attn_logit_softcapping'), gguf.f32(attnCap)],
        [key('final_logit_softcapping'), gguf.f32(finalCap)],
      ],
      gemma2,
    ),
  ];
  writeGguf(path, { metadata, tensors: w.tensors });
  const config = {
    architectures: [gemma2 ? 'Gemma2ForCausalLM' : 'Gemma3ForCausalLM'],
    model_type: gemma2 ? 'gemma2' : 'gemma3_text',
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
    ...(gemma2 ? {} : { rope_local_base_freq: localTheta }),
    rope_scaling: options.ropeLinearFactor !== undefined ? { rope_type: 'linear', factor: options.ropeLinearFactor } : null,
    query_pre_attn_scalar: options.queryPreAttnScalar ?? D,
    sliding_window: window,
    sliding_window_pattern: pattern,
    hidden_activation: 'gelu_pytorch_tanh',
    attn_logit_softcapping: gemma2 ? attnCap : null,
    final_logit_softcapping: gemma2 ? finalCap : null,
    attention_bias: false,
    tie_word_embeddings: tie,
    bos_token_id: vocab.bosId,
    eos_token_id: vocab.eosId,
    torch_dtype: 'float32',
  };
  return { path, config, weights: hf, vocab };
}

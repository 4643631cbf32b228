// Model configuration, normalised from a Hugging Face config.json or GGUF metadata into one shape
// the forward pass reads. Unknown architectures and missing keys fail with a message naming them.
import { ModelFormatError } from '../src/errors.ts';
import type { RopeScaling } from '../kernels/rope.ts';

export type Architecture = 'llama' | 'qwen2' | 'qwen3' | 'phi3' | 'gemma2' | 'gemma3' | 'gpt2';

export type { RopeScaling };

export interface ModelConfig {
  architecture: Architecture;
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  maxPositions: number;
  normEps: number;
  /** RMSNorm (llama, qwen2) or LayerNorm with bias (gpt2). */
  norm: 'rms' | 'layer';
  /** SwiGLU MLP (gate, up, down), GeGLU (gate, up, down with the tanh GELU: Gemma) or GELU MLP (fc, proj). */
  mlp: 'swiglu' | 'geglu' | 'gelu';
  /** Rotary embeddings, or learned absolute positions (gpt2). */
  rope?: {
    theta: number;
    dims: number;
    scaling?: RopeScaling;
    /** Per-frequency divisors (dims / 2), as GGUF files store llama3 scaling (rope_freqs.weight). */
    frequencyFactors?: Float32Array;
    /**
     * Layers with a sliding window rotate with this base instead, unscaled (Gemma 3's
     * rope_local_base_freq; `scaling` applies to the global layers only).
     */
    localTheta?: number;
  };
  /** Biases on the q, k and v projections (qwen2, gpt2). */
  qkvBias: boolean;
  /**
   * RMSNorm of each query and key head (D elements, weights attn_q_norm / attn_k_norm of D) after
   * the projection and before RoPE (qwen3, gemma3).
   */
  qkNorm?: boolean;
  /** Token embeddings are multiplied by this as they are gathered (Gemma: sqrt(hidden)); the tied LM head is not. */
  embedScale?: number;
  /**
   * Attention scores are q·k times this instead of 1/sqrt(head size) (Gemma:
   * query_pre_attn_scalar^-0.5); the attention kernels fold it into the queries as they load them.
   */
  attentionScale?: number;
  /** Attention logit soft-capping (Gemma 2): scores s become c tanh(s / c) before the softmax. */
  attnLogitSoftcap?: number;
  /** Final logit soft-capping (Gemma 2): logits l become c tanh(l / c). */
  finalLogitSoftcap?: number;
  /**
   * Gemma's sandwich norms: the attention and MLP outputs are RMS-normalised (post_attention_norm,
   * post_ffw_norm, GGUF's names) before their residual adds.
   */
  postNorms?: boolean;
  /** Biases on the output projection and MLP (gpt2). */
  outputBias: boolean;
  tieWordEmbeddings: boolean;
  bosTokenId?: number;
  eosTokenIds: number[];
  /**
   * Sliding-window attention, one entry per layer: the keys a query attends, its own included (a
   * query at position q sees keys q - window + 1 ..= q, as transformers' masking_utils has it); 0 =
   * unlimited. Absent: no layer has a window.
   */
  attentionWindows?: number[];
}

/** Layer `layer`'s sliding window in keys (0 = unlimited). */
export function layerWindow(config: ModelConfig, layer: number): number {
  return config.attentionWindows?.[layer] ?? 0;
}

/** "sliding window 4096 (all layers)", "... (layers 2, 3)"; undefined when no layer has a window. */
export function describeAttentionWindows(config: ModelConfig): string | undefined {
  const windows = config.attentionWindows ?? [];
  const sizes = [...new Set(windows.filter((w) => w > 0))];
  if (sizes.length === 0) return undefined;
  return sizes
    .map((size) => {
      const layers = windows.flatMap((w, l) => (w === size ? [l] : []));
      const which = layers.length === config.numLayers ? 'all layers' : `${layers.length === 1 ? 'layer' : 'layers'} ${compactRanges(layers)}`;
      return `sliding window ${size} (${which})`;
    })
    .join(', ');
}

/** [0, 1, 2, 5] -> "0-2, 5". */
function compactRanges(values: number[]): string {
  const parts: string[] = [];
  for (let i = 0; i < values.length; ) {
    let j = i;
    while (j + 1 < values.length && values[j + 1] === values[j] + 1) j++;
    parts.push(j === i ? `${values[i]}` : `${values[i]}-${values[j]}`);
    i = j + 1;
  }
  return parts.join(', ');
}

type Json = Record<string, unknown>;

function num(config: Json, key: string, where: string, fallback?: number): number {
  const value = config[key];
  if (value === undefined || value === null) {
    if (fallback !== undefined) return fallback;
    throw new ModelFormatError(`${where}: missing "${key}"`);
  }
  if (typeof value !== 'number' || !Number.isFinite(value)) {
    throw new ModelFormatError(`${where}: "${key}" must be a number (got ${JSON.stringify(value)})`);
  }
  return value;
}

function positiveInt(config: Json, key: string, where: string, fallback?: number): number {
  const value = num(config, key, where, fallback);
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw new ModelFormatError(`${where}: "${key}" must be a positive integer (got ${value})`);
  }
  return value;
}

function tokenIds(value: unknown): number[] {
  if (typeof value === 'number') return [value];
  if (Array.isArray(value)) return value.filter((v): v is number => typeof v === 'number');
  return [];
}

function ropeScaling(raw: unknown, where: string): RopeScaling | undefined {
  if (raw === undefined || raw === null) return undefined;
  const s = raw as Json;
  const type = (s.rope_type ?? s.type) as string | undefined;
  if (type === 'linear') return { type, factor: num(s, 'factor', `${where} rope_scaling`) };
  if (type === 'llama3') {
    return {
      type,
      factor: num(s, 'factor', `${where} rope_scaling`),
      low_freq_factor: num(s, 'low_freq_factor', `${where} rope_scaling`),
      high_freq_factor: num(s, 'high_freq_factor', `${where} rope_scaling`),
      original_max_position_embeddings: num(s, 'original_max_position_embeddings', `${where} rope_scaling`),
    };
  }
  if (type === 'default') return undefined;
  if (type === 'longrope' || type === 'su') {
    // Phi-3-mini-128k, Phi-3.5, Phi-4-mini: per-frequency long/short factors chosen by sequence length.
    throw new ModelFormatError(
      `${where}: rope_scaling type "${type}" (LongRoPE) is not supported (supported: linear, llama3); Phi-3-mini-4k and Phi-4 ship without rope_scaling`,
    );
  }
  throw new ModelFormatError(`${where}: rope_scaling type "${type}" is not supported (supported: linear, llama3)`);
}

/**
 * Per-layer sliding windows from an HF config, as transformers reads them (undefined: none).
 * - MistralForCausalLM: `sliding_window` on every layer; null means none, and an absent key means
 *   MistralConfig's default, 4096 (Mistral 7B v0.1 sets 4096, v0.2 and later set null).
 * - Qwen2ForCausalLM and Qwen3ForCausalLM (same config keys and defaults): only with `use_sliding_window: true` (else Qwen2Config sets sliding_window to
 *   None); then `sliding_window` (default 4096, null = none) applies to the layers whose
 *   `layer_types` entry is "sliding_attention", by default layer i >= `max_window_layers` (default
 *   28): Qwen2Config.__post_init__ builds layer_types that way.
 * - Phi3ForCausalLM: `sliding_window` on every layer when set (Phi-3-mini-4k: 2047; null or absent,
 *   as Phi-4 has it: none).
 * - LlamaForCausalLM: LlamaConfig has no sliding window; a `sliding_window` key is ignored, as
 *   transformers ignores it.
 */
function hfAttentionWindows(config: Json, archName: string, numLayers: number, where: string): number[] | undefined {
  const windowSize = (fallback: number): number | undefined => {
    if (config.sliding_window === null) return undefined;
    return positiveInt(config, 'sliding_window', where, fallback);
  };
  if (archName === 'MistralForCausalLM') {
    const size = windowSize(4096);
    return size === undefined ? undefined : new Array<number>(numLayers).fill(size);
  }
  if (archName === 'Phi3ForCausalLM') {
    if (config.sliding_window === undefined || config.sliding_window === null) return undefined;
    return new Array<number>(numLayers).fill(positiveInt(config, 'sliding_window', where));
  }
  if (archName === 'Qwen2ForCausalLM' || archName === 'Qwen3ForCausalLM') {
    if (config.use_sliding_window !== true) return undefined;
    const size = windowSize(4096);
    if (size === undefined) return undefined;
    let sliding: boolean[];
    if (config.layer_types !== undefined && config.layer_types !== null) {
      const types = config.layer_types;
      if (!Array.isArray(types) || types.length !== numLayers || !types.every((t) => t === 'sliding_attention' || t === 'full_attention')) {
        throw new ModelFormatError(
          `${where}: "layer_types" must list "sliding_attention" or "full_attention" for each of the ${numLayers} layers (got ${JSON.stringify(types)})`,
        );
      }
      sliding = types.map((t) => t === 'sliding_attention');
    } else {
      const maxWindowLayers = num(config, 'max_window_layers', where, 28);
      if (!Number.isSafeInteger(maxWindowLayers) || maxWindowLayers < 0) {
        throw new ModelFormatError(`${where}: "max_window_layers" must be an integer >= 0 (got ${maxWindowLayers})`);
      }
      sliding = Array.from({ length: numLayers }, (_, l) => l >= maxWindowLayers);
    }
    return sliding.some(Boolean) ? sliding.map((s) => (s ? size : 0)) : undefined;
  }
  return undefined;
}

const HF_ARCHITECTURES: Record<string, Architecture> = {
  LlamaForCausalLM: 'llama',
  MistralForCausalLM: 'llama',
  Qwen2ForCausalLM: 'qwen2',
  Qwen3ForCausalLM: 'qwen3',
  Phi3ForCausalLM: 'phi3',
  Gemma2ForCausalLM: 'gemma2',
  Gemma3ForCausalLM: 'gemma3',
  GPT2LMHeadModel: 'gpt2',
};

/** Architectures refused with a reason more useful than "not supported". */
const REFUSED_HF_ARCHITECTURES: Record<string, string> = {
  Gemma3ForConditionalGeneration:
    'this is Gemma 3 with its vision tower (4B and larger, weights under language_model.*); use a GGUF file that ' +
    "llama.cpp's convert_hf_to_gguf.py made from it (it keeps the text model) or a Gemma3ForCausalLM folder",
};

/**
 * Which layers of a Gemma 2 / 3 slide: config.json's `layer_types` when given, else every layer but
 * each n-th (Gemma 3: `sliding_window_pattern`, default 6, so layers 5, 11, ... are global; Gemma 2:
 * every other, layers 1, 3, ...), as Gemma2Config / Gemma3TextConfig build layer_types and llama.cpp's
 * set_swa_pattern does.
 */
function gemmaSlidingLayers(config: Json, numLayers: number, where: string, defaultPattern: number): boolean[] {
  if (config.layer_types !== undefined && config.layer_types !== null) {
    const types = config.layer_types;
    if (!Array.isArray(types) || types.length !== numLayers || !types.every((t) => t === 'sliding_attention' || t === 'full_attention')) {
      throw new ModelFormatError(
        `${where}: "layer_types" must list "sliding_attention" or "full_attention" for each of the ${numLayers} layers (got ${JSON.stringify(types)})`,
      );
    }
    return types.map((t) => t === 'sliding_attention');
  }
  const pattern = positiveInt(config, 'sliding_window_pattern', where, defaultPattern);
  return Array.from({ length: numLayers }, (_, l) => (l + 1) % pattern !== 0);
}

/** A soft-cap from config.json: its default when absent, none when null. */
function softcap(config: Json, key: string, where: string, fallback: number | undefined): number | undefined {
  if (config[key] === null || (config[key] === undefined && fallback === undefined)) return undefined;
  const value = num(config, key, where, fallback);
  if (!(value > 0)) throw new ModelFormatError(`${where}: "${key}" must be a number > 0 or null (got ${value})`);
  return value;
}

/**
 * Gemma2ForCausalLM's and Gemma3ForCausalLM's config.json (Gemma2Config, Gemma3TextConfig, their
 * defaults where a key is absent). Gemma 2 has no q/k norms, one RoPE base, soft-capping of the
 * attention and final logits (defaults 50 and 30); Gemma 3 has q/k norms, a local RoPE base and, in
 * every released model, no soft-capping.
 */
function gemmaFromHf(architecture: 'gemma2' | 'gemma3', config: Json, where: string, eos: number[], bos: number | undefined): ModelConfig {
  const gemma2 = architecture === 'gemma2';
  const attnLogitSoftcap = softcap(config, 'attn_logit_softcapping', where, gemma2 ? 50 : undefined);
  const finalLogitSoftcap = softcap(config, 'final_logit_softcapping', where, gemma2 ? 30 : undefined);
  if (!gemma2 && attnLogitSoftcap !== undefined) {
    // transformers' Gemma 3 does read it, but llama.cpp's converter asserts it absent; no model has it.
    throw new ModelFormatError(`${where}: "attn_logit_softcapping" is set (${attnLogitSoftcap}); Gemma 3 attention soft-capping is not supported`);
  }
  const hiddenSize = positiveInt(config, 'hidden_size', where);
  const numHeads = positiveInt(config, 'num_attention_heads', where, 8);
  const headDim = positiveInt(config, 'head_dim', where, 256);
  const numLayers = positiveInt(config, 'num_hidden_layers', where);
  const sliding = gemmaSlidingLayers(config, numLayers, where, gemma2 ? 2 : 6);
  const window = positiveInt(config, 'sliding_window', where, 4096);
  // transformers 5 nests the two RoPE settings under rope_parameters; earlier configs keep them flat.
  const params = (config.rope_parameters ?? {}) as Record<string, Json | undefined>;
  const full = params.full_attention;
  const local = params.sliding_attention;
  const theta = full ? num(full, 'rope_theta', `${where} rope_parameters.full_attention`) : num(config, 'rope_theta', where, gemma2 ? 10000 : 1e6);
  return {
    architecture,
    vocabSize: positiveInt(config, 'vocab_size', where),
    hiddenSize,
    intermediateSize: positiveInt(config, 'intermediate_size', where),
    numLayers,
    numHeads,
    numKvHeads: positiveInt(config, 'num_key_value_heads', where, 4),
    headDim,
    maxPositions: positiveInt(config, 'max_position_embeddings', where, 131072),
    normEps: num(config, 'rms_norm_eps', where, 1e-6),
    norm: 'rms',
    mlp: 'geglu',
    rope: {
      theta,
      dims: headDim,
      scaling: ropeScaling(full ?? config.rope_scaling, where),
      // Gemma 2 rotates every layer alike (its local layers take the global base).
      ...(gemma2
        ? {}
        : { localTheta: local ? num(local, 'rope_theta', `${where} rope_parameters.sliding_attention`) : num(config, 'rope_local_base_freq', where, 10000) }),
    },
    qkvBias: config.attention_bias === true,
    outputBias: false,
    ...(gemma2 ? {} : { qkNorm: true }),
    ...(attnLogitSoftcap !== undefined ? { attnLogitSoftcap } : {}),
    ...(finalLogitSoftcap !== undefined ? { finalLogitSoftcap } : {}),
    embedScale: Math.fround(Math.sqrt(hiddenSize)),
    attentionScale: 1 / Math.sqrt(num(config, 'query_pre_attn_scalar', where, 256)),
    postNorms: true,
    tieWordEmbeddings: config.tie_word_embeddings !== false,
    bosTokenId: bos,
    eosTokenIds: eos,
    ...(sliding.some(Boolean) ? { attentionWindows: sliding.map((s) => (s ? window : 0)) } : {}),
  };
}

/** Normalise a Hugging Face config.json (and generation_config.json, when present). */
export function configFromHf(config: Json, generation: Json = {}, where = 'config.json'): ModelConfig {
  const archName = (Array.isArray(config.architectures) ? config.architectures[0] : undefined) as string | undefined;
  const architecture = archName ? HF_ARCHITECTURES[archName] : undefined;
  const refusal = archName ? REFUSED_HF_ARCHITECTURES[archName] : undefined;
  if (refusal) throw new ModelFormatError(`${where}: architecture "${archName}" is not supported: ${refusal}`);
  if (!architecture) {
    throw new ModelFormatError(
      `${where}: architecture ${JSON.stringify(archName ?? config.model_type)} is not supported ` +
        `(supported: ${Object.keys(HF_ARCHITECTURES).join(', ')})`,
    );
  }
  const eos = tokenIds(generation.eos_token_id ?? config.eos_token_id);
  const bos = tokenIds(generation.bos_token_id ?? config.bos_token_id)[0];
  if (architecture === 'gpt2') {
    const hiddenSize = positiveInt(config, 'n_embd', where);
    const numHeads = positiveInt(config, 'n_head', where);
    return {
      architecture,
      vocabSize: positiveInt(config, 'vocab_size', where),
      hiddenSize,
      intermediateSize: positiveInt(config, 'n_inner', where, 4 * hiddenSize),
      numLayers: positiveInt(config, 'n_layer', where),
      numHeads,
      numKvHeads: numHeads,
      headDim: hiddenSize / numHeads,
      maxPositions: positiveInt(config, 'n_positions', where),
      normEps: num(config, 'layer_norm_epsilon', where, 1e-5),
      norm: 'layer',
      mlp: 'gelu',
      qkvBias: true,
      outputBias: true,
      tieWordEmbeddings: config.tie_word_embeddings !== false,
      bosTokenId: bos,
      eosTokenIds: eos,
    };
  }
  if (architecture === 'gemma2' || architecture === 'gemma3') return gemmaFromHf(architecture, config, where, eos, bos);
  const hiddenSize = positiveInt(config, 'hidden_size', where);
  const numHeads = positiveInt(config, 'num_attention_heads', where);
  const headDim = positiveInt(config, 'head_dim', where, hiddenSize / numHeads);
  const partial = num(config, 'partial_rotary_factor', where, 1);
  const numLayers = positiveInt(config, 'num_hidden_layers', where);
  const attentionWindows = hfAttentionWindows(config, archName!, numLayers, where);
  return {
    architecture,
    vocabSize: positiveInt(config, 'vocab_size', where),
    hiddenSize,
    intermediateSize: positiveInt(config, 'intermediate_size', where),
    numLayers,
    numHeads,
    numKvHeads: positiveInt(config, 'num_key_value_heads', where, numHeads),
    headDim,
    maxPositions: positiveInt(config, 'max_position_embeddings', where, 2048),
    normEps: num(config, 'rms_norm_eps', where, architecture === 'phi3' ? 1e-5 : 1e-6),
    norm: 'rms',
    mlp: 'swiglu',
    rope: {
      theta: num(config, 'rope_theta', where, 10000),
      dims: Math.round(headDim * partial),
      scaling: ropeScaling(config.rope_scaling, where),
    },
    qkvBias: architecture === 'qwen2' || config.attention_bias === true,
    outputBias: false,
    ...(architecture === 'qwen3' ? { qkNorm: true } : {}),
    tieWordEmbeddings: config.tie_word_embeddings === true,
    bosTokenId: bos,
    eosTokenIds: eos,
    ...(attentionWindows ? { attentionWindows } : {}),
  };
}

/** Check the invariants the kernels rely on; called once per loaded model. */
export function validateConfig(config: ModelConfig, where: string): void {
  const fail = (what: string) => {
    throw new ModelFormatError(`${where}: ${what}`);
  };
  if (!Number.isInteger(config.headDim)) fail(`hidden size ${config.hiddenSize} is not divisible by ${config.numHeads} heads`);
  if (config.numHeads % config.numKvHeads !== 0) {
    fail(`${config.numHeads} attention heads are not a multiple of ${config.numKvHeads} key/value heads`);
  }
  if (config.rope && (config.rope.dims % 2 !== 0 || config.rope.dims > config.headDim)) {
    fail(`rotary dimensions ${config.rope.dims} must be even and at most the head size ${config.headDim}`);
  }
  for (const [name, cap] of [['attention logit soft-cap', config.attnLogitSoftcap], ['final logit soft-cap', config.finalLogitSoftcap]] as const) {
    if (cap !== undefined && !(Number.isFinite(cap) && cap > 0)) fail(`${name} ${cap} must be a finite number > 0`);
  }
  const windows = config.attentionWindows;
  if (windows) {
    if (windows.length !== config.numLayers) fail(`${windows.length} sliding windows for ${config.numLayers} layers`);
    const bad = windows.findIndex((w) => !Number.isSafeInteger(w) || w < 0 || w > 0xffffffff);
    if (bad >= 0) fail(`layer ${bad}: sliding window ${windows[bad]} must be an integer in [0, 2^32 - 1] (0 = none)`);
  }
}

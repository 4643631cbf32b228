// Model configuration, normalised from a Hugging Face config.json or GGUF metadata into one shape
// the forward pass reads. Unknown architectures and missing keys fail with a message naming them.
import { ModelFormatError } from '../src/errors.ts';
import type { RopeScaling } from '../kernels/rope.ts';

export type Architecture = 'llama' | 'qwen2' | 'gpt2';

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
  /** SwiGLU MLP (gate, up, down) or GELU MLP (fc, proj). */
  mlp: 'swiglu' | 'gelu';
  /** Rotary embeddings, or learned absolute positions (gpt2). */
  rope?: {
    theta: number;
    dims: number;
    scaling?: RopeScaling;
    /** Per-frequency divisors (dims / 2), as GGUF files store llama3 scaling (rope_freqs.weight). */
    frequencyFactors?: Float32Array;
  };
  /** Biases on the q, k and v projections (qwen2, gpt2). */
  qkvBias: boolean;
  /** Biases on the output projection and MLP (gpt2). */
  outputBias: boolean;
  tieWordEmbeddings: boolean;
  bosTokenId?: number;
  eosTokenIds: number[];
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
  throw new ModelFormatError(`${where}: rope_scaling type "${type}" is not supported (supported: linear, llama3)`);
}

const HF_ARCHITECTURES: Record<string, Architecture> = {
  LlamaForCausalLM: 'llama',
  MistralForCausalLM: 'llama',
  Qwen2ForCausalLM: 'qwen2',
  GPT2LMHeadModel: 'gpt2',
};

/** Normalise a Hugging Face config.json (and generation_config.json, when present). */
export function configFromHf(config: Json, generation: Json = {}, where = 'config.json'): ModelConfig {
  const archName = (Array.isArray(config.architectures) ? config.architectures[0] : undefined) as string | undefined;
  const architecture = archName ? HF_ARCHITECTURES[archName] : undefined;
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
  const hiddenSize = positiveInt(config, 'hidden_size', where);
  const numHeads = positiveInt(config, 'num_attention_heads', where);
  const headDim = positiveInt(config, 'head_dim', where, hiddenSize / numHeads);
  const partial = num(config, 'partial_rotary_factor', where, 1);
  return {
    architecture,
    vocabSize: positiveInt(config, 'vocab_size', where),
    hiddenSize,
    intermediateSize: positiveInt(config, 'intermediate_size', where),
    numLayers: positiveInt(config, 'num_hidden_layers', where),
    numHeads,
    numKvHeads: positiveInt(config, 'num_key_value_heads', where, numHeads),
    headDim,
    maxPositions: positiveInt(config, 'max_position_embeddings', where, 2048),
    normEps: num(config, 'rms_norm_eps', where, 1e-6),
    norm: 'rms',
    mlp: 'swiglu',
    rope: {
      theta: num(config, 'rope_theta', where, 10000),
      dims: Math.round(headDim * partial),
      scaling: ropeScaling(config.rope_scaling, where),
    },
    qkvBias: architecture === 'qwen2' || config.attention_bias === true,
    outputBias: false,
    tieWordEmbeddings: config.tie_word_embeddings === true,
    bosTokenId: bos,
    eosTokenIds: eos,
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
}

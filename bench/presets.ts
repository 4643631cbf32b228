// Sizes and repetitions of a bench run. 'full' fits a real GPU (large copy, many FMA workgroups,
// long contexts); 'quick' fits the software adapter in about two minutes; 'test' is the smallest
// that still exercises every path (the test suite runs it).
import { configFromHf, type ModelConfig } from '../models/config.ts';
import { SYNTHETIC_SHAPES, type SyntheticShape } from '../models/synthetic-gguf.ts';
import { WEIGHT_DTYPES, type WeightDtype } from '../kernels/weights.ts';
import type { TimingOptions } from './timing.ts';

export type PresetName = 'full' | 'quick' | 'test';

export interface BenchPreset {
  name: PresetName;
  roofline: {
    /** Bytes of each of the copy's two buffers (capped by the adapter's binding limit). */
    copyBytes: number;
    fmaWorkgroups: number;
    fmaIterations: number;
    /** Trivial dispatches recorded in one pass to measure the per-dispatch cost. */
    dispatches: number;
    /** Submit-and-wait round trips to measure the submit cost. */
    submits: number;
  };
  kernels: {
    /** Activation rows of the prefill matmul. */
    prefillTokens: number;
    /** Activation rows of the decode matvec (the batch). */
    decodeRows: number;
    dtypes: readonly WeightDtype[];
    /** Projections of the model timed (a subset of PROJECTIONS' names). */
    projections: readonly ProjectionName[];
    /** Query tokens of the prefill attention runs (one sequence, from position 0). */
    attentionPrefill: readonly number[];
    /** Context lengths (keys) of the decode attention runs. */
    attentionDecode: readonly number[];
  };
  e2e: {
    /** Prompt lengths for prompt-processing throughput. */
    promptTokens: readonly number[];
    /** Tokens generated per sequence in the decode runs. */
    decodeTokens: number;
    /** The larger decode batch (concurrent generate calls); 1 is always run too. */
    batch: number;
    /** Repetitions of each prompt-processing and time-to-first-token measurement. */
    repeats: number;
  };
  timing: TimingOptions;
}

export const PRESETS: Record<PresetName, BenchPreset> = {
  full: {
    name: 'full',
    roofline: { copyBytes: 256 * 2 ** 20, fmaWorkgroups: 8192, fmaIterations: 256, dispatches: 2000, submits: 50 },
    kernels: {
      prefillTokens: 512,
      decodeRows: 1,
      dtypes: WEIGHT_DTYPES,
      projections: ['attn_q', 'attn_kv', 'ffn_up', 'ffn_down', 'output'],
      attentionPrefill: [128, 512, 2048],
      attentionDecode: [512, 2048, 4096],
    },
    e2e: { promptTokens: [128, 512], decodeTokens: 128, batch: 8, repeats: 5 },
    timing: { warmup: 3, samples: 15, targetSampleMs: 20, maxReps: 200, budgetMs: 4000 },
  },
  quick: {
    name: 'quick',
    roofline: { copyBytes: 16 * 2 ** 20, fmaWorkgroups: 128, fmaIterations: 64, dispatches: 200, submits: 20 },
    kernels: {
      prefillTokens: 128,
      decodeRows: 1,
      dtypes: WEIGHT_DTYPES,
      projections: ['attn_q', 'ffn_up', 'ffn_down', 'output'],
      attentionPrefill: [128, 512],
      attentionDecode: [128, 512],
    },
    e2e: { promptTokens: [128, 512], decodeTokens: 32, batch: 4, repeats: 3 },
    timing: { warmup: 1, samples: 5, targetSampleMs: 20, maxReps: 50, budgetMs: 1500 },
  },
  test: {
    name: 'test',
    roofline: { copyBytes: 2 ** 20, fmaWorkgroups: 16, fmaIterations: 16, dispatches: 20, submits: 5 },
    kernels: {
      prefillTokens: 32,
      decodeRows: 1,
      dtypes: WEIGHT_DTYPES,
      projections: ['attn_q', 'ffn_down'],
      attentionPrefill: [32],
      attentionDecode: [64],
    },
    e2e: { promptTokens: [16, 32], decodeTokens: 8, batch: 2, repeats: 1 },
    timing: { warmup: 1, samples: 3, targetSampleMs: 2, maxReps: 4, budgetMs: 200 },
  },
};

// ---- kernel shapes ----------------------------------------------------------------------------

export type ProjectionName = 'attn_q' | 'attn_kv' | 'attn_output' | 'ffn_up' | 'ffn_down' | 'output';

/** The (N output, K input) shape of each projection of a model (GGUF names; gate = up's shape). */
export function projectionShape(config: ModelConfig, name: ProjectionName): { N: number; K: number } {
  const { hiddenSize: C, numHeads: Hq, numKvHeads: Hkv, headDim: D, intermediateSize: F, vocabSize: V } = config;
  switch (name) {
    case 'attn_q':
      return { N: Hq * D, K: C };
    case 'attn_kv':
      return { N: Hkv * D, K: C };
    case 'attn_output':
      return { N: C, K: Hq * D };
    case 'ffn_up':
      return { N: F, K: C };
    case 'ffn_down':
      return { N: C, K: F };
    case 'output':
      return { N: V, K: C };
  }
}

/** A model shape the kernels are timed at, and where it came from. */
export interface ShapeSet {
  /** e.g. 'tiny-random-llama', 'llama-2-7b (built in)', or a model path's id. */
  name: string;
  config: ModelConfig;
}

/** Llama-2-7B's shapes (meta-llama/Llama-2-7b-hf config.json), built in so no download is needed; `synth-model --shape llama-2-7b` writes a GGUF of them. */
export const LLAMA_7B_SHAPES: ShapeSet = {
  name: 'llama-2-7b (built-in shapes)',
  config: configFromHf(hfConfigOf(SYNTHETIC_SHAPES['llama-2-7b'])),
};

/**
 * Shapes of a model the memory report plans for (bench `memory`), with the GPU bytes of its
 * weights in a common quantisation and where that figure comes from.
 */
export interface MemoryShape extends ShapeSet {
  weightBytes: number;
  weightSource: string;
}

/**
 * Llama-3-8B (meta-llama/Meta-Llama-3-8B config.json: 32 layers, hidden 4096, FFN 14336, 32 heads,
 * 8 KV heads of 128, vocabulary 128256, context 8192) and Qwen3-8B (Qwen/Qwen3-8B config.json: 36
 * layers, hidden 4096, FFN 12288, 32 heads, 8 KV heads of 128, vocabulary 151936). The KV cache
 * depends only on the layers and KV heads; the other fields make the shapes usable for the kernels.
 * Weight bytes: the Q4_K_M GGUF file sizes (llama.cpp's quantisation, what the GPU holds).
 */
export const MEMORY_SHAPES: Record<'llama-3-8b' | 'qwen3-8b', MemoryShape> = {
  'llama-3-8b': {
    name: 'llama-3-8b (built-in shapes)',
    config: configFromHf({
      architectures: ['LlamaForCausalLM'], hidden_size: 4096, intermediate_size: 14336, num_hidden_layers: 32, num_attention_heads: 32,
      num_key_value_heads: 8, vocab_size: 128256, max_position_embeddings: 8192, rms_norm_eps: 1e-5, rope_theta: 500000, tie_word_embeddings: false,
    }),
    weightBytes: 4.92e9,
    weightSource: 'Q4_K_M, 4.92 GB: Meta-Llama-3-8B-Instruct-Q4_K_M.gguf (huggingface.co/bartowski/Meta-Llama-3-8B-Instruct-GGUF)',
  },
  'qwen3-8b': {
    name: 'qwen3-8b (built-in shapes)',
    config: configFromHf({
      architectures: ['LlamaForCausalLM'], hidden_size: 4096, intermediate_size: 12288, num_hidden_layers: 36, num_attention_heads: 32,
      num_key_value_heads: 8, head_dim: 128, vocab_size: 151936, max_position_embeddings: 40960, rms_norm_eps: 1e-6, rope_theta: 1000000, tie_word_embeddings: false,
    }),
    weightBytes: 5.03e9,
    weightSource: 'Q4_K_M, 5.03 GB: Qwen3-8B-Q4_K_M.gguf (huggingface.co/Qwen/Qwen3-8B-GGUF)',
  },
};
export type MemoryShapeName = keyof typeof MEMORY_SHAPES;

/** A synthetic shape as the HF config.json fields configFromHf reads. */
function hfConfigOf(shape: SyntheticShape): Record<string, unknown> {
  return {
    architectures: ['LlamaForCausalLM'],
    hidden_size: shape.hiddenSize,
    intermediate_size: shape.intermediateSize,
    num_hidden_layers: shape.numLayers,
    num_attention_heads: shape.numHeads,
    num_key_value_heads: shape.numKvHeads,
    vocab_size: shape.vocabSize,
    max_position_embeddings: shape.contextLength,
    rms_norm_eps: shape.rmsNormEps,
    rope_theta: shape.ropeTheta,
  };
}

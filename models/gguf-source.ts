// A GGUF file as a ModelSource: config from the metadata, tokenizer converted from
// tokenizer.ggml.*, tensors read one at a time and repacked into the kernels' planes.
//
// Canonical tensor names are GGUF's own, so no renaming happens here. llama.cpp's converter
// permutes each head's Q and K rows for adjacent-pair RoPE; we honour that by rotating
// interleaved pairs for llama-architecture files instead of undoing the permutation.
import { basename } from 'node:path';
import { ModelFormatError } from '../src/errors.ts';
import { packGguf, type HostWeight, type WeightDtype } from '../kernels/weights.ts';
import type { RopeMode } from '../kernels/rope.ts';
import { validateConfig, type Architecture, type ModelConfig } from './config.ts';
import { GgufFile } from './gguf.ts';
import { GgmlType } from './ggml.ts';
import { tokenizerFromGguf } from './gguf-tokenizer.ts';
import type { ModelSource, TokenizerFiles } from './source.ts';

const DTYPES: Partial<Record<number, WeightDtype>> = {
  [GgmlType.F32]: 'f32',
  [GgmlType.F16]: 'f16',
  [GgmlType.Q8_0]: 'q8_0',
  [GgmlType.Q4_0]: 'q4_0',
  [GgmlType.Q4_1]: 'q4_1',
  [GgmlType.Q5_0]: 'q5_0',
  [GgmlType.Q5_1]: 'q5_1',
  [GgmlType.Q2_K]: 'q2_k',
  [GgmlType.Q3_K]: 'q3_k',
  [GgmlType.Q4_K]: 'q4_k',
  [GgmlType.Q5_K]: 'q5_k',
  [GgmlType.Q6_K]: 'q6_k',
};

const ARCHITECTURES: Record<string, Architecture> = { llama: 'llama', qwen2: 'qwen2', qwen3: 'qwen3', phi3: 'phi3', gemma2: 'gemma2', gemma3: 'gemma3', gpt2: 'gpt2' };

function configFromGguf(file: GgufFile, vocabSize: number, eosTokenIds: number[], bosTokenId: number | undefined, frequencyFactors?: Float32Array): ModelConfig {
  const archName = file.string('general.architecture');
  const architecture = ARCHITECTURES[archName];
  if (!architecture) {
    throw new ModelFormatError(`${file.path}: architecture "${archName}" is not supported (supported: ${Object.keys(ARCHITECTURES).join(', ')})`);
  }
  const key = (name: string) => `${archName}.${name}`;
  const hiddenSize = file.integer(key('embedding_length'));
  const numHeads = file.integer(key('attention.head_count'));
  const headDim = file.integer(key('attention.key_length'), hiddenSize / numHeads);
  const gpt2 = architecture === 'gpt2';
  const scalingType = file.string(key('rope.scaling.type'), 'none');
  if (scalingType !== 'none' && scalingType !== 'linear') {
    throw new ModelFormatError(`${file.path}: rope scaling "${scalingType}" is not supported (supported: none, linear)`);
  }
  // Sliding window: llama.cpp's key is "<arch>.attention.sliding_window" (LLM_KV_ATTENTION_SLIDING_WINDOW
  // in src/llama-arch.cpp), one size for every layer. Read for the llama architecture (a Mistral 7B
  // v0.1 file may carry it); 0 or absent means none. Note llama.cpp's own llama loader does not read
  // it (its llama graph has no window), so past the window our logits follow transformers, not it.
  // phi3: convert_hf_to_gguf.py writes config.json's sliding_window (0 for Phi-4, which has none);
  // llama.cpp's phi3 loader reads it and then turns the window off, so there too our logits follow
  // transformers past the window.
  const gemma3 = architecture === 'gemma3';
  const gemma2 = architecture === 'gemma2';
  const gemma = gemma2 || gemma3;
  // Gemma 2 (src/models/gemma2.cpp): a window of 4096 unless the file says otherwise; both soft-caps
  // always on, 50 and 30 unless the file says otherwise. Gemma 3: the final soft-cap when the file has one.
  const window = architecture === 'llama' || architecture === 'phi3' || gemma3
    ? file.integer(key('attention.sliding_window'), 0)
    : gemma2 ? file.integer(key('attention.sliding_window'), 4096) : 0;
  const finalLogitSoftcap = gemma2 ? file.number(key('final_logit_softcapping'), 30) : gemma3 ? file.number(key('final_logit_softcapping'), 0) : 0;
  const attnLogitSoftcap = gemma2 ? file.number(key('attn_logit_softcapping'), 50) : 0;
  if (file.tensors.has('rope_factors_long.weight') || file.tensors.has('rope_factors_short.weight')) {
    throw new ModelFormatError(`${file.path}: LongRoPE (rope_factors_long / rope_factors_short, rope_scaling "longrope" or "su") is not supported`);
  }
  const config: ModelConfig = {
    architecture,
    vocabSize: file.integer(key('vocab_size'), vocabSize),
    hiddenSize,
    intermediateSize: file.integer(key('feed_forward_length')),
    numLayers: file.integer(key('block_count')),
    numHeads,
    numKvHeads: file.integer(key('attention.head_count_kv'), numHeads),
    headDim,
    maxPositions: file.integer(key('context_length'), 2048),
    normEps: gpt2 ? file.number(key('attention.layer_norm_epsilon'), 1e-5) : file.number(key('attention.layer_norm_rms_epsilon'), 1e-6),
    norm: gpt2 ? 'layer' : 'rms',
    mlp: gpt2 ? 'gelu' : gemma ? 'geglu' : 'swiglu',
    rope: gpt2
      ? undefined
      : {
          theta: file.number(key('rope.freq_base'), 10000),
          dims: file.integer(key('rope.dimension_count'), headDim),
          scaling: scalingType === 'linear' ? { type: 'linear', factor: file.number(key('rope.scaling.factor')) } : undefined,
          frequencyFactors,
          // Gemma 3's local layers: rope.freq_base_swa, 10000 when absent (llama_hparams' default;
          // convert_hf_to_gguf.py does not write it, and rope_local_base_freq is 10000 in every Gemma 3).
          ...(gemma3 && window > 0 ? { localTheta: file.number(key('rope.freq_base_swa'), 10000) } : {}),
        },
    qkvBias: gpt2 || file.tensors.has('blk.0.attn_q.bias'),
    outputBias: gpt2,
    // llama.cpp's qwen3 graph requires them (src/models/qwen3.cpp): absent ones fail at load, by name.
    ...(architecture === 'qwen3' ? { qkNorm: true } : {}),
    // Gemma 2 and 3 (src/models/gemma2.cpp, gemma3.cpp): embeddings times sqrt(hidden); norms stored
    // as 1 + w (the converter adds the 1); attention scale 1/sqrt(head size), but 1/sqrt(hidden /
    // heads) for the 27Bs (46 layers in Gemma 2, 62 in Gemma 3), whose query_pre_attn_scalar is that
    // (llama.cpp keys it on the layer count too). Gemma 3 adds q/k norms.
    ...(gemma
      ? {
          ...(gemma3 ? { qkNorm: true } : {}),
          embedScale: Math.fround(Math.sqrt(hiddenSize)),
          attentionScale: 1 / Math.sqrt(file.integer(key('block_count')) === (gemma2 ? 46 : 62) ? hiddenSize / numHeads : headDim),
          postNorms: true,
          ...(attnLogitSoftcap > 0 ? { attnLogitSoftcap } : {}),
          ...(finalLogitSoftcap > 0 ? { finalLogitSoftcap } : {}),
        }
      : {}),
    tieWordEmbeddings: !file.tensors.has('output.weight'),
    bosTokenId,
    eosTokenIds,
  };
  if (window > 0) {
    config.attentionWindows = gemma
      ? gemmaSlidingLayers(file, key, config.numLayers, gemma2 ? 2 : 6).map((s) => (s ? window : 0))
      : new Array<number>(config.numLayers).fill(window);
  }
  validateConfig(config, file.path);
  return config;
}

/**
 * Gemma's sliding layers as llama.cpp's load_swa_pattern reads them: `sliding_window_pattern` as one
 * flag per layer, or as a period n (default 6 for Gemma 3, 2 for Gemma 2) where layer l slides unless
 * l % n == n - 1.
 */
function gemmaSlidingLayers(file: GgufFile, key: (name: string) => string, numLayers: number, defaultPattern: number): boolean[] {
  const raw = file.get(key('attention.sliding_window_pattern'));
  if (Array.isArray(raw)) {
    if (raw.length !== numLayers) {
      throw new ModelFormatError(`${file.path}: ${key('attention.sliding_window_pattern')} has ${raw.length} entries for ${numLayers} layers`);
    }
    return raw.map(Boolean);
  }
  const n = file.integer(key('attention.sliding_window_pattern'), defaultPattern);
  return Array.from({ length: numLayers }, (_, l) => n === 0 || l % n < n - 1);
}

class GgufSource implements ModelSource {
  readonly format = 'gguf';
  readonly id: string;
  readonly config: ModelConfig;
  readonly ropeMode: RopeMode;
  readonly tokenizer: TokenizerFiles;
  readonly #file: GgufFile;

  constructor(file: GgufFile, frequencyFactors?: Float32Array) {
    this.#file = file;
    this.id = file.string('general.name', basename(file.path, '.gguf'));
    const tok = tokenizerFromGguf(file);
    const vocab = (tok.tokenizer.model as { vocab?: Record<string, number> | unknown[] })?.vocab;
    const vocabSize = Array.isArray(vocab) ? vocab.length : Object.keys(vocab ?? {}).length;
    this.config = configFromGguf(file, vocabSize, tok.eosTokenIds, tok.bosTokenId, frequencyFactors);
    this.ropeMode = this.config.architecture === 'llama' ? 'interleaved' : 'half';
    const config = { ...tok.config, ...(tok.chatTemplate ? { chat_template: tok.chatTemplate } : {}) };
    this.tokenizer = { tokenizer: tok.tokenizer, config, source: file.path };
  }

  has(name: string): boolean {
    return this.#file.tensors.has(name);
  }

  dtypeOf(name: string): WeightDtype | undefined {
    const info = this.#file.tensors.get(name);
    return info ? DTYPES[info.type] : undefined;
  }

  async matrix(name: string): Promise<HostWeight> {
    const info = this.#file.tensor(name);
    const dtype = DTYPES[info.type];
    if (info.ne.length !== 2) throw new ModelFormatError(`${this.#file.path}: tensor "${name}" should be 2-D, has ne [${info.ne}]`);
    if (!dtype) {
      // BF16 and anything else readable: widen to f32 (the kernels have no BF16 path).
      const values = await this.#file.readTensorF32(name);
      return packGguf('f32', info.ne[1], info.ne[0], values);
    }
    const { bytes } = await this.#file.readTensor(name);
    return packGguf(dtype, info.ne[1], info.ne[0], bytes);
  }

  async vector(name: string): Promise<Float32Array> {
    return this.#file.readTensorF32(name);
  }

  close(): Promise<void> {
    return this.#file.close();
  }
}

export async function openGgufSource(path: string): Promise<ModelSource> {
  const file = await GgufFile.open(path);
  try {
    // Llama 3.1-style rope scaling arrives as a tensor of per-frequency divisors.
    const factors = file.tensors.has('rope_freqs.weight') ? await file.readTensorF32('rope_freqs.weight') : undefined;
    return new GgufSource(file, factors);
  } catch (err) {
    await file.close();
    throw err;
  }
}

// Where a model's weights, config and tokenizer come from: a Hugging Face folder, a GGUF file, or
// the embedded tiny model. Every source speaks the same canonical tensor names (GGUF's: token_embd,
// blk.N.attn_q, ...; arch-neutral and short) with every matrix stored [out, in], so the forward
// pass never cares where its weights came from.
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { ModelFormatError } from '../src/errors.ts';
import { packGguf, type HostWeight, type WeightDtype } from '../kernels/weights.ts';
import { packWeight } from '../kernels/weights-quantize.ts';
import type { RopeMode } from '../kernels/rope.ts';
import { configFromHf, validateConfig, type ModelConfig } from './config.ts';
import { SafetensorsModel } from './safetensors.ts';
import { openGgufSource } from './gguf-source.ts';
import { f16BitsToF32, f32ToF16Bits, bf16ArrayToF32 } from './ggml.ts';
import { TINY_CONFIG, TINY_MODEL_ID, llamaTensorShapes, tinyTokenizerFiles, tinyWeights } from './tiny.ts';

export interface TokenizerFiles {
  /** tokenizer.json contents. */
  tokenizer: Record<string, unknown>;
  /** tokenizer_config.json contents (special tokens, chat_template). */
  config?: Record<string, unknown>;
  /** Where the files came from, for error messages. */
  source: string;
}

export interface ModelSource {
  /** Short name shown to users and validators. */
  readonly id: string;
  readonly format: 'hf' | 'gguf' | 'embedded';
  readonly config: ModelConfig;
  /** How this source's Q/K rows are ordered for RoPE (GGUF llama files are permuted for interleaved). */
  readonly ropeMode: RopeMode;
  readonly tokenizer: TokenizerFiles;
  has(name: string): boolean;
  /** The dtype `matrix(name)` will return (decides whether Q, K and V can be fused). */
  dtypeOf(name: string): WeightDtype | undefined;
  /** A [out, in] matrix in its stored dtype, packed for upload. */
  matrix(name: string): Promise<HostWeight>;
  /** A vector (norm weight, bias), as f32. */
  vector(name: string): Promise<Float32Array>;
  close(): Promise<void>;
}

/** sha256 over the weights in canonical order, as the engine reports it to validators. */
export class WeightsDigest {
  readonly #hash = createHash('sha256');
  add(name: string, data: ArrayBufferView): void {
    this.#hash.update(name);
    this.#hash.update(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  }
  hex(): string {
    return this.#hash.digest('hex');
  }
}

function readJson(path: string, required: boolean): Record<string, unknown> | undefined {
  if (!existsSync(path)) {
    if (required) throw new ModelFormatError(`${path}: file is missing`);
    return undefined;
  }
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
  } catch (err) {
    throw new ModelFormatError(`${path}: not valid JSON (${(err as Error).message})`, { cause: err });
  }
}

// ---------------------------------------------------------------------------------------------
// Hugging Face folders

/** Canonical name -> HF name, per architecture. GPT-2's Conv1D weights are stored [in, out]. */
function hfName(architecture: ModelConfig['architecture'], name: string): { hf: string; transpose: boolean } {
  const gpt2 = architecture === 'gpt2';
  const fixed: Record<string, string> = gpt2
    ? {
        'token_embd.weight': 'wte.weight',
        'position_embd.weight': 'wpe.weight',
        'output_norm.weight': 'ln_f.weight',
        'output_norm.bias': 'ln_f.bias',
        'output.weight': 'lm_head.weight',
      }
    : { 'token_embd.weight': 'model.embed_tokens.weight', 'output_norm.weight': 'model.norm.weight', 'output.weight': 'lm_head.weight' };
  if (fixed[name]) return { hf: fixed[name], transpose: false };
  const match = /^blk\.(\d+)\.(\w+)\.(weight|bias)$/.exec(name);
  if (!match) return { hf: name, transpose: false };
  const [, layer, part, kind] = match;
  // Phi-3 keeps q, k and v in one qkv_proj and gate and up in one gate_up_proj ([gate; up] rows), as
  // GGUF's phi3 attn_qkv and ffn_up do.
  if (architecture === 'phi3' && (part === 'attn_qkv' || part === 'ffn_up')) {
    return { hf: `model.layers.${layer}.${part === 'attn_qkv' ? 'self_attn.qkv_proj' : 'mlp.gate_up_proj'}.${kind}`, transpose: false };
  }
  const parts: Record<string, string> = gpt2
    ? { attn_norm: 'ln_1', attn_qkv: 'attn.c_attn', attn_output: 'attn.c_proj', ffn_norm: 'ln_2', ffn_up: 'mlp.c_fc', ffn_down: 'mlp.c_proj' }
    : {
        attn_norm: 'input_layernorm',
        attn_q: 'self_attn.q_proj',
        attn_k: 'self_attn.k_proj',
        attn_v: 'self_attn.v_proj',
        attn_output: 'self_attn.o_proj',
        attn_q_norm: 'self_attn.q_norm',
        attn_k_norm: 'self_attn.k_norm',
        ffn_norm: 'post_attention_layernorm',
        ffn_gate: 'mlp.gate_proj',
        ffn_up: 'mlp.up_proj',
        ffn_down: 'mlp.down_proj',
      };
  if (architecture === 'gemma2' || architecture === 'gemma3') {
    // Gemma's four norms a layer: post_attention_layernorm follows the attention (it is not the MLP's
    // input norm, as in Llama), pre_feedforward_layernorm is the MLP's.
    Object.assign(parts, { ffn_norm: 'pre_feedforward_layernorm', post_attention_norm: 'post_attention_layernorm', post_ffw_norm: 'post_feedforward_layernorm' });
  }
  const hfPart = parts[part] ?? part;
  const prefix = gpt2 ? `h.${layer}.` : `model.layers.${layer}.`;
  const isConv1d = gpt2 && kind === 'weight' && ['attn_qkv', 'attn_output', 'ffn_up', 'ffn_down'].includes(part);
  return { hf: `${prefix}${hfPart}.${kind}`, transpose: isConv1d };
}

/**
 * What an HF checkpoint's norm weights lack against the canonical ones: Gemma's RMSNorm scales by
 * (1 + weight), and canonical weights (GGUF's, which llama.cpp's converter writes as 1 + w) are the
 * multipliers themselves.
 */
function hfNormShift(architecture: ModelConfig['architecture'], name: string): number {
  return (architecture === 'gemma2' || architecture === 'gemma3') && name.endsWith('norm.weight') ? 1 : 0;
}

function shifted(data: Float32Array, shift: number): Float32Array {
  return shift === 0 ? data : data.map((v) => v + shift);
}

function transpose(data: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(data.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = data[r * cols + c];
  return out;
}

/** BF16 -> f16 keeps the bytes per weight when every value fits f16's range; else f32. */
function bf16ToF16(bits: Uint16Array): Uint16Array | undefined {
  const out = new Uint16Array(bits.length);
  const f32 = bf16ArrayToF32(bits);
  for (let i = 0; i < f32.length; i++) {
    const h = f32ToF16Bits(f32[i]);
    if (!Number.isFinite(f16BitsToF32(h)) && Number.isFinite(f32[i])) return undefined;
    out[i] = h;
  }
  return out;
}

class HfSource implements ModelSource {
  readonly format = 'hf';
  readonly ropeMode: RopeMode = 'half';
  readonly id: string;
  readonly config: ModelConfig;
  readonly tokenizer: TokenizerFiles;
  readonly #st: SafetensorsModel;
  /** GPT-2 checkpoints name tensors with or without a "transformer." prefix. */
  readonly #prefix: string;

  constructor(dir: string, config: ModelConfig, tokenizer: TokenizerFiles, st: SafetensorsModel) {
    this.id = basename(dir);
    this.config = config;
    this.tokenizer = tokenizer;
    this.#st = st;
    this.#prefix = config.architecture === 'gpt2' && st.tensors.has('transformer.wte.weight') ? 'transformer.' : '';
  }

  #resolve(name: string): { hf: string; transpose: boolean } {
    const { hf, transpose } = hfName(this.config.architecture, name);
    // GPT-2's lm_head (present when untied) sits outside the "transformer." prefix.
    return { hf: hf === 'lm_head.weight' ? hf : this.#prefix + hf, transpose };
  }

  has(name: string): boolean {
    return this.#st.tensors.has(this.#resolve(name).hf);
  }

  dtypeOf(name: string): WeightDtype | undefined {
    const { hf } = this.#resolve(name);
    const dtype = this.#st.tensors.get(hf)?.dtype;
    return dtype === 'F32' ? 'f32' : dtype === 'F16' || dtype === 'BF16' ? 'f16' : undefined;
  }

  async matrix(name: string): Promise<HostWeight> {
    const { hf, transpose: isConv1d } = this.#resolve(name);
    const info = this.#st.tensor(hf);
    if (info.shape.length !== 2) throw new ModelFormatError(`${info.file}: tensor "${hf}" should be 2-D, has shape [${info.shape}]`);
    const [a, b] = info.shape;
    const [rows, cols] = isConv1d ? [b, a] : [a, b];
    const tensor = await this.#st.read(hf, 'native');
    if (tensor.dtype === 'F32') {
      return packWeight('f32', rows, cols, isConv1d ? transpose(tensor.data, a, b) : tensor.data);
    }
    const f16 = tensor.dtype === 'F16' ? tensor.data : bf16ToF16(tensor.data);
    if (f16 && !isConv1d) return packGguf('f16', rows, cols, f16);
    const f32 = tensor.dtype === 'F16' ? Float32Array.from(tensor.data, f16BitsToF32) : bf16ArrayToF32(tensor.data);
    const values = isConv1d ? transpose(f32, a, b) : f32;
    return packWeight(f16 ? 'f16' : 'f32', rows, cols, values);
  }

  async vector(name: string): Promise<Float32Array> {
    const tensor = await this.#st.read(this.#resolve(name).hf, 'f32');
    return shifted(tensor.data as Float32Array, hfNormShift(this.config.architecture, name));
  }

  close(): Promise<void> {
    return this.#st.close();
  }
}

export async function openHfFolder(dir: string): Promise<ModelSource> {
  const config = readJson(join(dir, 'config.json'), true)!;
  const generation = readJson(join(dir, 'generation_config.json'), false) ?? {};
  const normalized = configFromHf(config, generation, join(dir, 'config.json'));
  validateConfig(normalized, dir);
  const tokenizerJson = readJson(join(dir, 'tokenizer.json'), true)!;
  const tokenizerConfig = readJson(join(dir, 'tokenizer_config.json'), false) ?? {};
  const index = join(dir, 'model.safetensors.index.json');
  const single = join(dir, 'model.safetensors');
  if (!existsSync(index) && !existsSync(single)) {
    throw new ModelFormatError(`${dir}: no model.safetensors or model.safetensors.index.json`);
  }
  const st = await SafetensorsModel.open(existsSync(index) ? index : single);
  return new HfSource(dir, normalized, { tokenizer: tokenizerJson, config: tokenizerConfig, source: dir }, st);
}

// ---------------------------------------------------------------------------------------------
// Weights held in memory under HF names (the embedded tiny model; the bench's host model; tests).

export interface MemoryTensor {
  shape: number[];
  data: Float32Array;
}

class MemorySource implements ModelSource {
  readonly format = 'embedded';
  readonly ropeMode: RopeMode = 'half';
  readonly id: string;
  readonly config: ModelConfig;
  readonly tokenizer: TokenizerFiles;
  readonly #tensors: Map<string, MemoryTensor>;
  readonly #prefix: string;
  /** How matrices are packed (quantised from the f32 values when not f32); vectors stay f32. */
  readonly #matrixDtype: WeightDtype;

  constructor(id: string, hfConfig: Record<string, unknown>, tensors: Map<string, MemoryTensor>, tokenizer: TokenizerFiles, matrixDtype: WeightDtype = 'f32') {
    this.id = id;
    this.#matrixDtype = matrixDtype;
    this.config = configFromHf(hfConfig, {}, id);
    validateConfig(this.config, id);
    this.tokenizer = tokenizer;
    this.#tensors = tensors;
    this.#prefix = this.config.architecture === 'gpt2' && tensors.has('transformer.wte.weight') ? 'transformer.' : '';
  }

  #resolve(name: string): { tensor?: MemoryTensor; hf: string; transpose: boolean } {
    const { hf: bare, transpose } = hfName(this.config.architecture, name);
    const hf = bare === 'lm_head.weight' ? bare : this.#prefix + bare;
    return { tensor: this.#tensors.get(hf), hf, transpose };
  }

  has(name: string): boolean {
    return this.#resolve(name).tensor !== undefined;
  }

  dtypeOf(name: string): WeightDtype | undefined {
    const { tensor } = this.#resolve(name);
    if (!tensor) return undefined;
    return tensor.shape.length === 2 ? this.#matrixDtype : 'f32';
  }

  async matrix(name: string): Promise<HostWeight> {
    const { tensor, hf, transpose: isConv1d } = this.#resolve(name);
    if (!tensor || tensor.shape.length !== 2) throw new ModelFormatError(`${this.id}: matrix "${hf}" is missing or not 2-D`);
    const [a, b] = tensor.shape;
    return isConv1d ? packWeight(this.#matrixDtype, b, a, transpose(tensor.data, a, b)) : packWeight(this.#matrixDtype, a, b, tensor.data);
  }

  async vector(name: string): Promise<Float32Array> {
    const { tensor, hf } = this.#resolve(name);
    if (!tensor) throw new ModelFormatError(`${this.id}: tensor "${hf}" is missing`);
    return shifted(tensor.data, hfNormShift(this.config.architecture, name));
  }

  async close(): Promise<void> {}
}

export function memorySource(id: string, hfConfig: Record<string, unknown>, tensors: Map<string, MemoryTensor>, tokenizer: TokenizerFiles): ModelSource {
  return new MemorySource(id, hfConfig, tensors, tokenizer);
}

/** The embedded tiny-random-llama (see models/tiny.ts). */
export function embeddedSource(): ModelSource {
  return randomLlamaSource(TINY_MODEL_ID, TINY_CONFIG);
}

/**
 * A Llama of `config` (tiny-random-llama's family, its tokenizer) with random weights from
 * tinyWeights, matrices packed as `matrixDtype`: for measurements that need other depths or formats.
 */
export function randomLlamaSource(id: string, config: typeof TINY_CONFIG, matrixDtype: WeightDtype = 'f32'): ModelSource {
  const weights = tinyWeights(config);
  const tensors = new Map(llamaTensorShapes(config).map(([name, shape]) => [name, { shape, data: weights.get(name)! }]));
  return new MemorySource(id, config, tensors, { ...tinyTokenizerFiles(), source: TINY_MODEL_ID }, matrixDtype);
}

/** Open a model by path: an HF folder, a .gguf file, or the embedded model's name. */
export async function openModelSource(path: string): Promise<ModelSource> {
  if (path === TINY_MODEL_ID) return embeddedSource();
  if (!existsSync(path)) throw new ModelFormatError(`${path}: no such file or folder`);
  if (statSync(path).isDirectory()) return openHfFolder(path);
  if (path.endsWith('.gguf')) return openGgufSource(path);
  throw new ModelFormatError(`${path}: expected a Hugging Face model folder or a .gguf file`);
}

export type { WeightDtype };

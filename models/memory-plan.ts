// How much KV a model gets: the GPU memory budget (`--gpu-memory`), what the weights and activations
// take of it, and the block pool that fills the rest. Pure arithmetic over a config and the adapter's
// limits, so the engine, bench and tests share it without a GPU.
//
// WebGPU reports no memory size. A budget given as bytes ("12GiB", "12GB", "12e9") is taken as is;
// given as a fraction ("0.8") it is that fraction of the adapter's maxBufferSize: the largest single
// allocation it admits, the only memory figure WebGPU exposes (Dawn derives it from the device-local
// heap on Vulkan/D3D12/Metal, so it is at most the card's memory and often far less: give bytes on a
// large card). Without a budget, the pool holds every slot's whole context, as far as each layer's
// pool buffer fits the adapter's limits.
//
// Whatever the budget, each layer's K (and V) pool is one buffer that must fit both
// maxStorageBufferBindingSize (it is bound whole) and maxBufferSize; the plan says which limit bit.
import { OptionError } from '../src/errors.ts';
import { ggufByteSize, type WeightDtype } from '../kernels/weights.ts';
import { DECODE_DEFAULTS, KV_BLOCK_TOKENS, KV_DTYPES, kvBytesPerToken, type KvDtype } from '../kernels/attention.ts';
import { ROW_SAMPLING_WORDS, TOPK_MAX_K, seenWords } from '../kernels/sample.ts';
import type { ModelConfig } from './config.ts';

export { KV_BLOCK_TOKENS, KV_DTYPES, type KvDtype };

/** The dimensions the activation buffers depend on. */
export type ActivationShape = Pick<ModelConfig, 'hiddenSize' | 'numHeads' | 'numKvHeads' | 'headDim' | 'intermediateSize' | 'vocabSize' | 'postNorms'>;

/** Bytes of K and V, all layers, per token, as the cache stores them (kernels/attention.ts kvBytesPerToken). */
export function kvTokenBytes(config: Pick<ModelConfig, 'numLayers' | 'numKvHeads' | 'headDim'>, dtype: KvDtype): number {
  return kvBytesPerToken(config, dtype);
}

export type GpuMemory = { bytes: number } | { fraction: number };

const UNITS: Record<string, number> = { '': 1, b: 1, kb: 1e3, mb: 1e6, gb: 1e9, tb: 1e12, kib: 2 ** 10, mib: 2 ** 20, gib: 2 ** 30, tib: 2 ** 40 };

/** "12GiB", "12GB", "12e9", "512 MiB" (bytes) or "0.8" (a fraction in (0, 1]). */
export function parseGpuMemory(text: string): GpuMemory {
  const m = /^\s*(\d+(?:\.\d*)?(?:e\d+)?|\.\d+)\s*([kmgt]i?b|b)?\s*$/i.exec(text);
  const what = `--gpu-memory must be bytes ("12GiB", "12GB", "12e9") or a fraction of the adapter's maxBufferSize in (0, 1] ("0.8"); got "${text}"`;
  if (!m) throw new OptionError(what);
  const value = Number(m[1]);
  const unit = (m[2] ?? '').toLowerCase();
  if (!Number.isFinite(value) || value <= 0) throw new OptionError(what);
  if (unit === '' && value <= 1) return { fraction: value };
  const bytes = Math.floor(value * UNITS[unit]);
  if (!Number.isSafeInteger(bytes) || bytes < 1024) throw new OptionError(`${what} (a byte count must be at least 1 KiB)`);
  return { bytes };
}

/** The budget in bytes on an adapter with these limits. */
export function gpuMemoryBytes(memory: GpuMemory, limits: Pick<GPUSupportedLimits, 'maxBufferSize'>): number {
  return 'bytes' in memory ? memory.bytes : Math.floor(memory.fraction * limits.maxBufferSize);
}

export interface KvPoolInput {
  config: Pick<ModelConfig, 'numLayers' | 'numKvHeads' | 'headDim'>;
  kvDtype: KvDtype;
  /** Bytes of the weights on the GPU. */
  weightBytes: number;
  /** Bytes of the activations, scratch and readback buffers. */
  activationBytes: number;
  /** Total bytes allowed (undefined: no budget, see maxBlocks). */
  budgetBytes?: number;
  limits: Pick<GPUSupportedLimits, 'maxBufferSize' | 'maxStorageBufferBindingSize'>;
  /** Most blocks worth having: every sequence at its full context (slots * ceil(capacity / 16)). */
  maxBlocks: number;
}

export type KvPoolLimit = 'budget' | 'maxStorageBufferBindingSize' | 'maxBufferSize' | 'sequences';

export interface KvPoolPlan {
  blocks: number;
  blockTokens: number;
  bytesPerToken: number;
  blockBytes: number;
  /** Bytes of the pool in all (blocks * blockBytes). */
  kvBytes: number;
  /** Bytes of one layer's K (or V) pool buffer. */
  layerBufferBytes: number;
  /** What capped the block count. */
  limitedBy: KvPoolLimit;
  budgetBytes?: number;
  weightBytes: number;
  activationBytes: number;
}

/**
 * The pool: (budget - weights - activations) / block bytes blocks, at most maxBlocks, and no more
 * than one layer's K (or V) buffer can hold under the adapter's limits. Throws an OptionError naming
 * the numbers when not even one block fits.
 */
export function planKvPool(input: KvPoolInput): KvPoolPlan {
  const { config, kvDtype, weightBytes, activationBytes, budgetBytes, limits, maxBlocks } = input;
  if (!Number.isSafeInteger(maxBlocks) || maxBlocks < 1) throw new OptionError(`maxBlocks must be an integer >= 1 (got ${maxBlocks})`);
  const bytesPerToken = kvTokenBytes(config, kvDtype);
  const blockBytes = KV_BLOCK_TOKENS * bytesPerToken;
  // K and V of each layer: 2 * numLayers buffers of equal size.
  const layerBlockBytes = blockBytes / (2 * config.numLayers);
  const candidates: Array<[KvPoolLimit, number]> = [
    ['sequences', maxBlocks],
    ['maxStorageBufferBindingSize', Math.floor(limits.maxStorageBufferBindingSize / layerBlockBytes)],
    ['maxBufferSize', Math.floor(limits.maxBufferSize / layerBlockBytes)],
  ];
  if (budgetBytes !== undefined) {
    const left = budgetBytes - weightBytes - activationBytes;
    candidates.push(['budget', Math.floor(Math.max(0, left) / blockBytes)]);
    if (left < blockBytes) {
      throw new OptionError(
        `--gpu-memory ${fmtBytes(budgetBytes)} leaves ${fmtBytes(Math.max(0, left))} for the KV cache after ${fmtBytes(weightBytes)} of weights and ` +
          `${fmtBytes(activationBytes)} of activations; one KV block (${KV_BLOCK_TOKENS} tokens, ${kvDtype}) needs ${fmtBytes(blockBytes)}`,
      );
    }
  }
  // The smallest bound wins; ties name the earlier (sequences, then the adapter's limits).
  let [limitedBy, blocks] = candidates[0];
  for (const [name, value] of candidates) if (value < blocks) [limitedBy, blocks] = [name, value];
  if (blocks < 1) {
    throw new OptionError(`one KV block of one layer (${fmtBytes(layerBlockBytes)}) exceeds this adapter's ${limitedBy} (${limits[limitedBy as 'maxBufferSize']} bytes)`);
  }
  return {
    blocks,
    blockTokens: KV_BLOCK_TOKENS,
    bytesPerToken,
    blockBytes,
    kvBytes: blocks * blockBytes,
    layerBufferBytes: blocks * layerBlockBytes,
    limitedBy,
    budgetBytes,
    weightBytes,
    activationBytes,
  };
}

/** Sequences of `tokens` tokens each that `blocks` blocks hold at once (no sharing). */
export function sequencesThatFit(blocks: number, tokens: number): number {
  return Math.floor(blocks / Math.ceil(tokens / KV_BLOCK_TOKENS));
}

/**
 * Sequences of `tokens` tokens the slot-based f32 cache held: `slots` slots of `capacity` tokens, all
 * reserved up front, as many slots as the KV budget holds (a sequence longer than a slot never fits).
 */
export function slotSequencesThatFit(input: { config: KvPoolInput['config']; slots: number; capacity: number; kvBudgetBytes: number; tokens: number }): number {
  if (input.tokens > input.capacity) return 0;
  const slotBytes = input.capacity * kvTokenBytes(input.config, 'f32');
  return Math.min(input.slots, Math.floor(Math.max(0, input.kvBudgetBytes) / slotBytes));
}

/**
 * Bytes of the weights as the loader uploads them, from each tensor's dtype (GGUF block sizes; the
 * repacked planes hold the same bytes, up to row padding). `dtypeOf` answers for GGUF tensor names.
 */
export function estimateWeightBytes(config: ModelConfig, dtypeOf: (name: string) => WeightDtype | undefined): number {
  const { hiddenSize: C, numHeads: Hq, numKvHeads: Hkv, headDim: D, intermediateSize: F, vocabSize: V } = config;
  const matrix = (name: string, rows: number, cols: number) => ggufByteSize(dtypeOf(name) ?? 'f32', rows, cols);
  let bytes = matrix('token_embd.weight', V, C);
  if (!config.rope) bytes += matrix('position_embd.weight', config.maxPositions, C);
  if (!config.tieWordEmbeddings || dtypeOf('output.weight')) bytes += matrix('output.weight', V, C);
  for (let l = 0; l < config.numLayers; l++) {
    const p = `blk.${l}`;
    if (dtypeOf(`${p}.attn_qkv.weight`)) bytes += matrix(`${p}.attn_qkv.weight`, (Hq + 2 * Hkv) * D, C);
    else bytes += matrix(`${p}.attn_q.weight`, Hq * D, C) + matrix(`${p}.attn_k.weight`, Hkv * D, C) + matrix(`${p}.attn_v.weight`, Hkv * D, C);
    bytes += matrix(`${p}.attn_output.weight`, C, Hq * D) + matrix(`${p}.ffn_up.weight`, F, C) + matrix(`${p}.ffn_down.weight`, C, F);
    if (config.mlp === 'swiglu') bytes += matrix(`${p}.ffn_gate.weight`, F, C);
    // Norms (and biases): a few vectors of C per layer, f32.
    bytes += 4 * 4 * C + 4 * (Hq + 2 * Hkv) * D + 4 * F;
  }
  return bytes + 2 * 4 * C;
}

/**
 * Bytes of the transformer's activation, scratch and readback buffers for these step sizes (the
 * buffers models/transformer.ts allocates besides weights and KV: R = max(prefillChunk, slots) rows).
 * The engine checks the loaded model's own figure against the budget afterwards.
 */
export function estimateActivationBytes(config: ActivationShape, sizes: { slots: number; prefillChunk: number }): number {
  const { hiddenSize: C, numHeads: Hq, numKvHeads: Hkv, headDim: D, intermediateSize: F, vocabSize: V } = config;
  const R = Math.max(sizes.prefillChunk, sizes.slots);
  const S = sizes.slots;
  const inputs = Math.max(4 * sizes.prefillChunk, (6 + ROW_SAMPLING_WORDS) * S);
  // x, x2, h, the sublayer's output before a post-norm (one element without post-norms), qkv, attn, mlp, act.
  const rows = 3 * R * C + (config.postNorms ? R * C : 1) + R * (Hq + 2 * Hkv) * D + R * Hq * D + 3 * R * F;
  // Logits, top-k values and ids, log-sum-exps, the GPU's picks, each slot's seen tokens, headRows.
  const head = S * V + 2 * S * TOPK_MAX_K + 2 * S + S * seenWords(V) + S * C;
  const decodeScratch = S * Hq * DECODE_DEFAULTS.maxSplits * (D + 2);
  const readback = 2 * S * (2 * TOPK_MAX_K + 2);
  return 4 * (inputs + rows + head + decodeScratch + readback);
}

export function fmtBytes(bytes: number): string {
  if (bytes >= 2 ** 30) return `${(bytes / 2 ** 30).toFixed(2)} GiB`;
  if (bytes >= 2 ** 20) return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
  if (bytes >= 2 ** 10) return `${(bytes / 2 ** 10).toFixed(1)} KiB`;
  return `${bytes} B`;
}

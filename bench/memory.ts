// The bench's `memory` section: KV bytes per token, the block pool a GPU memory budget leaves, and how
// many concurrent sequences of 1k and 4k tokens fit, before (f32 slots, each reserving its whole
// context) and after (paged f16 blocks), for the loaded model and for built-in 8B shapes. Pure
// arithmetic (models/memory-plan.ts); the figures are exact, not measured.
import { KV_BLOCK_TOKENS, KV_DTYPES, estimateActivationBytes, type ActivationShape, kvTokenBytes, planKvPool, sequencesThatFit, slotSequencesThatFit, type KvDtype, type KvPoolLimit } from '../models/memory-plan.ts';
import type { ModelConfig } from '../models/config.ts';

/** Sequence lengths the report counts. */
export const MEMORY_SEQUENCE_TOKENS = [1024, 4096] as const;
/** The engine before paging: 8 slots of 8192 tokens, f32, reserved at load. */
export const SLOT_BASELINE = { slots: 8, capacity: 8192 } as const;
/** The paged engine's step sizes the activations are planned for (serve's defaults). */
export const PAGED_ENGINE = { slots: 32, prefillChunk: 128 } as const;

export interface MemoryModelInput {
  name: string;
  config: ActivationShape & Pick<ModelConfig, 'numLayers'>;
  weightBytes: number;
  /** Where weightBytes comes from ('measured: ...' for the loaded model). */
  weightSource: string;
}

export interface MemoryModelReport {
  name: string;
  numLayers: number;
  numKvHeads: number;
  headDim: number;
  weightBytes: number;
  weightSource: string;
  /** KV bytes per token, all layers, K and V. */
  bytesPerToken: Record<KvDtype, number>;
  before: {
    kvDtype: 'f32';
    slots: number;
    capacity: number;
    activationBytes: number;
    /** KV the slots reserve at load. */
    reservedBytes: number;
    /** Whether weights + activations + the reservation fit the budget. */
    fits: boolean;
    /** Concurrent sequences of each length (MEMORY_SEQUENCE_TOKENS). */
    sequences: Record<string, number>;
  };
  after: {
    kvDtype: 'f16';
    activationBytes: number;
    blocks: number;
    blockTokens: number;
    kvBytes: number;
    limitedBy: KvPoolLimit;
    sequences: Record<string, number>;
  };
}

export interface MemoryReport {
  /** The budget (--gpu-memory) the pools are planned for, bytes. */
  gpuMemoryBytes: number;
  limits: { maxBufferSize: number; maxStorageBufferBindingSize: number };
  models: MemoryModelReport[];
  /** Peak resident memory of the bench process after loading --model (process.resourceUsage().maxRSS). */
  peakRssBytes?: number;
}

export function memoryReport(input: { gpuMemoryBytes: number; limits: MemoryReport['limits']; models: MemoryModelInput[]; peakRssBytes?: number }): MemoryReport {
  const { gpuMemoryBytes, limits } = input;
  const models = input.models.map((m): MemoryModelReport => {
    const bytesPerToken = Object.fromEntries(KV_DTYPES.map((d) => [d, kvTokenBytes(m.config, d)])) as Record<KvDtype, number>;
    const beforeActivations = estimateActivationBytes(m.config, { slots: SLOT_BASELINE.slots, prefillChunk: PAGED_ENGINE.prefillChunk });
    const reservedBytes = SLOT_BASELINE.slots * SLOT_BASELINE.capacity * bytesPerToken.f32;
    const kvBudgetBefore = gpuMemoryBytes - m.weightBytes - beforeActivations;
    const afterActivations = estimateActivationBytes(m.config, PAGED_ENGINE);
    // A budget the weights alone overflow leaves no pool (planKvPool says so with the numbers; here it is a 0).
    const plan = gpuMemoryBytes - m.weightBytes - afterActivations < kvTokenBytes(m.config, 'f16') * KV_BLOCK_TOKENS
      ? { blocks: 0, kvBytes: 0, limitedBy: 'budget' as const }
      : planKvPool({ config: m.config, kvDtype: 'f16', weightBytes: m.weightBytes, activationBytes: afterActivations, budgetBytes: gpuMemoryBytes, limits, maxBlocks: Number.MAX_SAFE_INTEGER });
    const per = (count: (tokens: number) => number) => Object.fromEntries(MEMORY_SEQUENCE_TOKENS.map((t) => [String(t), count(t)]));
    return {
      name: m.name,
      numLayers: m.config.numLayers,
      numKvHeads: m.config.numKvHeads,
      headDim: m.config.headDim,
      weightBytes: m.weightBytes,
      weightSource: m.weightSource,
      bytesPerToken,
      before: {
        kvDtype: 'f32',
        ...SLOT_BASELINE,
        activationBytes: beforeActivations,
        reservedBytes,
        fits: reservedBytes <= kvBudgetBefore,
        sequences: per((tokens) => slotSequencesThatFit({ config: m.config, ...SLOT_BASELINE, kvBudgetBytes: kvBudgetBefore, tokens })),
      },
      after: {
        kvDtype: 'f16',
        activationBytes: afterActivations,
        blocks: plan.blocks,
        blockTokens: KV_BLOCK_TOKENS,
        kvBytes: plan.kvBytes,
        limitedBy: plan.limitedBy,
        sequences: per((tokens) => sequencesThatFit(plan.blocks, tokens)),
      },
    };
  });
  return { gpuMemoryBytes, limits, models, ...(input.peakRssBytes !== undefined ? { peakRssBytes: input.peakRssBytes } : {}) };
}

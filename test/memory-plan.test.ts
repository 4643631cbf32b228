// The KV memory plan (models/memory-plan.ts), without a GPU: --gpu-memory parsing, bytes per token,
// the block count under a budget and under each adapter limit (and which one bit), the error when
// nothing fits, and the sequences that fit before (f32 slots) and after (paged blocks), by hand.
import { describe, expect, it } from 'vitest';
import { OptionError } from '../src/errors.ts';
import { KV_BLOCK_TOKENS, estimateWeightBytes, gpuMemoryBytes, kvTokenBytes, parseGpuMemory, planKvPool, sequencesThatFit, slotSequencesThatFit } from '../models/memory-plan.ts';
import { configFromHf } from '../models/config.ts';

// Llama-3-8B's KV shape: 32 layers, 8 KV heads of 128.
const LLAMA3 = { numLayers: 32, numKvHeads: 8, headDim: 128 };
const GiB = 2 ** 30;
const LIMITS = { maxBufferSize: 4 * GiB, maxStorageBufferBindingSize: 2 * GiB };

describe('parseGpuMemory', () => {
  it('reads binary and decimal units, plain bytes, exponents and fractions', () => {
    expect(parseGpuMemory('12GiB')).toEqual({ bytes: 12 * GiB });
    expect(parseGpuMemory('12GB')).toEqual({ bytes: 12e9 });
    expect(parseGpuMemory('12e9')).toEqual({ bytes: 12e9 });
    expect(parseGpuMemory('512 MiB')).toEqual({ bytes: 512 * 2 ** 20 });
    expect(parseGpuMemory('1.5gib')).toEqual({ bytes: 1.5 * GiB });
    expect(parseGpuMemory('0.8')).toEqual({ fraction: 0.8 });
    expect(parseGpuMemory('1')).toEqual({ fraction: 1 });
    expect(parseGpuMemory('4096')).toEqual({ bytes: 4096 });
  });

  it('refuses what is not a size, naming the value', () => {
    for (const bad of ['', 'lots', '-1GB', '0', '12 GiBs', '12XB', '0x10', '100', 'NaN']) {
      expect(() => parseGpuMemory(bad), bad).toThrow(OptionError);
    }
    expect(() => parseGpuMemory('lots')).toThrow(/--gpu-memory must be bytes .* got "lots"/);
  });

  it('a fraction is of the adapter maxBufferSize', () => {
    expect(gpuMemoryBytes({ fraction: 0.5 }, LIMITS)).toBe(2 * GiB);
    expect(gpuMemoryBytes({ bytes: 1234 }, LIMITS)).toBe(1234);
  });
});

describe('kvTokenBytes', () => {
  it('Llama-3-8B: 256 KiB per token in f32, 128 KiB in f16, 72 KiB in q8_0 (an int8 and a 4-byte scale per 32)', () => {
    expect(kvTokenBytes(LLAMA3, 'f32')).toBe(256 * 1024);
    expect(kvTokenBytes(LLAMA3, 'f16')).toBe(128 * 1024);
    expect(kvTokenBytes(LLAMA3, 'q8_0')).toBe(2 * 32 * 1024 * (1 + 4 / 32));
  });
});

describe('planKvPool', () => {
  const base = { config: LLAMA3, kvDtype: 'f16' as const, weightBytes: 4.9e9, activationBytes: 100e6, limits: LIMITS, maxBlocks: 1e6 };

  it('fills what the budget leaves after weights and activations', () => {
    const plan = planKvPool({ ...base, budgetBytes: 12 * GiB });
    const blockBytes = 16 * 128 * 1024; // 2 MiB
    expect(plan.blockBytes).toBe(blockBytes);
    expect(plan.blocks).toBe(Math.floor((12 * GiB - 4.9e9 - 100e6) / blockBytes));
    expect(plan.blocks).toBe(3759); // (12884901888 - 5e9) / 2097152 = 3759.8
    expect(plan.limitedBy).toBe('budget');
    expect(plan.kvBytes).toBe(plan.blocks * blockBytes);
    expect(plan.layerBufferBytes).toBe(plan.blocks * 16 * 8 * 128 * 2);
    // The goal: 32 sequences of ~1k tokens on a 12 GiB card.
    expect(sequencesThatFit(plan.blocks, 1024)).toBe(58); // 64 blocks each
    expect(sequencesThatFit(plan.blocks, 4096)).toBe(14);
  });

  it('caps at every sequence at its full context', () => {
    const plan = planKvPool({ ...base, budgetBytes: 12 * GiB, maxBlocks: 32 * 64 });
    expect(plan).toMatchObject({ blocks: 2048, limitedBy: 'sequences' });
  });

  it('each layer buffer must fit the binding size and the buffer size, and the plan says which bit', () => {
    // One layer's K pool per block: 16 tokens * 8 heads * 128 * 2 bytes = 32 KiB.
    const binding = planKvPool({ ...base, limits: { maxBufferSize: 4 * GiB, maxStorageBufferBindingSize: 128 * 2 ** 20 } });
    expect(binding).toMatchObject({ blocks: 4096, limitedBy: 'maxStorageBufferBindingSize', layerBufferBytes: 128 * 2 ** 20 });
    const buffer = planKvPool({ ...base, limits: { maxBufferSize: 64 * 2 ** 20, maxStorageBufferBindingSize: 128 * 2 ** 20 } });
    expect(buffer).toMatchObject({ blocks: 2048, limitedBy: 'maxBufferSize' });
  });

  it('without a budget: the adapter limits and the sequences only', () => {
    expect(planKvPool({ ...base, maxBlocks: 100 })).toMatchObject({ blocks: 100, limitedBy: 'sequences', budgetBytes: undefined });
  });

  it('names the numbers when not even one block fits', () => {
    expect(() => planKvPool({ ...base, budgetBytes: 5e9 })).toThrow(/--gpu-memory 4\.66 GiB leaves 0 B for the KV cache after 4\.56 GiB of weights and 95\.4 MiB of activations; one KV block \(16 tokens, f16\) needs 2\.0 MiB/);
    expect(() => planKvPool({ ...base, limits: { maxBufferSize: 4 * GiB, maxStorageBufferBindingSize: 1024 } })).toThrow(/one KV block of one layer \(32\.0 KiB\) exceeds this adapter's maxStorageBufferBindingSize \(1024 bytes\)/);
  });
});

describe('sequences that fit', () => {
  it('paged: blocks per sequence round up', () => {
    expect(KV_BLOCK_TOKENS).toBe(16);
    expect(sequencesThatFit(64, 1024)).toBe(1);
    expect(sequencesThatFit(65, 1000)).toBe(1); // 63 blocks each
    expect(sequencesThatFit(126, 1000)).toBe(2);
  });

  it('slots: each reserves its whole context in f32, whatever the sequence length', () => {
    // 8 x 8192 f32 for Llama-3-8B is 16 GiB: 2 GiB a slot.
    const input = { config: LLAMA3, slots: 8, capacity: 8192 };
    expect(slotSequencesThatFit({ ...input, kvBudgetBytes: 16 * GiB, tokens: 1024 })).toBe(8);
    expect(slotSequencesThatFit({ ...input, kvBudgetBytes: 7 * GiB, tokens: 1024 })).toBe(3);
    expect(slotSequencesThatFit({ ...input, kvBudgetBytes: 7 * GiB, tokens: 4096 })).toBe(3);
    expect(slotSequencesThatFit({ ...input, kvBudgetBytes: 64 * GiB, tokens: 9000 })).toBe(0);
    expect(slotSequencesThatFit({ ...input, kvBudgetBytes: -1, tokens: 16 })).toBe(0);
  });
});

describe('estimateWeightBytes', () => {
  it('sums each matrix in its dtype and the norms in f32', () => {
    const config = configFromHf({
      architectures: ['LlamaForCausalLM'], hidden_size: 256, intermediate_size: 512, num_hidden_layers: 2, num_attention_heads: 4,
      num_key_value_heads: 2, vocab_size: 300, max_position_embeddings: 64, rms_norm_eps: 1e-5, tie_word_embeddings: false,
    });
    const dtypeOf = (name: string) => (name.startsWith('blk.') ? ('q8_0' as const) : name === 'output.weight' ? ('f16' as const) : ('f32' as const));
    const C = 256, F = 512, V = 300, W = (4 + 2 * 2) * 64;
    const q8 = (n: number) => (n / 32) * 34;
    const perLayer = q8(W * C) + q8(C * C) + 3 * q8(F * C) + 4 * (4 * C + W + F);
    expect(estimateWeightBytes(config, dtypeOf)).toBe(4 * V * C + 2 * V * C + 2 * perLayer + 8 * C);
  });
});

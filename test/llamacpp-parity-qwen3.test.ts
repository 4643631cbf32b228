// Qwen3 (dense): RMSNorm of each query and key head (q_norm / k_norm, weights of head_dim) before
// RoPE, no q/k/v biases, head_dim given apart from hidden / heads. Tiny random GGUF files written as
// convert_hf_to_gguf.py's Qwen3Model writes them (test/support/tiny-arch-models.ts), checked as every
// family is (test/support/family-parity.ts): ours vs llama.cpp vs float64, and the HF folder twin.
// Bounds: LLAMA_CPP_BOUNDS (test/support/parity.ts); measured, rel-L2 vs llama.cpp / greedy of 32 on
// an AVX-512 EPYC: F32 5.8e-7 / 32 (head_dim 20 != 56 / 6), Q8_0 2.2e-2 / 32; vs float64 ~5e-7.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openModelSource } from '../models/source.ts';
import { writeTinyQwen3Gguf } from './support/tiny-arch-models.ts';
import { disposeLlamaOracle } from './support/llama-oracle.ts';
import { checkAgainstLlamaCpp, checkHfTwin } from './support/family-parity.ts';
import { roundQ8_0 } from './support/ggml-activations.ts';
import { writeHfFolder } from './support/tiny-models.ts';
import { decodeStepDispatches, expectRopeKvApartAsFolded, ourLogits } from './support/parity.ts';
import { useGpu } from './support/gpu.ts';

const gpu = useGpu();
const dir = mkdtempSync(join(tmpdir(), 'parity-qwen3-'));
afterAll(async () => {
  await disposeLlamaOracle();
  rmSync(dir, { recursive: true, force: true });
});

// Awkward F32 shapes: hidden 56, 6 query heads of 20 over 2 KV heads (GQA 3:1; 6 x 20 = 120 != 56),
// FFN 88. Q8_0 needs widths that are multiples of 32: hidden 64, 4 heads of 24 over 2, FFN 96.
const F32_SHAPE = { hiddenSize: 56, numHeads: 6, numKvHeads: 2, headDim: 20, intermediateSize: 88 };
const Q8_SHAPE = { hiddenSize: 64, numHeads: 4, numKvHeads: 2, headDim: 24, intermediateSize: 96 };

describe('qwen3: ours vs llama.cpp vs float64 on the same GGUF', () => {
  it('F32, GQA 6/2, head_dim 20 with hidden 56, tied embeddings', async () => {
    const tiny = writeTinyQwen3Gguf(join(dir, 'qwen3-f32.gguf'), { dtype: 'f32', seed: 51, ...F32_SHAPE });
    const source = await openModelSource(tiny.path);
    expect(source.config.architecture).toBe('qwen3');
    expect(source.config.qkNorm).toBe(true);
    expect(source.config.headDim).toBe(20);
    await source.close();
    await checkAgainstLlamaCpp(gpu(), { name: 'qwen3 F32', tiny, dtype: 'f32' });
  });

  it('Q8_0, GQA 4/2, head_dim 24, untied output.weight', async () => {
    const tiny = writeTinyQwen3Gguf(join(dir, 'qwen3-q8_0.gguf'), { dtype: 'q8_0', seed: 52, tieEmbeddings: false, ...Q8_SHAPE });
    await checkAgainstLlamaCpp(gpu(), { name: 'qwen3 Q8_0', tiny, dtype: 'q8_0', explain: { roundInput: roundQ8_0 } });
  });
});

describe('qwen3: the same weights as a Hugging Face folder give the GGUF logits', () => {
  it('q_norm / k_norm under self_attn, o_proj of 6 x 20 columns, sharded, untied lm_head', async () => {
    const tiny = writeTinyQwen3Gguf(join(dir, 'qwen3-twin.gguf'), { seed: 53, tieEmbeddings: false, ...F32_SHAPE });
    await checkHfTwin(gpu(), 'qwen3', tiny, dir, 2);
  });

  it('a folder missing k_norm fails naming the tensor', async () => {
    const tiny = writeTinyQwen3Gguf(join(dir, 'qwen3-broken.gguf'), { seed: 54, ...F32_SHAPE });
    tiny.weights.delete('model.layers.1.self_attn.k_norm.weight');
    const source = await openModelSource(tiny.path);
    const folder = join(dir, 'qwen3-broken-hf');
    writeHfFolder(folder, tiny.config, tiny.weights, source.tokenizer.tokenizer, 'F32');
    await source.close();
    await expect(ourLogits(gpu(), folder, [1, 2])).rejects.toThrow(/blk\.1\.attn_k_norm\.weight/);
  });
});

describe('qwen3: decode', () => {
  it('takes 5 dispatches a layer, as a Llama: decode attention runs the head norm, RoPE and the KV write', async () => {
    const counts: number[] = [];
    for (const numLayers of [2, 3]) {
      const tiny = writeTinyQwen3Gguf(join(dir, `qwen3-${numLayers}-layers.gguf`), { seed: 55, numLayers, ...F32_SHAPE });
      counts.push(await decodeStepDispatches(gpu(), tiny.path));
    }
    expect(counts[1] - counts[0]).toBe(5);
  });

  it('with the head norm, RoPE and KV write as a kernel before attention (the autotune\'s other choice): one dispatch more, the same logits', async () => {
    const paths = [2, 3].map((numLayers) => join(dir, `qwen3-${numLayers}-layers.gguf`)) as [string, string];
    const tokens = Array.from({ length: 20 }, (_, i) => (i * 29 + 3) % 200);
    await expectRopeKvApartAsFolded(gpu(), paths, tokens);
  });
});

// Gemma 3 text models (Gemma3ForCausalLM, GGUF "gemma3"): embeddings times sqrt(hidden) (the tied LM
// head unscaled), RMSNorm scaling by 1 + w (folded at load from HF; GGUF stores 1 + w), q_norm /
// k_norm, GeGLU (tanh GELU), norms after the attention and the MLP before their residual adds,
// query_pre_attn_scalar, sliding layers with their own RoPE base and every n-th layer global. Tiny
// random GGUF files written as convert_hf_to_gguf.py's Gemma3Model writes them
// (test/support/tiny-arch-models.ts), checked as every family is (test/support/family-parity.ts):
// ours vs llama.cpp vs float64, and the HF folder twin. The window is 5 keys, so over 40 tokens the
// sliding layers drop most keys.
// Bounds, rel-L2 vs llama.cpp / greedy of 32 (measured on an AVX-512 EPYC):
//  - F32: GPT-2's 1e-3 / 29, since llama.cpp's CPU GELU is a table over f16 inputs
//    (test/llamacpp-parity-qwen2-gpt2.test.ts); measured 6.4e-4 / 32.
//  - Q8_0: 6e-2 / 27, wider than the Llama-family 3e-2 / 28: measured 3.7e-2 / 30, and the float64
//    reference with llama.cpp's rounding (Q8_0 activations, f16-table GELU) matches llama.cpp to 6e-8
//    at every position, so the whole gap is that rounding; Gemma's post-norms rescale each sublayer's
//    rounded output to unit RMS before adding it, where a Llama adds it at its own (small) size.
// Against float64 every case is within 1e-4 (measured ~1e-6).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openModelSource } from '../models/source.ts';
import { configFromHf } from '../models/config.ts';
import { writeTinyGemma3Gguf } from './support/tiny-arch-models.ts';
import { disposeLlamaOracle } from './support/llama-oracle.ts';
import { checkAgainstLlamaCpp, checkHfTwin } from './support/family-parity.ts';
import { ggmlGelu, roundQ8_0 } from './support/ggml-activations.ts';
import { useGpu } from './support/gpu.ts';
import { writeHfFolder } from './support/tiny-models.ts';
import { decodeCandidates, decodeStepDispatches, expectRopeKvApartAsFolded, ourLogits, worst } from './support/parity.ts';
import { expectClose } from './support/reference.ts';
import { referenceLogits } from './support/reference-model.ts';

const gpu = useGpu();
const dir = mkdtempSync(join(tmpdir(), 'parity-gemma3-'));
afterAll(async () => {
  await disposeLlamaOracle();
  rmSync(dir, { recursive: true, force: true });
});

const GELU_F32_BOUND = { relL2: 1e-3, greedy: 29 };
const Q8_0_BOUND = { relL2: 6e-2, greedy: 27 };

describe('gemma3: ours vs llama.cpp vs float64 on the same GGUF', () => {
  it('F32: hidden 56, 4 heads of 20 over 2 (GQA), FFN 72, 4 layers with window 5 on layers 0, 1, 3, tied', async () => {
    const tiny = writeTinyGemma3Gguf(join(dir, 'gemma3-f32.gguf'), { dtype: 'f32', seed: 71, hiddenSize: 56, headDim: 20, intermediateSize: 72 });
    const source = await openModelSource(tiny.path);
    expect(source.config.architecture).toBe('gemma3');
    expect(source.config.attentionWindows).toEqual([5, 5, 0, 5]);
    expect(source.config.rope?.localTheta).toBe(1e4);
    await source.close();
    await checkAgainstLlamaCpp(gpu(), { name: 'gemma3 F32', tiny, dtype: 'f32', bound: GELU_F32_BOUND, explain: { gelu: ggmlGelu } });
  });

  it('Q8_0: hidden 64, heads of 32, local RoPE base 2e4, pattern 2, untied output.weight', async () => {
    const tiny = writeTinyGemma3Gguf(join(dir, 'gemma3-q8_0.gguf'), {
      dtype: 'q8_0',
      seed: 72,
      headDim: 32,
      slidingWindowPattern: 2,
      ropeLocalTheta: 2e4,
      tieEmbeddings: false,
    });
    await checkAgainstLlamaCpp(gpu(), { name: 'gemma3 Q8_0', tiny, dtype: 'q8_0', bound: Q8_0_BOUND, explain: { gelu: ggmlGelu, roundInput: roundQ8_0 } });
  });
});

describe('gemma3: linear RoPE scaling on the global layers only (the 4B and larger)', () => {
  it('F32, factor 8 (its local layers unscaled), against llama.cpp and float64', async () => {
    const tiny = writeTinyGemma3Gguf(join(dir, 'gemma3-rope-linear.gguf'), { dtype: 'f32', seed: 75, ropeLinearFactor: 8, slidingWindowPattern: 2 });
    const source = await openModelSource(tiny.path);
    expect(source.config.rope?.scaling).toEqual({ type: 'linear', factor: 8 });
    await source.close();
    await checkAgainstLlamaCpp(gpu(), { name: 'gemma3 F32 rope linear 8', tiny, dtype: 'f32', bound: GELU_F32_BOUND, explain: { gelu: ggmlGelu } });
    // The scaling matters here: the float64 reference that scales every layer, or none, is far off.
    const tokens = Array.from({ length: 40 }, (_, i) => (i * 37 + 5) % tiny.vocab.tokens.length);
    const ours = await ourLogits(gpu(), tiny.path, tokens);
    const config = configFromHf(tiny.config);
    const unscaled = worst(ours, referenceLogits({ ...config, rope: { ...config.rope!, scaling: undefined } }, tiny.weights, tokens));
    console.log(`[parity] gemma3 rope linear 8: vs float64 without the scaling ${unscaled.toExponential(2)}`);
    expect(unscaled).toBeGreaterThan(1e-3);
  });
});

describe('gemma3: the same weights as a Hugging Face folder give the GGUF logits', () => {
  it('norms as w (1 + w in the GGUF), four norms a layer, sharded', async () => {
    const tiny = writeTinyGemma3Gguf(join(dir, 'gemma3-twin.gguf'), { seed: 73, hiddenSize: 56, headDim: 20, intermediateSize: 72 });
    await checkHfTwin(gpu(), 'gemma3', tiny, dir, 2);
  });

  it('query_pre_attn_scalar other than head_dim is honoured from config.json (float64 only: llama.cpp keys it on the 27B)', async () => {
    const tiny = writeTinyGemma3Gguf(join(dir, 'gemma3-qpas.gguf'), { seed: 74, queryPreAttnScalar: 10 });
    const source = await openModelSource(tiny.path);
    const folder = join(dir, 'gemma3-qpas-hf');
    writeHfFolder(folder, tiny.config, tiny.weights, source.tokenizer.tokenizer, 'F32');
    await source.close();
    const tokens = Array.from({ length: 24 }, (_, i) => (i * 29 + 3) % tiny.vocab.tokens.length);
    const ours = await ourLogits(gpu(), folder, tokens);
    const config = configFromHf(tiny.config);
    expect(config.attentionScale).toBeCloseTo(1 / Math.sqrt(10), 12);
    const err = worst(ours, referenceLogits(config, tiny.weights, tokens));
    const asIfHeadDim = worst(ours, referenceLogits({ ...config, attentionScale: undefined }, tiny.weights, tokens));
    console.log(`[parity] gemma3 query_pre_attn_scalar 10 (head_dim 24): vs float64 ${err.toExponential(2)}; vs float64 with 1/sqrt(24) ${asIfHeadDim.toExponential(2)}`);
    expect(err).toBeLessThanOrEqual(1e-4);
    expect(asIfHeadDim).toBeGreaterThan(1e-2);
  });
});

describe('gemma3: what is refused', () => {
  it('Gemma3ForConditionalGeneration (vision) and attention soft-capping, by name', () => {
    const base = { architectures: ['Gemma3ForCausalLM'], hidden_size: 64, num_hidden_layers: 2, intermediate_size: 96, vocab_size: 300 };
    expect(() => configFromHf({ ...base, architectures: ['Gemma3ForConditionalGeneration'] })).toThrow(/Gemma3ForConditionalGeneration.*vision tower/);
    expect(configFromHf({ ...base, final_logit_softcapping: 30 }).finalLogitSoftcap).toBe(30);
    expect(() => configFromHf({ ...base, attn_logit_softcapping: 50 })).toThrow(/"attn_logit_softcapping" is set/);
  });
});

describe('gemma3: decode', () => {
  it('runs each post-norm with the norm after it in one kernel: 7 dispatches a layer (decode attention runs the head norm, RoPE and the KV write)', async () => {
    const counts: number[] = [];
    for (const numLayers of [4, 5]) {
      const tiny = writeTinyGemma3Gguf(join(dir, `gemma3-${numLayers}-layers.gguf`), { seed: 76, numLayers });
      counts.push(await decodeStepDispatches(gpu(), tiny.path));
    }
    expect(counts[1] - counts[0]).toBe(7);
  });

  it('with a tuning that folds the post-norms into the projections after them: 5 dispatches a layer, as a Llama, the same logits', async () => {
    const folded = { matvecTunings: { f32: { tier: 'baseline', activations: 'f32', layout: 'strided', rowsPerWorkgroup: 1, workgroupSize: 64, normFold: true, postNormFold: true } } } as const;
    const paths = [4, 5].map((numLayers) => writeTinyGemma3Gguf(join(dir, `gemma3-${numLayers}-layers-folded.gguf`), { seed: 76, numLayers }).path);
    expect((await decodeStepDispatches(gpu(), paths[1], folded)) - (await decodeStepDispatches(gpu(), paths[0], folded))).toBe(5);
    const tokens = Array.from({ length: 12 }, (_, i) => (i * 31 + 5) % 200);
    const apart = await decodeCandidates(gpu(), paths[0], tokens, 3);
    const fold = await decodeCandidates(gpu(), paths[0], tokens, 3, folded);
    expect(fold).toHaveLength(tokens.length - 3);
    fold.forEach((step, i) => {
      expect(Array.from(step.ids), `step ${i}`).toEqual(Array.from(apart[i].ids));
      expectClose(step.logits, apart[i].logits, 1e-5, `step ${i}: post-norms folded vs apart`);
    });
  });

  it('with the head norm, RoPE (local and global) and KV write as a kernel before attention: one dispatch more, the same logits', async () => {
    const paths = [4, 5].map((numLayers) => join(dir, `gemma3-${numLayers}-layers.gguf`)) as [string, string];
    const tokens = Array.from({ length: 20 }, (_, i) => (i * 29 + 3) % 200);
    await expectRopeKvApartAsFolded(gpu(), paths, tokens);
  });
});

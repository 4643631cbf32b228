// Gemma 2 (Gemma2ForCausalLM, GGUF "gemma2"): Gemma 3's layer without q/k norms, with attention
// logit soft-capping (scores c tanh(s / c) before the softmax) and final logit soft-capping, every
// other layer sliding, query_pre_attn_scalar, one RoPE base. Tiny random GGUF files written as
// convert_hf_to_gguf.py's Gemma2Model writes them (test/support/tiny-arch-models.ts), checked as
// every family is (test/support/family-parity.ts): ours vs llama.cpp vs float64, and the HF folder
// twin. The caps are far below Gemma 2's own (50 and 30) so that they shape every score and logit
// here; the window is 5 keys over 40 tokens.
// Bounds as Gemma 3's (test/llamacpp-parity-gemma3.test.ts, same GELU table and post-norms):
// F32 1e-3 / 29, Q8_0 6e-2 / 27; measured in the [parity] lines.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openModelSource } from '../models/source.ts';
import { configFromHf } from '../models/config.ts';
import { writeTinyGemma2Gguf } from './support/tiny-arch-models.ts';
import { disposeLlamaOracle } from './support/llama-oracle.ts';
import { checkAgainstLlamaCpp, checkHfTwin } from './support/family-parity.ts';
import { ggmlGelu, roundQ8_0 } from './support/ggml-activations.ts';
import { referenceLogits } from './support/reference-model.ts';
import { ourLogits, worst } from './support/parity.ts';
import { useGpu } from './support/gpu.ts';

const gpu = useGpu();
const dir = mkdtempSync(join(tmpdir(), 'parity-gemma2-'));
afterAll(async () => {
  await disposeLlamaOracle();
  rmSync(dir, { recursive: true, force: true });
});

const CAPS = { attnLogitSoftcap: 0.6, finalLogitSoftcap: 1.2 };

describe('gemma2: ours vs llama.cpp vs float64 on the same GGUF', () => {
  it('F32: hidden 56, 4 heads of 20 over 2 (GQA), FFN 72, layers 0 and 2 sliding (window 5), caps 0.6 / 1.2', async () => {
    const tiny = writeTinyGemma2Gguf(join(dir, 'gemma2-f32.gguf'), { dtype: 'f32', seed: 81, hiddenSize: 56, headDim: 20, intermediateSize: 72, ...CAPS });
    const source = await openModelSource(tiny.path);
    expect(source.config.architecture).toBe('gemma2');
    expect(source.config.attentionWindows).toEqual([5, 0, 5, 0]);
    expect([source.config.attnLogitSoftcap, source.config.finalLogitSoftcap]).toEqual([Math.fround(0.6), Math.fround(1.2)]);
    await source.close();
    await checkAgainstLlamaCpp(gpu(), { name: 'gemma2 F32', tiny, dtype: 'f32', bound: { relL2: 1e-3, greedy: 29 }, explain: { gelu: ggmlGelu } });
  });

  it('Q8_0: hidden 64, heads of 32, caps 0.6 / 1.2', async () => {
    const tiny = writeTinyGemma2Gguf(join(dir, 'gemma2-q8_0.gguf'), { dtype: 'q8_0', seed: 82, headDim: 32, ...CAPS });
    await checkAgainstLlamaCpp(gpu(), { name: 'gemma2 Q8_0', tiny, dtype: 'q8_0', bound: { relL2: 6e-2, greedy: 27 }, explain: { gelu: ggmlGelu, roundInput: roundQ8_0 } });
  });
});

describe('gemma2: the same weights as a Hugging Face folder give the GGUF logits', () => {
  it('norms as w (1 + w in the GGUF), caps from config.json, sharded', async () => {
    const tiny = writeTinyGemma2Gguf(join(dir, 'gemma2-twin.gguf'), { seed: 83, hiddenSize: 56, headDim: 20, intermediateSize: 72, ...CAPS });
    await checkHfTwin(gpu(), 'gemma2', tiny, dir, 2);
  });

  it('the caps matter: the float64 reference without them is far from ours', async () => {
    const tiny = writeTinyGemma2Gguf(join(dir, 'gemma2-caps.gguf'), { seed: 84, ...CAPS });
    const tokens = Array.from({ length: 24 }, (_, i) => (i * 29 + 3) % tiny.vocab.tokens.length);
    const ours = await ourLogits(gpu(), tiny.path, tokens);
    const config = configFromHf(tiny.config);
    const withCaps = worst(ours, referenceLogits(config, tiny.weights, tokens));
    const noAttnCap = worst(ours, referenceLogits({ ...config, attnLogitSoftcap: undefined }, tiny.weights, tokens));
    const noFinalCap = worst(ours, referenceLogits({ ...config, finalLogitSoftcap: undefined }, tiny.weights, tokens));
    console.log(`[parity] gemma2 caps: vs float64 ${withCaps.toExponential(2)}; without the attention cap ${noAttnCap.toExponential(2)}; without the final cap ${noFinalCap.toExponential(2)}`);
    expect(withCaps).toBeLessThanOrEqual(1e-4);
    expect(noAttnCap).toBeGreaterThan(1e-2);
    expect(noFinalCap).toBeGreaterThan(1e-2);
  });

  it('Gemma 2 config defaults: caps 50 / 30, window 4096 on even layers, query_pre_attn_scalar 256', () => {
    const config = configFromHf({ architectures: ['Gemma2ForCausalLM'], hidden_size: 64, num_hidden_layers: 4, intermediate_size: 96, vocab_size: 300 });
    expect(config.attnLogitSoftcap).toBe(50);
    expect(config.finalLogitSoftcap).toBe(30);
    expect(config.attentionWindows).toEqual([4096, 0, 4096, 0]);
    expect(config.attentionScale).toBe(1 / 16);
    expect(config.qkNorm).toBeUndefined();
    expect(config.rope?.localTheta).toBeUndefined();
  });
});

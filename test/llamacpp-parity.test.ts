// Our runtime against llama.cpp (node-llama-cpp's CPU build) on the same GGUF files, and against the
// float64 reference on the same (dequantised) weights. Logits are compared at every position.
//
// Bounds. F32: rel-L2 <= 1e-4 and identical greedy tokens. F16/Q8_0/Q4_0: ggml's CPU matmul first
// rounds the activations to the weight's dot type (F16, or Q8_0 blocks), which we do not (our
// activations stay f32), so llama.cpp differs from both us and the float64 reference by that
// rounding; against llama.cpp the bounds are the ones stated below, while against the float64
// reference on the dequantised weights every format must stay within 1e-4.
//
// K-quants (Q4_K, Q6_K, and a Q4_K_M-like mix): the models are random valid blocks at hidden 256,
// FFN 512, 4 heads of 64 over 2 KV heads. ggml rounds the activations of every K-quant matmul to
// Q8_K (one 8-bit scale per 256), coarser than Q8_0's per 32, so the bounds are wider. Measured
// with seeds 7 (the tests) and 1..3: rel-L2 3.4e-2 .. 1.2e-1, greedy 28/32 .. 32/32. To show the
// gap is that rounding and not the weights, the float64 reference is also run with its projection
// inputs rounded to Q8_K as quantize_row_q8_K_ref does: it must match llama.cpp at the first position
// within 1e-5 (every weight is used there; measured ~1e-7). It matches at every position in some
// models; in others llama.cpp departs from it from some later position on by ~1e-2, by a cause in its
// CPU kernels not pinned down here (not a Q8_K rounding tie: insensitive to 1e-6 input noise).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openModelSource } from '../models/source.ts';
import { configFromHf } from '../models/config.ts';
import { GgmlType } from '../models/ggml.ts';
import { writeHfFolder, writeTinyLlamaGguf, type TinyDtype } from './support/tiny-models.ts';
import { disposeLlamaOracle, llamaLogits } from './support/llama-oracle.ts';
import { referenceLogits } from './support/reference-model.ts';
import { compare, rng } from './support/reference.ts';
import { greedyAgreement, ourGreedy, ourLogits, worst } from './support/parity.ts';
import { useGpu } from './support/gpu.ts';
import { roundQ8K } from './support/kquants.ts';

const gpu = useGpu();
const dir = mkdtempSync(join(tmpdir(), 'parity-'));
afterAll(async () => {
  await disposeLlamaOracle();
  rmSync(dir, { recursive: true, force: true });
});

// Stated bounds against llama.cpp per format (measured values are logged; see the closing note).
const BOUNDS: Record<TinyDtype, { relL2: number; greedy: number }> = {
  f32: { relL2: 1e-4, greedy: 1 },
  f16: { relL2: 2e-3, greedy: 0.95 },
  q8_0: { relL2: 3e-2, greedy: 0.95 },
  q4_0: { relL2: 3e-2, greedy: 0.95 },
  q4_k: { relL2: 1.5e-1, greedy: 0.85 },
  q6_k: { relL2: 1.5e-1, greedy: 0.85 },
  q4_k_m: { relL2: 1.5e-1, greedy: 0.85 },
};

describe('llama architecture: ours vs llama.cpp vs float64 on the same GGUF', () => {
  // K-quant models (random valid blocks) have hidden 256, FFN 512: 4 heads of 64 over 2 KV heads.
  for (const dtype of ['f32', 'f16', 'q8_0', 'q4_0', 'q4_k', 'q6_k', 'q4_k_m'] as const) {
    it(`${dtype} weights`, async () => {
      const tiny = writeTinyLlamaGguf(join(dir, `tiny-${dtype}.gguf`), { dtype, seed: 7, numLayers: 2, numHeads: 4, numKvHeads: 2 });
      const next = rng(3);
      const V = tiny.vocab.tokens.length;
      const prompt = Array.from({ length: 8 }, () => 3 + Math.floor(next() * (V - 3)));
      // Our greedy continuation (32 steps through the decode path), then every position's logits.
      const sequence = await ourGreedy(gpu(), tiny.path, prompt, 32);
      let dtypes: Record<string, string> = {};
      const ours = await ourLogits(gpu(), tiny.path, sequence, (model) => (dtypes = model.stats.dtypes));
      const theirs = await llamaLogits(tiny.path, sequence);
      const reference = referenceLogits(configFromHf(tiny.config), tiny.weights, sequence);
      const vsLlama = worst(ours, theirs);
      const vsReference = worst(ours, reference);
      if (dtype === 'q4_k_m') {
        // Q and K are Q4_K, V is Q6_K: no fused QKV weight, three projections into column slices.
        expect(dtypes).toMatchObject({ attn_q: 'q4_k', attn_k: 'q4_k', attn_v: 'q6_k', ffn_down: 'q6_k', output: 'q6_k', ffn_up: 'q4_k' });
        expect(dtypes).not.toHaveProperty('attn_qkv');
      } else if (dtype === 'q4_k' || dtype === 'q6_k') {
        expect(dtypes).toMatchObject({ attn_qkv: dtype, output: dtype, token_embd: dtype });
      }
      if (dtype === 'q4_k' || dtype === 'q6_k' || dtype === 'q4_k_m') {
        const q8k = referenceLogits(configFromHf(tiny.config), tiny.weights, sequence, { roundInput: roundQ8K });
        const errors = q8k.map((row, i) => compare(row, theirs[i]).relL2);
        const first = errors.findIndex((e) => e > 1e-5);
        console.log(
          `[parity] ${dtype}: float64 with Q8_K activations vs llama.cpp: first position ${errors[0].toExponential(2)}, ` +
            `all ${Math.max(...errors).toExponential(2)} (within 1e-5 ${first < 0 ? 'everywhere' : `up to position ${first - 1}`})`,
        );
        expect(errors[0]).toBeLessThanOrEqual(1e-5);
      }
      // Teacher-forced greedy agreement: llama.cpp's argmax at each generated position equals our token.
      const steps = sequence.length - prompt.length;
      const agree = greedyAgreement(sequence, prompt.length, theirs);
      console.log(`[parity] ${dtype}: rel-L2 vs llama.cpp ${vsLlama.toExponential(2)}, vs float64 ${vsReference.toExponential(2)}, greedy ${agree}/${steps}`);
      expect(vsReference).toBeLessThanOrEqual(1e-4);
      expect(vsLlama).toBeLessThanOrEqual(BOUNDS[dtype].relL2);
      expect(agree / steps).toBeGreaterThanOrEqual(BOUNDS[dtype].greedy);
    });
  }

  it('a GGUF written without the Q/K permutation gives different logits (the permutation is honoured)', async () => {
    const good = writeTinyLlamaGguf(join(dir, 'perm-good.gguf'), { seed: 9 });
    const bad = writeTinyLlamaGguf(join(dir, 'perm-bad.gguf'), { seed: 9, permuteQK: false });
    const tokens = [5, 9, 40, 77, 12, 3];
    const a = await ourLogits(gpu(), good.path, tokens);
    const b = await ourLogits(gpu(), bad.path, tokens);
    expect(worst(b, a)).toBeGreaterThan(1e-2);
  });

  it('llama3-style rope scaling stored as rope_freqs.weight matches llama.cpp', async () => {
    // Per-frequency divisors (head size 16 -> 8 of them), as convert_hf_to_gguf.py writes for Llama 3.1.
    const factors = Float32Array.from([1, 1, 1.5, 2, 3, 5, 8, 8]);
    const tensors = [{ name: 'rope_freqs.weight', type: GgmlType.F32, ne: [factors.length], data: new Uint8Array(factors.buffer) }];
    const scaled = writeTinyLlamaGguf(join(dir, 'rope-freqs.gguf'), { seed: 13, tensors });
    const plain = writeTinyLlamaGguf(join(dir, 'rope-plain.gguf'), { seed: 13 });
    const tokens = Array.from({ length: 40 }, (_, i) => 3 + ((i * 37) % 250));
    const ours = await ourLogits(gpu(), scaled.path, tokens);
    const err = worst(ours, await llamaLogits(scaled.path, tokens));
    console.log(`[parity] rope_freqs (F32): rel-L2 vs llama.cpp ${err.toExponential(2)}`);
    expect(err).toBeLessThanOrEqual(1e-4);
    // The factors matter: without them the logits differ.
    expect(worst(ours, await ourLogits(gpu(), plain.path, tokens))).toBeGreaterThan(1e-3);
  });

  it('the same weights as a Hugging Face folder (F32, sharded) give the GGUF logits', async () => {
    const tiny = writeTinyLlamaGguf(join(dir, 'hf-twin.gguf'), { seed: 11 });
    const source = await openModelSource(tiny.path);
    const folder = join(dir, 'hf-twin');
    writeHfFolder(folder, tiny.config, tiny.weights, source.tokenizer.tokenizer, 'F32', { shards: 2 });
    await source.close();
    const tokens = [4, 18, 33, 120, 7, 7, 60, 2, 90];
    const fromGguf = await ourLogits(gpu(), tiny.path, tokens);
    const fromHf = await ourLogits(gpu(), folder, tokens);
    const err = worst(fromHf, fromGguf);
    console.log(`[parity] HF safetensors folder vs GGUF (F32): rel-L2 ${err.toExponential(2)}`);
    expect(err).toBeLessThanOrEqual(1e-5);
  });
});

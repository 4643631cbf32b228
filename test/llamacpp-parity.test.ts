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
//
// Q4_1, Q5_0, Q5_1 (random floats quantised as ggml's reference does, hidden 64) and Q5_K, Q5_K_M
// (Q5_K with Q6_K for attn_v, ffn_down and output), Q3_K, Q2_K (random valid blocks, hidden 256).
// Measured with seeds 7 (the tests) and 1..3, rel-L2 vs llama.cpp / greedy: Q4_1 1.7e-2 .. 1.9e-2,
// 31..32/32; Q5_0 1.5e-2 .. 2.2e-2, 31/32; Q5_1 1.6e-2 .. 2.0e-2, 31..32/32; Q5_K 3.9e-2 .. 1.7e-1
// (seed 3; 6.4e-2 at seed 7), 30..32/32; Q5_K_M 6.1e-2 .. 1.2e-1, 28..31/32; Q3_K 5.6e-2 .. 8.7e-2,
// 29..32/32; Q2_K 4.0e-2 .. 7.2e-2, 30..31/32. Our logits stay within 3e-5 of float64 on the
// dequantised weights in all of them. The gap is llama.cpp's activation rounding: Q5_0 multiplies
// Q8_0-rounded activations (float64 with that rounding matches llama.cpp within 1e-7 at every
// position), the K-quants Q8_K-rounded ones (matches at the first position, as for Q4_K above). Q4_1
// and Q5_1 multiply Q8_1 blocks, whose sum s = d * sum(q) is stored as f16 and scales each weight
// block's min m; no rounding of the activations alone reproduces that, so their decode is checked
// exactly instead through a gather: a token embedding of that type in an otherwise F32 model must
// match llama.cpp (get_rows dequantises without rounding anything) within the F32 bound.
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
import { roundQ8_0 } from './support/ggml-activations.ts';

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
  q4_1: { relL2: 3e-2, greedy: 0.95 },
  q5_0: { relL2: 3e-2, greedy: 0.95 },
  q5_1: { relL2: 3e-2, greedy: 0.95 },
  q5_k: { relL2: 1.5e-1, greedy: 0.85 },
  q5_k_m: { relL2: 1.5e-1, greedy: 0.85 },
  q2_k: { relL2: 1.5e-1, greedy: 0.85 },
  q3_k: { relL2: 1.5e-1, greedy: 0.85 },
};

const K_QUANT_MODELS: readonly TinyDtype[] = ['q2_k', 'q3_k', 'q4_k', 'q5_k', 'q6_k', 'q4_k_m', 'q5_k_m'];

describe('llama architecture: ours vs llama.cpp vs float64 on the same GGUF', () => {
  // K-quant models (random valid blocks) have hidden 256, FFN 512: 4 heads of 64 over 2 KV heads.
  for (const dtype of ['f32', 'f16', 'q8_0', 'q4_0', 'q4_1', 'q5_0', 'q5_1', 'q2_k', 'q3_k', 'q4_k', 'q5_k', 'q6_k', 'q4_k_m', 'q5_k_m'] as const) {
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
      if (dtype === 'q4_k_m' || dtype === 'q5_k_m') {
        // Q and K are Q4_K / Q5_K, V is Q6_K: no fused QKV weight, three projections into column slices.
        const base = dtype === 'q4_k_m' ? 'q4_k' : 'q5_k';
        expect(dtypes).toMatchObject({ attn_q: base, attn_k: base, attn_v: 'q6_k', ffn_down: 'q6_k', output: 'q6_k', ffn_up: base, token_embd: base });
        expect(dtypes).not.toHaveProperty('attn_qkv');
      } else if (dtype !== 'f32' && dtype !== 'f16') {
        expect(dtypes).toMatchObject({ attn_qkv: dtype, ffn_down: dtype, output: dtype, token_embd: dtype });
      }
      if (dtype === 'q5_0') {
        // llama.cpp multiplies Q5_0 weights by Q8_0-rounded activations: that rounding is the whole gap.
        const q8 = referenceLogits(configFromHf(tiny.config), tiny.weights, sequence, { roundInput: roundQ8_0 });
        const worstRounded = worst(q8, theirs);
        console.log(`[parity] ${dtype}: float64 with Q8_0 activations vs llama.cpp: all positions ${worstRounded.toExponential(2)}`);
        expect(worstRounded).toBeLessThanOrEqual(1e-5);
      }
      if (K_QUANT_MODELS.includes(dtype)) {
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

  // A gather dequantises a row and rounds nothing: llama.cpp's get_rows must give our embedding rows
  // exactly, so a Q4_1 / Q5_1 (or Q5_0) token embedding in an F32 model stays within the F32 bound.
  for (const type of ['q4_1', 'q5_0', 'q5_1'] as const) {
    it(`${type} token embedding (a gather: decoded as llama.cpp decodes it) in an F32 model`, async () => {
      const tiny = writeTinyLlamaGguf(join(dir, `embd-${type}.gguf`), { tensorTypes: { token_embd: type }, seed: 17 });
      const tokens = Array.from({ length: 12 }, (_, i) => 3 + ((i * 53) % 290));
      let dtypes: Record<string, string> = {};
      const ours = await ourLogits(gpu(), tiny.path, tokens, (model) => (dtypes = model.stats.dtypes));
      expect(dtypes).toMatchObject({ token_embd: type, output: 'f32', attn_qkv: 'f32' });
      const vsLlama = worst(ours, await llamaLogits(tiny.path, tokens));
      const vsReference = worst(ours, referenceLogits(configFromHf(tiny.config), tiny.weights, tokens));
      console.log(`[parity] ${type} token embedding, F32 matrices: rel-L2 vs llama.cpp ${vsLlama.toExponential(2)}, vs float64 ${vsReference.toExponential(2)}`);
      expect(vsLlama).toBeLessThanOrEqual(1e-4);
      expect(vsReference).toBeLessThanOrEqual(1e-5);
    });
  }

  it('a Q4_K_M-like file at a width that is not a multiple of 256 (Q5_0 / Q8_0 fallbacks, as for Qwen2-0.5B)', async () => {
    // llama.cpp quantises a tensor whose rows are not whole super-blocks to Q5_0 in place of Q4_K and
    // to Q8_0 in place of Q6_K. Hidden 96, FFN 256: only ffn_down (rows of 256) can be a K-quant.
    const tiny = writeTinyLlamaGguf(join(dir, 'fallback.gguf'), {
      dtype: 'q5_0', tensorTypes: { ffn_down: 'q4_k', output: 'q8_0' }, hiddenSize: 96, intermediateSize: 256, seed: 19,
    });
    const next = rng(5);
    const V = tiny.vocab.tokens.length;
    const prompt = Array.from({ length: 8 }, () => 3 + Math.floor(next() * (V - 3)));
    const sequence = await ourGreedy(gpu(), tiny.path, prompt, 16);
    let dtypes: Record<string, string> = {};
    const ours = await ourLogits(gpu(), tiny.path, sequence, (model) => (dtypes = model.stats.dtypes));
    expect(dtypes).toMatchObject({ token_embd: 'q5_0', attn_qkv: 'q5_0', attn_output: 'q5_0', ffn_up: 'q5_0', ffn_down: 'q4_k', output: 'q8_0' });
    const theirs = await llamaLogits(tiny.path, sequence);
    const config = configFromHf(tiny.config);
    const vsReference = worst(ours, referenceLogits(config, tiny.weights, sequence));
    // Each projection's activations rounded as llama.cpp rounds them for that weight's type.
    const rounded = referenceLogits(config, tiny.weights, sequence, { roundInput: (x, w) => (w.includes('down_proj') ? roundQ8K(x) : roundQ8_0(x)) });
    const first = compare(rounded[0], theirs[0]).relL2;
    const vsLlama = worst(ours, theirs);
    const agree = greedyAgreement(sequence, prompt.length, theirs);
    console.log(
      `[parity] Q5_0/Q4_K/Q8_0 fallback mix: rel-L2 vs llama.cpp ${vsLlama.toExponential(2)}, vs float64 ${vsReference.toExponential(2)}, ` +
        `greedy ${agree}/16; float64 with llama.cpp's activation rounding vs llama.cpp at the first position ${first.toExponential(2)}`,
    );
    expect(vsReference).toBeLessThanOrEqual(1e-4);
    expect(first).toBeLessThanOrEqual(1e-5);
    expect(vsLlama).toBeLessThanOrEqual(BOUNDS.q4_k.relL2);
    expect(agree / 16).toBeGreaterThanOrEqual(BOUNDS.q4_k.greedy);
  });

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

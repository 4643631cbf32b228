// Phi-3 / Phi-4 (Phi3ForCausalLM): q, k and v in one qkv_proj, gate and up in one gate_up_proj whose
// [gate; up] halves are interleaved at load for the fused SwiGLU matvec, partial rotary
// (partial_rotary_factor), a sliding window from config.json (Phi-3-mini-4k: 2047) and no biases.
// Tiny random GGUF files written as convert_hf_to_gguf.py's Phi3MiniModel writes them
// (test/support/tiny-arch-models.ts), checked as every family is (test/support/family-parity.ts):
// ours vs llama.cpp vs float64, and the HF folder twin. LongRoPE (rope_scaling "longrope" / "su":
// Phi-3-mini-128k, Phi-3.5, Phi-4-mini) is refused by name, from config.json and from GGUF.
// Bounds: LLAMA_CPP_BOUNDS (test/support/parity.ts); measured, rel-L2 vs llama.cpp / greedy of 32 on an
// AVX-512 EPYC: F32 4.5e-7 / 32, Q8_0 2.0e-2 / 32; vs float64 ~4e-7.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openModelSource } from '../models/source.ts';
import { configFromHf } from '../models/config.ts';
import { GgmlType } from '../models/ggml.ts';
import { writeTinyPhi3Gguf } from './support/tiny-arch-models.ts';
import { disposeLlamaOracle } from './support/llama-oracle.ts';
import { checkAgainstLlamaCpp, checkHfTwin } from './support/family-parity.ts';
import { roundQ8_0 } from './support/ggml-activations.ts';
import { gguf, writeGguf } from './support/gguf-writer.ts';
import { GgufFile } from '../models/gguf.ts';
import { useGpu } from './support/gpu.ts';

const gpu = useGpu();
const dir = mkdtempSync(join(tmpdir(), 'parity-phi3-'));
afterAll(async () => {
  await disposeLlamaOracle();
  rmSync(dir, { recursive: true, force: true });
});

// Awkward F32 shapes: hidden 60, 6 heads of 10 over 2 KV heads (GQA 3:1, as Phi-3-medium and Phi-4
// group theirs), FFN 84, 8 of 10 dims rotated (partial_rotary_factor 0.8), Phi-3-mini-4k's window.
const F32_SHAPE = { hiddenSize: 60, numHeads: 6, numKvHeads: 2, intermediateSize: 84, partialRotaryFactor: 0.8, slidingWindow: 2047 };

describe('phi3: ours vs llama.cpp vs float64 on the same GGUF', () => {
  it('F32, fused qkv (GQA 6/2) and [gate; up], 8 of 10 rotary dims, untied', async () => {
    const tiny = writeTinyPhi3Gguf(join(dir, 'phi3-f32.gguf'), { dtype: 'f32', seed: 61, ...F32_SHAPE });
    const source = await openModelSource(tiny.path);
    expect(source.config.architecture).toBe('phi3');
    expect(source.config.rope?.dims).toBe(8);
    expect(source.config.attentionWindows).toEqual([2047, 2047]);
    await source.close();
    await checkAgainstLlamaCpp(gpu(), { name: 'phi3 F32', tiny, dtype: 'f32' });
  });

  it('Q8_0, 4 heads of 16 (Phi-3-mini style, no GQA), no window (Phi-4 style), tied', async () => {
    const tiny = writeTinyPhi3Gguf(join(dir, 'phi3-q8_0.gguf'), { dtype: 'q8_0', seed: 62, intermediateSize: 96, tieEmbeddings: true });
    await checkAgainstLlamaCpp(gpu(), { name: 'phi3 Q8_0', tiny, dtype: 'q8_0', explain: { roundInput: roundQ8_0 } });
  });
});

describe('phi3: the same weights as a Hugging Face folder give the GGUF logits', () => {
  it('qkv_proj and gate_up_proj, partial rotary, sliding window, sharded', async () => {
    const tiny = writeTinyPhi3Gguf(join(dir, 'phi3-twin.gguf'), { seed: 63, ...F32_SHAPE });
    await checkHfTwin(gpu(), 'phi3', tiny, dir, 2);
  });
});

describe('phi3: LongRoPE is refused by name', () => {
  it('from config.json (rope_scaling type longrope and su)', () => {
    const tiny = writeTinyPhi3Gguf(join(dir, 'phi3-config.gguf'), { seed: 64 });
    for (const type of ['longrope', 'su']) {
      const config = { ...tiny.config, rope_scaling: { type, long_factor: [1], short_factor: [1] } };
      expect(() => configFromHf(config)).toThrow(new RegExp(`rope_scaling type "${type}" \\(LongRoPE\\) is not supported`));
    }
  });

  it('from a GGUF with rope_factors_long / rope_factors_short', async () => {
    const tiny = writeTinyPhi3Gguf(join(dir, 'phi3-longrope.gguf'), { seed: 65 });
    // The same file plus the two factor tensors convert_hf_to_gguf.py writes for LongRoPE.
    const file = await GgufFile.open(tiny.path);
    const metadata = [...file.metadata.entries()];
    const tensors = await Promise.all(
      [...file.tensors.values()].map(async (t) => ({ name: t.name, type: t.type, ne: [...t.ne], data: (await file.readTensor(t.name)).bytes })),
    );
    await file.close();
    const factors = new Uint8Array(new Float32Array(4).fill(1).buffer);
    tensors.push({ name: 'rope_factors_long.weight', type: GgmlType.F32, ne: [4], data: factors });
    tensors.push({ name: 'rope_factors_short.weight', type: GgmlType.F32, ne: [4], data: factors });
    const path = join(dir, 'phi3-longrope-factors.gguf');
    writeGguf(path, { metadata, tensors });
    await expect(openModelSource(path)).rejects.toThrow(/LongRoPE \(rope_factors_long/);
  });
});

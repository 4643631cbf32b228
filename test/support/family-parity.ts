// The checks every architecture's llama.cpp parity test makes, in one place (as
// test/llamacpp-parity-qwen2-gpt2.test.ts makes them for Qwen2 and GPT-2):
//  - the GGUF against llama.cpp (node-llama-cpp's CPU build): logits at every position of a 40-token
//    sequence whose last 32 tokens are our greedy continuation through the decode path, within the
//    format's bound (LLAMA_CPP_BOUNDS), and llama.cpp's argmax at each generated position is our token
//    at least the format's floor;
//  - the same GGUF against the float64 reference on the dequantised weights (referenceBound);
//  - the same weights as a Hugging Face folder: its config normalises to the GGUF's, and its logits are
//    the GGUF's within 1e-5 and the float64 reference's within 1e-4.
import { join } from 'node:path';
import { expect } from 'vitest';
import type { Gpu } from '../../src/gpu/device.ts';
import { openModelSource } from '../../models/source.ts';
import { configFromHf, type ModelConfig } from '../../models/config.ts';
import { writeHfFolder } from './tiny-models.ts';
import type { TinyModel } from './tiny-arch-models.ts';
import { llamaLogits } from './llama-oracle.ts';
import { referenceLogits, type ReferenceOptions } from './reference-model.ts';
import { errors, greedyAgreement, LLAMA_CPP_BOUNDS, ourGreedy, ourLogits, referenceBound, worst } from './parity.ts';
import { rng } from './reference.ts';

export interface FamilyCase {
  name: string;
  tiny: TinyModel;
  dtype: 'f32' | 'q8_0';
  /** The float64 reference with llama.cpp's activation rounding, shown only when a bound fails. */
  explain?: ReferenceOptions;
  /** In place of LLAMA_CPP_BOUNDS[dtype] (e.g. a GELU model's F32 bound, as GPT-2's). */
  bound?: { relL2: number; greedy: number };
}

/** Ours vs llama.cpp vs float64 on one GGUF file; returns the measured figures (also logged). */
export async function checkAgainstLlamaCpp(gpu: Gpu, c: FamilyCase): Promise<{ vsLlama: number; vsReference: number; greedy: number }> {
  const { tiny } = c;
  const next = rng(3);
  const V = tiny.vocab.tokens.length;
  const prompt = Array.from({ length: 8 }, () => Math.floor(next() * (V - 1)));
  const sequence = await ourGreedy(gpu, tiny.path, prompt, 32);
  const ours = await ourLogits(gpu, tiny.path, sequence);
  const theirs = await llamaLogits(tiny.path, sequence);
  const config = configFromHf(tiny.config);
  const reference = referenceLogits(config, tiny.weights, sequence);
  const vsLlama = worst(ours, theirs);
  const vsReference = worst(ours, reference);
  const greedy = greedyAgreement(sequence, prompt.length, theirs);
  console.log(`[parity] ${c.name}: rel-L2 vs llama.cpp ${vsLlama.toExponential(2)}, vs float64 ${vsReference.toExponential(2)}, greedy ${greedy}/32`);
  expect(sequence.length - prompt.length).toBe(32);
  expect(vsReference).toBeLessThanOrEqual(referenceBound(gpu, c.dtype === 'f32'));
  const bound = c.bound ?? LLAMA_CPP_BOUNDS[c.dtype];
  const explain = () => {
    const e = errors(referenceLogits(config, tiny.weights, sequence, c.explain), theirs);
    return `float64 (with llama.cpp's activation rounding where given) vs llama.cpp: first position ${e[0].toExponential(2)}, worst ${Math.max(...e).toExponential(2)}`;
  };
  expect(vsLlama, vsLlama <= bound.relL2 ? undefined : `rel-L2 vs llama.cpp ${vsLlama} > ${bound.relL2}; ${explain()}`).toBeLessThanOrEqual(bound.relL2);
  expect(greedy).toBeGreaterThanOrEqual(bound.greedy);
  return { vsLlama, vsReference, greedy };
}

/** The parts of a config that decide the forward pass (eps and soft-caps as the f32 a GGUF file stores). */
export const forwardShape = (c: ModelConfig) => ({
  ...c,
  normEps: Math.fround(c.normEps),
  attnLogitSoftcap: c.attnLogitSoftcap && Math.fround(c.attnLogitSoftcap),
  finalLogitSoftcap: c.finalLogitSoftcap && Math.fround(c.finalLogitSoftcap),
  rope: c.rope && { theta: c.rope.theta, dims: c.rope.dims },
  bosTokenId: undefined,
  eosTokenIds: undefined,
});

/** The GGUF's weights written as an HF folder (F32, `shards` files) give the GGUF's logits. */
export async function checkHfTwin(gpu: Gpu, name: string, tiny: TinyModel, dir: string, shards = 1): Promise<void> {
  const source = await openModelSource(tiny.path);
  const folder = join(dir, `${tiny.path.replace(/^.*\//, '').replace(/\.gguf$/, '')}-hf`);
  writeHfFolder(folder, tiny.config, tiny.weights as Map<string, Float32Array>, source.tokenizer.tokenizer, 'F32', { shards });
  const ggufConfig = source.config;
  await source.close();
  const hf = await openModelSource(folder);
  expect(forwardShape(hf.config)).toEqual(forwardShape(ggufConfig));
  await hf.close();
  const tokens = Array.from({ length: 40 }, (_, i) => (i * 37 + 5) % tiny.vocab.tokens.length);
  const fromGguf = await ourLogits(gpu, tiny.path, tokens);
  const fromHf = await ourLogits(gpu, folder, tokens);
  const err = worst(fromHf, fromGguf);
  const vsReference = worst(fromHf, referenceLogits(configFromHf(tiny.config), tiny.weights, tokens));
  console.log(`[parity] HF folder vs GGUF, ${name}: rel-L2 ${err.toExponential(2)}; HF folder vs float64 ${vsReference.toExponential(2)}`);
  expect(err).toBeLessThanOrEqual(1e-5);
  expect(vsReference).toBeLessThanOrEqual(1e-4);
}

// The llama.cpp oracle on tiny GGUF files written by the tests: it loads them, returns finite logits
// of the vocabulary's length at every position, the same ones twice, and agrees with the float64
// reference on the HF-layout weights (which checks the writer's Q/K permutation too).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { configFromHf } from '../models/config.ts';
import { disposeLlamaOracle, llamaLogits, llamaTokenize } from './support/llama-oracle.ts';
import { compare } from './support/reference.ts';
import { referenceLogits } from './support/reference-model.ts';
import { writeTinyLlamaGguf, type TinyLlamaOptions } from './support/tiny-models.ts';

const dir = mkdtempSync(join(tmpdir(), 'llama-oracle-test-'));
afterAll(async () => {
  await disposeLlamaOracle();
  rmSync(dir, { recursive: true, force: true });
});

function argmax(a: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < a.length; i++) if (a[i] > a[best]) best = i;
  return best;
}

/** llama.cpp's logits and the float64 reference's for one tiny model. */
async function bothLogits(name: string, options: TinyLlamaOptions, text = 'hello world, the miner is in the model.') {
  const tiny = writeTinyLlamaGguf(join(dir, `${name}.gguf`), options);
  const tokens = [tiny.vocab.bosId, ...(await llamaTokenize(tiny.path, text))];
  const ours = await llamaLogits(tiny.path, tokens);
  const ref = referenceLogits(configFromHf(tiny.config), tiny.weights, tokens);
  const cmp = compare(
    ours.flatMap((l) => Array.from(l)),
    ref.flatMap((l) => Array.from(l)),
  );
  const sameArgmax = ours.filter((l, p) => argmax(l) === argmax(ref[p])).length;
  return { tiny, tokens, ours, cmp, sameArgmax };
}

describe('llama.cpp oracle', () => {
  it('loads a tiny F32 Llama and returns finite logits at every position, deterministically', async () => {
    const tiny = writeTinyLlamaGguf(join(dir, 'f32.gguf'), { dtype: 'f32', seed: 1 });
    const tokens = [1, 296, 301, 13, 300, 5, 260];
    const first = await llamaLogits(tiny.path, tokens);
    expect(first).toHaveLength(tokens.length);
    for (const [p, logits] of first.entries()) {
      expect(logits, `position ${p}`).toHaveLength(tiny.vocab.tokens.length);
      expect(logits.every(Number.isFinite), `position ${p}`).toBe(true);
    }
    // Not degenerate: logits spread out and differ between positions.
    expect(Math.max(...first[3]) - Math.min(...first[3])).toBeGreaterThan(1);
    expect(first[2]).not.toEqual(first[3]);
    expect(await llamaLogits(tiny.path, tokens)).toEqual(first);
  });

  it('agrees with the float64 reference on F32 weights', async () => {
    const { cmp, sameArgmax, tokens } = await bothLogits('agree-f32', { dtype: 'f32', seed: 2 });
    expect(cmp.firstNonFinite).toBe(-1);
    expect(cmp.relL2, `max abs ${cmp.maxAbs} at ${cmp.worstIndex}`).toBeLessThan(1e-5);
    expect(sameArgmax).toBe(tokens.length);
  });

  it('disagrees when the Q/K rows are not permuted (the check has teeth)', async () => {
    const { cmp } = await bothLogits('unpermuted', { dtype: 'f32', seed: 2, permuteQK: false });
    expect(cmp.relL2).toBeGreaterThan(0.05);
  });

  it('runs F16, Q8_0 and Q4_0 files close to the reference on their dequantised weights', async () => {
    // llama.cpp rounds activations to the weight's dot type (F16, or Q8_0 blocks) before each
    // matmul, so quantised files agree only as closely as that rounding allows.
    for (const [dtype, bound] of [
      ['f16', 5e-3],
      ['q8_0', 5e-2],
      ['q4_0', 5e-2],
    ] as const) {
      const { cmp, ours } = await bothLogits(`agree-${dtype}`, { dtype, seed: 3 });
      expect(ours.every((l) => l.every(Number.isFinite)), dtype).toBe(true);
      expect(cmp.relL2, dtype).toBeLessThan(bound);
    }
  });

  it('loads a byte-level BPE vocabulary with tied embeddings', async () => {
    const { cmp, tiny } = await bothLogits('gpt2-tied', { tokenizer: 'gpt2', tieEmbeddings: true, seed: 4 });
    expect(tiny.vocab.model).toBe('gpt2');
    expect(cmp.relL2).toBeLessThan(1e-5);
  });
});

import { describe, expect, it } from 'vitest';
import { Sampler, validateSamplingParams } from '../src/engine/sampler.ts';
import { OptionError } from '../src/errors.ts';

const candidates = (logits: number[], ids = logits.map((_, i) => 100 + i)) => {
  const max = Math.max(...logits);
  return { ids, logits, logSumExp: max + Math.log(logits.reduce((s, l) => s + Math.exp(l - max), 0)) };
};
const none = new Set<number>();

describe('sampler', () => {
  it('greedy picks the highest logit and reports model logprobs', () => {
    const c = candidates([3, 1, 0.5]);
    const s = new Sampler({ temperature: 0 }).sample(c, none, 2);
    expect(s.tokenId).toBe(100);
    expect(s.logprob).toBeCloseTo(3 - c.logSumExp, 12);
    expect(s.top.map((t) => t.tokenId)).toEqual([100, 101]);
    expect(s.top[1].logprob).toBeCloseTo(1 - c.logSumExp, 12);
  });

  it('the same seed reproduces the same draws; another seed differs', () => {
    const c = candidates([1, 0.9, 0.8, 0.7, 0.6, 0.5]);
    const draw = (seed: number) => {
      const s = new Sampler({ temperature: 1, seed });
      return Array.from({ length: 50 }, () => s.sample(c, none).tokenId);
    };
    expect(draw(7)).toEqual(draw(7));
    expect(draw(7)).not.toEqual(draw(8));
  });

  it('draws in proportion to softmax(logits / T)', () => {
    const c = candidates([Math.log(0.5), Math.log(0.3), Math.log(0.2)]);
    const s = new Sampler({ temperature: 1, seed: 1 });
    const counts = [0, 0, 0];
    const n = 20000;
    for (let i = 0; i < n; i++) counts[s.sample(c, none).tokenId - 100]++;
    expect(counts[0] / n).toBeCloseTo(0.5, 1);
    expect(counts[1] / n).toBeCloseTo(0.3, 1);
    expect(counts[2] / n).toBeCloseTo(0.2, 1);
  });

  it('top_k = 1, a tiny top_p and a high min_p all reduce to greedy', () => {
    const c = candidates([2, 1.9, 1.8]);
    for (const params of [{ topK: 1 }, { topP: 0.01 }, { minP: 0.99 }]) {
      const s = new Sampler({ temperature: 1, seed: 3, ...params });
      for (let i = 0; i < 20; i++) expect(s.sample(c, none).tokenId).toBe(100);
    }
  });

  it('top_p keeps the smallest prefix reaching p', () => {
    const c = candidates([Math.log(0.6), Math.log(0.3), Math.log(0.1)]);
    const s = new Sampler({ temperature: 1, seed: 5, topP: 0.85 });
    const seen = new Set(Array.from({ length: 500 }, () => s.sample(c, none).tokenId));
    expect(seen).toEqual(new Set([100, 101]));
  });

  it('repetition penalty demotes tokens already seen', () => {
    const c = candidates([2, 1.5]);
    expect(new Sampler({ temperature: 0 }).sample(c, new Set([100])).tokenId).toBe(100);
    expect(new Sampler({ temperature: 0, repetitionPenalty: 1.5 }).sample(c, new Set([100])).tokenId).toBe(101);
  });

  it('rejects out-of-range parameters with the name of the parameter', () => {
    expect(() => validateSamplingParams({ temperature: -1 })).toThrow(OptionError);
    expect(() => validateSamplingParams({ topP: 1.5 })).toThrow(/top_p/);
    expect(() => validateSamplingParams({ topK: 2.5 })).toThrow(/top_k/);
    expect(() => validateSamplingParams({ seed: 1.5 })).toThrow(/seed/);
    expect(() => validateSamplingParams({ temperature: NaN })).toThrow(/temperature/);
  });
});

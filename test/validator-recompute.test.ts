// Teacher-forced recomputation batches many sequences into each forward pass, splitting long ones
// across steps: what it reads must equal each sequence's own full-logits prefill (the `logits`
// command's path), position by position.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { Engine } from '../src/engine/engine.ts';
import { acquireGpu, type Gpu } from '../src/gpu/device.ts';
import { ReferenceModel, referenceRow } from '../src/validator/recompute.ts';

let gpu: Gpu;
let batched: ReferenceModel;
let single: Engine;
beforeAll(async () => {
  gpu = await acquireGpu();
  // 3 slots and 16-row steps: five sequences of 9..40 tokens take several steps, share them, and wait for slots.
  batched = await ReferenceModel.load({ engine: await Engine.load({ gpu, slots: 3, capacity: 48, prefillChunk: 16, prefixCacheMin: 0 }) });
  single = await Engine.load({ gpu, slots: 1, capacity: 48, prefillChunk: 48, prefixCacheMin: 0 });
});
afterAll(async () => {
  await batched?.engine.close();
  await single?.close();
  gpu?.destroy();
});

it('scores many sequences per forward pass as one full prefill each (same ranks, logprobs within 1e-4)', async () => {
  const seq = (n: number, seed: number) => Array.from({ length: n }, (_, i) => (seed * 131 + i * 37) % 500);
  const items = [
    { prompt: seq(5, 1), completion: seq(4, 2) },
    { prompt: seq(20, 3), completion: seq(20, 4) },
    { prompt: seq(2, 5), completion: [] },
    { prompt: seq(11, 6), completion: seq(13, 7) },
    { prompt: seq(30, 8), completion: seq(30, 9) }, // 60 > capacity 48: the last 12 are not scored
  ];
  const scored = await batched.score(items);
  const eos = single.model.config.eosTokenIds;
  for (const [i, item] of items.entries()) {
    const fits = Math.min(item.completion.length, 48 - item.prompt.length);
    expect(scored[i].truncated, `item ${i}`).toBe(item.completion.length - fits);
    const tokens = item.prompt.concat(item.completion.slice(0, fits));
    const logits = await single.logits(tokens, true);
    const expected: ReturnType<typeof referenceRow>[] = [];
    for (let p = item.prompt.length - 1; p < tokens.length; p++) {
      if (p + 1 === tokens.length && scored[i].truncated > 0) break;
      expected.push(referenceRow(logits[p], tokens[p + 1], eos));
    }
    expect(scored[i].rows.length, `item ${i}`).toBe(expected.length);
    scored[i].rows.forEach((row, j) => {
      const want = expected[j];
      expect(row.tokenId, `item ${i} row ${j}`).toBe(want.tokenId);
      expect(row.rank, `item ${i} row ${j}`).toBe(want.rank);
      expect(Math.abs(row.logprob - want.logprob), `item ${i} row ${j}`).toBeLessThan(1e-4);
      expect(Math.abs(row.eosLogprob - want.eosLogprob), `item ${i} row ${j}`).toBeLessThan(1e-4);
      expect(row.top.slice(0, 5).map((a) => a.tokenId), `item ${i} row ${j}`).toEqual(want.top.slice(0, 5).map((a) => a.tokenId));
    });
  }
  expect(batched.rowsComputed).toBe(items.reduce((n, it) => n + Math.min(48, it.prompt.length + it.completion.length), 0));
}, 300_000);

it('refuses token ids outside the vocabulary and prompts that do not fit, naming the item', async () => {
  await expect(batched.score([{ prompt: [1], completion: [1, 99999] }])).rejects.toThrow(/item 0: token id 99999/);
  await expect(batched.score([{ prompt: new Array(48).fill(1), completion: [] }])).rejects.toThrow(/item 0: a prompt of 48 tokens/);
});

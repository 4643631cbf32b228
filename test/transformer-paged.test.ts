// The paged KV cache through the Transformer: block tables set with setBlockTable, blocks shared
// between sequences and copied with copyBlock, a pool smaller or larger than every slot's full
// reservation, and the stats that memory planning reads.
//
// Sharing must be invisible in the logits: a sequence reading a prefix from another sequence's
// blocks (set in its table, not recomputed) gives the logits its own cold prefill gives, to the
// rounding of prefill chunking (rel-L2 <= 1e-5, identical top ids), and a sequence whose table is a
// shuffled permutation gives bit-identical logits to the identity table (the same arithmetic on the
// same values, only the addresses differ). The f32 cache is used so that only the paging is tested.
import { describe, expect, it } from 'vitest';
import { Transformer } from '../models/transformer.ts';
import { embeddedSource } from '../models/source.ts';
import { TINY_CONFIG } from '../models/tiny.ts';
import { KV_BLOCK_TOKENS, kvBytesPerToken } from '../kernels/attention.ts';
import { ShapeError } from '../src/errors.ts';
import { useGpu } from './support/gpu.ts';
import { expectClose, rng } from './support/reference.ts';

const gpu = useGpu();
const draw = rng(57);
const randomTokens = (n: number) => Array.from({ length: n }, () => Math.floor(draw() * TINY_CONFIG.vocab_size));

/** Greedy-free continuation: feed `tokens` one decode step each from `position`; every step's candidates. */
async function decodeAll(model: Transformer, slot: number, tokens: number[], position: number) {
  const out = [];
  for (let i = 0; i < tokens.length; i++) out.push((await model.decode([{ slot, token: tokens[i], position: position + i }]))[0]);
  return out;
}

describe('paged KV cache in the transformer', () => {
  it('a shuffled block table gives bit-identical logits to the identity table', async () => {
    const source = embeddedSource();
    // capacity 40: 3 blocks per slot; a pool of 11 leaves spare blocks to scatter into.
    const model = await Transformer.load(gpu(), source, { slots: 2, capacity: 40, prefillChunk: 16, kvBlocks: 11, kvDtype: 'f32' });
    try {
      const tokens = randomTokens(38);
      const prompt = tokens.slice(0, 21);
      const identity = await model.prefill(0, prompt, 0, { allLogits: true });
      const identitySteps = await decodeAll(model, 0, tokens.slice(21), 21);
      model.setBlockTable(1, [9, 4, 7]);
      const shuffled = await model.prefill(1, prompt, 0, { allLogits: true });
      const shuffledSteps = await decodeAll(model, 1, tokens.slice(21), 21);
      shuffled.logits!.forEach((row, t) => expect(Buffer.from(row.buffer).equals(Buffer.from(identity.logits![t].buffer)), `prefill position ${t}`).toBe(true));
      shuffledSteps.forEach((step, i) => {
        expect(Array.from(step.ids)).toEqual(Array.from(identitySteps[i].ids));
        expect(Array.from(step.logits)).toEqual(Array.from(identitySteps[i].logits));
      });
    } finally {
      model.destroy();
      await source.close();
    }
  });

  it('two sequences sharing prefix blocks (and a copied partial block) give the logits of unshared ones', async () => {
    const source = embeddedSource();
    const model = await Transformer.load(gpu(), source, { slots: 4, capacity: 48, prefillChunk: 24, kvBlocks: 16, kvDtype: 'f32' });
    try {
      // A: a 21-token prompt (block 0 full, block 1 holding positions 16..20), then decodes.
      const shared = randomTokens(21);
      const tailA = randomTokens(6);
      const tailB = randomTokens(9);
      const tailC = randomTokens(7);
      model.setBlockTable(0, [10, 11, 12]);
      await model.prefill(0, shared, 0, { candidates: 0 });
      // B's prompt is shared[0..16) + tailB: it shares A's full block 10 and prefills only from
      // position 16 on, into its own blocks.
      model.setBlockTable(1, [10, 13, 14]);
      const bShared = await model.prefill(1, tailB, KV_BLOCK_TOKENS, { allLogits: true });
      // C shares all 21 tokens: block 10 as is, A's partly filled block 11 copied to 15 before C
      // writes its own positions 21.. into it (copy-on-write).
      model.copyBlock(11, 15);
      model.setBlockTable(2, [10, 15, 9]);
      const cShared = await model.prefill(2, tailC, shared.length, { allLogits: true });
      // A continues after B and C wrote their blocks: its own blocks are untouched.
      const aSteps = await decodeAll(model, 0, tailA, shared.length);

      // Cold, unshared runs in slot 3, each in blocks nobody else uses.
      model.setBlockTable(3, [0, 1, 2]);
      const bCold = await model.prefill(3, [...shared.slice(0, KV_BLOCK_TOKENS), ...tailB], 0, { allLogits: true });
      let worst = 0;
      bShared.logits!.forEach((row, t) => {
        worst = Math.max(worst, expectClose(row, bCold.logits![KV_BLOCK_TOKENS + t], 1e-5, `B position ${KV_BLOCK_TOKENS + t}: shared vs cold`).relL2);
      });
      model.setBlockTable(3, [3, 4, 5]);
      const cCold = await model.prefill(3, [...shared, ...tailC], 0, { allLogits: true });
      cShared.logits!.forEach((row, t) => {
        worst = Math.max(worst, expectClose(row, cCold.logits![shared.length + t], 1e-5, `C position ${shared.length + t}: shared vs cold`).relL2);
      });
      model.setBlockTable(3, [6, 7, 8]);
      await model.prefill(3, shared, 0, { candidates: 0 });
      const aCold = await decodeAll(model, 3, tailA, shared.length);
      aSteps.forEach((step, i) => {
        expect(Array.from(step.ids)).toEqual(Array.from(aCold[i].ids));
        worst = Math.max(worst, expectClose(step.logits, aCold[i].logits, 1e-5, `A decode ${i} after B and C wrote`).relL2);
      });
      console.log(`shared vs unshared KV blocks: worst rel-L2 ${worst.toExponential(2)}`);
    } finally {
      model.destroy();
      await source.close();
    }
  });

  it('a pool smaller than every slot reserved: slots whose default blocks are past the pool read none', async () => {
    const source = embeddedSource();
    // 2 slots x 2 blocks by default, but a pool of 3: slot 1's second entry (block 3) names no block.
    const model = await Transformer.load(gpu(), source, { slots: 2, capacity: 32, prefillChunk: 16, kvBlocks: 3, kvDtype: 'f32' });
    const big = await Transformer.load(gpu(), source, { slots: 2, capacity: 32, prefillChunk: 16, kvDtype: 'f32' });
    try {
      const cfg = model.config;
      expect(model.stats.kvBlocks).toBe(3);
      expect(big.stats.kvBlocks).toBe(4);
      expect(model.stats.kvBlockTokens).toBe(KV_BLOCK_TOKENS);
      expect(model.stats.kvDtype).toBe('f32');
      expect(model.stats.kvBytesPerToken).toBe(kvBytesPerToken(cfg, 'f32'));
      expect(model.stats.kvBytesPerToken).toBe(2 * cfg.numLayers * cfg.numKvHeads * cfg.headDim * 4);
      expect(model.stats.kvBytes).toBe(3 * KV_BLOCK_TOKENS * model.stats.kvBytesPerToken);
      const tokens = randomTokens(20);
      // Slot 1 holds positions 0..15 in block 2; 16.. have no block: writes dropped, keys skipped.
      const small = await model.prefill(1, tokens.slice(0, 16), 0, { allLogits: true });
      const full = await big.prefill(1, tokens.slice(0, 16), 0, { allLogits: true });
      small.logits!.forEach((row, t) => expect(Buffer.from(row.buffer).equals(Buffer.from(full.logits![t].buffer))).toBe(true));
      const [step] = await model.decode([{ slot: 1, token: tokens[16], position: 16 }]);
      expect(step.logits.every(Number.isFinite)).toBe(true);
      // Pointing the entry at a real block makes the slot whole.
      model.setBlockTable(1, [2, 0]);
      const [fixed] = await model.decode([{ slot: 1, token: tokens[16], position: 16 }]);
      const [want] = await big.decode([{ slot: 1, token: tokens[16], position: 16 }]);
      expect(Array.from(fixed.logits)).toEqual(Array.from(want.logits));
    } finally {
      model.destroy();
      big.destroy();
      await source.close();
    }
  });

  it('setBlockTable and copyBlock refuse bad slots, ids and lengths, naming the value', async () => {
    const source = embeddedSource();
    const model = await Transformer.load(gpu(), source, { slots: 2, capacity: 40, prefillChunk: 8, kvBlocks: 5, kvDtype: 'f32' });
    try {
      expect(() => model.setBlockTable(2, [0])).toThrow(new ShapeError('setBlockTable: slot 2 out of range (0..1)'));
      expect(() => model.setBlockTable(-1, [0])).toThrow(/slot -1 out of range/);
      expect(() => model.setBlockTable(0, [0, 5])).toThrow(/block id 5 \(entry 1\) out of range \(0\.\.4\)/);
      expect(() => model.setBlockTable(0, [1.5])).toThrow(/block id 1.5 \(entry 0\)/);
      expect(() => model.setBlockTable(0, [0, 1, 2, 3])).toThrow(/4 blocks given, a slot's row holds at most 3/);
      expect(() => model.copyBlock(5, 0)).toThrow(/copyBlock: src block 5 out of range \(0\.\.4\)/);
      expect(() => model.copyBlock(0, -2)).toThrow(/copyBlock: dst block -2 out of range/);
      expect(() => model.copyBlock(0, 0)).not.toThrow();
      await expect(Transformer.load(gpu(), source, { slots: 1, capacity: 8, prefillChunk: 8, kvBlocks: 0 })).rejects.toThrow(/kvBlocks must be an integer >= 1 \(got 0\)/);
      await expect(Transformer.load(gpu(), source, { slots: 1, capacity: 8, prefillChunk: 8, kvDtype: 'q4_0' as 'f16' })).rejects.toThrow(
        /kvDtype must be one of f32, f16, q8_0 \(got q4_0\)/,
      );
    } finally {
      model.destroy();
      await source.close();
    }
  });
});

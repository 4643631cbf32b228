// The GPU forward pass against the float64 reference (test/support/reference-model.ts) for each
// architecture: every position's logits from a multi-chunk prefill, then decode steps continuing
// the same sequence, in a second KV slot so slots cannot leak into each other. The KV cache is
// f32 here (kvDtype 'f32'), as the reference keeps it; the f16 and q8_0 caches are held to the f32
// one in test/kv-dtype-parity.test.ts.
import { describe, expect, it } from 'vitest';
import { Transformer, type RowCandidates } from '../models/transformer.ts';
import type { RowSampling } from '../kernels/sample.ts';
import { embeddedSource, memorySource, type MemoryTensor } from '../models/source.ts';
import { TINY_CONFIG, tinyWeights } from '../models/tiny.ts';
import { referenceLogits } from './support/reference-model.ts';
import { useGpu } from './support/gpu.ts';
import { expectClose, rng } from './support/reference.ts';

const gpu = useGpu();

function normalTensors(shapes: Array<[string, number[]]>, seed: number): Map<string, MemoryTensor> {
  const next = rng(seed);
  const normal = () => Math.sqrt(-2 * Math.log(next() + 1e-12)) * Math.cos(2 * Math.PI * next());
  return new Map(
    shapes.map(([name, shape]) => {
      const size = shape.reduce((a, b) => a * b, 1);
      const isNorm = /ln_|norm/.test(name) && name.endsWith('weight');
      const std = shape.length === 1 ? 0.1 : name.includes('wte') || name.includes('wpe') || name.includes('embed') ? 1 : 1 / Math.sqrt(shape[0]);
      const data = Float32Array.from({ length: size }, () => (isNorm ? 1 : 0) + std * normal());
      return [name, { shape, data }];
    }),
  );
}

const GPT2_CONFIG = { architectures: ['GPT2LMHeadModel'], vocab_size: 97, n_embd: 48, n_head: 3, n_layer: 2, n_positions: 64, layer_norm_epsilon: 1e-5 };
function gpt2Shapes(): Array<[string, number[]]> {
  const C = 48;
  const shapes: Array<[string, number[]]> = [['transformer.wte.weight', [97, C]], ['transformer.wpe.weight', [64, C]]];
  for (let l = 0; l < 2; l++) {
    const p = `transformer.h.${l}.`;
    shapes.push(
      [`${p}ln_1.weight`, [C]], [`${p}ln_1.bias`, [C]],
      [`${p}attn.c_attn.weight`, [C, 3 * C]], [`${p}attn.c_attn.bias`, [3 * C]],
      [`${p}attn.c_proj.weight`, [C, C]], [`${p}attn.c_proj.bias`, [C]],
      [`${p}ln_2.weight`, [C]], [`${p}ln_2.bias`, [C]],
      [`${p}mlp.c_fc.weight`, [C, 4 * C]], [`${p}mlp.c_fc.bias`, [4 * C]],
      [`${p}mlp.c_proj.weight`, [4 * C, C]], [`${p}mlp.c_proj.bias`, [C]],
    );
  }
  shapes.push(['transformer.ln_f.weight', [C]], ['transformer.ln_f.bias', [C]]);
  return shapes;
}

const gpt2UntiedShapes = (): Array<[string, number[]]> => [...gpt2Shapes(), ['lm_head.weight', [97, 48]]];

const QWEN2_CONFIG = {
  architectures: ['Qwen2ForCausalLM'], vocab_size: 89, hidden_size: 64, intermediate_size: 96, num_hidden_layers: 2,
  num_attention_heads: 4, num_key_value_heads: 1, max_position_embeddings: 128, rms_norm_eps: 1e-6, rope_theta: 1000000, tie_word_embeddings: true,
};
function qwen2Shapes(): Array<[string, number[]]> {
  const C = 64;
  const D = 16;
  const shapes: Array<[string, number[]]> = [['model.embed_tokens.weight', [89, C]]];
  for (let l = 0; l < 2; l++) {
    const p = `model.layers.${l}.`;
    shapes.push(
      [`${p}input_layernorm.weight`, [C]],
      [`${p}self_attn.q_proj.weight`, [4 * D, C]], [`${p}self_attn.q_proj.bias`, [4 * D]],
      [`${p}self_attn.k_proj.weight`, [D, C]], [`${p}self_attn.k_proj.bias`, [D]],
      [`${p}self_attn.v_proj.weight`, [D, C]], [`${p}self_attn.v_proj.bias`, [D]],
      [`${p}self_attn.o_proj.weight`, [C, 4 * D]],
      [`${p}post_attention_layernorm.weight`, [C]],
      [`${p}mlp.gate_proj.weight`, [96, C]], [`${p}mlp.up_proj.weight`, [96, C]], [`${p}mlp.down_proj.weight`, [C, 96]],
    );
  }
  shapes.push(['model.norm.weight', [C]]);
  return shapes;
}

const noTokenizer = { tokenizer: {}, source: 'test' };

const CASES = [
  {
    name: 'llama (tiny-random-llama, GQA 4/2)',
    source: () => embeddedSource(),
    weights: () => tinyWeights(),
    vocab: TINY_CONFIG.vocab_size,
  },
  {
    name: 'gpt2 (LayerNorm, learned positions, Conv1D, GELU, tied)',
    source: () => memorySource('gpt2-test', GPT2_CONFIG, normalTensors(gpt2Shapes(), 2), noTokenizer),
    weights: () => new Map([...normalTensors(gpt2Shapes(), 2)].map(([k, v]) => [k, v.data])),
    vocab: 97,
  },
  {
    name: 'gpt2 untied (lm_head.weight outside the transformer. prefix)',
    source: () => memorySource('gpt2-untied', { ...GPT2_CONFIG, tie_word_embeddings: false }, normalTensors(gpt2UntiedShapes(), 4), noTokenizer),
    weights: () => new Map([...normalTensors(gpt2UntiedShapes(), 4)].map(([k, v]) => [k, v.data])),
    vocab: 97,
  },
  {
    name: 'qwen2 (qkv bias, GQA 4/1, tied)',
    source: () => memorySource('qwen2-test', QWEN2_CONFIG, normalTensors(qwen2Shapes(), 3), noTokenizer),
    weights: () => new Map([...normalTensors(qwen2Shapes(), 3)].map(([k, v]) => [k, v.data])),
    vocab: 89,
  },
];

describe('transformer forward pass vs float64 reference', () => {
  for (const c of CASES) {
    it(c.name, async () => {
      const source = c.source();
      // prefillChunk 8 makes the 19-token prompt take three prefill steps (8 + 8 + 3).
      const model = await Transformer.load(gpu(), source, { slots: 3, capacity: 48, prefillChunk: 8, kvDtype: 'f32' });
      try {
        const next = rng(11);
        const tokens = Array.from({ length: 23 }, () => Math.floor(next() * c.vocab));
        const ref = referenceLogits(source.config, c.weights(), tokens);
        const prompt = tokens.slice(0, 19);
        const { logits, candidates } = await model.prefill(1, prompt, 0, { allLogits: true });
        for (let t = 0; t < prompt.length; t++) expectClose(logits![t], ref[t], 1e-4, `${c.name} prefill position ${t}`);
        // Candidates: the top logits of the last position, best first, with the right log-sum-exp.
        const last = ref[prompt.length - 1];
        const best = Array.from(last.keys()).sort((a, b) => last[b] - last[a]);
        expect(candidates!.ids[0]).toBe(best[0]);
        const lse = Math.log(last.reduce((s, v) => s + Math.exp(v), 0));
        expect(Math.abs(candidates!.logSumExp - lse)).toBeLessThan(1e-3);
        // Decode the remaining tokens one at a time, batched with a second sequence in slot 0.
        await model.prefill(0, [tokens[0]], 0);
        for (let t = 19; t < 23; t++) {
          const [other, mine] = await model.decode([
            { slot: 0, token: tokens[t - 19 + 1], position: t - 19 + 1 },
            { slot: 1, token: tokens[t - 1], position: t - 1 },
          ]);
          void other;
          const refRow = ref[t - 1];
          const ids = Array.from(mine.ids.slice(0, 5));
          const want = Array.from(refRow.keys()).sort((a, b) => refRow[b] - refRow[a]).slice(0, 5);
          expect(ids).toEqual(want);
          for (let i = 0; i < 5; i++) expect(Math.abs(mine.logits[i] - refRow[ids[i]])).toBeLessThan(1e-3 * Math.max(1, Math.abs(refRow[ids[i]])));
        }
      } finally {
        model.destroy();
        await source.close();
      }
    });
  }
});

// Several sequences in one prefill step: pieces from different slots, some continuing a prompt
// prefilled earlier, some asking for no candidates, laid end to end as the rows of one forward
// pass. Each piece must come out as it does prefilled alone (in other slots of the same model),
// the float64 reference must still match, and the KV rows of every piece must be in place (a
// decode step over all four slots afterwards agrees too).
describe('batched prefill (prefillBatch) vs one piece at a time', () => {
  for (const c of CASES) {
    it(c.name, async () => {
      const source = c.source();
      // 16 rows in the batch (the matmul path); each piece alone is at most 6 rows (matvec).
      const model = await Transformer.load(gpu(), source, { slots: 8, capacity: 48, prefillChunk: 16, maxPrefillPieces: 4, kvDtype: 'f32' });
      try {
        expect(model.maxPrefillPieces).toBe(4);
        const next = rng(29);
        const draw = (n: number) => Array.from({ length: n }, () => Math.floor(next() * c.vocab));
        // history: tokens already in the slot; piece: this step's tokens; slot: where the batch runs
        // it (the solo run uses slot + 4).
        const specs = [
          { slot: 2, history: draw(5), tokens: draw(6), candidates: 64 },
          { slot: 0, history: [], tokens: draw(3), candidates: 0 },
          { slot: 3, history: draw(9), tokens: draw(2), candidates: 7 },
          { slot: 1, history: [], tokens: draw(5), candidates: 64 },
        ];
        for (const s of specs) {
          if (s.history.length === 0) continue;
          await model.prefill(s.slot, s.history, 0, { candidates: 0 });
          await model.prefill(s.slot + 4, s.history, 0, { candidates: 0 });
        }
        const solo: Array<RowCandidates | undefined> = [];
        for (const s of specs) {
          solo.push((await model.prefill(s.slot + 4, s.tokens, s.history.length, { candidates: s.candidates })).candidates);
        }
        const batch = await model.prefillBatch(specs.map((s) => ({ slot: s.slot, tokens: s.tokens, start: s.history.length, candidates: s.candidates })));
        expect(batch).toHaveLength(specs.length);
        const weights = c.weights();
        let worst = 0;
        specs.forEach((s, i) => {
          const got = batch[i];
          if (s.candidates === 0) {
            expect(got).toBeUndefined();
            return;
          }
          const want = solo[i]!;
          expect(got!.ids).toHaveLength(Math.min(s.candidates, c.vocab));
          expect(Array.from(got!.ids)).toEqual(Array.from(want.ids));
          worst = Math.max(worst, expectClose(got!.logits, want.logits, 1e-6, `${c.name} piece ${i} vs solo`).relL2);
          expect(Math.abs(got!.logSumExp - want.logSumExp)).toBeLessThanOrEqual(1e-6 * Math.max(1, Math.abs(want.logSumExp)));
          // Against the float64 reference: the top token, the candidates' logits and the log-sum-exp.
          const ref = referenceLogits(source.config, weights, [...s.history, ...s.tokens]).at(-1)!;
          const best = Array.from(ref.keys()).sort((a, b) => ref[b] - ref[a]);
          expect(got!.ids[0]).toBe(best[0]);
          expectClose(got!.logits, Array.from(got!.ids, (id) => ref[id]), 1e-4, `${c.name} piece ${i} vs reference`);
          const lse = Math.log(ref.reduce((sum, v) => sum + Math.exp(v), 0));
          expect(Math.abs(got!.logSumExp - lse)).toBeLessThan(1e-3);
        });
        // The KV rows of every piece (the one without candidates included) are in their slots:
        // one decode step over the four batch slots matches the solo slots and the reference.
        const fed = draw(specs.length);
        const position = (s: (typeof specs)[number]) => s.history.length + s.tokens.length;
        const decoded = await model.decode(specs.map((s, i) => ({ slot: s.slot, token: fed[i], position: position(s) })));
        const decodedSolo = await model.decode(specs.map((s, i) => ({ slot: s.slot + 4, token: fed[i], position: position(s) })));
        specs.forEach((s, i) => {
          expect(Array.from(decoded[i].ids)).toEqual(Array.from(decodedSolo[i].ids));
          worst = Math.max(worst, expectClose(decoded[i].logits, decodedSolo[i].logits, 1e-6, `${c.name} decode row ${i} vs solo`).relL2);
          const ref = referenceLogits(source.config, weights, [...s.history, ...s.tokens, fed[i]]).at(-1)!;
          expectClose(decoded[i].logits, Array.from(decoded[i].ids, (id) => ref[id]), 1e-4, `${c.name} decode row ${i} vs reference`);
        });
        console.log(`${c.name}: batched prefill vs solo, worst rel-L2 ${worst.toExponential(2)}`);
      } finally {
        model.destroy();
        await source.close();
      }
    });
  }

  it('refuses a step with too many pieces or rows, a shared slot (prefill or decode), or a bad piece', async () => {
    const source = embeddedSource();
    const model = await Transformer.load(gpu(), source, { slots: 3, capacity: 16, prefillChunk: 8, maxPrefillPieces: 8 });
    try {
      // maxPrefillPieces is capped at the slot count: a step's pieces hold different slots.
      expect(model.maxPrefillPieces).toBe(3);
      const piece = (slot: number, n = 1, start = 0) => ({ slot, tokens: Array.from({ length: n }, () => 1), start, candidates: 1 });
      await expect(model.prefillBatch([])).rejects.toThrow(/1\.\.3 allowed/);
      await expect(model.prefillBatch([piece(0), piece(1), piece(2), piece(0)])).rejects.toThrow(/1\.\.3 allowed/);
      await expect(model.prefillBatch([piece(0, 5), piece(1, 4)])).rejects.toThrow(/9 tokens exceeds prefillChunk \(8\)/);
      await expect(model.prefillBatch([piece(1), piece(1)])).rejects.toThrow(/pieces 0 and 1 both use KV slot 1/);
      await expect(model.prefillBatch([piece(0, 0)])).rejects.toThrow(/at least one token/);
      await expect(model.prefillBatch([piece(0, 2, 15)])).rejects.toThrow(/exceeds the KV capacity/);
      await expect(model.prefillBatch([{ ...piece(0), candidates: 65 }])).rejects.toThrow(/candidates must be an integer/);
      await expect(model.prefillBatch([{ ...piece(0), tokens: [TINY_CONFIG.vocab_size] }])).rejects.toThrow(/outside the vocabulary/);
      // A decode step's rows are distinct sequences too (attention writes a row's key while the others read).
      await expect(model.decode([{ slot: 2, token: 1, position: 0 }, { slot: 0, token: 1, position: 0 }, { slot: 2, token: 1, position: 1 }])).rejects.toThrow(
        /decode: rows 0 and 2 both use KV slot 2/,
      );
      // The model is still usable after refusals.
      const [ok] = await model.prefillBatch([piece(0, 3)]);
      expect(ok!.ids).toHaveLength(1);
      const [next] = await model.decode([{ slot: 0, token: 1, position: 3 }, { slot: 2, token: 1, position: 0 }]);
      expect(next.ids.length).toBeGreaterThan(0);
    } finally {
      model.destroy();
      await source.close();
    }
  });
});

// Decode records its next step while the GPU runs the current one (DecodeOptions.recordNext). The
// recording depends only on the step's shape (rows, longest row, candidates), so any decode of that
// shape may submit it, whichever slots and tokens it carries; anything else recorded in between
// (a prefill, a step of another shape) drops it; a prefill step may record the decode step after it.
// Every step must come out bit for bit as when recorded on the call.
describe('decode steps recorded ahead', () => {
  it('match steps recorded on the call, across slots, shapes and a prefill in between', async () => {
    const source = embeddedSource();
    const model = await Transformer.load(gpu(), source, { slots: 4, capacity: 24, prefillChunk: 8, kvDtype: 'f32' });
    try {
      const next = rng(5);
      const tokens = Array.from({ length: 14 }, () => Math.floor(next() * TINY_CONFIG.vocab_size));
      const PROMPT = 6;
      for (const slot of [0, 1, 2]) await model.prefill(slot, tokens.slice(0, PROMPT), 0, { candidates: 0 });
      const step = (slot: number, p: number, recordNext?: boolean) => model.decode([{ slot, token: tokens[p], position: p }], 8, { recordNext });
      const want: RowCandidates[] = [];
      for (let p = PROMPT; p < tokens.length; p++) want.push((await step(0, p, false))[0]);
      expect(model.decodeStepsRecordedAhead).toBe(0);
      // Slots 1 and 2 take turns at the same position: slot 2's step (maxLen p + 1) misses the
      // recording slot 1's step left (p + 2) and records p + 2 itself, which slot 1's next step takes.
      const got: Record<number, RowCandidates[]> = { 1: [], 2: [] };
      for (let p = PROMPT; p < tokens.length; p++) {
        if (p === 10) await model.prefill(3, tokens.slice(0, 3), 0); // drops what slot 2's step recorded
        for (const slot of [1, 2]) got[slot].push((await step(slot, p))[0]);
      }
      for (const slot of [1, 2]) {
        got[slot].forEach((row, i) => {
          expect(Array.from(row.ids), `slot ${slot} position ${PROMPT + i}`).toEqual(Array.from(want[i].ids));
          expect(Array.from(row.logits)).toEqual(Array.from(want[i].logits));
          expect(row.logSumExp).toBe(want[i].logSumExp);
        });
      }
      // Slot 1 took a recording at every step but the first and the one after the prefill.
      expect(model.decodeStepsRecordedAhead).toBe(tokens.length - PROMPT - 2);
      // A two-row step after one-row steps records on the call, then takes its own recordings.
      const before = model.decodeStepsRecordedAhead;
      for (let p = tokens.length - 3; p < tokens.length; p++) {
        const rows = await model.decode([{ slot: 1, token: tokens[p], position: p }, { slot: 2, token: tokens[p], position: p }], 8);
        rows.forEach((row) => expect(Array.from(row.logits)).toEqual(Array.from(want[p - PROMPT].logits)));
      }
      expect(model.decodeStepsRecordedAhead - before).toBe(2);
      // A prefill step records the decode step after it when told its shape (here slots 1 and 2 at
      // the last position again), and refuses a shape no decode step could have.
      const last = tokens.length - 1;
      const prompt3 = [{ slot: 3, tokens: tokens.slice(0, 4), start: 0, candidates: 8 }];
      await expect(model.prefillBatch(prompt3, { nextDecode: { rows: 5, maxLen: 4, candidates: 8 } })).rejects.toThrow(/1\.\.4 allowed/);
      await expect(model.prefillBatch(prompt3, { nextDecode: { rows: 1, maxLen: 25, candidates: 8 } })).rejects.toThrow(/maxLen must be an integer in \[1, 24\]/);
      await model.prefillBatch(prompt3, { nextDecode: { rows: 2, maxLen: last + 1, candidates: 8 } });
      const afterPrefill = model.decodeStepsRecordedAhead;
      const again = await model.decode([{ slot: 1, token: tokens[last], position: last }, { slot: 2, token: tokens[last], position: last }], 8);
      expect(model.decodeStepsRecordedAhead - afterPrefill).toBe(1);
      again.forEach((row) => expect(Array.from(row.logits)).toEqual(Array.from(want[last - PROMPT].logits)));
      // At the capacity there is no next step to record, and nothing breaks for the lack of it.
      await model.prefill(3, tokens.slice(0, 13), 0, { candidates: 0 });
      for (let p = 13; p < 24; p++) await model.decode([{ slot: 3, token: tokens[p % tokens.length], position: p }], 1);
      await expect(model.decode([{ slot: 3, token: 1, position: 24 }], 1)).rejects.toThrow(/exceeds the KV capacity/);
    } finally {
      model.destroy();
      await source.close();
    }
  });
});

describe('decode steps fed from the GPU picks', () => {
  it('two in flight give the steps the host would have run one at a time, and misuse is refused', async () => {
    const source = embeddedSource();
    const model = await Transformer.load(gpu(), source, { slots: 6, capacity: 32, prefillChunk: 8, kvDtype: 'f32' });
    try {
      const next = rng(11);
      const prompt = Array.from({ length: 5 }, () => Math.floor(next() * TINY_CONFIG.vocab_size));
      const STEPS = 12;
      // Row 0 greedy, row 1 sampled as SN1's validators ask (a fresh draw each step), row 2 with a
      // repetition penalty over the tokens its slot has seen (the prompt, then each pick).
      const draws = Array.from({ length: STEPS }, () => next());
      const sampling = (step: number): RowSampling[] => [
        { temperature: 0, topK: 0, topP: 1, minP: 0, uniform: 0, repetitionPenalty: 1 },
        { temperature: 0.7, topK: 50, topP: 0.95, minP: 0, uniform: draws[step], repetitionPenalty: 1 },
        { temperature: 0.8, topK: 0, topP: 1, minP: 0, uniform: draws[STEPS - 1 - step], repetitionPenalty: 1.3 },
      ];
      const K = 64;
      const tokenOf = (row: RowCandidates) => row.ids[row.picked!];

      // One step at a time: the host reads each step's picks and feeds them to the next.
      // A long history (the prompt and every even id below 400), so that the penalty moves many candidates.
      const history = [...prompt, ...Array.from({ length: 200 }, (_, i) => 2 * i)];
      const first = [0, 1, 2];
      for (const slot of first) {
        await model.prefill(slot, prompt, 0, { candidates: 0 });
        model.setSeenTokens(slot, history);
      }
      const want: RowCandidates[][] = [];
      let tokens = [prompt[4], prompt[4], prompt[4]];
      for (let s = 0; s < STEPS; s++) {
        const rows = first.map((slot, r) => ({ slot, token: tokens[r], position: prompt.length + s }));
        want.push(await model.decode(rows, K, { sample: sampling(s), recordNext: false }));
        tokens = want[s].map(tokenOf);
      }

      // Two in flight: step s + 1 is submitted, taking step s's picks on the GPU, before step s is read.
      const second = [3, 4, 5];
      for (const slot of second) {
        await model.prefill(slot, prompt, 0, { candidates: 0 });
        model.setSeenTokens(slot, history);
      }
      const rowsAt = (s: number) => second.map((slot) => ({ slot, token: prompt[4], position: prompt.length + s }));
      const recordedBefore = model.decodeStepsRecordedAhead;
      const options = (s: number) => ({ sample: sampling(s), nextTokensFromPicks: true });
      let inFlight = model.decode(rowsAt(0), K, options(0));
      const got: RowCandidates[][] = [];
      for (let s = 1; s <= STEPS; s++) {
        const following = s < STEPS ? model.decode(rowsAt(s), K, { ...options(s), tokensFromPicks: true }) : undefined;
        if (s === 1) {
          // Steps 0 and 1 are both unread: a third would copy into the readback buffer step 0 is read from.
          await expect(model.decode(rowsAt(2), K, { ...options(2), tokensFromPicks: true })).rejects.toThrow(/two steps are already in flight/);
        }
        got.push(await inFlight);
        if (following) inFlight = following;
      }
      got.forEach((rows, s) =>
        rows.forEach((row, r) => {
          expect(Array.from(row.ids), `step ${s} row ${r}`).toEqual(Array.from(want[s][r].ids));
          expect(Array.from(row.logits), `step ${s} row ${r}`).toEqual(Array.from(want[s][r].logits));
          expect(row.picked, `step ${s} row ${r}`).toBe(want[s][r].picked);
        }),
      );
      // Rows 1 and 2 really sampled: their picks are not all the greedy choice.
      expect(want.some((rows) => rows[1].picked! > 0)).toBe(true);
      expect(want.some((rows) => rows[2].picked! > 0)).toBe(true);
      // Every fed step but the refused one's successor came from a recording made while the GPU ran the step before.
      expect(model.decodeStepsRecordedAhead - recordedBefore).toBeGreaterThanOrEqual(STEPS - 2);

      // A fed step of some of the last step's rows, in another order (a sequence ended, the others go
      // on), against the same rows fed by the host.
      const end = prompt.length + STEPS;
      const order = [2, 0];
      const subset = await model.decode(order.map((r) => ({ slot: second[r], token: 0, position: end })), K, { sample: order.map((r) => sampling(STEPS)[r]), tokensFromPicks: true });
      const hostFed = await model.decode(order.map((r) => ({ slot: first[r], token: tokenOf(want[STEPS - 1][r]), position: end })), K, { sample: order.map((r) => sampling(STEPS)[r]) });
      subset.forEach((row, i) => {
        expect(Array.from(row.ids), `subset row ${i}`).toEqual(Array.from(hostFed[i].ids));
        expect(Array.from(row.logits), `subset row ${i}`).toEqual(Array.from(hostFed[i].logits));
        expect(row.picked).toBe(hostFed[i].picked);
      });

      // Fed rows must each follow a row of the last step, and that step must have picked.
      await model.decode([{ slot: 3, token: 1, position: end }], 8, { sample: [sampling(0)[0]] });
      await expect(model.decode([{ slot: 4, token: 0, position: end + 1 }], 8, { tokensFromPicks: true })).rejects.toThrow(/row 0's slot 4 was not in the last step \(slots 3\)/);
      await expect(model.decode([{ slot: 3, token: 0, position: end + 2 }], 8, { tokensFromPicks: true })).rejects.toThrow(/row 0 \(slot 3, position 19\) does not follow the last step's row \(slot 3, position 17\)/);
      await model.decode([{ slot: 3, token: 1, position: end + 1 }], 8);
      await expect(model.decode([{ slot: 3, token: 0, position: end + 2 }], 8, { tokensFromPicks: true })).rejects.toThrow(/not a decode step that picked tokens/);
      await expect(model.decode([{ slot: 3, token: 1, position: end + 2 }], 8, { sample: [] })).rejects.toThrow(/0 rows of sampling parameters for 1 rows/);
      expect(() => model.setSeenTokens(0, [TINY_CONFIG.vocab_size])).toThrow(/outside the vocabulary/);
    } finally {
      model.destroy();
      await source.close();
    }
  });
});

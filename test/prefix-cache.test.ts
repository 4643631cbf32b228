// Prompt prefix reuse (engine option prefixCacheMin): the KV blocks a sequence wrote stay indexed by
// the token ids they hold (full blocks as they fill, the partly filled last one when it ends), and a
// new prompt sharing a long enough prefix shares those blocks (copying a partly matching one) and
// prefills only the rest. Model level: the logits after a reused prefix equal a cold prefill's, with
// stale K/V from a longer earlier sequence still in the slot (attention must stop at the sequence's
// length), also with a sliding window. Engine level: generations with reuse equal those without
// (greedy and seeded), for a new suffix, a full repeat, a strict prefix of the cached tokens and a
// prompt that diverges inside the cached generated tokens; the counters prove the reuse happened;
// requests running at the same time share their prompts' blocks (waiting for them to be written);
// the least recently used cached prefix is evicted first when the pool runs short.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Engine } from '../src/engine/engine.ts';
import type { GenerateRequest, GenerationSummary } from '../src/engine/types.ts';
import { OptionError } from '../src/errors.ts';
import { embeddedSource, memorySource, type MemoryTensor, type ModelSource } from '../models/source.ts';
import { TINY_CONFIG, llamaTensorShapes, tinyWeights } from '../models/tiny.ts';
import { Transformer } from '../models/transformer.ts';
import { useGpu } from './support/gpu.ts';
import { watchingDecode } from './support/test-engine.ts';
import { compare, expectClose, rng } from './support/reference.ts';

const gpu = useGpu();

// ---- the model: a prefill that starts after a reused prefix ----------------------------------------

/** The tiny Llama weights under a Mistral config: a window of 5 keys on every layer. */
function mistralSource(): ModelSource {
  const weights = tinyWeights();
  const tensors = new Map<string, MemoryTensor>(llamaTensorShapes(TINY_CONFIG).map(([name, shape]) => [name, { shape, data: weights.get(name)! }]));
  const config = { ...TINY_CONFIG, architectures: ['MistralForCausalLM'], model_type: 'mistral', sliding_window: 5 };
  return memorySource('tiny-mistral-swa', config, tensors, { tokenizer: {}, source: 'test' });
}

const MODELS = [
  { name: 'llama (tiny-random-llama)', source: () => embeddedSource(), window: undefined },
  { name: 'mistral (sliding window 5)', source: mistralSource, window: [5, 5, 5, 5] },
];

const draw = rng(31);
const randomTokens = (n: number) => Array.from({ length: n }, () => Math.floor(draw() * TINY_CONFIG.vocab_size));
const worst: Record<string, number> = {};
const record = (key: string, err: number) => {
  worst[key] = Math.max(worst[key] ?? 0, err);
};

describe('prefill after a reused prefix vs a cold prefill (model API)', () => {
  for (const m of MODELS) {
    it(m.name, async () => {
      const source = m.source();
      expect(source.config.attentionWindows).toEqual(m.window);
      // Prompts of 17-23 tokens run as one matmul chunk; the short tails below as matvec. 8 slots:
      // the head reads 8 rows of full logits per submit.
      // An f32 KV cache: the reused K/V of decoded tokens come from the decode path and the cold
      // ones from prefill's, equal to f32 rounding; an f16 cache would round those two a half-ulp
      // apart now and then, and this test is about which K/V are read, not how they are stored.
      const model = await Transformer.load(gpu(), source, { slots: 8, capacity: 32, prefillChunk: 24, kvDtype: 'f32' });
      try {
        // Slots 0-2 hold an earlier sequence: an 18-token prompt, then 6 "generated" tokens decoded.
        const PROMPT = 18;
        const earlier = randomTokens(24);
        const { logits: earlierLogits } = await model.prefill(0, earlier.slice(0, PROMPT), 0, { allLogits: true });
        for (const slot of [1, 2]) await model.prefill(slot, earlier.slice(0, PROMPT), 0, { candidates: 0 });
        for (let p = PROMPT; p < earlier.length; p++) await model.decode([0, 1, 2].map((slot) => ({ slot, token: earlier[p], position: p })));
        // New prompts, each shorter than what the slot holds (stale K/V stays past their ends):
        // diverging inside the prompt part, inside the decoded part, and a strict prefix of the cache.
        // (The window of 5 is far shorter than the reused prefixes.)
        const cases = [
          { what: 'shared 12 of the prompt', reuse: 12, prompt: [...earlier.slice(0, 12), ...randomTokens(5)] },
          { what: 'shared 21 (3 decoded)', reuse: 21, prompt: [...earlier.slice(0, 21), ...randomTokens(2)] },
          { what: 'strict prefix (20 of 24)', reuse: 19, prompt: earlier.slice(0, 20) },
        ];
        const next = randomTokens(1)[0];
        const decodeRows = [];
        for (const [i, c] of cases.entries()) {
          const T = c.prompt.length;
          // Reused: only the tail is computed, into slot i after its first `reuse` positions.
          const reused = await model.prefill(i, c.prompt.slice(c.reuse), c.reuse, { allLogits: true });
          // Cold: the whole prompt from position 0 in an unused slot.
          const cold = await model.prefill(4 + i, c.prompt, 0, { allLogits: true });
          const first = expectClose(reused.logits!.at(-1)!, cold.logits!.at(-1)!, 1e-5, `${m.name}, ${c.what}: logits of the first generated token`);
          record(m.name, first.relL2);
          // The control: had the tail not been recomputed, the last row would be the earlier
          // sequence's at that position, which is far from the cold one.
          if (T <= PROMPT) expect(compare(earlierLogits![T - 1], cold.logits!.at(-1)!).relL2, `${c.what}: control`).toBeGreaterThan(1e-2);
          decodeRows.push({ slot: i, token: next, position: T }, { slot: 4 + i, token: next, position: T });
        }
        // One batched decode step: the reused slots still hold stale K/V past each row's position.
        const rows = await model.decode(decodeRows);
        cases.forEach((c, i) => {
          const [a, b] = [rows[2 * i], rows[2 * i + 1]];
          expect(Array.from(a.ids.slice(0, 5)), `${c.what}: decode top 5`).toEqual(Array.from(b.ids.slice(0, 5)));
          record(m.name, expectClose(a.logits, b.logits, 1e-5, `${m.name}, ${c.what}: decode candidates`).relL2);
        });
      } finally {
        model.destroy();
        await source.close();
      }
    });
  }

  it('reports its worst error: measured for every model, within the tolerance', () => {
    console.log('prefix reuse vs cold, worst rel-L2:', worst);
    expect(Object.keys(worst).sort()).toEqual(MODELS.map((m) => m.name).sort());
    for (const [name, err] of Object.entries(worst)) {
      expect(Number.isFinite(err), `${name}: ${err}`).toBe(true);
      expect(err, name).toBeLessThanOrEqual(1e-5);
    }
  });
});

// ---- the engine ---------------------------------------------------------------------------------------

interface Run {
  ids: number[];
  logprobs: number[];
  top: number[][];
  summary: GenerationSummary;
}

async function run(engine: Engine, request: GenerateRequest): Promise<Run> {
  const out: Run = { ids: [], logprobs: [], top: [], summary: undefined as unknown as GenerationSummary };
  const it = engine.generate(request);
  for (;;) {
    const next = await it.next();
    if (next.done) {
      out.summary = next.value;
      return out;
    }
    out.ids.push(next.value.tokenId);
    out.logprobs.push(next.value.logprob);
    out.top.push(next.value.topLogprobs.map((t) => t.tokenId));
  }
}

/** Same tokens, same alternatives, logprobs equal to float rounding (the suffix may run as matvec, not matmul). */
function expectSameGeneration(got: Run, want: Run, what: string): void {
  expect(got.ids, `${what}: tokens`).toEqual(want.ids);
  expect(got.top, `${what}: top alternatives`).toEqual(want.top);
  got.logprobs.forEach((lp, i) => expect(Math.abs(lp - want.logprobs[i]), `${what}: logprob ${i}`).toBeLessThanOrEqual(1e-5));
  expect(got.summary.finishReason, `${what}: finish`).toBe(want.summary.finishReason);
}

function commonPrefix(a: number[], b: number[]): number {
  let n = 0;
  while (n < a.length && n < b.length && a[n] === b[n]) n++;
  return n;
}

/** The engine's prompt-token counters. */
function counters(engine: Engine): { reused: number; computed: number } {
  const info = engine.info();
  return { reused: info.promptTokensReused!, computed: info.promptTokensComputed! };
}

const SYSTEM = 'System: be brief and exact.\nUser: ';
// An f32 KV cache: reuse must give the cold run's logprobs to float rounding (with f16 a K/V value
// computed by another kernel path, matvec vs matmul, can round to the neighbouring f16).
const ENGINE = { slots: 3, capacity: 96, prefillChunk: 32, kvDtype: 'f32' } as const;
const MIN = 8;

/** The engine without reuse, and its outputs by request (each request runs there once). */
let cold: Engine;
const coldRuns = new Map<string, Promise<Run>>();
function reference(request: GenerateRequest): Promise<Run> {
  const key = JSON.stringify(request);
  if (!coldRuns.has(key)) coldRuns.set(key, run(cold, request));
  return coldRuns.get(key)!;
}
beforeAll(async () => {
  cold = await Engine.load({ gpu: gpu(), ...ENGINE, prefixCacheMin: 0 });
});
afterAll(async () => {
  await cold?.close();
});

describe('engine with prefix reuse', () => {
  let warm: Engine;
  beforeAll(async () => {
    warm = await Engine.load({ gpu: gpu(), ...ENGINE, prefixCacheMin: MIN });
  });
  afterAll(async () => {
    await warm?.close();
  });

  /** Run on the reusing engine, check the counters against the summary, and compare with the engine without reuse. */
  async function compareRuns(request: GenerateRequest, what: string): Promise<Run> {
    const before = counters(warm);
    const got = await run(warm, request);
    const after = counters(warm);
    const { promptTokens, cachedPromptTokens } = got.summary;
    expect(after.reused - before.reused, `${what}: reused counter`).toBe(cachedPromptTokens);
    expect(after.computed - before.computed, `${what}: computed counter`).toBe(promptTokens - cachedPromptTokens!);
    expectSameGeneration(got, await reference(request), what);
    return got;
  }

  it('a shared prefix with a new suffix: greedy and seeded outputs equal no reuse and a fresh engine', async () => {
    const first = await compareRuns({ prompt: `${SYSTEM}What is two plus two?`, maxTokens: 6, temperature: 0, logprobs: 2 }, 'first');
    expect(first.summary.cachedPromptTokens).toBe(0); // nothing cached yet
    const systemIds = warm.tokenizer.encode(SYSTEM);
    expect(systemIds.length).toBeGreaterThan(2 * MIN);

    const greedy: GenerateRequest = { prompt: `${SYSTEM}Name a colour.`, maxTokens: 6, temperature: 0, logprobs: 3 };
    const got = await compareRuns(greedy, 'greedy, new suffix');
    const shared = commonPrefix(warm.encodePrompt(greedy), warm.encodePrompt({ prompt: `${SYSTEM}What is two plus two?`, maxTokens: 1 }));
    expect(shared).toBeGreaterThanOrEqual(systemIds.length - 1);
    expect(got.summary.cachedPromptTokens).toBe(shared);
    expect(got.summary.cachedPromptTokens).toBeLessThan(got.summary.promptTokens);

    const sampled: GenerateRequest = { prompt: `${SYSTEM}Tell me a story.`, maxTokens: 6, temperature: 0.9, topP: 0.95, seed: 5, logprobs: 2 };
    const s = await compareRuns(sampled, 'seeded sampling, new suffix');
    expect(s.summary.cachedPromptTokens).toBeGreaterThanOrEqual(MIN);

    // A freshly loaded engine gives the same.
    const fresh = await Engine.load({ gpu: gpu(), ...ENGINE });
    try {
      expectSameGeneration(got, await run(fresh, greedy), 'greedy vs a fresh engine');
      expectSameGeneration(s, await run(fresh, sampled), 'seeded vs a fresh engine');
    } finally {
      await fresh.close();
    }
  });

  it('a full repeat reuses all but the last prompt token', async () => {
    for (const request of [
      { prompt: `${SYSTEM}Repeat after me.`, maxTokens: 5, temperature: 0, logprobs: 1 },
      { prompt: `${SYSTEM}Repeat after me, sampled.`, maxTokens: 5, temperature: 0.8, seed: 11, logprobs: 1 },
    ] satisfies GenerateRequest[]) {
      await compareRuns(request, 'repeat, first time');
      const again = await compareRuns(request, 'repeat');
      expect(again.summary.cachedPromptTokens).toBe(again.summary.promptTokens - 1);
    }
  });

  it('forgetCachedPrefixes forgets every cached prefix', async () => {
    const request: GenerateRequest = { prompt: `${SYSTEM}Forget this.`, maxTokens: 3, temperature: 0 };
    await compareRuns(request, 'before forgetting');
    warm.forgetCachedPrefixes();
    const again = await compareRuns(request, 'after forgetting');
    expect(again.summary.cachedPromptTokens).toBe(0);
  });

  it('a prompt that is a strict prefix of the cached tokens', async () => {
    const long = `${SYSTEM}Count the miners in the subnet, please.`;
    const short = `${SYSTEM}Count the miners`;
    const longIds = warm.tokenizer.encode(long);
    const shortIds = warm.tokenizer.encode(short);
    expect(longIds.slice(0, shortIds.length)).toEqual(shortIds); // the premise of this case
    await compareRuns({ prompt: long, maxTokens: 6, temperature: 0 }, 'long');
    for (const request of [
      { prompt: short, maxTokens: 6, temperature: 0, logprobs: 2 },
      { prompt: short, maxTokens: 6, temperature: 1, seed: 3, logprobs: 2 },
    ] satisfies GenerateRequest[]) {
      const got = await compareRuns(request, 'strict prefix');
      expect(got.summary.cachedPromptTokens).toBe(shortIds.length - 1);
    }
  });

  it('a prompt that diverges inside the cached generated tokens', async () => {
    const base: GenerateRequest = { prompt: `${SYSTEM}What is two plus two?`, maxTokens: 10, temperature: 0 };
    const baseIds = warm.encodePrompt(base);
    const first = await compareRuns(base, 'base');
    // The new prompt: the earlier prompt, its first generated tokens (as text), then something new.
    // Take the longest cut whose text tokenises back to the same ids (byte-level BPE may merge across it).
    let cut = 0;
    for (let j = 1; j < first.ids.length - 1; j++) {
      const ids = warm.tokenizer.encode(base.prompt + warm.tokenizer.decode(first.ids.slice(0, j)));
      if (commonPrefix(ids, [...baseIds, ...first.ids]) === baseIds.length + j) cut = j;
    }
    expect(cut, 'a cut inside the generated tokens that re-tokenises exactly').toBeGreaterThanOrEqual(2);
    const prompt = base.prompt + warm.tokenizer.decode(first.ids.slice(0, cut)) + ' and then?';
    const shared = commonPrefix(warm.encodePrompt({ prompt, maxTokens: 1 }), [...baseIds, ...first.ids]);
    // Reuse reaches past the old prompt into its generated tokens (whose K/V decode wrote).
    expect(shared).toBeGreaterThan(baseIds.length);
    const promptLength = warm.encodePrompt({ prompt, maxTokens: 1 }).length;
    for (const [round, sampling] of [{ temperature: 0 }, { temperature: 0.7, seed: 21 }].entries()) {
      // The base prompt and its generation are (still) cached beside what the first round cached.
      if (sampling.temperature > 0) expectSameGeneration(await compareRuns(base, 'base again'), first, 'base again');
      const got = await compareRuns({ prompt, maxTokens: 6, ...sampling, logprobs: 2 }, `diverging inside the generated tokens (${JSON.stringify(sampling)})`);
      // First round: the base's blocks up to where the prompt diverges (the partly matching block
      // copied). Second round: the first round's own blocks hold the whole prompt.
      expect(got.summary.cachedPromptTokens).toBe(round === 0 ? shared : promptLength - 1);
    }
    // The last sampled token is never fed back, so its K/V is not in the slot: after a generation
    // of exactly `cut` tokens, the same prompt reuses the base and the first cut - 1 of them only.
    const engine = await Engine.load({ gpu: gpu(), ...ENGINE, prefixCacheMin: MIN });
    try {
      const short = await run(engine, { ...base, maxTokens: cut });
      expect(short.ids).toEqual(first.ids.slice(0, cut));
      const request: GenerateRequest = { prompt, maxTokens: 6, temperature: 0, logprobs: 2 };
      const got = await run(engine, request);
      expect(got.summary.cachedPromptTokens).toBe(baseIds.length + cut - 1);
      expectSameGeneration(got, await reference(request), 'after a generation whose last token was not fed back');
    } finally {
      await engine.close();
    }
  });

  it('a prefix below the minimum is not reused; with prefixCacheMin 0 nothing is', async () => {
    await compareRuns({ prompt: 'Short: the quick brown fox jumps', maxTokens: 4, temperature: 0 }, 'short');
    const shared = commonPrefix(warm.tokenizer.encode('Short: the quick brown fox jumps'), warm.tokenizer.encode('Short: another'));
    expect(shared).toBeGreaterThan(0);
    expect(shared).toBeLessThan(MIN);
    const got = await compareRuns({ prompt: 'Short: another', maxTokens: 4, temperature: 0 }, 'below the minimum');
    expect(got.summary.cachedPromptTokens).toBe(0);
    // The engine without reuse has seen every prompt above at least twice.
    expect(counters(cold).reused).toBe(0);
    const before = counters(cold);
    const again = await run(cold, { prompt: `${SYSTEM}Repeat after me.`, maxTokens: 2, temperature: 0 });
    expect(again.summary.cachedPromptTokens).toBe(0);
    expect(counters(cold).computed - before.computed).toBe(again.summary.promptTokens);
  });

  it('refuses a bad prefixCacheMin', async () => {
    await expect(Engine.load({ gpu: gpu(), ...ENGINE, prefixCacheMin: -1 })).rejects.toThrow(OptionError);
    await expect(Engine.load({ gpu: gpu(), ...ENGINE, prefixCacheMin: 1.5 })).rejects.toThrow(/prefixCacheMin must be an integer >= 0/);
  });
});

describe('prefix reuse under continuous batching', () => {
  const request = (q: string, i: number): GenerateRequest =>
    i % 2 === 0 ? { prompt: `${SYSTEM}${q}`, maxTokens: 6, temperature: 0, logprobs: 1 } : { prompt: `${SYSTEM}${q}`, maxTokens: 6, temperature: 0.9, seed: 40 + i, logprobs: 1 };
  const B = 16;

  it('requests admitted together share the cached prefix and their own prompts\' blocks; outputs equal no reuse', async () => {
    const engine = await Engine.load({ gpu: gpu(), ...ENGINE, prefixCacheMin: MIN });
    try {
      // Nothing cached: two requests with a long common prefix arrive together. The second shares
      // the first's full prompt blocks (indexed at admission) and waits for them to be written; it
      // cannot copy the first's partly matching block, which is not written yet.
      const pair = ['Compare these two numbers please: 1', 'Compare these two numbers please: 2'].map((q, i) => request(q, i));
      const ids = pair.map((r) => engine.encodePrompt(r));
      const common = commonPrefix(ids[0], ids[1]);
      expect(common, 'premise: a common prefix of at least two blocks').toBeGreaterThanOrEqual(2 * B);
      const seen: number[] = [];
      const together = await watchingDecode(engine.model, () => seen.push(engine.info().kvBlocksShared!), () => Promise.all(pair.map((r) => run(engine, r))));
      expect(together.map((t) => t.summary.cachedPromptTokens)).toEqual([0, B * Math.floor(Math.min(common, ids[1].length - 1) / B)]);
      expect(Math.max(...seen), 'blocks shared while both decode').toBe(Math.floor(common / B));
      for (const [i, r] of pair.entries()) expectSameGeneration(together[i], await reference(r), `pair ${i}`);

      // Now the prompt prefix is cached: three requests arriving together all reuse it.
      const q1 = request('First question?', 0);
      expectSameGeneration(await run(engine, q1), await reference(q1), 'warm-up');
      const q1Ids = engine.encodePrompt(q1);
      const batch = ['Second question?', 'Third question?', 'Fourth question?'].map((q, i) => request(q, i + 1));
      const three = await Promise.all(batch.map((r) => run(engine, r)));
      three.forEach((t, i) => {
        expect(t.summary.cachedPromptTokens, `together ${i}`).toBeGreaterThanOrEqual(commonPrefix(engine.encodePrompt(batch[i]), q1Ids));
        expect(t.summary.cachedPromptTokens).toBeGreaterThanOrEqual(MIN);
      });
      for (const [i, r] of batch.entries()) expectSameGeneration(three[i], await reference(r), `together ${i}`);
      expect(engine.info().kvBlocksUsed).toBe(0);
      expect(engine.info().kvBlocksShared).toBe(0);
    } finally {
      await engine.close();
    }
  });

  it('the same prompt while a sequence holding it runs shares its full blocks; after it ends, all but the last token', async () => {
    const engine = await Engine.load({ gpu: gpu(), ...ENGINE, prefixCacheMin: MIN });
    try {
      const long = request('Long question, asked twice at the same time?', 0);
      const longIds = engine.encodePrompt(long);
      const running = engine.generate({ ...long, maxTokens: 12 });
      const firstToken = await running.next();
      expect(firstToken.done).toBe(false);
      const during = await run(engine, long);
      // The running sequence's full prompt blocks are indexed; its last one too once its generated
      // tokens have filled it (then the rest of the prompt is copied from it).
      expect(during.summary.cachedPromptTokens).toBeGreaterThanOrEqual(B * Math.floor((longIds.length - 1) / B));
      expect(during.summary.cachedPromptTokens).toBeLessThanOrEqual(longIds.length - 1);
      expect(during.summary.cachedPromptTokens).toBeGreaterThanOrEqual(MIN);
      expectSameGeneration(during, await reference(long), 'same prompt while a sequence holding it runs');
      let rest = await running.next();
      while (!rest.done) rest = await running.next();
      expect(rest.value.cachedPromptTokens).toBe(0);

      const after = await run(engine, long);
      expect(after.summary.cachedPromptTokens).toBe(longIds.length - 1);
      expectSameGeneration(after, await reference(long), 'after both ended');
      expect(engine.info().kvBlocksUsed).toBe(0);
    } finally {
      await engine.close();
    }
  });

  it('a short pool evicts the least recently used cached prefix first; a reused prefix is refreshed', async () => {
    // 3 blocks per sequence (capacity 48), 4 in the pool: cached prefixes compete for what is left.
    const engine = await Engine.load({ gpu: gpu(), ...ENGINE, capacity: 48, kvBlocks: 4, prefixCacheMin: 2 });
    try {
      expect(engine.info().kvBlocksTotal).toBe(4);
      const q: GenerateRequest = { prompt: 'System: be brief.\nUser: Hi', maxTokens: 4, temperature: 0 };
      const qLength = engine.encodePrompt(q).length;
      expect(qLength + 3, 'premise: q and the tokens it feeds back fill two blocks').toBeLessThanOrEqual(2 * B);
      expect(qLength).toBeGreaterThan(B);
      const [numbers, letters] = ['Numbers: 1 2 3', 'Letters: a b c'].map((prompt) => ({ prompt, maxTokens: 4, temperature: 0 }) satisfies GenerateRequest);
      for (const r of [numbers, letters]) {
        const n = engine.encodePrompt(r).length;
        expect(n + 3, 'premise: one block each').toBeLessThanOrEqual(B);
        expect(n, 'premise: long enough to be reused').toBeGreaterThanOrEqual(4);
      }
      const reused = async (r: GenerateRequest) => (await run(engine, r)).summary.cachedPromptTokens;
      const all = (r: GenerateRequest) => engine.encodePrompt(r).length - 1;

      expect(await reused(q)).toBe(0); // q: its full block and its tail cached; 2 blocks free
      expect(await reused(numbers)).toBe(0); // 1 free
      expect(await reused(letters)).toBe(0); // 0 free
      expect(engine.info()).toMatchObject({ kvBlocksUsed: 0, kvBlocksCached: 4 });
      // q again: its full block shared, its tail copied into a block evicted from the least recently
      // released prefix other than q's own (held during the copy): the numbers. The copy of q's
      // tail holds the same ids as the cached one, so it goes back free.
      expect(await reused(q)).toBe(all(q));
      expect(await reused(numbers), 'numbers were evicted').toBe(0); // takes the free block
      expect(await reused(q), 'q stays warm').toBe(all(q)); // evicts the letters now
      expect(await reused(letters), 'letters were evicted').toBe(0);
      expect(await reused(numbers), 'numbers, cached again, are reused').toBe(all(numbers));
    } finally {
      await engine.close();
    }
  });
});

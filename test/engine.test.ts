// The engine on the embedded tiny-random-llama: generation, sampling reproducibility, stop
// conditions, continuous batching (concurrent requests equal their single-request outputs),
// cancellation, admission control and request validation.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Engine } from '../src/engine/engine.ts';
import type { GenerateRequest, GenerationSummary, GeneratedToken } from '../src/engine/types.ts';
import { BadRequestError, GpuMemoryError, OverloadedError } from '../src/errors.ts';
import { acquireGpu, type Gpu } from '../src/gpu/device.ts';
import { watchingDecode } from './support/test-engine.ts';

let gpu: Gpu;
let engine: Engine;
beforeAll(async () => {
  gpu = await acquireGpu();
  // No prefix reuse: these tests repeat prompts to compare outputs, and each run must prefill its
  // whole prompt (chunk by chunk) as a first request does; reuse has test/prefix-cache.test.ts.
  engine = await Engine.load({ gpu, slots: 4, capacity: 96, prefillChunk: 16, maxQueue: 6, prefixCacheMin: 0 });
});
afterAll(async () => {
  await engine?.close();
  gpu?.destroy();
});

async function run(request: GenerateRequest, signal?: AbortSignal): Promise<{ tokens: GeneratedToken[]; summary: GenerationSummary }> {
  const tokens: GeneratedToken[] = [];
  const it = engine.generate(request, { signal });
  for (;;) {
    const next = await it.next();
    if (next.done) return { tokens, summary: next.value };
    tokens.push(next.value);
  }
}

describe('engine (tiny-random-llama)', () => {
  it('greedy generation is deterministic and reports usage and timing', async () => {
    const recordedBefore = engine.model.decodeStepsRecordedAhead;
    const a = await run({ prompt: 'Hello, world!', maxTokens: 12, temperature: 0 });
    // The first token comes from the prefill, and every decode step after it was recorded while the
    // GPU ran the step before: the first by the prefill step, the others by the decode step before them.
    expect(engine.model.decodeStepsRecordedAhead - recordedBefore).toBe(a.summary.completionTokens - 1);
    const b = await run({ prompt: 'Hello, world!', maxTokens: 12, temperature: 0 });
    expect(a.tokens.map((t) => t.tokenId)).toEqual(b.tokens.map((t) => t.tokenId));
    expect(a.summary.promptTokens).toBe(engine.tokenizer.encode('Hello, world!').length);
    expect(a.summary.completionTokens).toBe(a.tokens.length);
    expect(['length', 'stop']).toContain(a.summary.finishReason);
    expect(a.summary.ttftMs).toBeGreaterThan(0);
    expect(a.tokens.map((t) => t.index)).toEqual(a.tokens.map((_, i) => i));
    // The streamed pieces add up to the decoded completion.
    const ids = a.tokens.map((t) => t.tokenId);
    expect(a.tokens.map((t) => t.text).join('')).toBe(engine.tokenizer.decode(ids));
  });

  it('a seed reproduces a sampled generation; logprobs come with top alternatives', async () => {
    const req = { prompt: 'The miner', maxTokens: 10, temperature: 0.9, topP: 0.95, seed: 42, logprobs: 3 };
    const a = await run(req);
    const b = await run(req);
    const c = await run({ ...req, seed: 43 });
    expect(a.tokens.map((t) => t.tokenId)).toEqual(b.tokens.map((t) => t.tokenId));
    expect(a.tokens.map((t) => t.tokenId)).not.toEqual(c.tokens.map((t) => t.tokenId));
    for (const t of a.tokens) {
      expect(t.topLogprobs).toHaveLength(3);
      expect(t.logprob).toBeLessThanOrEqual(0);
      expect(t.topLogprobs[0].logprob).toBeGreaterThanOrEqual(t.topLogprobs[1].logprob);
      expect(t.logprob).toBeLessThanOrEqual(t.topLogprobs[0].logprob + 1e-6);
    }
  });

  it('concurrent requests are batched and give the same tokens as one at a time', async () => {
    const requests = Array.from({ length: 7 }, (_, i) => ({ prompt: `Request number ${i}: hello`, maxTokens: 8 + i, temperature: 0.8, seed: 100 + i }));
    const single: Array<{ tokens: GeneratedToken[] }> = [];
    for (const r of requests) single.push(await run(r));
    const together = await Promise.all(requests.map((r) => run(r)));
    together.forEach((t, i) => expect(t.tokens.map((x) => x.tokenId)).toEqual(single[i].tokens.map((x) => x.tokenId)));
  });

  it('many short prompts arriving at once are prefilled together and give their single outputs', async () => {
    // Greedy, sampled and logprob requests: pieces of one step ask for different candidate counts.
    const requests: GenerateRequest[] = Array.from({ length: 6 }, (_, i) => ({
      prompt: ['Hi', 'Go on', 'Yes', 'Ok then', 'A b', 'Why'][i],
      maxTokens: 5 + i,
      ...(i % 3 === 0 ? { temperature: 0 } : i % 3 === 1 ? { temperature: 0.8, seed: 7 + i } : { temperature: 0, logprobs: 2 }),
    }));
    const lengths = requests.map((r) => engine.tokenizer.encode(r.prompt!).length);
    expect(lengths.slice(0, 4).reduce((a, b) => a + b, 0)).toBeLessThanOrEqual(16); // the first four fit one step
    const single: Array<{ tokens: GeneratedToken[] }> = [];
    for (const r of requests) single.push(await run(r));
    // Record the pieces of every prefill step.
    const model = engine.model;
    const steps: number[][] = [];
    const prefillBatch = model.prefillBatch;
    model.prefillBatch = (pieces) => {
      steps.push(pieces.map((p) => p.tokens.length));
      return prefillBatch.call(model, pieces);
    };
    let together;
    try {
      together = await Promise.all(requests.map((r) => run(r)));
    } finally {
      delete (model as Partial<typeof model>).prefillBatch;
    }
    together.forEach((t, i) => expect(t.tokens.map((x) => x.tokenId)).toEqual(single[i].tokens.map((x) => x.tokenId)));
    // 4 slots: the first step prefills four whole prompts; the other two follow as slots free up.
    expect(steps[0]).toEqual(lengths.slice(0, 4));
    expect(steps.flat().reduce((a, b) => a + b, 0)).toBe(lengths.reduce((a, b) => a + b, 0));
  });

  it('a long prompt, prefilled a chunk per turn while another sequence decodes, gives its solo output', async () => {
    const long = { prompt: 'The validator checks the signatures and measures the time. '.repeat(4), maxTokens: 6, temperature: 0 };
    expect(engine.tokenizer.encode(long.prompt).length).toBeGreaterThan(3 * 16); // more than three prefill chunks
    const short = { prompt: 'Hi', maxTokens: 20, temperature: 0.7, seed: 9 };
    const soloLong = await run(long);
    const soloShort = await run(short);
    // The long prompt arrives once the short sequence has its first token: it is decoding then,
    // whatever the machine's speed (no guess at how long its prefill takes).
    const shortIt = engine.generate(short);
    const first = await shortIt.next();
    expect(first.done).toBe(false);
    expect(engine.info().activeSequences).toBe(1);
    const longRun = run(long);
    const rest: GeneratedToken[] = [];
    for (let next = await shortIt.next(); !next.done; next = await shortIt.next()) rest.push(next.value);
    const longAgain = await longRun;
    expect(longAgain.tokens.map((t) => t.tokenId)).toEqual(soloLong.tokens.map((t) => t.tokenId));
    expect([first.value as GeneratedToken, ...rest].map((t) => t.tokenId)).toEqual(soloShort.tokens.map((t) => t.tokenId));
  });

  it('chat messages go through the model chat template', async () => {
    const { summary } = await run({ messages: [{ role: 'user', content: 'What is the capital of France?' }], maxTokens: 4, temperature: 0 });
    const want = engine.tokenizer.encodeChat([{ role: 'user', content: 'What is the capital of France?' }]).length;
    expect(summary.promptTokens).toBe(want);
  });

  it('stops at a stop string and does not emit it', async () => {
    const free = await run({ prompt: 'Numbers: 1 2 3', maxTokens: 24, temperature: 0 });
    const text = free.tokens.map((t) => t.text).join('');
    const stop = text.slice(4, 6);
    expect(stop.length).toBe(2);
    const cut = await run({ prompt: 'Numbers: 1 2 3', maxTokens: 24, temperature: 0, stop: [stop] });
    expect(cut.summary.finishReason).toBe('stop');
    expect(cut.tokens.map((t) => t.text).join('')).toBe(text.slice(0, text.indexOf(stop)));
  });

  it('an aborted request ends as cancelled and frees its slot', async () => {
    const controller = new AbortController();
    const it = engine.generate({ prompt: 'cancel me', maxTokens: 80, temperature: 0 }, { signal: controller.signal });
    await it.next();
    controller.abort();
    let result = await it.next();
    while (!result.done) result = await it.next();
    expect(result.value.finishReason).toBe('cancelled');
    await run({ prompt: 'next', maxTokens: 1 });
    expect(engine.info().activeSequences).toBe(0);
    expect(engine.info().kvBlocksUsed).toBe(0);
  });

  it('a request whose signal is already aborted ends at once as cancelled', async () => {
    const controller = new AbortController();
    controller.abort();
    const { tokens, summary } = await run({ prompt: 'never runs', maxTokens: 8 }, controller.signal);
    expect(tokens).toHaveLength(0);
    expect(summary.finishReason).toBe('cancelled');
  });

  it('refuses bad requests with BAD_REQUEST and a full queue with OVERLOADED', async () => {
    const first = (req: GenerateRequest) => engine.generate(req).next();
    await expect(first({ prompt: 'x', maxTokens: 0 })).rejects.toThrow(BadRequestError);
    await expect(first({ prompt: 'x', maxTokens: 4, temperature: -1 })).rejects.toThrow(/temperature/);
    await expect(first({ maxTokens: 4 })).rejects.toThrow(/prompt or messages/);
    await expect(first({ prompt: 'x', maxTokens: 4, logprobs: 21 })).rejects.toThrow(/logprobs/);
    await expect(first({ prompt: 'word '.repeat(200), maxTokens: 4 })).rejects.toThrow(/does not fit/);
    // Twelve requests at once against 4 slots and a queue of 6: the ones past the queue's limit are
    // refused with OVERLOADED, the rest run (and are cancelled here to keep the test short).
    const controller = new AbortController();
    const outcomes = await Promise.allSettled(
      Array.from({ length: 12 }, (_, i) => run({ prompt: `busy ${i}`, maxTokens: 40 }, controller.signal).finally(() => controller.abort())),
    );
    const refused = outcomes.filter((o) => o.status === 'rejected');
    expect(refused.length).toBeGreaterThan(0);
    for (const o of refused) expect((o as PromiseRejectedResult).reason).toBeInstanceOf(OverloadedError);
    expect(outcomes.length - refused.length).toBeGreaterThanOrEqual(6);
  });
});

describe('decode steps two in flight', () => {
  async function runOn(e: Engine, request: GenerateRequest) {
    const tokens: GeneratedToken[] = [];
    const it = e.generate(request);
    for (let next = await it.next(); ; next = await it.next()) {
      if (next.done) return { tokens, summary: next.value };
      tokens.push(next.value);
    }
  }
  const view = (r: Awaited<ReturnType<typeof runOn>>) => ({
    tokens: r.tokens.map((t) => [t.tokenId, t.text, t.logprob, t.topLogprobs.map((a) => a.tokenId)]),
    finish: r.summary.finishReason,
  });

  it('give what one step at a time gives: greedy, sampled and penalised requests, alone and together', async () => {
    const oneAtATime = await Engine.load({ gpu, slots: 4, capacity: 96, prefillChunk: 16, prefixCacheMin: 0, overlapDecode: false });
    try {
      const greedy = await runOn(oneAtATime, { prompt: 'Stop somewhere', maxTokens: 30, temperature: 0 });
      const greedyText = greedy.tokens.map((t) => t.text).join('');
      const stop = greedyText.slice(Math.floor(greedyText.length / 2), Math.floor(greedyText.length / 2) + 2);
      const requests: GenerateRequest[] = [
        { prompt: 'Greedy', maxTokens: 20, temperature: 0, logprobs: 2 },
        { prompt: 'Sampled as validators ask', maxTokens: 24, temperature: 0.7, topP: 0.95, topK: 50, seed: 7, logprobs: 5 },
        { prompt: 'Min p', maxTokens: 9, temperature: 1.2, minP: 0.05, seed: 8 },
        { prompt: 'Penalised', maxTokens: 12, temperature: 0.8, repetitionPenalty: 1.3, seed: 9 },
        { prompt: 'Stop somewhere', maxTokens: 30, temperature: 0, stop: [stop] },
      ];
      const alone: Array<ReturnType<typeof view>> = [];
      for (const request of requests) {
        const fedBefore = engine.model.decodeStepsFromPicks;
        const overlapped = await runOn(engine, request);
        const fed = engine.model.decodeStepsFromPicks - fedBefore;
        const want = await runOn(oneAtATime, request);
        expect(view(overlapped), request.prompt as string).toEqual(view(want));
        alone.push(view(want));
        // Every decode step after the first was fed on the GPU (the penalised request too: the GPU keeps its slot's seen tokens).
        if (want.summary.finishReason === 'length') expect(fed, request.prompt as string).toBe(want.summary.completionTokens - 2);
        else expect(fed, 'the stop string ends a run of fed steps').toBeGreaterThan(0);
      }
      expect(alone[4].finish, 'premise: the stop string ends the generation').toBe('stop');
      expect(oneAtATime.model.decodeStepsFromPicks).toBe(0);
      // Together: sequences leave the run of fed steps as they end (a step in flight drops their row).
      // The same tokens and text as alone (batched rows sum in another order: logprobs
      // may move in the last digits).
      // Count the steps fed by the host: the first after each turn with a prefill, not one per sequence that ends.
      let hostFed = 0;
      const together = await watchingDecode(
        engine.model,
        (_rows, _k, options) => (hostFed += options?.tokensFromPicks ? 0 : 1),
        () => Promise.all(requests.map((request) => runOn(engine, request))),
      );
      expect(hostFed, 'decode steps fed by the host').toBeLessThanOrEqual(3);
      const text = (v: ReturnType<typeof view>) => ({ tokens: v.tokens.map(([id, piece]) => [id, piece]), finish: v.finish });
      together.forEach((got, i) => {
        expect(text(view(got)), requests[i].prompt as string).toEqual(text(alone[i]));
        got.tokens.forEach((t, j) => expect(Math.abs(t.logprob - (alone[i].tokens[j][2] as number))).toBeLessThan(1e-3));
      });
      expect(engine.info()).toMatchObject({ kvBlocksUsed: 0, activeSequences: 0 });
    } finally {
      await oneAtATime.close();
    }
  });
});

describe('admission by free KV blocks', () => {
  /** Run `request` on `e`, noting when its first token came (a tick of `clock`). */
  async function timed(e: Engine, request: GenerateRequest, clock: { t: number }, priority = 0) {
    const tokens: number[] = [];
    let firstAt = -1;
    const it = e.generate(request, { priority });
    for (let next = await it.next(); ; next = await it.next()) {
      if (next.done) return { tokens, firstAt, summary: next.value };
      if (firstAt < 0) firstAt = clock.t++;
      tokens.push(next.value.tokenId);
    }
  }

  it('a request the free blocks cannot cover waits (never refused, never cut short), in priority order', async () => {
    // 4 blocks per sequence at most (capacity 64), 8 in the pool; each request may grow to 3 blocks
    // (a short prompt + 40 tokens), so two run at once and the rest wait their turn.
    const small = await Engine.load({ gpu, slots: 4, capacity: 64, prefillChunk: 16, kvBlocks: 8, prefixCacheMin: 0 });
    try {
      expect(small.info().kvBlocksTotal).toBe(8);
      const requests = ['Alpha', 'Beta', 'Gamma', 'Delta'].map((w, i) => ({ prompt: `${w} says`, maxTokens: 40, temperature: 0.8, seed: 3 + i }) satisfies GenerateRequest);
      for (const r of requests) expect(Math.ceil((small.encodePrompt(r).length + 39) / 16), 'premise: 3 blocks each').toBe(3);
      const solo: Array<Awaited<ReturnType<typeof timed>>> = [];
      for (const r of requests) solo.push(await timed(small, r, { t: 0 }));
      // Watch how many sequences run in each decode step.
      const running: number[] = [];
      const clock = { t: 0 };
      const watch = (rows: unknown[]) => {
        running.push(rows.length);
        expect(small.info().kvBlocksUsed).toBeLessThanOrEqual(8);
      };
      const together = await watchingDecode(small.model, watch, async () => {
        // Alpha and Beta are admitted; then Gamma (priority 0) and Delta (priority 5) arrive and
        // wait for blocks, and Delta, the higher stake, goes first although it came later.
        const first = requests.slice(0, 2).map((r) => timed(small, r, clock));
        while (small.info().activeSequences < 2) await new Promise((resolve) => setImmediate(resolve));
        const later = [timed(small, requests[2], clock, 0), timed(small, requests[3], clock, 5)];
        expect(small.info().queueDepth).toBe(2);
        return Promise.all([...first, ...later]);
      });
      expect(Math.max(...running)).toBe(2);
      together.forEach((t, i) => {
        expect(t.tokens, `request ${i}: same tokens as alone`).toEqual(solo[i].tokens);
        expect(t.summary.finishReason).toBe(solo[i].summary.finishReason);
      });
      expect(together[3].firstAt, 'Delta (priority 5) before Gamma').toBeLessThan(together[2].firstAt);
      expect(Math.max(together[0].firstAt, together[1].firstAt)).toBeLessThan(together[3].firstAt);
      expect(small.info()).toMatchObject({ kvBlocksUsed: 0, queueDepth: 0, activeSequences: 0 });
    } finally {
      await small.close();
    }
  });

  it('refuses a pool that cannot hold one sequence of the context, naming the numbers', async () => {
    await expect(Engine.load({ gpu, slots: 2, capacity: 64, kvBlocks: 3 })).rejects.toThrow(/KV pool holds 3 blocks of 16 tokens .* fewer than one sequence of the context \(64 tokens, 4 blocks\) needs/);
    await expect(Engine.load({ gpu, slots: 2, capacity: 64, gpuMemory: '64KiB' })).rejects.toThrow(/--gpu-memory 64\.0 KiB leaves 0 B for the KV cache after .* of weights/);
    await expect(Engine.load({ gpu, gpuMemory: 'plenty' })).rejects.toThrow(/--gpu-memory must be bytes/);
  });

  // No adapter here runs out of memory, so the device's out-of-memory error scope is made to report
  // one, as Dawn does when an allocation does not fit: at the third tensor, or after the last one
  // (the activations and the KV pool).
  it('a GPU that runs out of memory is named: at the tensor for the weights, with the flags that shrink the KV pool for the pool', async () => {
    const runningOut = (failAfter: (done: number, total: number) => boolean) => {
      let fail = false;
      const device = new Proxy(gpu.device, {
        get(target, key) {
          if (key === 'popErrorScope') {
            return async () => {
              const reported = await target.popErrorScope();
              if (!fail) return reported;
              fail = false;
              return { message: 'Out of memory (this test)' } as GPUError;
            };
          }
          const value = Reflect.get(target, key, target);
          return typeof value === 'function' ? value.bind(target) : value;
        },
      });
      const small = Object.create(gpu, { device: { value: device } }) as Gpu;
      return { gpu: small, slots: 2, capacity: 64, onProgress: (done: number, total: number) => (fail = failAfter(done, total)) };
    };
    const weights = Engine.load(runningOut((done) => done === 2));
    await expect(weights).rejects.toThrow(GpuMemoryError);
    await expect(weights).rejects.toMatchObject({ allocation: 'weights', code: 'GPU_OUT_OF_MEMORY' });
    await expect(weights).rejects.toThrow(/^out of GPU memory uploading tensor "[^"]+" \(.+\), with .+ of the model's .+ of weights on the GPU \(Out of memory \(this test\)\): this GPU cannot hold them; take a smaller quantisation/);
    const pool = Engine.load(runningOut((done, total) => done === total));
    await expect(pool).rejects.toMatchObject({ allocation: 'kv' });
    await expect(pool).rejects.toThrow(/^out of GPU memory allocating the activations \(.+\) and the KV pool \(.+: 8 blocks of 16 tokens, f16\) after .+ of weights .*: give --gpu-memory with the memory this GPU has .*, or fewer --slots or a shorter --context$/);
    await expect(Engine.load({ ...runningOut((done, total) => done === total), gpuMemory: '64MiB' })).rejects.toThrow(/--gpu-memory 64\.0 MiB is more than this GPU has free: give less, or fewer --slots/);
    // Nothing was left behind on the device: a load with the same device works.
    const e = await Engine.load({ gpu, slots: 2, capacity: 64 });
    await e.close();
  });

  it('a budget sizes the pool: blocks = (budget - weights - activations) / block bytes, capped at every slot full', async () => {
    const e = await Engine.load({ gpu, slots: 2, capacity: 64, gpuMemory: '64MiB' });
    try {
      const plan = e.kvPlan;
      expect(plan.budgetBytes).toBe(64 * 2 ** 20);
      // The tiny model leaves far more than 2 full sequences need: the slots bound it.
      expect(plan).toMatchObject({ limitedBy: 'sequences', blocks: 8 });
      expect(e.info().kvBlocksTotal).toBe(8);
      expect(e.model.stats.kvBytes).toBe(8 * plan.blockBytes);
    } finally {
      await e.close();
    }
  });
});

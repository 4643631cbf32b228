// End to end on a loaded model, through the engine: prompt processing tokens/s (a prompt of N
// tokens through the model's prefill, as llama-bench's pp does), time to first token and decode
// tokens/s through generate() (batch 1, then `batch` concurrent requests that the scheduler decodes
// together), and the GPU memory the model holds.
import type { Gpu } from '../src/gpu/device.ts';
import { Engine } from '../src/engine/engine.ts';
import { ReferenceModel } from '../src/validator/recompute.ts';
import { planeWords, type WeightDtype } from '../kernels/weights.ts';
import type { KvDtype } from '../kernels/attention.ts';
import type { DecodeTuning } from '../kernels/autotune.ts';
import type { BenchPreset } from './presets.ts';
import type { Progress } from './roofline.ts';
import { summarize, timeWall, type Timing } from './timing.ts';

export interface E2eModel {
  id: string;
  architecture: string;
  /** Dtype of the bulk of the weights (the MLP's), e.g. 'q4_0'. */
  dtype: string;
  /** Dtype per tensor role (attn_q, ffn_up, output, ...). */
  dtypes: Record<string, string>;
  parameters: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  vocabSize: number;
  /** Bytes of weights on the GPU. */
  weightBytes: number;
  /**
   * Weight bytes one decode step reads per token: every matrix once, minus the embedding table
   * (only one row is gathered) unless it doubles as the LM head.
   */
  bytesPerToken: number;
  /** 2 x the parameters of every matrix a token goes through (attention scores not included). */
  flopsPerToken: number;
  /** What decode runs on this adapter (Transformer.decodeTuning). */
  decodeTuning: DecodeTuning;
}

export interface E2eReport {
  model: E2eModel;
  engine: { slots: number; capacity: number; prefillChunk: number; kvDtype: KvDtype };
  /** GPU memory the model holds: weights, KV cache, activations and scratch (bytes). */
  memory: {
    weightBytes: number;
    kvBytes: number;
    activationBytes: number;
    totalBytes: number;
    /**
     * Peak resident memory of the process once the model is loaded (process.resourceUsage().maxRSS:
     * the peak since the process started, so the kernel runs before it count too).
     */
    peakRssBytes: number;
    /** Resident memory right before and right after loading the model. */
    rssBeforeLoadBytes: number;
    rssAfterLoadBytes: number;
  };
  prompt: Array<{ tokens: number; tokensPerS: number; timing: Timing }>;
  ttft: { promptTokens: number; timing: Timing };
  /** Time to first token for a prompt whose first `cachedTokens` were left in a slot by an earlier request. */
  ttftCachedPrefix: { promptTokens: number; cachedTokens: number; timing: Timing };
  decode: Array<{
    batch: number;
    /** Tokens produced after every request had its first token, over that window. */
    tokens: number;
    seconds: number;
    /** All sequences together. */
    tokensPerS: number;
    /** Mean over the requests of the engine's own per-request figure. */
    perSequenceTokensPerS: number;
    /** Requests that stopped at an end-of-sequence token before maxTokens. */
    stoppedEarly: number;
  }>;
  /**
   * Batch-1 decode tokens/s with the engine's decode steps two in flight (as it runs) and one at a
   * time (overlapDecode off: the host reads each step before submitting the next), `repeats` runs
   * of each taken in turns, so that both see the same spells of machine load.
   */
  decodeOverlap: { twoInFlight: number[]; oneAtATime: number[] };
  /**
   * A validator's cost to check what was generated: the larger decode batch's responses recomputed
   * teacher-forced (prompt + completion, many per forward pass), against the rate they were generated at.
   */
  verify: {
    responses: number;
    /** Completion tokens checked. */
    tokens: number;
    /** Rows run through the model (prompts included). */
    rows: number;
    seconds: number;
    /** Completion tokens checked per second. */
    tokensPerS: number;
    /** The same responses' generation rate (decode, all sequences together). */
    generatedTokensPerS: number;
  };
}

export interface E2eOptions {
  /** HF folder, .gguf file or 'tiny-random-llama'. */
  model: string;
  /** The engine's matvec autotune (EngineOptions.autotune); false: the static defaults. */
  autotune?: boolean;
  gpu: Gpu;
  preset: BenchPreset;
  /** The larger decode batch (default: the preset's). */
  batch?: number;
  /** Prompt tokens per prefill step (default: the engine's, as `serve` uses). */
  prefillChunk?: number;
  /** KV cache dtype (default: the engine's, f16). */
  kvDtype?: KvDtype;
  progress?: Progress;
}

/** Bytes of a (rows, cols) matrix stored as `dtype` in the kernels' planes. */
function matrixBytes(dtype: string, rows: number, cols: number): number {
  return planeWords(dtype as WeightDtype, rows, cols).reduce((a, b) => a + b, 0) * 4;
}

function describeModel(engine: Engine): E2eModel {
  const { config, stats } = engine.model;
  const { hiddenSize: C, vocabSize: V } = config;
  const dtypes = stats.dtypes;
  // Tables only gathered from: the token embedding when a separate LM head exists, and GPT-2's
  // learned positions.
  let gatherBytes = 0;
  let gatherParams = 0;
  if (dtypes.output && dtypes.token_embd) {
    gatherBytes += matrixBytes(dtypes.token_embd, V, C);
    gatherParams += V * C;
  }
  if (dtypes.position_embd) {
    gatherBytes += matrixBytes(dtypes.position_embd, config.maxPositions, C);
    gatherParams += config.maxPositions * C;
  }
  return {
    id: engine.model.id,
    architecture: config.architecture,
    dtype: dtypes.ffn_up ?? dtypes.ffn_down ?? Object.values(dtypes)[0] ?? 'f32',
    dtypes,
    parameters: stats.parameters,
    hiddenSize: C,
    intermediateSize: config.intermediateSize,
    numLayers: config.numLayers,
    numHeads: config.numHeads,
    numKvHeads: config.numKvHeads,
    headDim: config.headDim,
    vocabSize: V,
    weightBytes: stats.weightBytes,
    bytesPerToken: stats.weightBytes - gatherBytes,
    flopsPerToken: 2 * (stats.parameters - gatherParams),
    decodeTuning: engine.model.decodeTuning,
  };
}

/** Deterministic token ids spread over the vocabulary (what the model does with them does not matter). */
function tokenIds(count: number, vocab: number, seed: number): number[] {
  let s = seed >>> 0;
  return Array.from({ length: count }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s % vocab;
  });
}

/** A plain-text prompt of about `tokens` tokens for this model's tokenizer. */
function textPrompt(engine: Engine, tokens: number, variant = 0): string {
  const words = ['the', 'quick', 'brown', 'fox', 'jumps', 'over', 'a', 'lazy', 'dog', 'while', 'miners', 'serve', 'tokens'];
  let text = `Story ${variant}:`;
  let i = variant;
  while (engine.tokenizer.encode(text).length < tokens) text += ` ${words[i++ % words.length]}`;
  return text;
}

async function drain(engine: Engine, prompt: string, maxTokens: number, stamps?: number[], ids?: number[]) {
  const it = engine.generate({ prompt, maxTokens, temperature: 0 });
  for (;;) {
    const next = await it.next();
    if (next.done) return next.value;
    stamps?.push(performance.now());
    ids?.push(next.value.tokenId);
  }
}

export async function benchE2e(options: E2eOptions): Promise<E2eReport> {
  const { preset, gpu } = options;
  const progress = options.progress ?? (() => {});
  const e = preset.e2e;
  const batch = options.batch ?? e.batch;
  const want = Math.max(...e.promptTokens);
  progress(`e2e: loading ${options.model}`);
  const rssBeforeLoadBytes = process.memoryUsage.rss();
  let lastShown = 0;
  const engine = await Engine.load({
    model: options.model,
    gpu,
    slots: Math.max(1, batch),
    // Room for the longest prompt plus a completion (and the decode runs' short prompts).
    capacity: want + e.decodeTokens + 1,
    prefillChunk: options.prefillChunk,
    kvDtype: options.kvDtype,
    autotune: options.autotune === false ? false : { progress },
    onProgress: (done, total) => {
      if (done === total || performance.now() - lastShown > 2000) {
        lastShown = performance.now();
        progress(`e2e: loaded ${done}/${total} tensors`);
      }
    },
  });
  // The loader holds one tensor (and its repacked form) at a time: the peak resident memory after
  // loading stays near the runtime's own plus the largest tensor, whatever the model's size.
  const peakRssBytes = process.resourceUsage().maxRSS * 1024;
  const rssAfterLoadBytes = process.memoryUsage.rss();
  const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(1)} MiB`;
  progress(`e2e: loaded; ${mib(engine.model.stats.weightBytes)} of weights on the GPU; RSS ${mib(rssBeforeLoadBytes)} before, ${mib(rssAfterLoadBytes)} after, peak ${mib(peakRssBytes)}`);
  try {
    const model = describeModel(engine);
    const { stats } = engine.model;
    const capacity = engine.model.options.capacity;

    // Warm-up: a short generation runs every pipeline once.
    progress('e2e: warm-up');
    await drain(engine, textPrompt(engine, 8), 2);

    const prompt: E2eReport['prompt'] = [];
    // The runs below drive slot 0 directly: give it its own blocks, and forget the cache after.
    engine.forgetCachedPrefixes();
    for (const tokens of e.promptTokens) {
      if (tokens >= capacity) continue;
      progress(`e2e: prompt processing, ${tokens} tokens x ${e.repeats}`);
      const ids = tokenIds(tokens, model.vocabSize, tokens);
      const timing = await timeWall(async () => void (await engine.model.prefill(0, ids, 0)), e.repeats, Infinity);
      prompt.push({ tokens, tokensPerS: (tokens * 1000) / timing.medianMs, timing });
    }
    engine.forgetCachedPrefixes(); // the runs above wrote blocks behind the scheduler's back


    const ttftTokens = Math.min(...e.promptTokens);
    progress(`e2e: time to first token, ~${ttftTokens}-token prompt x ${e.repeats}`);
    // Cold: each repeat's prompt differs from its second token on, so no cached prefix applies.
    const ttftTimes: number[] = [];
    let promptTokens = 0;
    for (let r = 0; r < e.repeats; r++) {
      const summary = await drain(engine, textPrompt(engine, ttftTokens, r + 1), 1);
      ttftTimes.push(summary.ttftMs);
      promptTokens = summary.promptTokens;
    }
    const ttftTiming = summarize(ttftTimes, 1, 'queue-completion');

    // Warm: one shared prefix (a validator's fixed system prompt), a different question each time.
    progress(`e2e: time to first token after a cached ~${ttftTokens}-token prefix x ${e.repeats}`);
    const shared = textPrompt(engine, ttftTokens, 100);
    await drain(engine, `${shared} question 0?`, 1);
    const cachedTimes: number[] = [];
    let cached = { promptTokens: 0, cachedTokens: 0 };
    for (let r = 1; r <= e.repeats; r++) {
      const summary = await drain(engine, `${shared} question ${r}?`, 1);
      cachedTimes.push(summary.ttftMs);
      cached = { promptTokens: summary.promptTokens, cachedTokens: summary.cachedPromptTokens ?? 0 };
    }

    // Decode of `b` concurrent greedy requests: the window starts when the last request got its
    // first token (all prefills done) and ends at the last token; tokens are those produced inside it.
    const decodeRun = async (b: number) => {
      const stamps: number[][] = Array.from({ length: b }, () => []);
      const ids: number[][] = Array.from({ length: b }, () => []);
      const prompts = stamps.map((_, i) => textPrompt(engine, 16, i));
      const summaries = await Promise.all(stamps.map((s, i) => drain(engine, prompts[i], e.decodeTokens, s, ids[i])));
      const firsts = stamps.filter((s) => s.length > 0).map((s) => s[0]);
      const start = firsts.length > 0 ? Math.max(...firsts) : 0;
      const end = firsts.length > 0 ? Math.max(...stamps.flat()) : 0;
      const tokens = stamps.flat().filter((t) => t > start).length;
      const seconds = (end - start) / 1000;
      const run = {
        batch: b,
        tokens,
        seconds,
        tokensPerS: seconds > 0 ? tokens / seconds : 0,
        perSequenceTokensPerS: summaries.reduce((sum, s) => sum + s.tokensPerS, 0) / summaries.length,
        stoppedEarly: summaries.filter((s) => s.finishReason === 'stop').length,
      };
      return { run, responses: prompts.map((p, i) => ({ prompt: engine.tokenizer.encode(p), completion: ids[i] })) };
    };
    const decode: E2eReport['decode'] = [];
    let responses: Array<{ prompt: number[]; completion: number[] }> = [];
    for (const b of [...new Set([1, batch])]) {
      progress(`e2e: decode, batch ${b} x ${e.decodeTokens} tokens`);
      const result = await decodeRun(b);
      decode.push(result.run);
      responses = result.responses;
    }
    progress(`e2e: decode, batch 1 x ${e.decodeTokens} tokens, two in flight and one step at a time, ${e.repeats} runs each in turns`);
    const decodeOverlap: E2eReport['decodeOverlap'] = { twoInFlight: [], oneAtATime: [] };
    for (let r = 0; r < e.repeats; r++) {
      decodeOverlap.twoInFlight.push((await decodeRun(1)).run.tokensPerS);
      engine.overlapDecode = false;
      decodeOverlap.oneAtATime.push((await decodeRun(1).finally(() => (engine.overlapDecode = true))).run.tokensPerS);
    }

    // The larger batch's responses, checked as a validator would (the same weights, this adapter).
    progress(`e2e: teacher-forced verification of ${responses.length} responses`);
    const reference = await ReferenceModel.load({ engine });
    const t0 = performance.now();
    await reference.score(responses);
    const verifySeconds = (performance.now() - t0) / 1000;
    engine.forgetCachedPrefixes();
    const checked = responses.reduce((n, r) => n + r.completion.length, 0);
    const verify: E2eReport['verify'] = {
      responses: responses.length,
      tokens: checked,
      rows: reference.rowsComputed,
      seconds: verifySeconds,
      tokensPerS: verifySeconds > 0 ? checked / verifySeconds : 0,
      generatedTokensPerS: decode[decode.length - 1].tokensPerS,
    };

    return {
      model,
      engine: { slots: engine.model.options.slots, capacity, prefillChunk: engine.model.options.prefillChunk, kvDtype: stats.kvDtype },
      // The model's arena holds everything: stats.activationBytes is the arena past the weights,
      // KV cache included.
      memory: {
        weightBytes: stats.weightBytes,
        kvBytes: stats.kvBytes,
        activationBytes: stats.activationBytes - stats.kvBytes,
        totalBytes: stats.weightBytes + stats.activationBytes,
        peakRssBytes,
        rssBeforeLoadBytes,
        rssAfterLoadBytes,
      },
      prompt,
      ttft: { promptTokens, timing: ttftTiming },
      ttftCachedPrefix: { ...cached, timing: summarize(cachedTimes, 1, 'queue-completion') },
      decode,
      decodeOverlap,
      verify,
    };
  } finally {
    await engine.close();
  }
}

// The optional peer: the same GGUF through llama.cpp (node-llama-cpp's prebuilt binary, installed in
// bench/llama-cpp by `npm run setup`) on the same machine, measured the way llama-bench does: prompt
// processing of N tokens, then decode tokens/s at batch 1. On the CPU by default; with `gpu: true`
// (`bench --peer-gpu`) on llama.cpp's GPU build when one is installed (`node scripts/llama-cpp.mjs
// --gpu vulkan|cuda`), all layers offloaded, and the backend it took is named in the report.
// Always `build: 'never'`: the default silently compiles llama.cpp from source when no binary fits.
import { availableParallelism } from 'node:os';
import type { BenchPreset } from './presets.ts';
import type { Progress } from './roofline.ts';
import { summarize, type Timing } from './timing.ts';

export interface PeerReport {
  stack: string;
  device: string;
  threads: number;
  model: string;
  prompt: Array<{ tokens: number; tokensPerS: number; timing: Timing }>;
  decode: { batch: 1; tokens: number; tokensPerS: number };
}

export interface PeerSkipped {
  stack: string;
  skipped: string;
}

type LlamaModule = typeof import('./llama-cpp/index.ts');

async function loadModule(): Promise<LlamaModule | string> {
  try {
    return await import('./llama-cpp/index.ts');
  } catch (err) {
    return `llama.cpp is not installed: run \`node scripts/llama-cpp.mjs\` (${(err as Error).message.split('\n')[0]})`;
  }
}

export interface PeerOptions {
  /** Run llama.cpp on its GPU build (CUDA, Vulkan or Metal, whichever is installed and works) instead of the CPU. */
  gpu?: boolean;
}

export async function benchPeer(ggufPath: string, preset: BenchPreset, progress: Progress = () => {}, options: PeerOptions = {}): Promise<PeerReport | PeerSkipped> {
  const wanted = options.gpu ? 'GPU' : 'CPU';
  const mod = await loadModule();
  if (typeof mod === 'string') return { stack: `llama.cpp (${wanted})`, skipped: mod };
  const e = preset.e2e;
  const threads = availableParallelism();
  progress(`peer: loading ${ggufPath} in llama.cpp (${wanted}, ${threads} threads)`);
  let llama;
  try {
    llama = await mod.getLlama({ gpu: options.gpu ? 'auto' : false, build: 'never', logLevel: mod.LlamaLogLevel.error, progressLogs: false, skipDownload: true });
  } catch (err) {
    return { stack: `llama.cpp (${wanted})`, skipped: `llama.cpp has no prebuilt binary for this machine (${(err as Error).message.split('\n')[0]})` };
  }
  const model = await llama.loadModel({ modelPath: ggufPath, gpuLayers: options.gpu ? 'max' : 0 });
  // Say where it ran. With gpu 'auto', node-llama-cpp falls back to its CPU build when no GPU build
  // loads; a GPU build that loads may still see no device (llama.cpp's Vulkan backend passes over
  // CPU devices such as lavapipe) and offload no layer, and then the CPU runs the model.
  const devices = llama.gpu === false ? [] : await llama.getGpuDeviceNames();
  const layers = `${model.gpuLayers} of ${model.fileInsights.totalLayers} layers`;
  const backend = llama.gpu === false
    ? 'CPU'
    : model.gpuLayers === 0
      ? `CPU: its ${llama.gpu} build offloaded no layer (${devices.length === 0 ? 'no GPU device found' : devices.join(', ')})`
      : `${llama.gpu}: ${devices.join(', ') || 'unnamed device'}, ${layers} offloaded`;
  const stack = `llama.cpp (node-llama-cpp ${await mod.getModuleVersion()}, ${backend})`;
  if (options.gpu && (llama.gpu === false || model.gpuLayers === 0)) progress(`peer: llama.cpp runs on the CPU (${backend})`);
  const longest = Math.max(...e.promptTokens);
  const context = await model.createContext({
    contextSize: Math.ceil((longest + e.decodeTokens + 32) / 256) * 256,
    batchSize: longest,
    sequences: 1,
    threads,
  });
  try {
    const sequence = context.getSequence();
    const vocab = vocabOf(model);
    const prompt: PeerReport['prompt'] = [];
    for (const tokens of e.promptTokens) {
      progress(`peer: prompt processing, ${tokens} tokens x ${e.repeats}`);
      const ids = tokenIds(tokens, vocab, tokens);
      const times: number[] = [];
      for (let r = 0; r < e.repeats + 1; r++) {
        await sequence.clearHistory();
        const start = performance.now();
        await sequence.evaluateWithoutGeneratingNewTokens(ids as never);
        if (r > 0) times.push(performance.now() - start); // the first run is a warm-up
      }
      const timing = summarize(times, 1, 'queue-completion');
      prompt.push({ tokens, tokensPerS: (tokens * 1000) / timing.medianMs, timing });
    }

    progress(`peer: decode, batch 1 x ${e.decodeTokens} tokens`);
    await sequence.clearHistory();
    const it = sequence.evaluate(tokenIds(16, vocab, 7) as never, { temperature: 0 });
    let start = 0;
    let produced = 0;
    let end = 0;
    for (let i = 0; i < e.decodeTokens; i++) {
      const next = await it.next();
      if (next.done) break;
      if (i === 0) start = performance.now();
      else produced++;
      end = performance.now();
    }
    await it.return(undefined);
    const seconds = (end - start) / 1000;
    return {
      stack,
      device: backend,
      threads,
      model: ggufPath,
      prompt,
      decode: { batch: 1, tokens: produced, tokensPerS: seconds > 0 ? produced / seconds : 0 },
    };
  } finally {
    await context.dispose();
    await model.dispose();
    await llama.dispose();
  }
}

/** Vocabulary size from the GGUF metadata (tokenizer.ggml.tokens), else the largest id of a tokenised text. */
function vocabOf(model: { tokenize(text: string): readonly number[]; fileInfo: { metadata: unknown } }): number {
  const meta = model.fileInfo.metadata as { tokenizer?: { ggml?: { tokens?: unknown[] } } };
  const tokens = meta.tokenizer?.ggml?.tokens?.length;
  if (tokens && tokens > 0) return tokens;
  return Math.max(...model.tokenize('The quick brown fox jumps over the lazy dog.'), 1) + 1;
}

/** Deterministic token ids spread over the vocabulary (same sequence as bench/e2e.ts). */
function tokenIds(count: number, vocab: number, seed: number): number[] {
  let s = seed >>> 0;
  return Array.from({ length: count }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s % vocab;
  });
}

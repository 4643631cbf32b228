// llama.cpp as a second oracle, through node-llama-cpp's prebuilt CPU binary: logits at every
// position and tokenisation of a GGUF file. Settings that make it comparable with a float64
// reference and with this runtime run with an f32 KV cache (kvDtype 'f32'):
//  - CPU only (no GPU backend, no layers offloaded): the prebuilt's CPU backend, which picks its
//    kernel variant (AVX2, AVX-512, ...) for the CPU it runs on;
//  - F32 KV cache: the default F16 cache rounds every key and value to f16 (up to 2^-11 relative);
//    llamaLogits' `kvType: 'F16'` asks for that cache, to compare with this runtime's f16 KV cache
//    (its default), which rounds the same values the same way;
//  - flash attention off: the plain attention graph (KQ, softmax, KQV as separate f32 ops over the
//    F32 cache); ggml's CPU flash-attention kernel is another code path, which with an f16 cache
//    also rounds Q to f16 and accumulates V in f16.
// build: 'never' matters: the default silently compiles llama.cpp from source when no binary fits.
import { getLlama, LlamaLogLevel, type ControlledEvaluateInputItem, type Llama, type LlamaModel, type Token } from '../../bench/llama-cpp/index.ts';

let llama: Promise<Llama> | undefined;
const models = new Map<string, Promise<LlamaModel>>();

function oracle(): Promise<Llama> {
  llama ??= getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error, progressLogs: false, skipDownload: true });
  return llama;
}

/** The model for a GGUF path, loaded once and kept until disposeLlamaOracle() (rewrite a loaded path only after that). */
export function llamaModel(ggufPath: string): Promise<LlamaModel> {
  let model = models.get(ggufPath);
  if (!model) {
    model = oracle().then((l) => l.loadModel({ modelPath: ggufPath, gpuLayers: 0, useMmap: false }));
    models.set(ggufPath, model);
  }
  return model;
}

/** A GGUF file's vocabulary alone (no tensors needed), loaded fresh each call: dispose it when done. */
export async function llamaVocab(ggufPath: string): Promise<LlamaModel> {
  return (await oracle()).loadModel({ modelPath: ggufPath, vocabOnly: true, gpuLayers: 0 });
}

/**
 * llama_vocab_is_eog itself: what llama.cpp's generation loops stop on. (node-llama-cpp's
 * isEogToken also counts the eos and eot ids, which llama.cpp can take out of its set: gpt-oss's <|end|>.)
 */
export function llamaIsEog(model: LlamaModel, token: number): boolean {
  const native = (model as unknown as { _model: { isEogToken(token: number): boolean } })._model;
  return native.isEogToken(token);
}

/** Token ids llama.cpp gives `text` (no BOS added; with `special`, control tokens in the text are parsed). */
export async function llamaTokenize(ggufPath: string, text: string, special = false): Promise<number[]> {
  const model = await llamaModel(ggufPath);
  return Array.from(model.tokenize(text, special));
}

export async function llamaDetokenize(ggufPath: string, tokens: number[], special = false): Promise<string> {
  const model = await llamaModel(ggufPath);
  return model.detokenize(tokens as Token[], special);
}

export interface LlamaLogitsOptions {
  /**
   * llama.cpp's KV cache type, keys and values (default F32). Q8_0 turns flash attention on:
   * llama.cpp quantises the V cache only under flash attention, whose CPU kernel also rounds Q to
   * the cache's dot type and accumulates in its own order.
   */
  kvType?: 'F32' | 'F16' | 'Q8_0';
}

/** Logits over the whole vocabulary after each of `tokens` (one sequence starting at position 0). */
export async function llamaLogits(ggufPath: string, tokens: number[], options: LlamaLogitsOptions = {}): Promise<Float32Array[]> {
  const { kvType = 'F32' } = options;
  if (tokens.length === 0) return [];
  const model = await llamaModel(ggufPath);
  const context = await model.createContext({
    contextSize: Math.max(256, Math.ceil(tokens.length / 256) * 256),
    batchSize: tokens.length,
    sequences: 1,
    threads: 2,
    flashAttention: kvType === 'Q8_0',
    experimentalKvCacheKeyType: kvType,
    experimentalKvCacheValueType: kvType,
  });
  try {
    const sequence = context.getSequence();
    const input: ControlledEvaluateInputItem[] = tokens.map((t) => [t as Token, { generateNext: { logits: true } }]);
    const results = await sequence.controlledEvaluate(input);
    return results.map((result, position) => {
      const logits = result?.next.logits;
      if (!logits) throw new Error(`llama.cpp returned no logits at position ${position}`);
      // The map covers the whole vocabulary, sorted by logit; put it back in token order.
      const out = new Float32Array(logits.size).fill(NaN);
      for (const [token, value] of logits) {
        if (token >= out.length) throw new Error(`llama.cpp returned a logit for token ${token} outside the vocabulary`);
        out[token] = value;
      }
      return out;
    });
  } finally {
    await context.dispose();
  }
}

/** Unload every model (tests call this in afterAll to free the native memory). */
export async function disposeLlamaOracle(): Promise<void> {
  const loaded = [...models.values()];
  models.clear();
  for (const model of loaded) await (await model).dispose();
}

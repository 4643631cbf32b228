// Sliding-window attention through the whole model: config normalisation (Hugging Face and GGUF), and
// the GPU forward pass against the float64 reference (test/support/reference-model.ts) with windows
// far shorter than the sequence, in prefill (several chunks), batched prefill and batched decode.
// Convention (transformers' masking_utils.sliding_window_overlay): a query at position q sees key k
// iff k <= q and k > q - window.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { configFromHf, describeAttentionWindows, layerWindow, type ModelConfig } from '../models/config.ts';
import { openGgufSource } from '../models/gguf-source.ts';
import { memorySource, type MemoryTensor, type ModelSource } from '../models/source.ts';
import { TINY_CONFIG, llamaTensorShapes, tinyWeights } from '../models/tiny.ts';
import { Transformer, type RowCandidates } from '../models/transformer.ts';
import { gguf } from './support/gguf-writer.ts';
import { useGpu } from './support/gpu.ts';
import { compare, expectClose, rng } from './support/reference.ts';
import { referenceLogits, type Weights } from './support/reference-model.ts';
import { writeTinyLlamaGguf } from './support/tiny-models.ts';
import { WorstErrors } from './support/worst-errors.ts';

const gpu = useGpu();
const dir = mkdtempSync(join(tmpdir(), 'swa-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

// ---- config ------------------------------------------------------------------------------------

const LLAMA_BASE = { ...TINY_CONFIG, architectures: ['LlamaForCausalLM'] };
const MISTRAL = (extra: Record<string, unknown>) => ({ ...TINY_CONFIG, architectures: ['MistralForCausalLM'], model_type: 'mistral', ...extra });
const QWEN2 = (extra: Record<string, unknown>) => ({ ...TINY_CONFIG, architectures: ['Qwen2ForCausalLM'], model_type: 'qwen2', ...extra });

describe('sliding window in the model config', () => {
  it('Mistral: sliding_window on every layer; null = none; absent = MistralConfig default 4096', () => {
    expect(configFromHf(MISTRAL({ sliding_window: 5 })).attentionWindows).toEqual([5, 5, 5, 5]);
    expect(configFromHf(MISTRAL({ sliding_window: null })).attentionWindows).toBeUndefined();
    expect(configFromHf(MISTRAL({})).attentionWindows).toEqual([4096, 4096, 4096, 4096]);
    expect(() => configFromHf(MISTRAL({ sliding_window: 0 }))).toThrow(/"sliding_window" must be a positive integer/);
    expect(() => configFromHf(MISTRAL({ sliding_window: 'x' }))).toThrow(/"sliding_window" must be a number/);
  });

  it('Llama: LlamaConfig has no sliding window, so the key is ignored (as transformers does)', () => {
    expect(configFromHf({ ...LLAMA_BASE, sliding_window: 5 }).attentionWindows).toBeUndefined();
  });

  it('Qwen2: only with use_sliding_window, on layers >= max_window_layers or as layer_types says', () => {
    expect(configFromHf(QWEN2({ sliding_window: 5, max_window_layers: 2 })).attentionWindows).toBeUndefined();
    expect(configFromHf(QWEN2({ use_sliding_window: false, sliding_window: 5, max_window_layers: 0 })).attentionWindows).toBeUndefined();
    expect(configFromHf(QWEN2({ use_sliding_window: true, sliding_window: 5, max_window_layers: 2 })).attentionWindows).toEqual([0, 0, 5, 5]);
    expect(configFromHf(QWEN2({ use_sliding_window: true, sliding_window: 5, max_window_layers: 0 })).attentionWindows).toEqual([5, 5, 5, 5]);
    // max_window_layers defaults to 28 (Qwen2Config): no layer of a 4-layer model slides.
    expect(configFromHf(QWEN2({ use_sliding_window: true, sliding_window: 5 })).attentionWindows).toBeUndefined();
    expect(configFromHf(QWEN2({ use_sliding_window: true, sliding_window: null, max_window_layers: 0 })).attentionWindows).toBeUndefined();
    // sliding_window defaults to 4096 (Qwen2Config).
    expect(configFromHf(QWEN2({ use_sliding_window: true, max_window_layers: 3 })).attentionWindows).toEqual([0, 0, 0, 4096]);
    const types = ['sliding_attention', 'full_attention', 'sliding_attention', 'full_attention'];
    expect(configFromHf(QWEN2({ use_sliding_window: true, sliding_window: 7, max_window_layers: 0, layer_types: types })).attentionWindows).toEqual([7, 0, 7, 0]);
    expect(() => configFromHf(QWEN2({ use_sliding_window: true, sliding_window: 7, layer_types: ['sliding_attention'] }))).toThrow(/"layer_types" must list/);
  });

  it('describes the windows for the model summary', () => {
    const describe = (extra: Record<string, unknown>) => describeAttentionWindows(configFromHf(QWEN2(extra)));
    expect(describe({})).toBeUndefined();
    expect(describe({ use_sliding_window: true, sliding_window: 64, max_window_layers: 0 })).toBe('sliding window 64 (all layers)');
    expect(describe({ use_sliding_window: true, sliding_window: 64, max_window_layers: 1 })).toBe('sliding window 64 (layers 1-3)');
    expect(describe({ use_sliding_window: true, sliding_window: 64, max_window_layers: 3 })).toBe('sliding window 64 (layer 3)');
    expect(describe({ use_sliding_window: true, sliding_window: 64, layer_types: ['sliding_attention', 'full_attention', 'sliding_attention', 'sliding_attention'] })).toBe(
      'sliding window 64 (layers 0, 2-3)',
    );
  });

  it('GGUF: reads llama.attention.sliding_window (llama.cpp LLM_KV_ATTENTION_SLIDING_WINDOW); 0 or absent = none', async () => {
    const read = async (name: string, window?: number): Promise<ModelConfig> => {
      const path = join(dir, `${name}.gguf`);
      writeTinyLlamaGguf(path, { seed: 2, ...(window === undefined ? {} : { metadata: [['llama.attention.sliding_window', gguf.u32(window)]] }) });
      const source = await openGgufSource(path);
      await source.close();
      return source.config;
    };
    expect((await read('w5', 5)).attentionWindows).toEqual([5, 5]);
    expect((await read('w0', 0)).attentionWindows).toBeUndefined();
    expect((await read('none')).attentionWindows).toBeUndefined();
  });
});

// ---- the forward pass --------------------------------------------------------------------------

const WINDOW = 5;
const next = rng(2024);
const TOKENS = Array.from({ length: 18 }, () => Math.floor(next() * TINY_CONFIG.vocab_size));
const PROMPT = 12;

function tensorsOf(weights: Map<string, Float32Array>, shapes: Array<[string, number[]]>): Map<string, MemoryTensor> {
  return new Map(shapes.map(([name, shape]) => [name, { shape, data: weights.get(name)! }]));
}

/** The tiny Llama weights under a Mistral config with a window of 5 keys on every layer. */
function mistralSource(): { source: ModelSource; weights: Weights } {
  const weights = tinyWeights();
  const source = memorySource('tiny-mistral-swa', MISTRAL({ sliding_window: WINDOW }), tensorsOf(weights, llamaTensorShapes(TINY_CONFIG)), { tokenizer: {}, source: 'test' });
  return { source, weights };
}

/** The same weights plus q/k/v biases under a Qwen2 config whose layers 2 and 3 slide (window 4). */
function qwen2Source(): { source: ModelSource; weights: Weights } {
  const weights = tinyWeights(TINY_CONFIG, 77);
  const shapes = llamaTensorShapes(TINY_CONFIG);
  const D = TINY_CONFIG.hidden_size / TINY_CONFIG.num_attention_heads;
  const bias = rng(5);
  for (let l = 0; l < TINY_CONFIG.num_hidden_layers; l++) {
    for (const [part, heads] of [['q', TINY_CONFIG.num_attention_heads], ['k', TINY_CONFIG.num_key_value_heads], ['v', TINY_CONFIG.num_key_value_heads]] as const) {
      const name = `model.layers.${l}.self_attn.${part}_proj.bias`;
      weights.set(name, Float32Array.from({ length: heads * D }, () => 0.2 * (bias() - 0.5)));
      shapes.push([name, [heads * D]]);
    }
  }
  const config = QWEN2({ use_sliding_window: true, sliding_window: 4, max_window_layers: 2 });
  return { source: memorySource('tiny-qwen2-swa', config, tensorsOf(weights, shapes), { tokenizer: {}, source: 'test' }), weights };
}

/** Check the candidates of a decode row against a reference logits row: top 5 ids in order, every candidate's logit. */
function expectCandidates(got: RowCandidates, ref: Float64Array, what: string): number {
  const want = Array.from(ref.keys()).sort((a, b) => ref[b] - ref[a]).slice(0, 5);
  expect(Array.from(got.ids.slice(0, 5)), `${what} top 5`).toEqual(want);
  return expectClose(got.logits, Array.from(got.ids, (id) => ref[id]), 1e-4, what).relL2;
}

const worst = new WorstErrors();
const record = (key: string, err: number) => worst.record(key, err);

describe('transformer with a sliding window vs float64 reference', () => {
  it('the window matters: windowed and full-attention references differ past the window, agree before it', () => {
    const { source, weights } = mistralSource();
    const windowed = referenceLogits(source.config, weights, TOKENS.slice(0, PROMPT));
    const full = referenceLogits({ ...source.config, attentionWindows: undefined }, weights, TOKENS.slice(0, PROMPT));
    for (let t = 0; t < PROMPT; t++) {
      const { relL2 } = compare(windowed[t], full[t]);
      if (t < WINDOW) expect(relL2, `position ${t}`).toBe(0);
      else expect(relL2, `position ${t}`).toBeGreaterThan(1e-2); // far above the 1e-4 tolerance
    }
  });

  it(`Mistral (window ${WINDOW}): every prompt position in 3 prefill chunks, then batched decode steps`, async () => {
    const { source, weights } = mistralSource();
    expect(source.config.attentionWindows).toEqual([5, 5, 5, 5]);
    expect(describeAttentionWindows(source.config)).toBe('sliding window 5 (all layers)');
    // prefillChunk 5: the 12-token prompt runs as 5 + 5 + 2, each chunk attending the last one's keys.
    const model = await Transformer.load(gpu(), source, { slots: 2, capacity: 24, prefillChunk: 5, kvDtype: 'f32' });
    try {
      const ref = referenceLogits(source.config, weights, TOKENS);
      const full = referenceLogits({ ...source.config, attentionWindows: undefined }, weights, TOKENS);
      const { logits } = await model.prefill(1, TOKENS.slice(0, PROMPT), 0, { allLogits: true });
      for (let t = 0; t < PROMPT; t++) {
        record('mistral prefill', expectClose(logits![t], ref[t], 1e-4, `prefill position ${t}`).relL2);
        // Without the window the GPU would have matched `full` instead: make sure it does not.
        if (t >= WINDOW) expect(compare(logits![t], full[t]).relL2, `position ${t} vs full attention`).toBeGreaterThan(1e-2);
      }
      // Decode the rest of slot 1 (past the window), batched with slot 0 growing from 2 tokens
      // (inside the window at first, past it after three steps).
      await model.prefill(0, TOKENS.slice(0, 2), 0, { candidates: 0 });
      const other = referenceLogits(source.config, weights, TOKENS.slice(0, 2 + TOKENS.length - PROMPT));
      for (let t = PROMPT; t < TOKENS.length; t++) {
        const step = t - PROMPT;
        const [short, long] = await model.decode([
          { slot: 0, token: TOKENS[2 + step], position: 2 + step },
          { slot: 1, token: TOKENS[t], position: t },
        ]);
        record('mistral decode', expectCandidates(long, ref[t], `decode position ${t}`));
        record('mistral decode', expectCandidates(short, other[2 + step], `decode (short row) position ${2 + step}`));
      }
    } finally {
      model.destroy();
      await source.close();
    }
  });

  it('Mistral: batched prefill pieces continuing windowed histories', async () => {
    const { source, weights } = mistralSource();
    const model = await Transformer.load(gpu(), source, { slots: 3, capacity: 24, prefillChunk: 12, maxPrefillPieces: 3, kvDtype: 'f32' });
    try {
      const draw = rng(99);
      const seq = (n: number) => Array.from({ length: n }, () => Math.floor(draw() * TINY_CONFIG.vocab_size));
      const specs = [
        { slot: 2, history: seq(7), tokens: seq(4) },
        { slot: 0, history: [] as number[], tokens: seq(6) },
        { slot: 1, history: seq(3), tokens: seq(2) },
      ];
      for (const s of specs) if (s.history.length > 0) await model.prefill(s.slot, s.history, 0, { candidates: 0 });
      const got = await model.prefillBatch(specs.map((s) => ({ slot: s.slot, tokens: s.tokens, start: s.history.length, candidates: 64 })));
      specs.forEach((s, i) => {
        const ref = referenceLogits(source.config, weights, [...s.history, ...s.tokens]).at(-1)!;
        record('mistral batched prefill', expectCandidates(got[i]!, ref, `piece ${i}`));
      });
    } finally {
      model.destroy();
      await source.close();
    }
  });

  it('Qwen2: window 4 on layers 2-3 only (max_window_layers 2), prefill and decode', async () => {
    const { source, weights } = qwen2Source();
    expect(Array.from({ length: 4 }, (_, l) => layerWindow(source.config, l))).toEqual([0, 0, 4, 4]);
    const model = await Transformer.load(gpu(), source, { slots: 1, capacity: 24, prefillChunk: 8, kvDtype: 'f32' });
    try {
      const ref = referenceLogits(source.config, weights, TOKENS);
      const { logits } = await model.prefill(0, TOKENS.slice(0, PROMPT), 0, { allLogits: true });
      for (let t = 0; t < PROMPT; t++) record('qwen2 prefill', expectClose(logits![t], ref[t], 1e-4, `qwen2 prefill position ${t}`).relL2);
      for (let t = PROMPT; t < PROMPT + 3; t++) {
        const [row] = await model.decode([{ slot: 0, token: TOKENS[t], position: t }]);
        record('qwen2 decode', expectCandidates(row, ref[t], `qwen2 decode position ${t}`));
      }
    } finally {
      model.destroy();
      await source.close();
    }
  });

  it('GGUF llama with llama.attention.sliding_window = 5: prefill and decode', async () => {
    const path = join(dir, 'swa.gguf');
    const tiny = writeTinyLlamaGguf(path, { seed: 9, metadata: [['llama.attention.sliding_window', gguf.u32(WINDOW)]] });
    const source = await openGgufSource(path);
    const model = await Transformer.load(gpu(), source, { slots: 1, capacity: 24, prefillChunk: 8, kvDtype: 'f32' });
    try {
      expect(source.config.attentionWindows).toEqual([WINDOW, WINDOW]);
      const V = tiny.vocab.tokens.length;
      const tokens = TOKENS.map((t) => t % V);
      const ref = referenceLogits(source.config, tiny.weights, tokens);
      const { logits } = await model.prefill(0, tokens.slice(0, PROMPT), 0, { allLogits: true });
      for (let t = 0; t < PROMPT; t++) record('gguf prefill', expectClose(logits![t], ref[t], 1e-4, `gguf prefill position ${t}`).relL2);
      for (let t = PROMPT; t < PROMPT + 3; t++) {
        const [row] = await model.decode([{ slot: 0, token: tokens[t], position: t }]);
        record('gguf decode', expectCandidates(row, ref[t], `gguf decode position ${t}`));
      }
    } finally {
      model.destroy();
      await source.close();
    }
  });

  it('reports its worst error: every position measured, all within the tolerance', () => {
    const decoded = TOKENS.length - PROMPT;
    worst.expectMeasured(
      {
        'mistral prefill': PROMPT,
        'mistral decode': 2 * decoded, // the long and the short row at each step
        'mistral batched prefill': 3,
        'qwen2 prefill': PROMPT,
        'qwen2 decode': 3,
        'gguf prefill': PROMPT,
        'gguf decode': 3,
      },
      1e-4,
      'sliding-window model',
    );
  });
});

// Weights in row chunks through the whole model: token_embd (the embedding gather and, when tied,
// the LM head), output and the layer matrices split at load give the same logits, bit for bit, as
// the same model loaded whole. Chunking is forced two ways: a device whose storage binding limit is
// below those tensors (the real case: a 7B f16 LM head on a 256 MiB-binding GPU), and the
// maxWeightChunkBytes option.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { Gpu } from '../src/gpu/device.ts';
import { chunkRows } from '../kernels/weights-upload.ts';
import { Transformer, type TransformerOptions } from '../models/transformer.ts';
import { embeddedSource, type ModelSource } from '../models/source.ts';
import { openGgufSource } from '../models/gguf-source.ts';
import { TINY_CONFIG, tinyWeights } from '../models/tiny.ts';
import { referenceLogits } from './support/reference-model.ts';
import { useGpu } from './support/gpu.ts';
import { compare, expectClose, rng } from './support/reference.ts';
import { tinyBaseType, writeTinyLlamaGguf, type TinyLlamaOptions } from './support/tiny-models.ts';

const gpu = useGpu();
const dir = mkdtempSync(join(tmpdir(), 'transformer-chunked-test-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

// slots 9: the LM head runs 9 logits rows at once (matmul) as well as fewer (matvec);
// prefillChunk 16: the 12-token prompt runs the layers through the matmul in one step.
const OPTIONS: TransformerOptions = { slots: 9, capacity: 32, prefillChunk: 16, kvDtype: 'f32' };

/** The same device seen through a smaller per-binding limit. */
function withBindingLimit(g: Gpu, bytes: number): Gpu {
  const limits: Record<string, number> = {};
  for (const key in g.limits) limits[key] = g.limits[key as keyof GPUSupportedLimits] as number;
  limits.maxStorageBufferBindingSize = bytes;
  return { ...g, limits: limits as unknown as GPUSupportedLimits };
}

interface Run {
  /** Logits of every prompt position. */
  logits: Float32Array[];
  /** Top candidates of two decode steps, two rows each. */
  decoded: Array<{ ids: number[]; logits: number[]; logSumExp: number }>;
}

/** Prefill `tokens` in slot 1, then decode two steps batched with a second sequence in slot 0. */
async function runModel(device: Gpu, source: ModelSource, options: TransformerOptions, tokens: number[]): Promise<Run> {
  const model = await Transformer.load(device, source, options);
  try {
    const { logits } = await model.prefill(1, tokens, 0, { allLogits: true });
    await model.prefill(0, tokens.slice(0, 3), 0);
    const decoded: Run['decoded'] = [];
    for (let step = 0; step < 2; step++) {
      const rows = await model.decode([
        { slot: 0, token: tokens[3 + step], position: 3 + step },
        { slot: 1, token: tokens[step], position: tokens.length + step },
      ]);
      for (const r of rows) decoded.push({ ids: Array.from(r.ids), logits: Array.from(r.logits), logSumExp: r.logSumExp });
    }
    return { logits: logits!, decoded };
  } finally {
    model.destroy();
  }
}

function expectSame(chunked: Run, whole: Run, what: string): void {
  const flat = (run: Run) => run.logits.flatMap((l) => Array.from(l));
  const cmp = compare(flat(chunked), flat(whole));
  expect(cmp, `${what}: prefill logits (max abs ${cmp.maxAbs} at ${cmp.worstIndex})`).toMatchObject({ maxAbs: 0, firstNonFinite: -1 });
  expect(chunked.decoded, `${what}: decode candidates`).toEqual(whole.decoded);
}

function promptTokens(vocab: number, seed: number): number[] {
  const next = rng(seed);
  return Array.from({ length: 12 }, () => Math.floor(next() * vocab));
}

describe('transformer with weights in row chunks', () => {
  it('tiny-random-llama (f32) on a device whose binding limit is below token_embd and output', async () => {
    const V = TINY_CONFIG.vocab_size;
    const C = TINY_CONFIG.hidden_size;
    const limit = 100_000;
    // The premise: 512 x 128 f32 = 262144 bytes, three chunks under this limit.
    expect(chunkRows('token_embd.weight', 'f32', V, C, limit)).toEqual([171, 171, 170]);
    const tokens = promptTokens(V, 21);
    // 4 slots keep the decode scratch and KV cache under the limit too.
    const options = { ...OPTIONS, slots: 4 };
    const whole = await runModel(gpu(), embeddedSource(), options, tokens);
    const chunked = await runModel(withBindingLimit(gpu(), limit), embeddedSource(), options, tokens);
    expectSame(chunked, whole, 'tiny-random-llama');
    // And both against the float64 reference, so equality is not two identical wrong answers.
    const ref = referenceLogits(embeddedSource().config, tinyWeights(), tokens);
    tokens.forEach((_, t) => expectClose(chunked.logits[t], ref[t], 1e-4, `chunked tiny-random-llama position ${t}`));
  });

  it('maxWeightChunkBytes reaches the upload: a limit below one row refuses the model, naming the tensor', async () => {
    await expect(Transformer.load(gpu(), embeddedSource(), { ...OPTIONS, maxWeightChunkBytes: 500 })).rejects.toThrow(
      /token_embd\.weight.*one row needs 512 bytes in a plane, over the limit of 500 bytes/,
    );
  });

  // GGUF files: quantised token_embd / output (tied: the LM head is the chunked embedding), with
  // chunk limits that put boundaries at rows that are not multiples of anything convenient.
  const GGUF_CASES: Array<{ name: string; options: TinyLlamaOptions; maxWeightChunkBytes: number }> = [
    // C = 96: three Q8_0 blocks a row, so chunks starting at odd rows repack their f16 scales.
    { name: 'q8_0, tied embeddings, C = 96', options: { dtype: 'q8_0', hiddenSize: 96, numHeads: 4, numKvHeads: 2, tieEmbeddings: true, seed: 3 }, maxWeightChunkBytes: 7_000 },
    { name: 'f16', options: { dtype: 'f16', seed: 4 }, maxWeightChunkBytes: 9_000 },
    { name: 'q4_k_m (token_embd q4_k, output q6_k)', options: { dtype: 'q4_k_m', numLayers: 1, seed: 5 }, maxWeightChunkBytes: 15_000 },
  ];
  for (const c of GGUF_CASES) {
    it(`GGUF ${c.name}, maxWeightChunkBytes ${c.maxWeightChunkBytes}`, async () => {
      const path = join(dir, `${c.options.dtype}.gguf`);
      const tiny = writeTinyLlamaGguf(path, c.options);
      const V = tiny.vocab.tokens.length;
      const C = tiny.config.hidden_size as number;
      const embdType = tinyBaseType(c.options.dtype!);
      const embdChunks = chunkRows('token_embd.weight', embdType, V, C, c.maxWeightChunkBytes);
      expect(embdChunks.length).toBeGreaterThanOrEqual(3);
      const tokens = promptTokens(V, 22);
      const runWith = async (options: TransformerOptions) => {
        const source = await openGgufSource(path);
        try {
          return await runModel(gpu(), source, options, tokens);
        } finally {
          await source.close();
        }
      };
      const whole = await runWith(OPTIONS);
      const chunked = await runWith({ ...OPTIONS, maxWeightChunkBytes: c.maxWeightChunkBytes });
      expectSame(chunked, whole, c.name);
    });
  }
});

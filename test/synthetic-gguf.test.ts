// The streaming GGUF writer and the synthetic Llama models it writes: the stream equals the
// in-memory writer's bytes; it holds one tensor at a time (each write call at most one tensor's
// bytes, every tensor made only after the one before it was written); the synthetic models load in
// our runtime and in llama.cpp, whose logits agree within the llama.cpp parity bounds for the format
// (test/support/parity.ts), and whose greedy text is not one token repeated; bad shapes are refused
// with the dimension named, through the library and through `webgpu-miner synth-model`. Small shapes
// only: the 7B preset is never written here.
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { OptionError } from '../src/errors.ts';
import { GgmlType } from '../models/ggml.ts';
import { openGguf } from '../models/gguf.ts';
import { tokenizerFromGguf } from '../models/gguf-tokenizer.ts';
import { TextTokenizer } from '../src/engine/tokenizer.ts';
import { writeGgufFile, writeGgufStream, type GgufByteTarget, type GgufLazyTensor } from '../models/gguf-writer.ts';
import {
  checkSyntheticShape,
  SYNTHETIC_SHAPES,
  syntheticLlamaMetadata,
  syntheticLlamaTensors,
  writeSyntheticLlama,
  type SyntheticDtype,
} from '../models/synthetic-gguf.ts';
import { encodeGguf } from './support/gguf-writer.ts';
import { disposeLlamaOracle, llamaLogits, llamaTokenize } from './support/llama-oracle.ts';
import { LLAMA_CPP_BOUNDS, errors, greedyAgreement, ourGreedy, ourLogits } from './support/parity.ts';
import { useGpu } from './support/gpu.ts';
import { rng } from './support/reference.ts';

const gpu = useGpu();
const dir = mkdtempSync(join(tmpdir(), 'synthetic-'));
afterAll(async () => {
  await disposeLlamaOracle();
  rmSync(dir, { recursive: true, force: true });
});

/** A target that keeps every write call's bytes (copied) in order. */
function collect(): GgufByteTarget & { chunks: Uint8Array[] } {
  const chunks: Uint8Array[] = [];
  return { chunks, write: async (bytes) => void chunks.push(bytes.slice()) };
}

describe('the streaming GGUF writer', () => {
  it('writes the same bytes as the in-memory writer', async () => {
    const options = { shape: SYNTHETIC_SHAPES.tiny, dtype: 'q4_0' as const, seed: 3 };
    const metadata = syntheticLlamaMetadata(options);
    const tensors = syntheticLlamaTensors(options);
    // The in-memory writer gets every tensor's bytes up front; the stream asks for them one by one.
    const inMemory = encodeGguf({ metadata, tensors: await Promise.all(tensors.map(async (t) => ({ name: t.name, type: t.type, ne: t.ne, data: await t.bytes() }))) });
    const target = collect();
    const result = await writeGgufStream(target, { metadata }, tensors);
    const streamed = Buffer.concat(target.chunks);
    expect(result.bytes).toBe(streamed.length);
    expect(streamed.equals(inMemory)).toBe(true);

    // The same through a file, at another alignment and with tensors whose sizes need padding.
    const odd: GgufLazyTensor[] = [
      { name: 'a', type: GgmlType.F32, ne: [3], bytes: () => new Uint8Array(new Float32Array([1, 2, 3]).buffer) },
      { name: 'b', type: GgmlType.F16, ne: [5, 3], bytes: () => Uint8Array.from({ length: 30 }, (_, i) => i) },
      { name: 'c', type: GgmlType.Q8_0, ne: [32, 2], bytes: () => Uint8Array.from({ length: 68 }, (_, i) => 255 - i) },
    ];
    const path = join(dir, 'odd.gguf');
    await writeGgufFile(path, { metadata, alignment: 64 }, odd);
    const expected = encodeGguf({ metadata, alignment: 64, tensors: await Promise.all(odd.map(async (t) => ({ name: t.name, type: t.type, ne: t.ne, data: await t.bytes() }))) });
    expect(readFileSync(path).equals(expected)).toBe(true);
  });

  it('holds one tensor at a time: no write is larger than one tensor, and each tensor is made after the one before was written', async () => {
    // 24 layers of a narrow model: the file is many times its largest tensor.
    const options = { shape: { ...SYNTHETIC_SHAPES.tiny, numLayers: 24, vocabSize: 300 }, dtype: 'q8_0' as const, seed: 1 };
    const events: string[] = [];
    let largestTensor = 0;
    const tensors = syntheticLlamaTensors(options).map((t, i): GgufLazyTensor => ({
      ...t,
      bytes: async () => {
        events.push(`make ${i}`);
        const bytes = await t.bytes();
        largestTensor = Math.max(largestTensor, bytes.byteLength);
        return bytes;
      },
    }));
    const writes: number[] = [];
    const target: GgufByteTarget = {
      write: async (bytes) => {
        writes.push(bytes.byteLength);
        events.push(`write ${bytes.byteLength}`);
      },
    };
    const metadata = syntheticLlamaMetadata(options);
    const result = await writeGgufStream(target, { metadata }, tensors);
    const header = writes[0];
    expect(writes.reduce((a, b) => a + b, 0)).toBe(result.bytes);
    // Every write after the header is one tensor's bytes or its padding.
    expect(Math.max(...writes.slice(1))).toBe(largestTensor);
    expect(result.bytes - header).toBeGreaterThan(20 * largestTensor);
    // Strict alternation: tensor i is made, written (plus padding), then tensor i + 1 is made.
    const makes = events.flatMap((e, at) => (e.startsWith('make') ? [at] : []));
    expect(makes).toHaveLength(tensors.length);
    makes.forEach((at, i) => {
      expect(events[at]).toBe(`make ${i}`);
      expect(events[at + 1]).toMatch(/^write /);
    });
  });

  it('refuses a tensor whose bytes do not match its type and dimensions, and leaves no file', async () => {
    const path = join(dir, 'bad.gguf');
    const bad: GgufLazyTensor[] = [{ name: 'w', type: GgmlType.Q4_0, ne: [32, 2], bytes: () => new Uint8Array(35) }];
    await expect(writeGgufFile(path, { metadata: [] }, bad)).rejects.toThrow(/tensor "w" made 35 bytes; its type and dimensions need 36/);
    expect(() => statSync(path)).toThrow();
  });
});

describe('synthetic Llama models', () => {
  it('refuses a shape that does not make a Llama of the type, naming what is wrong', () => {
    const tiny = SYNTHETIC_SHAPES.tiny;
    expect(() => checkSyntheticShape({ ...tiny, hiddenSize: 96 }, 'q4_k')).toThrow(OptionError);
    expect(() => checkSyntheticShape({ ...tiny, hiddenSize: 96 }, 'q4_k')).toThrow(/hidden size 96 is not a multiple of it/);
    expect(() => checkSyntheticShape({ ...tiny, intermediateSize: 200 }, 'q4_0')).toThrow(/FFN size 200/);
    expect(() => checkSyntheticShape({ ...tiny, numKvHeads: 3 }, 'f16')).toThrow(/4 heads are not a multiple of the 3 KV heads/);
    expect(() => checkSyntheticShape({ ...tiny, numLayers: 0 }, 'f16')).toThrow(/numLayers must be a positive integer/);
    expect(() => checkSyntheticShape({ ...tiny, vocabSize: 100 }, 'f16')).toThrow(/at least 286 tokens/);
    expect(() => checkSyntheticShape(SYNTHETIC_SHAPES['llama-2-7b'], 'q4_k')).not.toThrow();
  });

  it('synth-model writes one from the command line, with the preset changed by explicit dimensions, and refuses bad ones', async () => {
    const run = promisify(execFile);
    const path = join(dir, 'cli.gguf');
    const { stdout } = await run(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'synth-model', '--shape', 'tiny', '--dtype', 'f16', '--layers', '3', '--vocab', '400', path]);
    expect(stdout.startsWith(`${path}: `)).toBe(true);
    expect(stdout).toMatch(/ MiB \((\d+) bytes\), 30 tensors, written in [\d.]+ s/);
    expect(Number(/\((\d+) bytes\)/.exec(stdout)![1])).toBe(statSync(path).size);
    const file = await openGguf(path);
    expect([file.integer('llama.block_count'), file.integer('llama.vocab_size'), file.integer('llama.embedding_length')]).toEqual([3, 400, 256]);
    expect(file.tensor('blk.2.ffn_down.weight').typeName).toBe('F16');
    expect(file.string('general.description')).toMatch(/RANDOM weights/);
    await file.close();
    const bad = run(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'synth-model', '--shape', 'tiny', '--dtype', 'q4_k', '--hidden', '320', join(dir, 'bad-cli.gguf')]);
    await expect(bad).rejects.toMatchObject({ code: 1, stderr: expect.stringMatching(/error \[BAD_OPTION\]: synthetic model: q4_k stores rows in blocks of 256; the hidden size 320/) });
  });

  it('is the same file for the same seed, and another for another seed', async () => {
    const options = { shape: SYNTHETIC_SHAPES.tiny, dtype: 'q4_0' as const };
    await writeSyntheticLlama(join(dir, 's1.gguf'), { ...options, seed: 1 });
    await writeSyntheticLlama(join(dir, 's1-again.gguf'), { ...options, seed: 1 });
    await writeSyntheticLlama(join(dir, 's2.gguf'), { ...options, seed: 2 });
    const [a, b, c] = ['s1', 's1-again', 's2'].map((n) => readFileSync(join(dir, `${n}.gguf`)));
    expect(a.equals(b)).toBe(true);
    expect(a.length).toBe(c.length);
    expect(a.equals(c)).toBe(false);
  });

  it('has a tokenizer that llama.cpp and this runtime read alike', async () => {
    const path = join(dir, 'tokenizer.gguf');
    await writeSyntheticLlama(path, { shape: SYNTHETIC_SHAPES.tiny, dtype: 'q8_0', seed: 1 });
    const file = await openGguf(path);
    const files = tokenizerFromGguf(file);
    await file.close();
    const ours = new TextTokenizer({ tokenizer: files.tokenizer, config: files.config, source: path });
    for (const text of ['hello world', 'the quick brown fox', 'Caf\u00e9 42!\n']) {
      const ids = ours.encode(text, false);
      expect(ids.length).toBeGreaterThan(0);
      expect(ids, JSON.stringify(text)).toEqual(await llamaTokenize(path, text));
    }
  });

  // The tiny shape (hidden 256, FFN 512, 2 layers, 4 heads over 2 KV heads, vocabulary 512) in each
  // format the synthetic models come in. Measured (seed 7, both software adapters alike), rel-L2 vs
  // llama.cpp / greedy of 32 / distinct tokens in the continuation: f32 8e-7 / 32 / 24, f16 5e-4 / 32 /
  // 24, q8_0 1.2e-2 / 31 / 31, q4_0 1.3e-2 / 32 / 28, q4_k 3.0e-2 / 32 / 25; the last row's logits
  // have std ~1.
  for (const dtype of ['f32', 'f16', 'q8_0', 'q4_0', 'q4_k'] as const satisfies readonly SyntheticDtype[]) {
    it(`${dtype}: loads in our runtime and in llama.cpp, with agreeing, finite logits`, async () => {
      const path = join(dir, `tiny-${dtype}.gguf`);
      await writeSyntheticLlama(path, { shape: SYNTHETIC_SHAPES.tiny, dtype, seed: 7 });
      const next = rng(3);
      const V = SYNTHETIC_SHAPES.tiny.vocabSize;
      const prompt = Array.from({ length: 8 }, () => 3 + Math.floor(next() * (V - 3)));
      let dtypes: Record<string, string> = {};
      const sequence = await ourGreedy(gpu(), path, prompt, 32);
      const ours = await ourLogits(gpu(), path, sequence, (model) => (dtypes = model.stats.dtypes));
      const theirs = await llamaLogits(path, sequence);
      if (dtype !== 'f32' && dtype !== 'f16') expect(dtypes).toMatchObject({ ffn_down: dtype, output: dtype, token_embd: dtype });
      // errors() fails on any non-finite logit, on either side.
      const vsLlama = Math.max(...errors(ours, theirs));
      const agree = greedyAgreement(sequence, prompt.length, theirs);
      const bound = LLAMA_CPP_BOUNDS[dtype];
      expect(vsLlama, `rel-L2 vs llama.cpp ${vsLlama.toExponential(2)}, greedy ${agree}/32`).toBeLessThanOrEqual(bound.relL2);
      expect(agree).toBeGreaterThanOrEqual(bound.greedy);
      // Not degenerate: the greedy continuation is not one token over and over, and the logits are
      // spread (a flat row would make argmax a tie-break).
      const continuation = sequence.slice(prompt.length);
      expect(new Set(continuation).size).toBeGreaterThan(3);
      const last = ours[ours.length - 1];
      const mean = last.reduce((a, b) => a + b, 0) / last.length;
      const std = Math.sqrt(last.reduce((a, b) => a + (b - mean) ** 2, 0) / last.length);
      expect(std).toBeGreaterThan(0.1);
    });
  }
});

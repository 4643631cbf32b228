// safetensors reader: single files and sharded folders, F32/F16/BF16 read as f32 or as raw bits,
// and malformed headers that must fail with a ModelFormatError naming the file, tensor and problem.
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ModelFormatError } from '../src/errors.ts';
import { f16ArrayToF32, bf16ArrayToF32, f32ArrayToBf16, f32ArrayToF16 } from '../models/ggml.ts';
import { MAX_SAFETENSORS_HEADER_BYTES, openSafetensors } from '../models/safetensors.ts';
import { randomF32 } from './support/reference.ts';
import { encodeFloats, encodeSafetensors, writeSafetensors, type SafetensorsWriteTensor } from './support/safetensors-writer.ts';
import { writeHfFolder } from './support/tiny-models.ts';

const dir = mkdtempSync(join(tmpdir(), 'safetensors-test-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let count = 0;
const newPath = (ext = '.safetensors') => join(dir, `f${count++}${ext}`);

const values = randomF32(6 * 5, 3, 2);
const threeTypes = (): SafetensorsWriteTensor[] => [
  { name: 'w.f32', dtype: 'F32', shape: [6, 5], data: encodeFloats(values, 'F32') },
  { name: 'w.f16', dtype: 'F16', shape: [6, 5], data: encodeFloats(values, 'F16') },
  { name: 'w.bf16', dtype: 'BF16', shape: [30], data: encodeFloats(values, 'BF16') },
];

/** A file whose header is `header` verbatim, followed by `dataBytes` zero bytes. */
function rawFile(header: string | Buffer, dataBytes = 0, declaredLength?: bigint): string {
  const h = typeof header === 'string' ? Buffer.from(header) : header;
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(declaredLength ?? BigInt(h.length));
  const path = newPath();
  writeFileSync(path, Buffer.concat([len, h, Buffer.alloc(dataBytes)]));
  return path;
}

async function expectFormatError(path: string, pattern: RegExp): Promise<void> {
  const err = await openSafetensors(path).then(
    (m) => m.close().then(() => undefined),
    (e: unknown) => e,
  );
  expect(err, `expected ${pattern}`).toBeInstanceOf(ModelFormatError);
  expect((err as Error).message).toMatch(pattern);
}

describe('safetensors reader', () => {
  it('reads F32, F16 and BF16 as f32 or as raw bits, tensor by tensor', async () => {
    const path = newPath();
    writeSafetensors(path, threeTypes(), { format: 'pt' });
    const m = await openSafetensors(path);
    try {
      expect(m.metadata).toEqual({ format: 'pt' });
      expect([...m.tensors.keys()]).toEqual(['w.f32', 'w.f16', 'w.bf16']);
      expect(m.tensor('w.f16')).toMatchObject({ dtype: 'F16', shape: [6, 5], elements: 30, byteLength: 60, file: path });
      expect(await m.read('w.f32')).toEqual({ name: 'w.f32', dtype: 'F32', shape: [6, 5], data: values });
      const f16 = await m.read('w.f16');
      expect(f16.dtype).toBe('F32');
      expect(f16.data).toEqual(f16ArrayToF32(f32ArrayToF16(values)));
      const f16Bits = await m.read('w.f16', 'native');
      expect(f16Bits).toEqual({ name: 'w.f16', dtype: 'F16', shape: [6, 5], data: f32ArrayToF16(values) });
      const bf16 = await m.read('w.bf16', 'native');
      expect(bf16).toEqual({ name: 'w.bf16', dtype: 'BF16', shape: [30], data: f32ArrayToBf16(values) });
      expect((await m.read('w.bf16')).data).toEqual(bf16ArrayToF32(f32ArrayToBf16(values)));
      // F32 in 'native' mode is still F32.
      expect((await m.read('w.f32', 'native')).dtype).toBe('F32');
      const into = new Uint8Array(60);
      await m.readBytes('w.f16', into);
      expect(new Uint16Array(into.buffer)).toEqual(f32ArrayToF16(values));
      await expect(m.readBytes('w.f16', new Uint8Array(3))).rejects.toThrow(RangeError);
      await expect(m.read('missing')).rejects.toThrow(/tensor "missing" is missing/);
    } finally {
      await m.close();
    }
  });

  it('reads zero-size tensors and refuses dtypes it cannot use yet', async () => {
    const path = newPath();
    writeSafetensors(path, [
      { name: 'empty', dtype: 'F32', shape: [0, 4], data: new Uint8Array(0) },
      { name: 'ids', dtype: 'I32', shape: [2], data: new Uint8Array(8) },
    ]);
    const m = await openSafetensors(path);
    try {
      expect((await m.read('empty')).data).toHaveLength(0);
      expect((await m.readBytes('ids')).bytes).toHaveLength(8);
      await expect(m.read('ids')).rejects.toThrow(/tensor "ids" has dtype I32, which is not supported yet/);
    } finally {
      await m.close();
    }
  });

  it('reads a sharded Hugging Face folder through its index, and a single-file folder', async () => {
    const weights = new Map<string, Float32Array>();
    const config = { hidden_size: 8, intermediate_size: 16, bos_token_id: 0, eos_token_id: 0 };
    weights.set('model.embed_tokens.weight', randomF32(10 * 8, 1));
    weights.set('model.layers.0.mlp.up_proj.weight', randomF32(16 * 8, 2));
    weights.set('model.layers.0.mlp.down_proj.weight', randomF32(8 * 16, 3));
    weights.set('model.norm.weight', randomF32(8, 4));
    const sharded = join(dir, 'sharded');
    writeHfFolder(sharded, config, weights, { model: { vocab: {} } }, 'BF16', { shards: 3 });
    expect(readdirSync(sharded).sort()).toEqual([
      'config.json',
      'generation_config.json',
      'model-00001-of-00003.safetensors',
      'model-00002-of-00003.safetensors',
      'model-00003-of-00003.safetensors',
      'model.safetensors.index.json',
      'tokenizer.json',
      'tokenizer_config.json',
    ]);
    const m = await openSafetensors(sharded);
    try {
      expect(m.files).toHaveLength(3);
      expect(m.metadata).toMatchObject({ total_size: expect.any(Number) });
      expect(m.tensor('model.layers.0.mlp.down_proj.weight')).toMatchObject({ dtype: 'BF16', shape: [8, 16] });
      for (const [name, w] of weights) expect((await m.read(name)).data).toEqual(bf16ArrayToF32(f32ArrayToBf16(w)));
    } finally {
      await m.close();
    }
    const single = join(dir, 'single');
    writeHfFolder(single, config, weights, { model: { vocab: {} } }, 'F32');
    const s = await openSafetensors(single);
    try {
      expect(s.files).toEqual([join(single, 'model.safetensors')]);
      expect((await s.read('model.norm.weight')).data).toEqual(weights.get('model.norm.weight'));
    } finally {
      await s.close();
    }
  });
});

describe('malformed safetensors', () => {
  const entry = (extra: object) => JSON.stringify({ t: { dtype: 'F32', shape: [2], data_offsets: [0, 8], ...extra } });

  it('truncated files and header lengths', async () => {
    const path = newPath();
    writeFileSync(path, Buffer.from([1, 2, 3]));
    await expectFormatError(path, new RegExp(`${path}: file is truncated: 3 bytes`));
    await expectFormatError(rawFile('{}', 0, 1000n), /file is truncated: the header claims 1000 bytes but only 2 follow/);
    await expectFormatError(rawFile('{}', 0, BigInt(MAX_SAFETENSORS_HEADER_BYTES) + 1n), /header length 100000001 exceeds the 100000000-byte limit/);
    await expectFormatError(rawFile('{}', 0, 2n ** 63n), /header length 9223372036854775808 exceeds/);
    const good = encodeSafetensors(threeTypes());
    const cut = newPath();
    writeFileSync(cut, good.subarray(0, good.length - 10));
    await expectFormatError(cut, /tensor "w.bf16": data \[180, 240\) lies outside the file \(the data section has 230 bytes\)/);
  });

  it('bad JSON', async () => {
    await expectFormatError(rawFile('{"t": '), /header is not valid JSON/);
    await expectFormatError(rawFile('[1, 2]'), /header is not a JSON object/);
    await expectFormatError(rawFile(Buffer.from([0xff, 0xfe, 0x7b])), /header is not valid JSON/);
    await expectFormatError(rawFile('{"__metadata__": 5}'), /"__metadata__" is not an object/);
  });

  it('entries with bad dtypes, shapes or offsets', async () => {
    await expectFormatError(rawFile(entry({ dtype: 'F12' }), 8), /tensor "t": unknown dtype "F12"/);
    await expectFormatError(rawFile(entry({ shape: [2, -1] }), 8), /tensor "t": shape \[2,-1\] is not a list of non-negative integers/);
    await expectFormatError(rawFile(entry({ data_offsets: [8, 0] }), 8), /tensor "t": data_offsets \[8,0\] is not \[begin, end\]/);
    await expectFormatError(rawFile(entry({ data_offsets: [0, 12] }), 12), /tensor "t": F32 \[2\] needs 8 bytes but data_offsets \[0, 12\] span 12/);
    await expectFormatError(rawFile(entry({ data_offsets: [100, 108] }), 8), /tensor "t": data \[100, 108\) lies outside the file/);
    await expectFormatError(rawFile(JSON.stringify({ t: 'nope' })), /tensor "t": entry is not an object/);
  });

  it('overlapping tensors', async () => {
    const header = JSON.stringify({
      a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] },
      b: { dtype: 'F32', shape: [2], data_offsets: [8, 16] },
    });
    await expectFormatError(rawFile(header, 16), /tensors "a" and "b" overlap/);
  });

  it('bad indexes and folders', async () => {
    const sub = join(dir, 'bad-index');
    mkdirSync(sub);
    writeSafetensors(join(sub, 'model-00001-of-00001.safetensors'), threeTypes());
    const index = join(sub, 'model.safetensors.index.json');
    writeFileSync(index, JSON.stringify({ weight_map: { 'w.f32': 'model-00001-of-00001.safetensors', ghost: 'model-00001-of-00001.safetensors' } }));
    await expectFormatError(sub, /weight_map puts tensor "ghost" in model-00001-of-00001.safetensors, which has no such tensor/);
    writeFileSync(index, JSON.stringify({ weight_map: { 'w.f32': '../../etc/passwd' } }));
    await expectFormatError(index, /weight_map entry for "w.f32" names "..\/..\/etc\/passwd", not a file in the same folder/);
    writeFileSync(index, JSON.stringify({ weight_map: { 'w.f32': 'model-00002-of-00002.safetensors' } }));
    await expectFormatError(index, /model-00002-of-00002.safetensors: cannot open safetensors file/);
    writeFileSync(index, '{"metadata": {}}');
    await expectFormatError(index, /index has no "weight_map" object/);
    writeFileSync(index, 'not json');
    await expectFormatError(index, /index is not valid JSON/);
    const empty = join(dir, 'empty');
    mkdirSync(empty);
    await expectFormatError(empty, /no model.safetensors or model.safetensors.index.json in this folder/);
    await expectFormatError(join(dir, 'does-not-exist'), /does-not-exist: cannot open/);
  });
});

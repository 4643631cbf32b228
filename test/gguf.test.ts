// GGUF reader: metadata of every type, tensors of every supported type, and malformed files that
// must fail with a ModelFormatError naming the problem.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ModelFormatError } from '../src/errors.ts';
import { bf16BitsToF32, decodeGgml, encodeGgml, f32ToBf16Bits, GgmlType } from '../models/ggml.ts';
import { GgufValueType, openGguf, type GgufMetadataEntry } from '../models/gguf.ts';
import { encodeGguf, gguf, type GgufWriteOptions } from './support/gguf-writer.ts';
import { randomF32 } from './support/reference.ts';
import { permuteQK, writeTinyLlamaGguf } from './support/tiny-models.ts';
import { handQ2KBlock, handQ3KBlock, handQ4KBlock, handQ5KBlock, handQ6KBlock } from './support/kquants.ts';

const dir = mkdtempSync(join(tmpdir(), 'gguf-test-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let fileCount = 0;

function writeFile(bytes: Uint8Array): string {
  const path = join(dir, `f${fileCount++}.gguf`);
  writeFileSync(path, bytes);
  return path;
}

async function expectFormatError(bytes: Uint8Array, pattern: RegExp): Promise<void> {
  const path = writeFile(bytes);
  const err = await openGguf(path).then(
    (f) => f.close().then(() => undefined),
    (e: unknown) => e,
  );
  expect(err, `expected ${pattern} for ${path}`).toBeInstanceOf(ModelFormatError);
  expect((err as Error).message).toContain(path);
  expect((err as Error).message).toMatch(pattern);
}

const basic = (): GgufWriteOptions => ({
  metadata: [['general.architecture', gguf.string('llama')]],
  tensors: [
    { name: 'a', type: GgmlType.F32, ne: [4, 2], data: encodeGgml(GgmlType.F32, [1, 2, 3, 4, 5, 6, 7, 8]) },
    { name: 'b', type: GgmlType.Q8_0, ne: [32], data: encodeGgml(GgmlType.Q8_0, randomF32(32, 1)) },
  ],
});

// f16 conversion, ggml's Q8_0 / Q4_0 quantisers and the K-quant decoders are kernels/weights.ts's,
// tested in test/weights.test.ts; models/ggml.ts adds bfloat16 and the byte codecs' checks.
describe('bfloat16 conversion', () => {
  it('rounds to nearest even and keeps NaN', () => {
    expect(f32ToBf16Bits(1)).toBe(0x3f80);
    expect(bf16BitsToF32(0x3f80)).toBe(1);
    expect(f32ToBf16Bits(1 + 2 ** -8)).toBe(0x3f80); // tie to even
    expect(f32ToBf16Bits(1 + 3 * 2 ** -8)).toBe(0x3f82);
    expect(Number.isNaN(bf16BitsToF32(f32ToBf16Bits(NaN)))).toBe(true);
  });
});

describe('encodeGgml / decodeGgml', () => {
  it('refuses a byte count that is not whole blocks, and does not encode K-quants', () => {
    expect(() => decodeGgml(GgmlType.Q4_K, new Uint8Array(143), 256)).toThrow(RangeError);
    expect(() => decodeGgml(GgmlType.Q6_K, new Uint8Array(210), 128)).toThrow(RangeError);
    expect(() => encodeGgml(GgmlType.Q4_K, new Float32Array(256))).toThrow(/not supported/);
  });
});

describe('GGUF reader', () => {
  it('reads metadata of every value type', async () => {
    const metadata: Array<[string, GgufMetadataEntry]> = [
      ['u8', gguf.u8(250)],
      ['i8', gguf.i8(-100)],
      ['u16', gguf.u16(65000)],
      ['i16', gguf.i16(-30000)],
      ['u32', gguf.u32(4_000_000_000)],
      ['i32', gguf.i32(-2_000_000_000)],
      ['f32', gguf.f32(0.1)],
      ['f64', gguf.f64(0.1)],
      ['u64', gguf.u64(2n ** 60n)],
      ['i64', gguf.i64(-(2n ** 40n))],
      ['bool', gguf.bool(true)],
      ['string', gguf.string('héllo 🙂')],
      ['empty', gguf.string('')],
      ['strings', gguf.strings(['a', '', 'ü'])],
      ['f32s', gguf.f32s([1.5, -2])],
      ['i32s', gguf.i32s([-1, 7])],
      ['u8s', gguf.array(GgufValueType.UINT8, Uint8Array.from([1, 2, 255]))],
      ['u64s', gguf.array(GgufValueType.UINT64, BigUint64Array.from([1n, 2n ** 63n]))],
      ['f64s', gguf.array(GgufValueType.FLOAT64, Float64Array.from([Math.PI]))],
      ['bools', gguf.array(GgufValueType.BOOL, [true, false])],
      ['nested', gguf.array(GgufValueType.ARRAY, [['x', 'y'], ['z']])],
    ];
    const f = await openGguf(writeFile(encodeGguf({ metadata })));
    try {
      expect(f.version).toBe(3);
      expect(f.tensors.size).toBe(0);
      expect(f.get('u8')).toBe(250);
      expect(f.get('i8')).toBe(-100);
      expect(f.get('u16')).toBe(65000);
      expect(f.get('i16')).toBe(-30000);
      expect(f.get('u32')).toBe(4_000_000_000);
      expect(f.get('i32')).toBe(-2_000_000_000);
      expect(f.get('f32')).toBe(Math.fround(0.1));
      expect(f.get('f64')).toBe(0.1);
      expect(f.get('u64')).toBe(2n ** 60n);
      expect(f.get('i64')).toBe(-(2n ** 40n));
      expect(f.number('i64')).toBe(-(2 ** 40));
      expect(() => f.number('u64')).toThrow(/"u64".*safe integer/);
      expect(f.boolean('bool')).toBe(true);
      expect(f.string('string')).toBe('héllo 🙂');
      expect(f.string('empty')).toBe('');
      expect(f.strings('strings')).toEqual(['a', '', 'ü']);
      expect(Array.from(f.numbers('f32s')!)).toEqual([1.5, -2]);
      expect(f.get('i32s')).toEqual(Int32Array.from([-1, 7]));
      expect(f.get('u8s')).toEqual(Uint8Array.from([1, 2, 255]));
      expect(f.get('u64s')).toEqual(BigUint64Array.from([1n, 2n ** 63n]));
      expect(f.get('f64s')).toEqual(Float64Array.from([Math.PI]));
      expect(f.get('bools')).toEqual([true, false]);
      expect(f.get('nested')).toEqual([['x', 'y'], ['z']]);
      expect(f.metadata.get('strings')).toMatchObject({ type: GgufValueType.ARRAY, itemType: GgufValueType.STRING });
      // Typed accessors name the key and the mismatch.
      expect(() => f.string('u32')).toThrow(/"u32" should be a string but is UINT32/);
      expect(() => f.string('missing')).toThrow(/"missing" \(a string\) is missing/);
      expect(f.string('missing', 'fallback')).toBe('fallback');
      expect(() => f.strings('f32s')).toThrow(/"f32s" should be an array of strings but is ARRAY of FLOAT32/);
    } finally {
      await f.close();
    }
  });

  it('reads tensors of every supported type, one at a time, with shapes in both orders', async () => {
    const values = randomF32(64 * 3, 11, 2);
    const types = [GgmlType.F32, GgmlType.F16, GgmlType.BF16, GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_1, GgmlType.Q5_0, GgmlType.Q5_1];
    const tensors = types.map((type, i) => ({ name: `t${i}`, type, ne: [64, 3], data: encodeGgml(type, values) }));
    const f = await openGguf(writeFile(encodeGguf({ metadata: [], tensors, alignment: 64 })));
    try {
      expect(f.alignment).toBe(64);
      expect(f.dataOffset % 64).toBe(0);
      for (const [i, type] of types.entries()) {
        const info = f.tensor(`t${i}`);
        expect(info).toMatchObject({ type, ne: [64, 3], shape: [3, 64], elements: 192, supported: true });
        expect(info.fileOffset % 64).toBe(0);
        const { bytes } = await f.readTensor(`t${i}`);
        expect(bytes.byteOffset).toBe(0);
        expect(Buffer.from(bytes).equals(Buffer.from(tensors[i].data))).toBe(true);
        expect(await f.readTensorF32(`t${i}`)).toEqual(decodeGgml(type, tensors[i].data, 192));
      }
      expect(await f.readTensorF32('t0')).toEqual(values);
      const into = new Uint8Array(f.tensor('t3').byteLength);
      await f.readTensor('t3', into);
      expect(Buffer.from(into).equals(Buffer.from(tensors[3].data))).toBe(true);
      await expect(f.readTensor('t3', new Uint8Array(5))).rejects.toThrow(RangeError);
      await expect(f.readTensor('nope')).rejects.toThrow(/tensor "nope" is missing/);
    } finally {
      await f.close();
    }
  });

  it('reads Q2_K .. Q6_K tensors (decoded as ggml does)', async () => {
    const q4k = handQ4KBlock().block;
    const q5k = handQ5KBlock().block;
    const q6k = handQ6KBlock();
    const tensors = [
      { name: 'a', type: GgmlType.Q4_K, ne: [256, 2], data: Uint8Array.from([...q4k, ...q4k.map((b, i) => (i < 4 ? b : b ^ 0x5a))]) },
      { name: 'b', type: GgmlType.Q6_K, ne: [512], data: Uint8Array.from([...q6k, ...q6k]) },
      { name: 'c', type: GgmlType.Q5_K, ne: [256, 1], data: q5k },
      { name: 'd', type: GgmlType.Q3_K, ne: [256], data: handQ3KBlock().block },
      { name: 'e', type: GgmlType.Q2_K, ne: [256, 2], data: Uint8Array.from([...handQ2KBlock(), ...handQ2KBlock()]) },
    ];
    const f = await openGguf(writeFile(encodeGguf({ metadata: [], tensors })));
    try {
      expect(f.tensor('a')).toMatchObject({ typeName: 'Q4_K', byteLength: 288, shape: [2, 256], supported: true });
      expect(f.tensor('b')).toMatchObject({ typeName: 'Q6_K', byteLength: 420, supported: true });
      expect(await f.readTensorF32('a')).toEqual(decodeGgml(GgmlType.Q4_K, tensors[0].data, 512));
      const b = await f.readTensorF32('b');
      expect(b.subarray(256)).toEqual(b.subarray(0, 256));
      expect(b[63]).toBe(77.5);
      expect(f.tensor('c')).toMatchObject({ typeName: 'Q5_K', byteLength: 176, supported: true });
      const c = await f.readTensorF32('c');
      expect(c).toEqual(decodeGgml(GgmlType.Q5_K, q5k, 256));
      expect(c[0]).toBe(40.5); // sub-block 0: q = 0 + 16, 0.5 * 5 * 16 - (-0.25) * 2
      expect(f.tensor('d')).toMatchObject({ typeName: 'Q3_K', byteLength: 110, supported: true });
      expect((await f.readTensorF32('d'))[255]).toBe(-27); // 0.5 * (14 - 32) * (7 - 4)
      expect(f.tensor('e')).toMatchObject({ typeName: 'Q2_K', byteLength: 168, shape: [2, 256], supported: true });
      expect((await f.readTensorF32('e'))[256 + 255]).toBe(0.25 * 15 * 3 + 0.5 * 0);
    } finally {
      await f.close();
    }
  });

  it('recognises other quant types but refuses to read them yet', async () => {
    const f = await openGguf(
      writeFile(encodeGguf({ metadata: [], tensors: [{ name: 'blk.0.ffn_down.weight', type: GgmlType.IQ4_XS, ne: [256, 2], data: new Uint8Array(272) }] })),
    );
    try {
      const info = f.tensor('blk.0.ffn_down.weight');
      expect(info).toMatchObject({ typeName: 'IQ4_XS', byteLength: 272, supported: false });
      await expect(f.readTensor(info.name)).rejects.toThrow(/"blk.0.ffn_down.weight" has type IQ4_XS, which is not supported yet/);
    } finally {
      await f.close();
    }
  });

  it('reads metadata larger than its first read (a big vocabulary)', async () => {
    const tokens = Array.from({ length: 120_000 }, (_, i) => `token-${i}-padding`);
    const f = await openGguf(writeFile(encodeGguf({ ...basic(), metadata: [['tokenizer.ggml.tokens', gguf.strings(tokens)]] })));
    try {
      expect(f.strings('tokenizer.ggml.tokens')).toHaveLength(120_000);
      expect(f.strings('tokenizer.ggml.tokens')![119_999]).toBe('token-119999-padding');
      expect(await f.readTensorF32('a')).toEqual(Float32Array.from([1, 2, 3, 4, 5, 6, 7, 8]));
    } finally {
      await f.close();
    }
  });

  it('reads a tiny Llama written for llama.cpp, Q and K rows permuted', async () => {
    const tiny = writeTinyLlamaGguf(join(dir, 'tiny.gguf'), { dtype: 'q8_0', seed: 5 });
    const f = await openGguf(tiny.path);
    try {
      expect(f.string('general.architecture')).toBe('llama');
      expect(f.integer('llama.attention.head_count_kv')).toBe(2);
      expect(f.tensor('token_embd.weight')).toMatchObject({ typeName: 'Q8_0', shape: [tiny.vocab.tokens.length, 64] });
      expect(f.tensor('blk.1.attn_norm.weight')).toMatchObject({ typeName: 'F32', shape: [64] });
      expect(await f.readTensorF32('blk.0.attn_v.weight')).toEqual(tiny.weights.get('model.layers.0.self_attn.v_proj.weight'));
      const k = tiny.weights.get('model.layers.1.self_attn.k_proj.weight')!;
      expect(await f.readTensorF32('blk.1.attn_k.weight')).toEqual(permuteQK(k, 2, 64));
      expect(await f.readTensorF32('blk.1.attn_k.weight')).not.toEqual(k);
    } finally {
      await f.close();
    }
  });
});

describe('malformed GGUF files', () => {
  const good = () => encodeGguf(basic());

  it('bad magic', async () => {
    const bytes = good();
    bytes.write('GGML', 0, 'latin1');
    await expectFormatError(bytes, /bad magic "GGML".*not a GGUF file/);
    await expectFormatError(Buffer.from('{"not": "gguf"}'), /bad magic/);
  });

  it('truncated anywhere', async () => {
    const bytes = good();
    await expectFormatError(bytes.subarray(0, 2), /truncated/);
    await expectFormatError(bytes.subarray(0, 20), /truncated.*metadata count/);
    await expectFormatError(bytes.subarray(0, 40), /truncated or corrupt: 1 metadata entries and 2 tensor infos cannot fit/);
    const metadataOnly = encodeGguf({ metadata: [['general.architecture', gguf.string('llama')]] });
    await expectFormatError(metadataOnly.subarray(0, 24 + 28 + 4 + 8 + 3), /metadata key "general.architecture": string length 5 runs past the end of the file \(truncated/);
    // Cut inside the tensor table.
    await expectFormatError(bytes.subarray(0, 120), /truncated.*tensor/);
    // Cut inside the data (the last 30 bytes are padding): the last tensor no longer fits.
    await expectFormatError(bytes.subarray(0, bytes.length - 40), /tensor "b" .* lies outside the file/);
  });

  it('unsupported versions and big-endian files', async () => {
    const v1 = good();
    v1.writeUInt32LE(1, 4);
    await expectFormatError(v1, /GGUF version 1 is not supported/);
    const be = good();
    be.writeUInt32BE(3, 4);
    await expectFormatError(be, /big-endian/);
  });

  it('tensor data outside the file', async () => {
    const opts = basic();
    opts.tensors![1].offset = 1 << 20;
    await expectFormatError(encodeGguf(opts), /tensor "b" \(Q8_0 \[32\], 34 bytes\) lies outside the file/);
  });

  it('unknown ggml type', async () => {
    const opts = basic();
    opts.tensors![0].type = 99;
    await expectFormatError(encodeGguf(opts), /tensor "a": unknown ggml type 99/);
  });

  it('dimensions that do not match the type', async () => {
    const opts = basic();
    opts.tensors![1].ne = [48];
    await expectFormatError(encodeGguf(opts), /tensor "b": ne\[0\] = 48 is not a multiple of the Q8_0 block size 32/);
    const five = basic();
    five.tensors![0].ne = [1, 1, 1, 2, 4];
    await expectFormatError(encodeGguf(five), /tensor "a": 5 dimensions/);
    const huge = basic();
    huge.tensors![0].ne = [2 ** 30, 2 ** 30];
    await expectFormatError(encodeGguf(huge), /tensor "a".*(overflow|outside the file)/);
  });

  it('misaligned and overlapping tensors', async () => {
    const misaligned = basic();
    misaligned.tensors![1].offset = 40;
    await expectFormatError(encodeGguf(misaligned), /tensor "b": data offset 40 is not a multiple of the alignment 32/);
    const overlap = basic();
    overlap.tensors![0] = { name: 'a', type: GgmlType.F32, ne: [32], data: new Uint8Array(128) };
    overlap.tensors![1].offset = 64;
    await expectFormatError(encodeGguf(overlap), /tensors "a" and "b" overlap/);
  });

  it('bad metadata: duplicate keys, bad alignment, unknown value types, lengths past the end', async () => {
    await expectFormatError(encodeGguf({ metadata: [['k', gguf.u32(1)]], tensors: [] }).subarray(0, 30), /truncated/);
    const dup = encodeGguf({ metadata: [['kk', gguf.u32(1)], ['kx', gguf.u32(2)]] });
    dup.write('kk', dup.indexOf('kx'), 'latin1');
    await expectFormatError(dup, /metadata key "kk" appears twice/);
    await expectFormatError(encodeGguf({ ...basic(), metadata: [['general.alignment', gguf.u32(48)]] }), /"general.alignment" must be a u32 power of two/);
    await expectFormatError(encodeGguf({ ...basic(), metadata: [['general.alignment', gguf.u64(32)]] }), /"general.alignment" must be a u32/);
    const badType = encodeGguf({ metadata: [['key', gguf.u32(1)]] });
    badType.writeUInt32LE(77, badType.indexOf('key') + 3);
    await expectFormatError(badType, /metadata key "key": unknown value type 77/);
    const longString = encodeGguf({ metadata: [['key', gguf.string('abc')]] });
    longString.writeBigUInt64LE(1n << 40n, longString.indexOf('key') + 7);
    await expectFormatError(longString, /metadata key "key": string length 1099511627776 runs past the end of the file/);
    const longArray = encodeGguf({ metadata: [['key', gguf.f32s([1])]] });
    longArray.writeBigUInt64LE(1n << 33n, longArray.indexOf('key') + 11);
    await expectFormatError(longArray, /metadata key "key": array of 8589934592 FLOAT32 runs past the end of the file/);
    const counts = good();
    counts.writeBigUInt64LE(1n << 40n, 8);
    await expectFormatError(counts, /truncated or corrupt: 1 metadata entries and 1099511627776 tensor infos cannot fit/);
  });

  it('a missing file', async () => {
    await expect(openGguf(join(dir, 'nope.gguf'))).rejects.toThrow(/nope.gguf: cannot open GGUF file/);
  });
});

// Weight formats on the CPU: f16 rounding, ggml's Q8_0 / Q4_0 reference quantisation on hand-computed
// blocks, GGUF raw-data packing, plane layout, and the binding-size refusal. No GPU needed.
import { describe, expect, it } from 'vitest';
import {
  checkWeightFits,
  dequantize,
  f16BitsToF32,
  f32ToF16Bits,
  ggufBytes,
  packF16,
  packF32,
  packGguf,
  packWeight,
  planeWords,
  quantizeQ4_0,
  quantizeQ8_0,
  type HostWeight,
} from '../kernels/weights.ts';
import { ShapeError } from '../src/errors.ts';
import { compare, randomF32 } from './support/reference.ts';

const bytes = (plane: Uint32Array) => new Uint8Array(plane.buffer, plane.byteOffset, plane.byteLength);
const halves = (plane: Uint32Array) => new Uint16Array(plane.buffer, plane.byteOffset, plane.length * 2);

describe('f16 conversion', () => {
  it('round-trips every finite f16 and rounds midpoints to even', () => {
    for (let bits = 0; bits < 0x10000; bits++) {
      if ((bits & 0x7c00) === 0x7c00) continue; // inf / NaN
      const value = f16BitsToF32(bits);
      expect(f32ToF16Bits(value)).toBe(bits);
      // Midpoint to the next magnitude: ties go to the even mantissa.
      const next = bits + 1;
      if ((next & 0x7c00) === 0x7c00 || (bits & 0x7fff) === 0x7fff) continue;
      const mid = (value + f16BitsToF32(next)) / 2;
      if (Math.fround(mid) !== mid) continue; // every f16 midpoint is an f32, but be explicit
      expect(f32ToF16Bits(mid)).toBe(bits & 1 ? next : bits);
    }
  });

  it('hand-picked values', () => {
    expect(f32ToF16Bits(1)).toBe(0x3c00);
    expect(f32ToF16Bits(-2)).toBe(0xc000);
    expect(f32ToF16Bits(65504)).toBe(0x7bff);
    expect(f32ToF16Bits(65519)).toBe(0x7bff); // below the midpoint to 65536
    expect(f32ToF16Bits(65520)).toBe(0x7c00); // midpoint, ties to even = inf
    expect(f32ToF16Bits(2 ** -24)).toBe(0x0001);
    expect(f32ToF16Bits(2 ** -25)).toBe(0x0000); // tie to even (0)
    expect(f32ToF16Bits(Math.fround(2 ** -25 * 1.0001))).toBe(0x0001);
    expect(f32ToF16Bits(3 * 2 ** -25)).toBe(0x0002); // tie between 1 and 2 -> 2
    expect(f32ToF16Bits(1 + 2 ** -11)).toBe(0x3c00); // tie -> even
    expect(f32ToF16Bits(1 + 3 * 2 ** -11)).toBe(0x3c02);
    expect(f32ToF16Bits(1e-10)).toBe(0);
    expect(f32ToF16Bits(-0)).toBe(0x8000);
    expect(f32ToF16Bits(Infinity)).toBe(0x7c00);
    expect(f32ToF16Bits(NaN) & 0x7e00).toBe(0x7e00);
    expect(f32ToF16Bits(Math.fround(1 / 127))).toBe(0x2008);
  });
});

describe('f32 and f16 planes', () => {
  it('pad rows to a multiple of 4 with zeros and dequantise back', () => {
    const values = randomF32(3 * 5, 1);
    const w32 = packF32(3, 5, values);
    expect(w32.planes[0].length).toBe(3 * 8);
    const f = new Float32Array(w32.planes[0].buffer);
    expect(Array.from(f.subarray(5, 8))).toEqual([0, 0, 0]);
    expect(Array.from(f.subarray(8, 13))).toEqual(Array.from(values.subarray(5, 10)));
    expect(Array.from(dequantize(w32))).toEqual(Array.from(values));

    const w16 = packF16(3, 5, values);
    expect(w16.planes[0].length).toBe((3 * 8) / 2);
    expect(halves(w16.planes[0])[9]).toBe(f32ToF16Bits(values[6]));
    expect(Array.from(dequantize(w16))).toEqual(Array.from(values, (v) => f16BitsToF32(f32ToF16Bits(v))));
  });
});

describe('q8_0 (ggml quantize_row_q8_0_ref)', () => {
  it('hand-computed blocks', () => {
    const x = new Float32Array(96);
    // Block 0: amax 127 -> d = 1, id = 1; roundf rounds halves away from zero.
    x.set([-127, 126.5, -0.5, 0.5, 1.5, 2.5, -2.5, 3.4999], 0);
    // Block 1: all zero -> d = 0, q = 0.
    // Block 2: amax 1 -> d = f32(1/127) (f16 0x2008), id = f32(1 / d) = 127.
    x.set([1, 0.5, -0.5, 0.3, -1], 64);
    const w = quantizeQ8_0(1, 96, x);
    const q = new Int8Array(w.planes[0].buffer);
    expect(Array.from(q.subarray(0, 9))).toEqual([-127, 127, -1, 1, 2, 3, -3, 3, 0]);
    expect(Array.from(q.subarray(32, 64)).every((v) => v === 0)).toBe(true);
    expect(Array.from(q.subarray(64, 70))).toEqual([127, 64, -64, 38, -127, 0]);
    expect(Array.from(halves(w.planes[1]))).toEqual([0x3c00, 0x0000, 0x2008, 0]);
    const d = f16BitsToF32(0x2008);
    expect(dequantize(w)[65]).toBe(64 * d);
  });

  it('quantisation error of random rows is small', () => {
    const x = randomF32(4 * 128, 2);
    const c = compare(dequantize(quantizeQ8_0(4, 128, x)), x);
    expect(c.relL2).toBeLessThan(1e-2);
  });
});

describe('q4_0 (ggml quantize_row_q4_0_ref)', () => {
  it('hand-computed blocks', () => {
    const x = new Float32Array(128);
    // Block 0: x_j = j - 16; max = -16 -> d = 2, id = 0.5; q_j = min(15, trunc((j - 16) / 2 + 8.5)).
    for (let j = 0; j < 32; j++) x[j] = j - 16;
    // Block 1: the largest magnitude is positive: max = 8 -> d = -1, id = -1, q = trunc(8.5 - x).
    x[32 + 3] = 8;
    x[32 + 20] = -7;
    x[32 + 10] = 4;
    // Block 2: equal magnitudes, the first wins: max = -3 -> d = 0.375.
    x[64] = -3;
    x[65] = 3;
    // Block 3: zero -> d = 0.0f / -8 = -0.0f (stored as f16 0x8000, as ggml does), id = 0, q = trunc(8.5) = 8.
    const w = quantizeQ4_0(1, 128, x);
    const qs = bytes(w.planes[0]);
    const q = (block: number, j: number) => (j < 16 ? qs[block * 16 + j] & 15 : qs[block * 16 + j - 16] >> 4);
    for (let j = 0; j < 32; j++) expect(q(0, j)).toBe(Math.min(15, Math.floor((j + 1) / 2)));
    expect([q(1, 3), q(1, 20), q(1, 10), q(1, 0)]).toEqual([0, 15, 4, 8]);
    expect([q(2, 0), q(2, 1), q(2, 2)]).toEqual([0, 15, 8]); // -3 / 0.375 = -8 -> 0; 3 / 0.375 + 8.5 = 16.5 -> 15
    expect(Array.from(qs.subarray(48, 64)).every((b) => b === 0x88)).toBe(true);
    expect(Array.from(halves(w.planes[1]))).toEqual([0x4000, 0xbc00, f32ToF16Bits(0.375), 0x8000]);
    const deq = dequantize(w);
    expect(deq[0]).toBe(-16);
    expect(deq[31]).toBe(14);
    expect([deq[32 + 3], deq[32 + 20], deq[32 + 10]]).toEqual([8, -7, 4]);
  });

  it('quantisation error of random rows is bounded', () => {
    const x = randomF32(4 * 128, 3);
    const c = compare(dequantize(quantizeQ4_0(4, 128, x)), x);
    expect(c.relL2).toBeLessThan(0.15);
  });
});

describe('raw GGUF data', () => {
  it('Q8_0 and Q4_0 blocks by hand', () => {
    const q8 = new Uint8Array(34);
    q8.set([0x00, 0x38]); // d = 0.5
    q8[2] = 0x80; // -128
    q8[3] = 0x7f; // 127
    q8[33] = 0x01;
    const w8 = packGguf('q8_0', 1, 32, q8);
    const d8 = dequantize(w8);
    expect([d8[0], d8[1], d8[2], d8[31]]).toEqual([-64, 63.5, 0, 0.5]);

    const q4 = new Uint8Array(18);
    q4.set([0x00, 0x40]); // d = 2
    q4[2] = 0x1f; // byte 0: column 0 = 15, column 16 = 1
    q4[17] = 0x80; // byte 15: column 15 = 0, column 31 = 8
    const w4 = packGguf('q4_0', 1, 32, q4);
    const d4 = dequantize(w4);
    expect([d4[0], d4[16], d4[15], d4[31], d4[1]]).toEqual([14, -14, -16, 0, -16]);
    expect(w4.planes[0][0]).toBe(0x1f); // byte order kept: word 0 = bytes 0..3
  });

  it('f16 bits (Uint16Array, odd K) and unaligned f32 bytes', () => {
    const values = randomF32(3 * 5, 4);
    const bits = Uint16Array.from(values, f32ToF16Bits);
    const w16 = packGguf('f16', 3, 5, bits);
    expect(Array.from(dequantize(w16))).toEqual(Array.from(bits, f16BitsToF32));
    const raw = new Uint8Array(3 * 5 * 4 + 1);
    raw.set(new Uint8Array(values.buffer), 1);
    expect(Array.from(dequantize(packGguf('f32', 3, 5, raw.subarray(1))))).toEqual(Array.from(values));
  });

  for (const dtype of ['f32', 'f16', 'q8_0', 'q4_0'] as const) {
    it(`${dtype}: packGguf(ggufBytes(w)) reproduces the planes`, () => {
      const [rows, cols] = dtype.startsWith('q') ? [3, 64] : [3, 7];
      const w = packWeight(dtype, rows, cols, randomF32(rows * cols, 5));
      const again = packGguf(dtype, rows, cols, ggufBytes(w));
      expect(again.planes.map((p) => Array.from(p))).toEqual(w.planes.map((p) => Array.from(p)));
      expect(w.planes.map((p) => p.length)).toEqual(planeWords(dtype, rows, cols));
    });
  }

  it('odd block count pads the scales plane to a whole word', () => {
    const w = quantizeQ8_0(1, 96, randomF32(96, 6)); // 3 blocks
    expect(w.planes[1].length).toBe(2);
  });
});

describe('shape checks', () => {
  it('quant dtypes need K % 32 == 0; lengths must match', () => {
    expect(() => quantizeQ8_0(2, 48, new Float32Array(96))).toThrow(ShapeError);
    expect(() => quantizeQ4_0(2, 48, new Float32Array(96))).toThrow(/multiple of 32/);
    expect(() => packF32(2, 3, new Float32Array(5))).toThrow(/expected 6/);
    expect(() => packGguf('q4_0', 2, 32, new Uint8Array(35))).toThrow(/expected 36 bytes/);
    expect(() => packF16(0, 3, new Float32Array(0))).toThrow(/rows must be/);
  });

  it('refuses a plane over maxStorageBufferBindingSize, naming the tensor', () => {
    const w: HostWeight = packWeight('q8_0', 4, 64, randomF32(256, 7)); // quants plane: 256 bytes
    const small = { limits: { maxStorageBufferBindingSize: 128, maxBufferSize: 1 << 30 } } as const;
    expect(() => checkWeightFits(small as never, 'output.weight', w)).toThrow(/output\.weight.*quants plane is 256 bytes/);
    const enough = { limits: { maxStorageBufferBindingSize: 256, maxBufferSize: 1 << 30 } } as const;
    expect(() => checkWeightFits(enough as never, 'output.weight', w)).not.toThrow();
  });
});

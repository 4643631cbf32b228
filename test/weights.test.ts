// Weight formats on the CPU: f16 rounding, ggml's Q8_0 / Q4_0 / Q4_1 / Q5_0 / Q5_1 reference
// quantisation on hand-computed blocks, GGUF raw-data packing (Q4_1 / Q5_0 / Q5_1 and Q2_K .. Q6_K
// against ggml's dequantize_row_* transcribed here), plane layout, and the binding-size refusal.
// No GPU needed.
import { describe, expect, it } from 'vitest';
import { f16BitsToF32, f32ToF16Bits, ggufBytes, packF16, packF32, packGguf, planeWords, sliceWeightRows, type HostWeight, type WeightDtype } from '../kernels/weights.ts';
import { packWeight, quantizeQ4_0, quantizeQ4_1, quantizeQ5_0, quantizeQ5_1, quantizeQ8_0 } from '../kernels/weights-quantize.ts';
import { dequantize } from '../kernels/weights-reference.ts';
import { checkWeightFits, chunkRows } from '../kernels/weights-upload.ts';
import { ShapeError } from '../src/errors.ts';
import { compare, randomF32, rng } from './support/reference.ts';
import { handQ2KBlock, handQ3KBlock, handQ4KBlock, handQ5KBlock, handQ6KBlock, randomKQuantBytes, randomWeight } from './support/kquants.ts';

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
    expect(f32ToF16Bits(0.1)).toBe(0x2e66); // inexact: nearest
    expect(f32ToF16Bits(2 ** -14)).toBe(0x0400); // smallest normal
    expect(f32ToF16Bits(NaN) & 0x3ff).not.toBe(0); // a NaN, not infinity
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

  it('every value of random rows within half a step (amax / 254) of the input', () => {
    const x = randomF32(32 * 40, 7, 3);
    const y = dequantize(quantizeQ8_0(1, x.length, x));
    for (let b = 0; b < 40; b++) {
      const amax = Math.max(...Array.from(x.subarray(b * 32, b * 32 + 32), Math.abs));
      // d = amax / 127 is stored as f16 (relative error 2^-11): allow that on top of half a step.
      for (let i = b * 32; i < b * 32 + 32; i++) expect(Math.abs(y[i] - x[i]), `element ${i}`).toBeLessThanOrEqual((amax / 127) * 0.5 + 1e-3 * amax);
    }
    expect(compare(y, x).relL2).toBeLessThan(1e-2);
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

  it('every value of random rows within one step (amax / 8) of the input; a zero block decodes to zeros', () => {
    const x = randomF32(32 * 40, 7, 3);
    const y = dequantize(quantizeQ4_0(1, x.length, x));
    for (let b = 0; b < 40; b++) {
      const amax = Math.max(...Array.from(x.subarray(b * 32, b * 32 + 32), Math.abs));
      for (let i = b * 32; i < b * 32 + 32; i++) expect(Math.abs(y[i] - x[i]), `element ${i}`).toBeLessThanOrEqual(amax / 8 + 1e-3 * amax);
    }
    expect(compare(y, x).relL2).toBeLessThan(0.15);
    expect(dequantize(quantizeQ4_0(1, 32, new Float32Array(32))).every((v) => v === 0)).toBe(true);
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

  for (const dtype of ['f32', 'f16', 'q8_0', 'q4_0', 'q4_1', 'q5_0', 'q5_1'] as const) {
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

// ggml-quants.c's dequantize_row_q4_K and dequantize_row_q6_K, transcribed on raw block bytes with
// every float operation rounded to f32 as C does (d * sc is exact, so y = fl(d1 * q - m1)).
const fr = Math.fround;
const half = (b: Uint8Array, at: number) => f16BitsToF32(b[at] | (b[at + 1] << 8));
/** ggml's get_scale_min_k4: the 6-bit scale and min of sub-block j from a Q4_K/Q5_K scales[12]. */
const getScaleMinK4 = (j: number, q: Uint8Array): [number, number] =>
  j < 4 ? [q[j] & 63, q[j + 4] & 63] : [(q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4)];

function ggmlDequantizeQ4K(x: Uint8Array, k: number): Float32Array {
  const y = new Float32Array(k);
  let yi = 0;
  for (let i = 0; i < k / 256; i++) {
    const blk = x.subarray(i * 144, (i + 1) * 144);
    const d = half(blk, 0);
    const min = half(blk, 2);
    const scales = blk.subarray(4, 16);
    let q = 16;
    let is = 0;
    for (let j = 0; j < 256; j += 64) {
      let [sc, m] = getScaleMinK4(is + 0, scales);
      const d1 = fr(d * sc);
      const m1 = fr(min * m);
      [sc, m] = getScaleMinK4(is + 1, scales);
      const d2 = fr(d * sc);
      const m2 = fr(min * m);
      for (let l = 0; l < 32; ++l) y[yi++] = fr(fr(d1 * (blk[q + l] & 0xf)) - m1);
      for (let l = 0; l < 32; ++l) y[yi++] = fr(fr(d2 * (blk[q + l] >> 4)) - m2);
      q += 32;
      is += 2;
    }
  }
  return y;
}

function ggmlDequantizeQ6K(x: Uint8Array, k: number): Float32Array {
  const y = new Float32Array(k);
  for (let i = 0; i < k / 256; i++) {
    const blk = x.subarray(i * 210, (i + 1) * 210);
    const d = half(blk, 208);
    const scales = new Int8Array(blk.buffer, blk.byteOffset + 192, 16);
    let ql = 0;
    let qh = 128;
    let sc = 0;
    let yo = i * 256;
    for (let n = 0; n < 256; n += 128) {
      for (let l = 0; l < 32; ++l) {
        const is = Math.floor(l / 16);
        const q1 = ((blk[ql + l + 0] & 0xf) | (((blk[qh + l] >> 0) & 3) << 4)) - 32;
        const q2 = ((blk[ql + l + 32] & 0xf) | (((blk[qh + l] >> 2) & 3) << 4)) - 32;
        const q3 = ((blk[ql + l + 0] >> 4) | (((blk[qh + l] >> 4) & 3) << 4)) - 32;
        const q4 = ((blk[ql + l + 32] >> 4) | (((blk[qh + l] >> 6) & 3) << 4)) - 32;
        y[yo + l + 0] = fr(fr(d * scales[sc + is + 0]) * q1);
        y[yo + l + 32] = fr(fr(d * scales[sc + is + 2]) * q2);
        y[yo + l + 64] = fr(fr(d * scales[sc + is + 4]) * q3);
        y[yo + l + 96] = fr(fr(d * scales[sc + is + 6]) * q4);
      }
      yo += 128;
      ql += 64;
      qh += 32;
      sc += 8;
    }
  }
  return y;
}

function ggmlDequantizeQ5K(x: Uint8Array, k: number): Float32Array {
  const y = new Float32Array(k);
  let yi = 0;
  for (let i = 0; i < k / 256; i++) {
    const blk = x.subarray(i * 176, (i + 1) * 176);
    const d = half(blk, 0);
    const min = half(blk, 2);
    const scales = blk.subarray(4, 16);
    const qh = 16;
    let ql = 48;
    let is = 0;
    let u1 = 1;
    let u2 = 2;
    for (let j = 0; j < 256; j += 64) {
      let [sc, m] = getScaleMinK4(is + 0, scales);
      const d1 = fr(d * sc);
      const m1 = fr(min * m);
      [sc, m] = getScaleMinK4(is + 1, scales);
      const d2 = fr(d * sc);
      const m2 = fr(min * m);
      for (let l = 0; l < 32; ++l) y[yi++] = fr(fr(d1 * ((blk[ql + l] & 0xf) + (blk[qh + l] & u1 ? 16 : 0))) - m1);
      for (let l = 0; l < 32; ++l) y[yi++] = fr(fr(d2 * ((blk[ql + l] >> 4) + (blk[qh + l] & u2 ? 16 : 0))) - m2);
      ql += 32;
      is += 2;
      u1 <<= 2;
      u2 <<= 2;
    }
  }
  return y;
}

function ggmlDequantizeQ3K(x: Uint8Array, k: number): Float32Array {
  const y = new Float32Array(k);
  let yi = 0;
  const kmask1 = 0x03030303;
  const kmask2 = 0x0f0f0f0f;
  for (let i = 0; i < k / 256; i++) {
    const blk = x.subarray(i * 110, (i + 1) * 110);
    const dAll = half(blk, 108);
    const aux = new Uint32Array(4);
    new Uint8Array(aux.buffer).set(blk.subarray(96, 108));
    const tmp = aux[2];
    aux[2] = ((aux[0] >>> 4) & kmask2) | (((tmp >>> 4) & kmask1) << 4);
    aux[3] = ((aux[1] >>> 4) & kmask2) | (((tmp >>> 6) & kmask1) << 4);
    aux[0] = (aux[0] & kmask2) | (((tmp >>> 0) & kmask1) << 4);
    aux[1] = (aux[1] & kmask2) | (((tmp >>> 2) & kmask1) << 4);
    const scales = new Int8Array(aux.buffer);
    let q = 32;
    const hm = 0;
    let m = 1;
    let is = 0;
    for (let n = 0; n < 256; n += 128) {
      let shift = 0;
      for (let j = 0; j < 4; ++j) {
        let dl = fr(dAll * (scales[is++] - 32));
        for (let l = 0; l < 16; ++l) y[yi++] = fr(dl * (((blk[q + l + 0] >> shift) & 3) - (blk[hm + l + 0] & m ? 0 : 4)));
        dl = fr(dAll * (scales[is++] - 32));
        for (let l = 0; l < 16; ++l) y[yi++] = fr(dl * (((blk[q + l + 16] >> shift) & 3) - (blk[hm + l + 16] & m ? 0 : 4)));
        shift += 2;
        m <<= 1;
      }
      q += 32;
    }
  }
  return y;
}

function ggmlDequantizeQ2K(x: Uint8Array, k: number): Float32Array {
  const y = new Float32Array(k);
  let yi = 0;
  for (let i = 0; i < k / 256; i++) {
    const blk = x.subarray(i * 84, (i + 1) * 84);
    const d = half(blk, 80);
    const min = half(blk, 82);
    let q = 16;
    let is = 0;
    for (let n = 0; n < 256; n += 128) {
      let shift = 0;
      for (let j = 0; j < 4; ++j) {
        let sc = blk[is++];
        let dl = fr(d * (sc & 0xf));
        let ml = fr(min * (sc >> 4));
        for (let l = 0; l < 16; ++l) y[yi++] = fr(fr(dl * ((blk[q + l] >> shift) & 3)) - ml);
        sc = blk[is++];
        dl = fr(d * (sc & 0xf));
        ml = fr(min * (sc >> 4));
        for (let l = 0; l < 16; ++l) y[yi++] = fr(fr(dl * ((blk[q + l + 16] >> shift) & 3)) - ml);
        shift += 2;
      }
      q += 32;
    }
  }
  return y;
}

describe('K-quants from raw GGUF blocks', () => {
  const GGML = { q2_k: ggmlDequantizeQ2K, q3_k: ggmlDequantizeQ3K, q4_k: ggmlDequantizeQ4K, q5_k: ggmlDequantizeQ5K, q6_k: ggmlDequantizeQ6K } as const;
  const BLOCK = { q2_k: 84, q3_k: 110, q4_k: 144, q5_k: 176, q6_k: 210 } as const;
  const HALVES = { q2_k: [80, 82], q3_k: [108], q4_k: [0, 2], q5_k: [0, 2], q6_k: [208] } as const;

  for (const dtype of ['q2_k', 'q3_k', 'q4_k', 'q5_k', 'q6_k'] as const) {
    it(`${dtype}: dequantize(packGguf(bytes)) equals ggml's dequantize_row_${dtype} bit for bit`, () => {
      const [rows, cols] = [3, 512];
      // Model-like blocks, and blocks of entirely random bytes with any finite f16 scales (subnormals too).
      const modelLike = randomKQuantBytes(dtype, rows, cols, 21);
      const wild = randomKQuantBytes(dtype, rows, cols, 22);
      const next = rng(23);
      for (let i = 0; i < wild.length; i++) wild[i] = Math.floor(next() * 256);
      const halves = HALVES[dtype];
      for (let b = 0; b < wild.length / BLOCK[dtype]; b++) {
        for (const h of halves) wild[b * BLOCK[dtype] + h + 1] &= 0xfb; // exponent < 31: finite
      }
      for (const bytes of [modelLike, wild]) {
        const w = packGguf(dtype, rows, cols, bytes);
        expect(Array.from(Float32Array.from(dequantize(w)))).toEqual(Array.from(GGML[dtype](bytes, rows * cols)));
        expect(Array.from(ggufBytes(w))).toEqual(Array.from(bytes));
      }
    });
  }

  it('q4_k planes: qs[128] as 32 words, the 16-byte header (d | dmin << 16, scales[12]) as 4 words', () => {
    const { block, sc, m } = handQ4KBlock();
    const two = Uint8Array.from([...block, ...block.map((b, i) => (i < 4 ? b : 255 - b))]);
    const w = packGguf('q4_k', 1, 512, two);
    expect(w.planes.map((p) => p.length)).toEqual(planeWords('q4_k', 1, 512));
    expect(planeWords('q4_k', 3, 512)).toEqual([3 * 2 * 32, 3 * 2 * 4]);
    const [quants, scales] = w.planes;
    expect(scales[0]).toBe(0x34003800);
    expect(Array.from(scales.subarray(1, 4))).toEqual([0x40c13f05, 0xff008702, 0x5af30f21]);
    expect(scales[4]).toBe(0x34003800);
    expect(quants[0]).toBe(0xc3d2e1f0); // qs[l] = l | (15 - l) << 4, little-endian
    expect(quants.length).toBe(64);
    expect(bytes(quants)[128 + 5]).toBe(255 - block[16 + 5]); // the second block's qs[5]
    expect(bytes(scales)[16 + 4]).toBe(255 - block[4]); // the second block's scales[0]
    // d * sc_j * nibble - dmin * m_j (get_scale_min_k4), chunks of 64 = low then high nibbles.
    const d = dequantize(w);
    for (let e = 0; e < 256; e++) {
      const j = e >> 5;
      const l = e & 31;
      const q = j % 2 === 0 ? l % 16 : 15 - (l % 16);
      expect(d[e], `element ${e}`).toBe(0.5 * sc[j] * q - 0.25 * m[j]);
    }
    // By hand: (sub-block, q) = (0, 0), (1, 14), (6, 3), (7, 0).
    expect([d[0], d[33], d[195], d[255]]).toEqual([-0.5, 439.25, 72.75, -13.25]);
  });

  it('q6_k planes: ql[128] then qh[64] as 48 words; scales[16] as 4 words, then d in a fifth', () => {
    const block = handQ6KBlock();
    const w = packGguf('q6_k', 1, 256, block);
    expect(w.planes.map((p) => p.length)).toEqual([48, 5]);
    expect(planeWords('q6_k', 3, 512)).toEqual([3 * 2 * 48, 3 * 2 * 5]);
    const [quants, scales] = w.planes;
    expect(Array.from(bytes(quants))).toEqual(Array.from(block.subarray(0, 192)));
    expect(scales[0]).toBe(0xfbfaf9f8); // scales[0..3] = -8, -7, -6, -5
    expect(scales[4]).toBe(0x0000b800); // d = -0.5, high half zero
    const d = dequantize(w);
    // d * scales[e / 16] * (q - 32), q from ql nibbles and qh bit pairs.
    for (let e = 0; e < 256; e++) expect(d[e], `element ${e}`).toBe(-0.5 * ((e >> 4) - 8) * ((e % 64) - 32));
    expect([d[0], d[63], d[144], d[200], d[255]]).toEqual([-128, 77.5, 8, 48, -108.5]);
  });

  it('q5_k planes: qh[32] then qs[128] as 40 words, the header as Q4_K\'s; every qh bit and both mins signs', () => {
    const { block, sc, m } = handQ5KBlock();
    // Every bit j of qh[l] (bit 4 of sub-block j's quants) is 0 for some l and 1 for others.
    for (let j = 0; j < 8; j++) {
      const bits = new Set(Array.from(block.subarray(16, 48), (b) => (b >> j) & 1));
      expect(bits.size, `qh bit ${j}`).toBe(2);
    }
    const flipped = Uint8Array.from(block, (b, i) => (i < 2 ? b : i < 4 ? [0x00, 0x34][i - 2] : 255 - b)); // dmin = +0.25
    const w = packGguf('q5_k', 1, 512, Uint8Array.from([...block, ...flipped]));
    expect(w.planes.map((p) => p.length)).toEqual([80, 8]);
    expect(planeWords('q5_k', 3, 512)).toEqual([3 * 2 * 40, 3 * 2 * 4]);
    const [quants, scales] = w.planes;
    expect(scales[0]).toBe(0xb4003800); // d = 0.5, dmin = -0.25
    expect(Array.from(scales.subarray(1, 4))).toEqual([0x40c13f05, 0xff008702, 0x5af30f21]);
    expect(scales[4]).toBe(0x34003800);
    expect(quants[0]).toBe(0x7a55300b); // qh[0..3] = 11, 48, 85, 122
    expect(quants[8]).toBe(0xc3d2e1f0); // qs[0..3]
    expect(bytes(quants)[160 + 32 + 5]).toBe(255 - block[48 + 5]); // the second block's qs[5]
    const d = dequantize(w);
    for (let e = 0; e < 256; e++) {
      const j = e >> 5;
      const l = e & 31;
      const q = (j % 2 === 0 ? l % 16 : 15 - (l % 16)) + (((block[16 + l] >> j) & 1) << 4);
      expect(d[e], `element ${e}`).toBe(0.5 * sc[j] * q + 0.25 * m[j]);
    }
    // By hand: element 0 = sub-block 0, q = 0 + 16 (qh[0] = 11 has bit 0): 0.5 * 5 * 16 + 0.25 * 2.
    expect(d[0]).toBe(40.5);
    expect(ggufBytes(w)).toEqual(Uint8Array.from([...block, ...flipped]));
  });

  it('q3_k planes: hmask[32] then qs[64] as 24 words; scales[12] as 3 words, then d in a fourth', () => {
    const { block, sc } = handQ3KBlock();
    const w = packGguf('q3_k', 1, 256, block);
    expect(w.planes.map((p) => p.length)).toEqual([24, 4]);
    expect(planeWords('q3_k', 3, 512)).toEqual([3 * 2 * 24, 3 * 2 * 4]);
    const [quants, scales] = w.planes;
    expect(Array.from(bytes(quants))).toEqual(Array.from(block.subarray(0, 96)));
    expect(Array.from(bytes(scales).subarray(0, 12))).toEqual(Array.from(block.subarray(96, 108)));
    expect(scales[3]).toBe(0x00003800); // d = 0.5, high half zero
    // Every scale field is used and both signs occur: sc_i = (5 i + 3) % 64 - 32.
    expect(sc.some((v) => v < 0) && sc.some((v) => v > 0) && sc.some((v) => v + 32 >= 48)).toBe(true);
    const d = dequantize(w);
    for (let e = 0; e < 256; e++) expect(d[e], `element ${e}`).toBe(0.5 * sc[e >> 4] * ((e % 8) - 4));
    // By hand: element 0 = sub-block 0 (scale 3 - 32), q = -4; element 255 = sub-block 15 (78 % 64 - 32), q = 3.
    expect([d[0], d[255]]).toEqual([58, -27]);
  });

  it('q2_k planes: qs[64] as 16 words; scales[16] as 4 words, then d | dmin << 16', () => {
    const block = handQ2KBlock();
    const w = packGguf('q2_k', 1, 256, block);
    expect(w.planes.map((p) => p.length)).toEqual([16, 5]);
    expect(planeWords('q2_k', 3, 512)).toEqual([3 * 2 * 16, 3 * 2 * 5]);
    const [quants, scales] = w.planes;
    expect(Array.from(bytes(quants))).toEqual(Array.from(block.subarray(16, 80)));
    expect(scales[0]).toBe(0xc3d2e1f0); // scales[0..3] = sc | m << 4 = 0 | 15 << 4, 1 | 14 << 4, ...
    expect(scales[4]).toBe(0xb8003400); // d = 0.25, dmin = -0.5
    const d = dequantize(w);
    // Sub-block s = e >> 4 has sc = s and m = 15 - s; dmin < 0, so the min adds.
    for (let e = 0; e < 256; e++) expect(d[e], `element ${e}`).toBe(0.25 * (e >> 4) * ((e >> 1) % 4) + 0.5 * (15 - (e >> 4)));
    expect(ggufBytes(w)).toEqual(block);
  });

  it('K-quants need K % 256 == 0, whole blocks, and come from GGUF only', () => {
    expect(() => packGguf('q4_k', 2, 128, new Uint8Array(144))).toThrow(/multiple of 256 \(got 128\)/);
    expect(() => planeWords('q6_k', 1, 300)).toThrow(ShapeError);
    expect(() => packGguf('q6_k', 1, 256, new Uint8Array(209))).toThrow(/expected 210 bytes/);
    expect(() => packWeight('q4_k', 1, 256, new Float32Array(256))).toThrow(/quantising f32 values to q4_k is not supported/);
    expect(() => packGguf('q5_k', 1, 128, new Uint8Array(88))).toThrow(/q5_k needs cols \(K\) to be a multiple of 256 \(got 128\)/);
    expect(() => packGguf('q5_k', 1, 256, new Uint8Array(175))).toThrow(/expected 176 bytes/);
    expect(() => packWeight('q5_k', 1, 256, new Float32Array(256))).toThrow(ShapeError);
    expect(() => packGguf('q3_k', 3, 96, new Uint8Array(110))).toThrow(/q3_k needs cols \(K\) to be a multiple of 256 \(got 96\)/);
    expect(() => packGguf('q2_k', 1, 512, new Uint8Array(84))).toThrow(/expected 168 bytes/);
    expect(() => packWeight('q2_k', 1, 256, new Float32Array(256))).toThrow(/quantising f32 values to q2_k is not supported/);
  });
});

// ggml-quants.c's dequantize_row_q4_1 / q5_0 / q5_1, transcribed on raw block bytes, f32 as in C.
const qhWord = (b: Uint8Array, at: number) => (b[at] | (b[at + 1] << 8) | (b[at + 2] << 16) | (b[at + 3] << 24)) >>> 0;

function ggmlDequantizeQ4_1(x: Uint8Array, k: number): Float32Array {
  const y = new Float32Array(k);
  for (let i = 0; i < k / 32; i++) {
    const blk = x.subarray(i * 20, (i + 1) * 20);
    const d = half(blk, 0);
    const m = half(blk, 2);
    for (let j = 0; j < 16; ++j) {
      const x0 = blk[4 + j] & 0x0f;
      const x1 = blk[4 + j] >> 4;
      y[i * 32 + j + 0] = fr(fr(x0 * d) + m);
      y[i * 32 + j + 16] = fr(fr(x1 * d) + m);
    }
  }
  return y;
}

function ggmlDequantizeQ5_0(x: Uint8Array, k: number): Float32Array {
  const y = new Float32Array(k);
  for (let i = 0; i < k / 32; i++) {
    const blk = x.subarray(i * 22, (i + 1) * 22);
    const d = half(blk, 0);
    const qh = qhWord(blk, 2);
    for (let j = 0; j < 16; ++j) {
      const xh0 = ((qh >>> (j + 0)) << 4) & 0x10;
      const xh1 = (qh >>> (j + 12)) & 0x10;
      const x0 = ((blk[6 + j] & 0x0f) | xh0) - 16;
      const x1 = ((blk[6 + j] >> 4) | xh1) - 16;
      y[i * 32 + j + 0] = fr(x0 * d);
      y[i * 32 + j + 16] = fr(x1 * d);
    }
  }
  return y;
}

function ggmlDequantizeQ5_1(x: Uint8Array, k: number): Float32Array {
  const y = new Float32Array(k);
  for (let i = 0; i < k / 32; i++) {
    const blk = x.subarray(i * 24, (i + 1) * 24);
    const d = half(blk, 0);
    const m = half(blk, 2);
    const qh = qhWord(blk, 4);
    for (let j = 0; j < 16; ++j) {
      const xh0 = ((qh >>> (j + 0)) << 4) & 0x10;
      const xh1 = (qh >>> (j + 12)) & 0x10;
      const x0 = (blk[8 + j] & 0x0f) | xh0;
      const x1 = (blk[8 + j] >> 4) | xh1;
      y[i * 32 + j + 0] = fr(fr(x0 * d) + m);
      y[i * 32 + j + 16] = fr(fr(x1 * d) + m);
    }
  }
  return y;
}

/**
 * Hand-built blocks: byte j of the nibbles = j | (15 - j) << 4 (column c < 16 has nibble c, column
 * c >= 16 nibble 31 - c), Q5's qh = 0x81f03c5a (bits 0..31 mixed; bit 31 set). Two blocks each:
 * Q4_1 d 0.5 / m -3.25, then d -0.25 / m 1.5; Q5_0 d 0.5, then d -2; Q5_1 d 0.25 / m 1.5, then
 * d 1 / m -2. Returns the raw GGUF bytes of the two blocks.
 */
function handBlocks32(dtype: 'q4_1' | 'q5_0' | 'q5_1'): Uint8Array {
  const headers = {
    q4_1: [[0x00, 0x38, 0x80, 0xc2], [0x00, 0xb4, 0x00, 0x3e]],
    q5_0: [[0x00, 0x38], [0x00, 0xc0]],
    q5_1: [[0x00, 0x34, 0x00, 0x3e], [0x00, 0x3c, 0x00, 0xc0]],
  }[dtype];
  const blocks = headers.map((header) => {
    const qh = dtype === 'q4_1' ? [] : [0x5a, 0x3c, 0xf0, 0x81];
    return [...header, ...qh, ...Array.from({ length: 16 }, (_, j) => j | ((15 - j) << 4))];
  });
  return Uint8Array.from(blocks.flat());
}

describe('Q4_1, Q5_0, Q5_1 from raw GGUF blocks', () => {
  const GGML = { q4_1: ggmlDequantizeQ4_1, q5_0: ggmlDequantizeQ5_0, q5_1: ggmlDequantizeQ5_1 } as const;
  const BLOCK = { q4_1: 20, q5_0: 22, q5_1: 24 } as const;
  const SCALE_HALVES = { q4_1: [0, 2], q5_0: [0], q5_1: [0, 2] } as const;

  for (const dtype of ['q4_1', 'q5_0', 'q5_1'] as const) {
    it(`${dtype}: dequantize(packGguf(bytes)) equals ggml's dequantize_row_${dtype} bit for bit`, () => {
      const [rows, cols] = [3, 96];
      // Hand-built blocks, quantised random floats, and entirely random bytes with any finite f16
      // d and m (subnormals, both signs).
      const quantised = ggufBytes(packWeight(dtype, rows, cols, randomF32(rows * cols, 31)));
      const wild = Uint8Array.from(randomF32(quantised.length, 32), (v) => Math.floor((v + 1) * 128) & 255);
      for (let b = 0; b < wild.length / BLOCK[dtype]; b++) {
        for (const h of SCALE_HALVES[dtype]) wild[b * BLOCK[dtype] + h + 1] &= 0xfb; // exponent < 31: finite
      }
      for (const [r, c, raw] of [[1, 64, handBlocks32(dtype)], [rows, cols, quantised], [rows, cols, wild]] as const) {
        const w = packGguf(dtype, r, c, raw);
        expect(Array.from(Float32Array.from(dequantize(w)))).toEqual(Array.from(GGML[dtype](raw, r * c)));
        expect(Array.from(ggufBytes(w))).toEqual(Array.from(raw));
      }
    });
  }

  it('q4_1 planes: the nibbles as 4 words (as q4_0), d | m << 16 as one word per block', () => {
    const raw = handBlocks32('q4_1');
    const w = packGguf('q4_1', 1, 64, raw);
    expect(w.planes.map((p) => p.length)).toEqual([8, 2]);
    expect(planeWords('q4_1', 3, 96)).toEqual([3 * 3 * 4, 3 * 3]);
    expect(Array.from(w.planes[1])).toEqual([0xc2803800, 0x3e00b400]);
    expect(w.planes[0][0]).toBe(0xc3d2e1f0);
    const d = dequantize(w);
    // Block 0: nibble * 0.5 - 3.25 (negative m); block 1: nibble * -0.25 + 1.5 (positive m, negative d).
    expect([d[0], d[5], d[15], d[16], d[31]]).toEqual([-3.25, -0.75, 4.25, 4.25, -3.25]);
    expect([d[32], d[47], d[63]]).toEqual([1.5, -2.25, 1.5]);
  });

  it('q5_0 planes: qh then the nibbles as 5 words, d two per word; bit 4 from qh bit j', () => {
    const raw = handBlocks32('q5_0');
    const w = packGguf('q5_0', 1, 64, raw);
    expect(w.planes.map((p) => p.length)).toEqual([10, 1]);
    expect(planeWords('q5_0', 3, 96)).toEqual([3 * 3 * 5, 5]);
    expect(w.planes[0][0]).toBe(0x81f03c5a);
    expect(w.planes[0][1]).toBe(0xc3d2e1f0);
    expect(halves(w.planes[1])[1]).toBe(0xc000);
    const d = dequantize(w);
    // Column 0: q 0; 1: 1 + 16 (bit 1 set); 16: 15; 20: 11 + 16 (bit 20 set); 31: 0 + 16 (bit 31 set).
    expect([d[0], d[1], d[16], d[20], d[31]]).toEqual([-8, 0.5, -0.5, 5.5, 0]);
    expect([d[32], d[33], d[63]]).toEqual([32, -2, -0]);
  });

  it('q5_1 planes: qh then the nibbles as 5 words, d | m << 16 as one word per block', () => {
    const raw = handBlocks32('q5_1');
    const w = packGguf('q5_1', 1, 64, raw);
    expect(w.planes.map((p) => p.length)).toEqual([10, 2]);
    expect(planeWords('q5_1', 3, 160)).toEqual([3 * 5 * 5, 3 * 5]);
    expect(Array.from(w.planes[1])).toEqual([0x3e003400, 0xc0003c00]);
    expect(Array.from(bytes(w.planes[0]).subarray(20, 24))).toEqual([0x5a, 0x3c, 0xf0, 0x81]);
    const d = dequantize(w);
    expect([d[0], d[1], d[16], d[20], d[31]]).toEqual([1.5, 5.75, 5.25, 8.25, 5.5]);
    expect([d[32], d[33], d[63]]).toEqual([-2, 15, 14]);
  });
});

describe('q4_1, q5_0, q5_1 (ggml quantize_row_*_ref)', () => {
  it('q4_1: d = (max - min) / 15, m = min, q = min(15, trunc((x - min) / d + 0.5))', () => {
    const x = new Float32Array(96);
    // Block 0: x_j = j % 16 - 3: min -3, max 12 -> d = 1, q_j = j % 16, exact.
    for (let j = 0; j < 32; j++) x[j] = (j % 16) - 3;
    // Block 1: all 2.5 -> d = 0, id = 0, q = 0, m = 2.5 (a positive min).
    x.fill(2.5, 32, 64);
    // Block 2: min 0, max 15 -> d = 1; 0.49 -> 0, 0.5 -> 1 (half rounds up), 14.5 -> 15.
    x.set([0, 15, 0.49, 0.5, 14.5, 7.25], 64);
    const w = quantizeQ4_1(1, 96, x);
    expect(Array.from(w.planes[1])).toEqual([0xc2003c00, 0x41000000, 0x00003c00]);
    const deq = dequantize(w);
    expect(Array.from(deq.subarray(0, 32))).toEqual(Array.from(x.subarray(0, 32)));
    expect(deq.subarray(32, 64).every((v) => v === 2.5)).toBe(true);
    expect(Array.from(deq.subarray(64, 70))).toEqual([0, 15, 0, 1, 15, 7]);
  });

  it('q5_0: d = max / -16, q = min(31, trunc(x / d + 16.5)), bit 4 into qh', () => {
    const x = new Float32Array(64);
    // Block 0: x_j = j - 16: max = -16 -> d = 1, q_j = j, exact.
    for (let j = 0; j < 32; j++) x[j] = j - 16;
    // Block 1: the largest magnitude is positive: max = 16 -> d = -1; -15.9 -> trunc(32.4) = 32 -> 31.
    x.set([1, 16, -15.9, -3.5], 32);
    const w = quantizeQ5_0(1, 64, x);
    expect(w.planes[0][0]).toBe(0xffff0000); // q_j >= 16 exactly for j >= 16
    expect(Array.from(halves(w.planes[1]))).toEqual([0x3c00, 0xbc00]);
    const deq = dequantize(w);
    expect(Array.from(deq.subarray(0, 32))).toEqual(Array.from(x.subarray(0, 32)));
    expect(Array.from(deq.subarray(32, 37))).toEqual([1, 16, -15, -4, -0]); // -3.5 -> trunc(20) = 20 -> -4
  });

  it('q5_1: d = (max - min) / 31, m = min, q = trunc((x - min) / d + 0.5)', () => {
    const x = new Float32Array(64);
    // Block 0: x_j = j / 4 + 1: min 1, max 8.75 -> d = 0.25, q_j = j, exact.
    for (let j = 0; j < 32; j++) x[j] = j / 4 + 1;
    // Block 1: min -2, max 29 -> d = 1; 0.49 -> 2 (q 2), -1.5 -> q 1 (half up).
    x.fill(-2, 32, 64);
    x.set([29, 0.49, -1.5], 32);
    const w = quantizeQ5_1(1, 64, x);
    expect(Array.from(w.planes[1])).toEqual([0x3c003400, 0xc0003c00]);
    expect(w.planes[0][0]).toBe(0xffff0000);
    const deq = dequantize(w);
    expect(Array.from(deq.subarray(0, 32))).toEqual(Array.from(x.subarray(0, 32)));
    expect(Array.from(deq.subarray(32, 36))).toEqual([29, 0, -1, -2]);
  });

  it('quantisation error of random rows is bounded', () => {
    const x = randomF32(4 * 128, 3);
    const bound = { q4_1: 0.1, q5_0: 0.05, q5_1: 0.05 } as const;
    for (const dtype of ['q4_1', 'q5_0', 'q5_1'] as const) {
      expect(compare(dequantize(packWeight(dtype, 4, 128, x)), x).relL2, dtype).toBeLessThan(bound[dtype]);
    }
  });

  it('need K % 32 == 0 and whole blocks', () => {
    expect(() => quantizeQ4_1(2, 48, new Float32Array(96))).toThrow(/q4_1 needs cols \(K\) to be a multiple of 32 \(got 48\)/);
    expect(() => quantizeQ5_0(2, 48, new Float32Array(96))).toThrow(ShapeError);
    expect(() => quantizeQ5_1(1, 32, new Float32Array(31))).toThrow(/expected 32 values/);
    expect(() => packGguf('q5_0', 2, 48, new Uint8Array(66))).toThrow(/q5_0 needs cols \(K\) to be a multiple of 32 \(got 48\)/);
    expect(() => packGguf('q5_1', 1, 32, new Uint8Array(23))).toThrow(/expected 24 bytes/);
    expect(() => planeWords('q4_1', 1, 20)).toThrow(ShapeError);
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

describe('row chunks', () => {
  // K chosen so rows do not start on a convenient boundary: f32/f16 rows padded (53 -> 56),
  // Q8_0/Q4_0 with 3 blocks per row (odd, so an odd first row starts mid-word in the scales).
  // Q5_0 too (f16 scales two per word); Q4_1 / Q5_1 with one scale word per block, K = 160 (5 blocks).
  const SHAPES: Record<WeightDtype, number> = {
    f32: 53, f16: 53, q8_0: 96, q4_0: 96, q4_1: 96, q5_0: 96, q5_1: 160, q2_k: 256, q3_k: 512, q4_k: 512, q5_k: 256, q6_k: 256,
  };
  const host = (dtype: WeightDtype, rows: number, cols: number): HostWeight => randomWeight(dtype, rows, cols, 5);

  for (const [dtype, K] of Object.entries(SHAPES) as Array<[WeightDtype, number]>) {
    it(`${dtype}: any row range of the planes decodes to the same rows (N=37, K=${K})`, () => {
      const N = 37;
      const w = host(dtype, N, K);
      const whole = dequantize(w);
      for (const [first, rows] of [[0, 13], [13, 12], [25, 12], [1, 1], [36, 1], [7, 30], [0, 37]]) {
        const part = sliceWeightRows(w, first, rows);
        expect(part.planes.map((p) => p.length)).toEqual(planeWords(dtype, rows, K));
        expect(Array.from(dequantize(part))).toEqual(Array.from(whole.subarray(first * K, (first + rows) * K)));
      }
      expect(() => sliceWeightRows(w, 30, 8)).toThrow(/rows 30\.\.37 are outside 0\.\.36/);
    });
  }

  it('chunkRows: fewest chunks within the limit, balanced, larger first', () => {
    // f32 K=53: 224 bytes a row. 13 rows = 2912 bytes.
    expect(chunkRows('w', 'f32', 37, 53, 2912)).toEqual([13, 12, 12]);
    expect(chunkRows('w', 'f32', 37, 53, 2911)).toEqual([10, 9, 9, 9]);
    expect(chunkRows('w', 'f32', 37, 53, 37 * 224)).toEqual([37]);
    expect(chunkRows('w', 'f32', 37, 53, 224)).toHaveLength(37);
    // Q8_0 K=96: quants 96 bytes a row, scales ceil(3 rows / 2) words: the quants plane decides.
    expect(chunkRows('w', 'q8_0', 37, 96, 13 * 96)).toEqual([13, 12, 12]);
    // Tiny weights still get 16-byte buffers: a limit under 16 bytes fits nothing.
    expect(() => chunkRows('output.weight', 'f32', 2, 1, 15)).toThrow(/output\.weight.*one row needs 16 bytes/);
    expect(() => chunkRows('w', 'f32', 2, 53, 0)).toThrow(/chunk limit must be an integer >= 1/);
  });
});

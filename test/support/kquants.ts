// Random valid GGUF K-quant data for tests: ggml's Q2_K .. Q6_K quantisers are not
// reimplemented here (kernels/weights.ts only reads K-quants), so tests fill blocks with random quant
// and scale bytes and a finite f16 super-block scale, and use the dequantised blocks as the exact
// weights. randomWeight gives any dtype: these for the K-quants, ggml's reference quantisers of
// random floats for the others.
import { f32ToF16Bits, GGUF_BLOCK_BYTES, isKQuantDtype, K_QUANT_BLOCK, packGguf, type HostWeight, type KQuantDtype, type WeightDtype } from '../../kernels/weights.ts';
import { packWeight } from '../../kernels/weights-quantize.ts';
import { randomF32, rng } from './reference.ts';

export type { KQuantDtype };

// Standard deviation of a dequantised value in units of d, for uniformly random bytes:
// Q4_K with dmin = 7.5 d (so a sub-block's mean d (sc * 7.5 - 7.5 m) is zero on average):
//   var(sc q) + var(7.5 m) = 40865 + 19195 -> 245; Q5_K likewise with dmin = 15.5 d:
//   var(sc q) + var(15.5 m) = 195666 + 81985 -> 527; Q2_K with dmin = 1.5 d: var(sc q) +
//   var(1.5 m) = 145 + 48 -> 13.9; Q6_K: sqrt(E[sc^2] E[(q - 32)^2]) = 1366; Q3_K:
//   sqrt(E[(sc - 32)^2] E[(q - 4)^2]) = 43.3.
const STD_IN_D = { q2_k: 13.9, q3_k: 43.3, q4_k: 245, q5_k: 527, q6_k: 1366 } as const;

/** Mean of a uniformly random Q2_K / Q4_K / Q5_K quant: dmin = MEAN_Q d centres the values. */
const MEAN_Q = { q2_k: 1.5, q4_k: 7.5, q5_k: 15.5 } as const;

/** Byte offsets of d and (Q2_K, Q4_K, Q5_K) dmin in a block. */
const SCALE_AT: Record<KQuantDtype, [number, number?]> = {
  q2_k: [80, 82],
  q3_k: [108],
  q4_k: [0, 2],
  q5_k: [0, 2],
  q6_k: [208],
};

/**
 * `rows` x `cols` of random blocks of `dtype` in GGUF layout (cols % 256 == 0): quants, 4-bit
 * scales/mins (Q2_K), 6-bit scales (Q3_K) or scales/mins (Q4_K, Q5_K) and int8 scales (Q6_K)
 * uniformly random bytes; with a min (Q2_K, Q4_K, Q5_K) d > 0 and dmin ~ 1.5 d / 7.5 d / 15.5 d
 * (both positive, as ggml writes them), else (Q3_K, Q6_K) d of either sign; sized so the values
 * have about standard deviation `std` (each block's scale varies by +-25 %).
 */
export function randomKQuantBytes(dtype: KQuantDtype, rows: number, cols: number, seed: number, std = 0.5): Uint8Array {
  if (cols % K_QUANT_BLOCK !== 0) throw new RangeError(`${dtype} needs cols % 256 == 0 (got ${cols})`);
  const next = rng(seed);
  const blockBytes = GGUF_BLOCK_BYTES[dtype];
  const blocks = (rows * cols) / K_QUANT_BLOCK;
  const out = new Uint8Array(blocks * blockBytes);
  for (let i = 0; i < out.length; i++) out[i] = Math.floor(next() * 256);
  const setF16 = (at: number, value: number) => {
    const bits = f32ToF16Bits(value);
    out[at] = bits & 0xff;
    out[at + 1] = bits >>> 8;
  };
  for (let b = 0; b < blocks; b++) {
    const d = (std / STD_IN_D[dtype]) * (0.75 + 0.5 * next());
    const [dAt, minAt] = SCALE_AT[dtype];
    if (dtype === 'q3_k' || dtype === 'q6_k') {
      setF16(b * blockBytes + dAt, next() < 0.5 ? -d : d);
    } else {
      setF16(b * blockBytes + dAt, d);
      setF16(b * blockBytes + minAt!, MEAN_Q[dtype] * d * (0.75 + 0.5 * next()));
    }
  }
  return out;
}

/** A packed (rows, cols) weight of random valid blocks (see randomKQuantBytes). */
export function randomKQuantWeight(dtype: KQuantDtype, rows: number, cols: number, seed: number, std = 0.5): HostWeight {
  return packGguf(dtype, rows, cols, randomKQuantBytes(dtype, rows, cols, seed, std));
}

/**
 * A packed (rows, cols) weight of `dtype` for kernel tests: random valid blocks for the K-quants
 * (randomKQuantWeight, std default 0.5), else random floats in [-std, std) (default 1) packed or
 * quantised by packWeight.
 */
export function randomWeight(dtype: WeightDtype, rows: number, cols: number, seed: number, std?: number): HostWeight {
  return isKQuantDtype(dtype) ? randomKQuantWeight(dtype, rows, cols, seed, std) : packWeight(dtype, rows, cols, randomF32(rows * cols, seed, std));
}

/** Reorder the rows of raw tensor data: row i of the result is row order[i] of `data`. */
export function permuteRowBytes(data: Uint8Array, rowBytes: number, order: ArrayLike<number>): Uint8Array {
  const out = new Uint8Array(data.length);
  for (let i = 0; i < order.length; i++) out.set(data.subarray(order[i] * rowBytes, (order[i] + 1) * rowBytes), i * rowBytes);
  return out;
}

// ---- hand-built blocks (ggml-common.h layouts) for decode checks ----

/** Q4_K: d = 0.5, dmin = 0.25, scales[12] exercising both halves of get_scale_min_k4, qs byte l of
 *  each 32-byte chunk = (l % 16) | (15 - l % 16) << 4. Returns the block and its 8 (sc, m) pairs. */
export function handQ4KBlock(): { block: Uint8Array; sc: number[]; m: number[] } {
  const block = new Uint8Array(144);
  block.set([0x00, 0x38, 0x00, 0x34]); // d = 0.5, dmin = 0.25
  // scales[0..3]: low 6 bits = sc of sub-blocks 0..3, top 2 bits = sc bits 4..5 of sub-blocks 4..7;
  // scales[4..7]: the same for the mins; scales[8..11]: sc (low nibble) and m (high nibble) bits 0..3 of 4..7.
  block.set([0x05, 0x3f, 0xc1, 0x40, 0x02, 0x87, 0x00, 0xff, 0x21, 0x0f, 0xf3, 0x5a], 4);
  for (let c = 0; c < 4; c++) for (let l = 0; l < 32; l++) block[16 + 32 * c + l] = (l % 16) | ((15 - (l % 16)) << 4);
  return { block, sc: [5, 63, 1, 0, 1, 15, 51, 26], m: [2, 7, 0, 63, 2, 32, 15, 53] };
}

/**
 * Q5_K: the Q4_K block's d = 0.5 and scales[12], dmin = -0.25 (negative: the mins then add), qh[l] =
 * (37 l + 11) & 255 so every bit j of qh (bit 4 of sub-block j's quants) is both 0 and 1 across l,
 * qs as Q4_K's. Returns the block and its 8 (sc, m) pairs.
 */
export function handQ5KBlock(): { block: Uint8Array; sc: number[]; m: number[] } {
  const q4 = handQ4KBlock();
  const block = new Uint8Array(176);
  block.set(q4.block.subarray(0, 16)); // d, dmin, scales[12]
  block.set([0x00, 0xb4], 2); // dmin = -0.25
  for (let l = 0; l < 32; l++) block[16 + l] = (37 * l + 11) & 255;
  block.set(q4.block.subarray(16), 48); // qs[128]
  return { block, sc: q4.sc, m: q4.m };
}

/**
 * Q3_K: d = 0.5; the 16 6-bit scales s_i = (5 i + 3) % 64 packed as quantize_row_q3_K_ref packs
 * them (low nibbles in scales[0..7], both halves; top 2 bits in scales[8..11], four fields each),
 * so sc_i - 32 takes both signs; 3-bit q of element e = e % 8 (low 2 bits in qs, the high bit in
 * hmask as ggml puts it). Returns the block and the 16 scales sc_i - 32.
 */
export function handQ3KBlock(): { block: Uint8Array; sc: number[] } {
  const block = new Uint8Array(110);
  const scales = Array.from({ length: 16 }, (_, i) => (5 * i + 3) % 64);
  for (let j = 0; j < 16; j++) {
    const l = scales[j];
    if (j < 8) block[96 + j] = l & 0xf;
    else block[96 + j - 8] |= (l & 0xf) << 4;
    block[96 + 8 + (j % 4)] |= (l >> 4) << (2 * Math.floor(j / 4));
  }
  block.set([0x00, 0x38], 108); // d = 0.5
  const L = Array.from({ length: 256 }, (_, e) => e % 8);
  // quantize_row_q3_K_ref: the high bit of element j goes to hmask[j % 32] bit j / 32.
  for (let j = 0; j < 256; j++) if (L[j] > 3) block[j % 32] |= 1 << Math.floor(j / 32);
  for (let j = 0; j < 256; j += 128) {
    for (let l = 0; l < 32; l++) {
      block[32 + j / 4 + l] = (L[j + l] & 3) | ((L[j + l + 32] & 3) << 2) | ((L[j + l + 64] & 3) << 4) | ((L[j + l + 96] & 3) << 6);
    }
  }
  return { block, sc: scales.map((v) => v - 32) };
}

/**
 * Q2_K: d = 0.25, dmin = -0.5 (negative: the mins then add), scales[i] = (i | (15 - i) << 4) so
 * sc_i = i and m_i = 15 - i, 2-bit q of element e = (e >> 1) % 4, packed as quantize_row_q2_K_ref
 * packs it.
 */
export function handQ2KBlock(): Uint8Array {
  const block = new Uint8Array(84);
  for (let i = 0; i < 16; i++) block[i] = i | ((15 - i) << 4);
  const L = Array.from({ length: 256 }, (_, e) => (e >> 1) % 4);
  for (let j = 0; j < 256; j += 128) {
    for (let l = 0; l < 32; l++) {
      block[16 + j / 4 + l] = L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6);
    }
  }
  block.set([0x00, 0x34, 0x00, 0xb8], 80); // d = 0.25, dmin = -0.5
  return block;
}

/** Q6_K: d = -0.5, scales[i] = i - 8, 6-bit q of element e = e % 64, packed as quantize_row_q6_K_ref packs. */
export function handQ6KBlock(): Uint8Array {
  const block = new Uint8Array(210);
  const L = Array.from({ length: 256 }, (_, e) => e % 64);
  for (let j = 0; j < 256; j += 128) {
    const ql = j / 2;
    const qh = 128 + j / 4;
    for (let l = 0; l < 32; l++) {
      block[ql + l] = (L[j + l] & 0xf) | ((L[j + l + 64] & 0xf) << 4);
      block[ql + l + 32] = (L[j + l + 32] & 0xf) | ((L[j + l + 96] & 0xf) << 4);
      block[qh + l] = (L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6);
    }
  }
  for (let i = 0; i < 16; i++) block[192 + i] = (i - 8) & 0xff;
  block.set([0x00, 0xb8], 208); // d = -0.5
  return block;
}

// ---- llama.cpp's activation rounding for K-quant matmuls ----

/**
 * `x` as ggml's CPU matmul multiplies it with a K-quant weight: rounded to f32, quantised to Q8_K
 * (quantize_row_q8_K_ref: per 256, iscale = -127 / (the value of largest magnitude), q = min(127,
 * nearest_int(iscale * x)), d = 1 / iscale) and dequantised (d * q).
 */
export function roundQ8K(x: Float64Array): Float64Array {
  if (x.length % K_QUANT_BLOCK !== 0) throw new RangeError(`Q8_K needs a multiple of 256 values (got ${x.length})`);
  const fr = Math.fround;
  const out = new Float64Array(x.length);
  for (let b = 0; b < x.length; b += K_QUANT_BLOCK) {
    let amax = 0;
    let max = 0;
    for (let j = 0; j < K_QUANT_BLOCK; j++) {
      const v = fr(x[b + j]);
      if (Math.abs(v) > amax) {
        amax = Math.abs(v);
        max = v;
      }
    }
    if (amax === 0) continue;
    const iscale = fr(-127 / max);
    const d = fr(1 / iscale);
    for (let j = 0; j < K_QUANT_BLOCK; j++) {
      // nearest_int: adding 1.5 * 2^23 in f32 rounds half to even.
      const q = Math.min(127, fr(fr(iscale * fr(x[b + j])) + 12582912) - 12582912);
      out[b + j] = d * q;
    }
  }
  return out;
}

// Random valid GGUF K-quant data for tests: ggml's Q4_K / Q6_K quantisers are not reimplemented here
// (kernels/weights.ts only reads K-quants), so tests fill blocks with random quant and scale bytes and
// a finite f16 super-block scale, and use the dequantised blocks as the exact weights.
import { f32ToF16Bits, GGUF_BLOCK_BYTES, K_QUANT_BLOCK, packGguf, type HostWeight } from '../../kernels/weights.ts';
import { rng } from './reference.ts';

export type KQuantDtype = 'q4_k' | 'q6_k';

// Standard deviation of a dequantised value in units of d, for uniformly random bytes:
// Q4_K with dmin = 7.5 d (so a sub-block's mean d (sc * 7.5 - 7.5 m) is zero on average):
//   var(sc q) + var(7.5 m) = 40865 + 19195 -> 245; Q6_K: sqrt(E[sc^2] E[(q - 32)^2]) = 1366.
const STD_IN_D = { q4_k: 245, q6_k: 1366 } as const;

/**
 * `rows` x `cols` of random blocks of `dtype` in GGUF layout (cols % 256 == 0): quants, 6-bit
 * scales/mins (Q4_K) and int8 scales (Q6_K) uniformly random bytes; Q4_K d > 0 and dmin ~ 7.5 d
 * (both positive, as ggml writes them), Q6_K d of either sign; sized so the values have about
 * standard deviation `std` (each block's scale varies by +-25 %).
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
    const at = b * blockBytes;
    if (dtype === 'q4_k') {
      setF16(at, d);
      setF16(at + 2, 7.5 * d * (0.75 + 0.5 * next()));
    } else {
      setF16(at + 208, next() < 0.5 ? -d : d);
    }
  }
  return out;
}

/** A packed (rows, cols) weight of random valid blocks (see randomKQuantBytes). */
export function randomKQuantWeight(dtype: KQuantDtype, rows: number, cols: number, seed: number, std = 0.5): HostWeight {
  return packGguf(dtype, rows, cols, randomKQuantBytes(dtype, rows, cols, seed, std));
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

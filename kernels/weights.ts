// Weight formats: packing on the CPU into the 4-byte-aligned planes the shaders read, upload, and a
// float64 dequantisation reference. See shaders/weights_<dtype>.wgsl for the shader side.
//
// A weight W is (rows = N output features, cols = K input features), row-major like an HF linear
// weight (GGUF ne = [K, N], same bytes). Stored rows are Kp = K rounded up to 4 long (zeros in the
// padding) so every dtype serves W[row, k..k+3] from aligned words. Planes, in binding order:
//   f32   values  (N, Kp)      f32
//   f16   values  (N, Kp)      f16, two per u32 (low half = even column); rounded to nearest even
//   q8_0  quants  (N, K)       int8, four per u32 (column k at byte k % 4)
//         scales  (N * K/32)   f16 block scales, two per u32 (block b at half b % 2)
//   q4_0  quants  (N, K/32, 4) per block the GGUF 16 nibble bytes as 4 u32 (byte j: low nibble is
//                              column j, high nibble column j + 16; value = (nibble - 8) * d)
//         scales  as q8_0
//   q4_1  quants  as q4_0      value = nibble * d + m
//         scales  (N, K/32)    per block the GGUF header as one u32: d | m << 16 (f16)
//   q5_0  quants  (N, K/32, 5) per block the GGUF qh[4] as 1 u32 (bit j = bit 4 of column j), then
//                              the 16 nibble bytes as 4 u32 (as q4_0); value = (q - 16) * d
//         scales  as q8_0
//   q5_1  quants  as q5_0      value = q * d + m
//         scales  as q4_1
//   q2_k  quants  (N, K/256, 16) per super-block the GGUF qs[64] as 16 u32
//         scales  (N, K/256, 5)  per super-block the GGUF scales[16] (4-bit scale | 4-bit min << 4)
//                                as 4 u32, then d | dmin << 16 (f16)
//   q3_k  quants  (N, K/256, 24) per super-block the GGUF hmask[32] as 8 u32, then qs[64] as 16 u32
//         scales  (N, K/256, 4)  per super-block the GGUF scales[12] (16 packed 6-bit scales) as
//                                3 u32, then d (f16) in the low half of a fourth word (high half zero)
//   q4_k  quants  (N, K/256, 32) per super-block the GGUF qs[128] as 32 u32
//         scales  (N, K/256, 4)  per super-block the GGUF header as 4 u32: d | dmin << 16 (f16),
//                                then scales[12] (6-bit scales and mins of the 8 sub-blocks)
//   q5_k  quants  (N, K/256, 40) per super-block the GGUF qh[32] as 8 u32, then qs[128] as 32 u32
//         scales  as q4_k
//   q6_k  quants  (N, K/256, 48) per super-block the GGUF ql[128] as 32 u32, then qh[64] as 16 u32
//         scales  (N, K/256, 5)  per super-block the GGUF scales[16] (int8) as 4 u32, then d (f16)
//                                in the low half of a fifth word (high half zero)
// The 32-column formats need K % 32 == 0, the K-quants K % 256 == 0. Every plane is each GGUF block
// cut at byte boundaries (QUANT_LAYOUTS), so no value is rounded or re-encoded, and scales stay f16
// (not widened to f32): decode is memory-bound, see weights_scales.wgsl and weights_scales_k4.wgsl.
// Bytes (and bits) per weight read by the shaders, the file's own but where Q3_K / Q6_K pad:
//   q8_0 34/32 = 1.0625 B (8.5 bits)      q4_0 18/32 = 0.5625 B (4.5 bits)
//   q4_1 20/32 = 0.625 B (5 bits)         q5_0 22/32 = 0.6875 B (5.5 bits)
//   q5_1 24/32 = 0.75 B (6 bits)
//   q2_k 84/256 = 0.328 B (2.625 bits)
//   q3_k 112/256 = 0.4375 B (3.5 bits; the file's 3.4375 plus 2 bytes of padding per 256 weights,
//        2 %, so every super-block's scales start on a word)
//   q4_k 144/256 = 0.5625 B (4.5 bits)    q5_k 176/256 = 0.6875 B (5.5 bits)
//   q6_k 212/256 = 0.828 B (6.625 bits; the file's 6.5625 plus 2 bytes of padding, 1 %, likewise)
// Planes are little-endian, as WebGPU buffers are; this module assumes a little-endian host.
import type { Gpu } from '../src/gpu/device.ts';
import { createStorage, type BufferArena } from '../src/gpu/buffers.ts';
import { ShapeError } from '../src/errors.ts';

export type WeightDtype = 'f32' | 'f16' | QuantDtype;
export const WEIGHT_DTYPES: readonly WeightDtype[] = [
  'f32', 'f16', 'q8_0', 'q4_0', 'q4_1', 'q5_0', 'q5_1', 'q2_k', 'q3_k', 'q4_k', 'q5_k', 'q6_k',
];

/** The block-quantised dtypes (GGUF blocks along K). */
export type QuantDtype = 'q8_0' | 'q4_0' | 'q4_1' | 'q5_0' | 'q5_1' | KQuantDtype;

/** The K-quants: super-blocks of 256 columns. */
export type KQuantDtype = 'q2_k' | 'q3_k' | 'q4_k' | 'q5_k' | 'q6_k';

/** Columns per quant block (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1). */
export const QUANT_BLOCK = 32;

/** Columns per K-quant super-block (ggml's QK_K: Q2_K .. Q6_K). */
export const K_QUANT_BLOCK = 256;

/**
 * How one GGUF block of a quant dtype maps onto the two planes: each plane holds `stride[p]` bytes
 * per block (block b at byte b * stride[p], the plane padded to whole words), and each piece
 * [plane, from, bytes, at] copies GGUF block bytes from .. from + bytes - 1 to byte `at` of the
 * block's part of that plane. Pieces cover the block exactly once; bytes a piece leaves are zero.
 */
interface QuantLayout {
  /** Columns per block. */
  readonly columns: number;
  /** Bytes of one GGUF block. */
  readonly blockBytes: number;
  /** Bytes per block in the [quants, scales] planes. */
  readonly stride: readonly [number, number];
  readonly pieces: ReadonlyArray<readonly [plane: 0 | 1, from: number, bytes: number, at: number]>;
}

// ggml-common.h block layouts: Q8_0 = d, qs[32]; Q4_0 = d, qs[16]; Q4_1 = d, m, qs[16];
// Q5_0 = d, qh[4], qs[16]; Q5_1 = d, m, qh[4], qs[16]; Q4_K = d, dmin, scales[12], qs[128];
// Q5_K = d, dmin, scales[12], qh[32], qs[128]; Q6_K = ql[128], qh[64], scales[16], d;
// Q3_K = hmask[32], qs[64], scales[12], d; Q2_K = scales[16], qs[64], d, dmin.
const QUANT_LAYOUTS: Record<QuantDtype, QuantLayout> = {
  q8_0: { columns: 32, blockBytes: 34, stride: [32, 2], pieces: [[1, 0, 2, 0], [0, 2, 32, 0]] },
  q4_0: { columns: 32, blockBytes: 18, stride: [16, 2], pieces: [[1, 0, 2, 0], [0, 2, 16, 0]] },
  q4_1: { columns: 32, blockBytes: 20, stride: [16, 4], pieces: [[1, 0, 4, 0], [0, 4, 16, 0]] },
  q5_0: { columns: 32, blockBytes: 22, stride: [20, 2], pieces: [[1, 0, 2, 0], [0, 2, 20, 0]] },
  q5_1: { columns: 32, blockBytes: 24, stride: [20, 4], pieces: [[1, 0, 4, 0], [0, 4, 20, 0]] },
  q4_k: { columns: 256, blockBytes: 144, stride: [128, 16], pieces: [[1, 0, 16, 0], [0, 16, 128, 0]] },
  q5_k: { columns: 256, blockBytes: 176, stride: [160, 16], pieces: [[1, 0, 16, 0], [0, 16, 160, 0]] },
  q6_k: { columns: 256, blockBytes: 210, stride: [192, 20], pieces: [[0, 0, 192, 0], [1, 192, 18, 0]] },
  q3_k: { columns: 256, blockBytes: 110, stride: [96, 16], pieces: [[0, 0, 96, 0], [1, 96, 14, 0]] },
  q2_k: { columns: 256, blockBytes: 84, stride: [64, 20], pieces: [[1, 0, 16, 0], [0, 16, 64, 0], [1, 80, 4, 16]] },
};

/** Bytes of one GGUF block of each quant dtype (see QUANT_LAYOUTS for the fields). */
export const GGUF_BLOCK_BYTES = Object.fromEntries(
  Object.entries(QUANT_LAYOUTS).map(([dtype, layout]) => [dtype, layout.blockBytes]),
) as Readonly<Record<QuantDtype, number>>;

/** Columns per block of each quant dtype: K must be a multiple of it. */
export const BLOCK_COLUMNS = Object.fromEntries(
  Object.entries(QUANT_LAYOUTS).map(([dtype, layout]) => [dtype, layout.columns]),
) as Readonly<Record<QuantDtype, number>>;

/** True for the block-quantised dtypes. */
export function isQuantDtype(dtype: WeightDtype): dtype is QuantDtype {
  return Object.hasOwn(QUANT_LAYOUTS, dtype);
}

/** True for the K-quants (super-blocks of 256 columns). */
export function isKQuantDtype(dtype: WeightDtype): dtype is KQuantDtype {
  return isQuantDtype(dtype) && QUANT_LAYOUTS[dtype].columns === K_QUANT_BLOCK;
}

/** A packed weight on the CPU: planes ready to upload, in binding order. */
export interface HostWeight {
  readonly dtype: WeightDtype;
  /** N: output features. */
  readonly rows: number;
  /** K: input features. */
  readonly cols: number;
  readonly planes: readonly Uint32Array[];
}

/** A packed weight on the GPU: one storage buffer per plane, in binding order (bindings 1, 2). */
export interface PackedWeight {
  readonly label: string;
  readonly dtype: WeightDtype;
  readonly rows: number;
  readonly cols: number;
  readonly planes: readonly GPUBuffer[];
  /** Bytes of all planes (as packed, before the 16-byte minimum buffer size). */
  readonly bytes: number;
}

/** Stored row length: K rounded up to a multiple of 4. */
export function paddedCols(cols: number): number {
  return Math.ceil(cols / 4) * 4;
}

/** The WGSL module to compose with a kernel for this dtype. */
export function weightShader(dtype: WeightDtype): string {
  return `weights_${dtype}.wgsl`;
}

/** Plane names in binding order, e.g. ['quants', 'scales']. */
export function planeNames(dtype: WeightDtype): readonly string[] {
  return isQuantDtype(dtype) ? QUANT_PLANE_NAMES : VALUE_PLANE_NAMES;
}

const VALUE_PLANE_NAMES = ['values'] as const;
const QUANT_PLANE_NAMES = ['quants', 'scales'] as const;

/** The buffers for bindings 1 and 2 of a weight-composed kernel. */
export function weightBindings(weight: PackedWeight): [GPUBuffer, GPUBuffer | undefined] {
  return [weight.planes[0], weight.planes[1]];
}

function checkDims(label: string, dtype: WeightDtype, rows: number, cols: number): void {
  if (!WEIGHT_DTYPES.includes(dtype)) throw new ShapeError(`${label}: unknown weight dtype "${dtype}"`);
  for (const [name, value] of [['rows', rows], ['cols', cols]] as const) {
    if (!Number.isSafeInteger(value) || value < 1) {
      throw new ShapeError(`${label}: ${name} must be an integer >= 1 (got ${value})`);
    }
  }
  if (isQuantDtype(dtype) && cols % BLOCK_COLUMNS[dtype] !== 0) {
    throw new ShapeError(`${label}: ${dtype} needs cols (K) to be a multiple of ${BLOCK_COLUMNS[dtype]} (got ${cols})`);
  }
}

function checkLength(label: string, got: number, want: number, unit: string): void {
  if (got !== want) throw new ShapeError(`${label}: expected ${want} ${unit}, got ${got}`);
}

// ---- f16 conversion -------------------------------------------------------------------------

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** IEEE binary16 bits of `value` rounded once, to nearest even (as GGML_FP32_TO_FP16 and F16C do). */
export function f32ToF16Bits(value: number): number {
  f32Scratch[0] = value;
  const x = u32Scratch[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  const mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 | (mant >>> 13) : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e >= 1) {
    // Normal: keep 10 mantissa bits; a carry out of the mantissa bumps the exponent (to inf at the top).
    let bits = (e << 10) | (mant >>> 13);
    const rest = mant & 0x1fff;
    if (rest > 0x1000 || (rest === 0x1000 && (bits & 1) === 1)) bits++;
    return sign | bits;
  }
  if (exp === 0) return sign; // f32 subnormals are far below half the smallest f16 subnormal
  // Subnormal f16: the value in units of 2^-24 is m >> (126 - exp), m the 24-bit significand.
  const m = mant | 0x800000;
  const shift = 126 - exp;
  if (shift > 24) return sign;
  let bits = m >>> shift;
  const rest = m & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  if (rest > half || (rest === half && (bits & 1) === 1)) bits++;
  return sign | bits;
}

/** The value of IEEE binary16 bits (exact). */
export function f16BitsToF32(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exp = (bits >>> 10) & 0x1f;
  const mant = bits & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant !== 0 ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

// ---- packing from f32 values ----------------------------------------------------------------

/** f32 planes from a row-major (rows, cols) Float32Array. */
export function packF32(rows: number, cols: number, values: Float32Array): HostWeight {
  checkDims('packF32', 'f32', rows, cols);
  checkLength('packF32', values.length, rows * cols, 'values (rows * cols)');
  const kp = paddedCols(cols);
  const out = new Float32Array(rows * kp);
  if (kp === cols) out.set(values);
  else for (let r = 0; r < rows; r++) out.set(values.subarray(r * cols, (r + 1) * cols), r * kp);
  return { dtype: 'f32', rows, cols, planes: [new Uint32Array(out.buffer)] };
}

/** f16 planes (round to nearest even) from a row-major (rows, cols) Float32Array. */
export function packF16(rows: number, cols: number, values: Float32Array): HostWeight {
  checkDims('packF16', 'f16', rows, cols);
  checkLength('packF16', values.length, rows * cols, 'values (rows * cols)');
  const bits = new Uint16Array(rows * cols);
  for (let i = 0; i < bits.length; i++) bits[i] = f32ToF16Bits(values[i]);
  return f16Planes(rows, cols, bits);
}

function f16Planes(rows: number, cols: number, bits: Uint16Array): HostWeight {
  const kp = paddedCols(cols);
  const out = new Uint16Array(rows * kp);
  if (kp === cols) out.set(bits);
  else for (let r = 0; r < rows; r++) out.set(bits.subarray(r * cols, (r + 1) * cols), r * kp);
  return { dtype: 'f16', rows, cols, planes: [new Uint32Array(out.buffer)] };
}

function quantPlanes(dtype: 'q8_0' | 'q4_0', rows: number, cols: number) {
  const blocks = (rows * cols) / QUANT_BLOCK;
  const quants = new Uint32Array(dtype === 'q8_0' ? blocks * 8 : blocks * 4);
  const scales = new Uint32Array(Math.ceil(blocks / 2));
  return { blocks, quants, scales, qBytes: new Uint8Array(quants.buffer), d16: new Uint16Array(scales.buffer) };
}

/** C's roundf: half away from zero (Math.round rounds half toward +infinity). */
function roundf(x: number): number {
  return x < 0 ? -Math.floor(-x + 0.5) : Math.floor(x + 0.5);
}

/**
 * Q8_0 planes exactly as ggml's quantize_row_q8_0_ref: per block of 32, d = amax / 127,
 * id = 1 / d (0 when d = 0), q = roundf(x * id), all in f32; d stored as f16.
 */
export function quantizeQ8_0(rows: number, cols: number, values: Float32Array): HostWeight {
  checkDims('quantizeQ8_0', 'q8_0', rows, cols);
  checkLength('quantizeQ8_0', values.length, rows * cols, 'values (rows * cols)');
  const { blocks, quants, scales, qBytes, d16 } = quantPlanes('q8_0', rows, cols);
  const fr = Math.fround;
  const q8 = new Int8Array(qBytes.buffer);
  for (let b = 0; b < blocks; b++) {
    const x = b * QUANT_BLOCK;
    let amax = 0;
    for (let j = 0; j < QUANT_BLOCK; j++) amax = Math.max(amax, Math.abs(values[x + j]));
    const d = fr(amax / 127);
    const id = d !== 0 ? fr(1 / d) : 0;
    d16[b] = f32ToF16Bits(d);
    for (let j = 0; j < QUANT_BLOCK; j++) q8[x + j] = roundf(fr(values[x + j] * id));
  }
  return { dtype: 'q8_0', rows, cols, planes: [quants, scales] };
}

/**
 * Q4_0 planes exactly as ggml's quantize_row_q4_0_ref: per block of 32, max = the value of largest
 * magnitude (first one on ties), d = max / -8, id = 1 / d (0 when d = 0),
 * q = min(15, trunc(x * id + 8.5)), all in f32; d stored as f16.
 */
export function quantizeQ4_0(rows: number, cols: number, values: Float32Array): HostWeight {
  checkDims('quantizeQ4_0', 'q4_0', rows, cols);
  checkLength('quantizeQ4_0', values.length, rows * cols, 'values (rows * cols)');
  const { blocks, quants, scales, qBytes, d16 } = quantPlanes('q4_0', rows, cols);
  const fr = Math.fround;
  for (let b = 0; b < blocks; b++) {
    const x = b * QUANT_BLOCK;
    let amax = 0;
    let max = 0;
    for (let j = 0; j < QUANT_BLOCK; j++) {
      const v = values[x + j];
      if (amax < Math.abs(v)) {
        amax = Math.abs(v);
        max = v;
      }
    }
    const d = fr(max / -8);
    const id = d !== 0 ? fr(1 / d) : 0;
    d16[b] = f32ToF16Bits(d);
    const half = QUANT_BLOCK / 2;
    for (let j = 0; j < half; j++) {
      const q0 = Math.min(15, Math.trunc(fr(fr(values[x + j] * id) + 8.5)));
      const q1 = Math.min(15, Math.trunc(fr(fr(values[x + half + j] * id) + 8.5)));
      qBytes[b * half + j] = q0 | (q1 << 4);
    }
  }
  return { dtype: 'q4_0', rows, cols, planes: [quants, scales] };
}

const FLT_MAX = 3.4028234663852886e38;

/**
 * Quantise each block of 32 values (a row-major (rows, cols) Float32Array) into GGUF block bytes
 * with `encode`, then cut the blocks into planes as packGguf does.
 */
function quantizeBlocks32(
  label: string,
  dtype: 'q4_1' | 'q5_0' | 'q5_1',
  rows: number,
  cols: number,
  values: Float32Array,
  encode: (x: Float32Array, block: Uint8Array) => void,
): HostWeight {
  checkDims(label, dtype, rows, cols);
  checkLength(label, values.length, rows * cols, 'values (rows * cols)');
  const { blockBytes } = QUANT_LAYOUTS[dtype];
  const blocks = (rows * cols) / QUANT_BLOCK;
  const raw = new Uint8Array(blocks * blockBytes);
  for (let b = 0; b < blocks; b++) {
    encode(values.subarray(b * QUANT_BLOCK, (b + 1) * QUANT_BLOCK), raw.subarray(b * blockBytes, (b + 1) * blockBytes));
  }
  return cutBlocks(dtype, rows, cols, raw);
}

function setF16(block: Uint8Array, at: number, value: number): void {
  const bits = f32ToF16Bits(value);
  block[at] = bits & 0xff;
  block[at + 1] = bits >>> 8;
}

/** The smallest and largest of 32 values, from FLT_MAX / -FLT_MAX as ggml starts. */
function blockRange(x: Float32Array): [number, number] {
  let min = FLT_MAX;
  let max = -FLT_MAX;
  for (const v of x) {
    if (v < min) min = v;
    if (v > max) max = v;
  }
  return [min, max];
}

/** The value of largest magnitude (the first one on ties), as quantize_row_q4_0_ref finds it. */
function blockMax(x: Float32Array): number {
  let amax = 0;
  let max = 0;
  for (const v of x) {
    if (amax < Math.abs(v)) {
      amax = Math.abs(v);
      max = v;
    }
  }
  return max;
}

/**
 * Q4_1 planes exactly as ggml's quantize_row_q4_1_ref: per block of 32, d = (max - min) / 15,
 * id = 1 / d (0 when d = 0), q = min(15, trunc((x - min) * id + 0.5)), all in f32; d and min
 * stored as f16.
 */
export function quantizeQ4_1(rows: number, cols: number, values: Float32Array): HostWeight {
  const fr = Math.fround;
  return quantizeBlocks32('quantizeQ4_1', 'q4_1', rows, cols, values, (x, block) => {
    const [min, max] = blockRange(x);
    const d = fr(fr(max - min) / 15);
    const id = d !== 0 ? fr(1 / d) : 0;
    setF16(block, 0, d);
    setF16(block, 2, min);
    for (let j = 0; j < 16; j++) {
      const q0 = Math.min(15, Math.trunc(fr(fr(fr(x[j] - min) * id) + 0.5)));
      const q1 = Math.min(15, Math.trunc(fr(fr(fr(x[j + 16] - min) * id) + 0.5)));
      block[4 + j] = q0 | (q1 << 4);
    }
  });
}

/**
 * Store 32 five-bit quants as GGUF does: the low 4 bits as nibble bytes at `at` (q_j low, q_j+16
 * high, as Q4_0), bit 4 of q_j as bit j of the little-endian u32 qh at `qhAt`.
 */
function setQ5(block: Uint8Array, qhAt: number, at: number, q: ArrayLike<number>): void {
  let qh = 0;
  for (let j = 0; j < 16; j++) {
    block[at + j] = (q[j] & 15) | ((q[j + 16] & 15) << 4);
    qh |= ((q[j] >> 4) & 1) << j;
    qh |= ((q[j + 16] >> 4) & 1) << (j + 16);
  }
  for (let i = 0; i < 4; i++) block[qhAt + i] = (qh >>> (8 * i)) & 0xff;
}

/**
 * Q5_0 planes exactly as ggml's quantize_row_q5_0_ref: per block of 32, max = the value of largest
 * magnitude (first one on ties), d = max / -16, id = 1 / d (0 when d = 0),
 * q = min(31, trunc(x * id + 16.5)), all in f32; d stored as f16.
 */
export function quantizeQ5_0(rows: number, cols: number, values: Float32Array): HostWeight {
  const fr = Math.fround;
  const q = new Uint8Array(QUANT_BLOCK);
  return quantizeBlocks32('quantizeQ5_0', 'q5_0', rows, cols, values, (x, block) => {
    const d = fr(blockMax(x) / -16);
    const id = d !== 0 ? fr(1 / d) : 0;
    setF16(block, 0, d);
    for (let j = 0; j < QUANT_BLOCK; j++) q[j] = Math.min(31, Math.trunc(fr(fr(x[j] * id) + 16.5)));
    setQ5(block, 2, 6, q);
  });
}

/**
 * Q5_1 planes exactly as ggml's quantize_row_q5_1_ref: per block of 32, d = (max - min) / 31,
 * id = 1 / d (0 when d = 0), q = trunc((x - min) * id + 0.5), all in f32; d and min stored as f16.
 */
export function quantizeQ5_1(rows: number, cols: number, values: Float32Array): HostWeight {
  const fr = Math.fround;
  const q = new Uint8Array(QUANT_BLOCK);
  return quantizeBlocks32('quantizeQ5_1', 'q5_1', rows, cols, values, (x, block) => {
    const [min, max] = blockRange(x);
    const d = fr(fr(max - min) / 31);
    const id = d !== 0 ? fr(1 / d) : 0;
    setF16(block, 0, d);
    setF16(block, 2, min);
    for (let j = 0; j < QUANT_BLOCK; j++) q[j] = Math.trunc(fr(fr(fr(x[j] - min) * id) + 0.5));
    setQ5(block, 4, 8, q);
  });
}

/** Pack a row-major (rows, cols) Float32Array into `dtype` (rounding or quantising as above). */
export function packWeight(dtype: WeightDtype, rows: number, cols: number, values: Float32Array): HostWeight {
  switch (dtype) {
    case 'f32':
      return packF32(rows, cols, values);
    case 'f16':
      return packF16(rows, cols, values);
    case 'q8_0':
      return quantizeQ8_0(rows, cols, values);
    case 'q4_0':
      return quantizeQ4_0(rows, cols, values);
    case 'q4_1':
      return quantizeQ4_1(rows, cols, values);
    case 'q5_0':
      return quantizeQ5_0(rows, cols, values);
    case 'q5_1':
      return quantizeQ5_1(rows, cols, values);
    case 'q2_k':
    case 'q3_k':
    case 'q4_k':
    case 'q5_k':
    case 'q6_k':
      // ggml's K-quant quantisers search scales per sub-block (make_qkx2_quants, make_qx_quants);
      // this runtime only reads K-quants from GGUF files (packGguf), it does not write them.
      throw new ShapeError(`packWeight: quantising f32 values to ${dtype} is not supported (load ${dtype} weights with packGguf)`);
    default:
      throw new ShapeError(`packWeight: unknown weight dtype "${dtype as string}"`);
  }
}

// ---- raw GGUF / safetensors tensor data -----------------------------------------------------

function bytesOf(data: ArrayBufferView): Uint8Array {
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

/** Byte size of a (rows, cols) tensor's raw data in GGUF layout. */
export function ggufByteSize(dtype: WeightDtype, rows: number, cols: number): number {
  checkDims('ggufByteSize', dtype, rows, cols);
  const n = rows * cols;
  if (dtype === 'f32') return n * 4;
  if (dtype === 'f16') return n * 2;
  return (n / BLOCK_COLUMNS[dtype]) * GGUF_BLOCK_BYTES[dtype];
}

/**
 * Planes from a tensor's raw data as stored in GGUF (ne = [cols, rows]) or safetensors
 * ([rows, cols]): f32 little-endian, f16 bits, or GGUF blocks of a quant dtype (QUANT_LAYOUTS).
 * Any typed array view is read as its bytes (so raw f16 bits may come as a Uint16Array).
 */
export function packGguf(dtype: WeightDtype, rows: number, cols: number, data: ArrayBufferView): HostWeight {
  const label = `packGguf(${dtype})`;
  const bytes = bytesOf(data);
  checkLength(label, bytes.byteLength, ggufByteSize(dtype, rows, cols), `bytes for ${rows}x${cols}`);
  if (dtype === 'f32') {
    const copy = new Uint8Array(bytes); // aligned copy
    return packF32(rows, cols, new Float32Array(copy.buffer));
  }
  if (dtype === 'f16') return f16Planes(rows, cols, new Uint16Array(new Uint8Array(bytes).buffer));
  return cutBlocks(dtype, rows, cols, bytes);
}

function cutBlocks(dtype: QuantDtype, rows: number, cols: number, raw: Uint8Array): HostWeight {
  const planes = planeWords(dtype, rows, cols).map((words) => new Uint32Array(words));
  copyBlocks(dtype, (rows * cols) / QUANT_LAYOUTS[dtype].columns, raw, planes.map(bytesOf), true);
  return { dtype, rows, cols, planes };
}

/** Copy every block's pieces between raw GGUF data and the planes' bytes, either way. */
function copyBlocks(dtype: QuantDtype, blocks: number, raw: Uint8Array, planes: Uint8Array[], toPlanes: boolean): void {
  const { blockBytes, stride, pieces } = QUANT_LAYOUTS[dtype];
  // One piece at a time over all blocks keeps the inner loop tight (f16 scales are 2-byte pieces).
  for (const [plane, from, bytes, at] of pieces) {
    const [input, inStride, inAt, output, outStride, outAt] = toPlanes
      ? [raw, blockBytes, from, planes[plane], stride[plane], at]
      : [planes[plane], stride[plane], at, raw, blockBytes, from];
    if (bytes >= 64) {
      for (let b = 0; b < blocks; b++) {
        const src = b * inStride + inAt;
        output.set(input.subarray(src, src + bytes), b * outStride + outAt);
      }
    } else {
      for (let b = 0, src = inAt, dst = outAt; b < blocks; b++, src += inStride, dst += outStride) {
        for (let i = 0; i < bytes; i++) output[dst + i] = input[src + i];
      }
    }
  }
}

/** The inverse of packGguf: the weight's raw GGUF tensor data (for writing GGUF files and tests). */
export function ggufBytes(weight: HostWeight): Uint8Array {
  const { dtype, rows, cols } = weight;
  const out = new Uint8Array(ggufByteSize(dtype, rows, cols));
  if (isQuantDtype(dtype)) {
    copyBlocks(dtype, (rows * cols) / QUANT_LAYOUTS[dtype].columns, out, weight.planes.map(bytesOf), false);
    return out;
  }
  const kp = paddedCols(cols);
  const size = dtype === 'f32' ? 4 : 2;
  const plane = bytesOf(weight.planes[0]);
  for (let r = 0; r < rows; r++) {
    out.set(plane.subarray(r * kp * size, (r * kp + cols) * size), r * cols * size);
  }
  return out;
}

// ---- reference ------------------------------------------------------------------------------

/** W as float64, row-major (rows, cols), decoded from the packed planes exactly as the shaders do. */
export function dequantize(weight: HostWeight): Float64Array {
  const { dtype, rows, cols } = weight;
  const out = new Float64Array(rows * cols);
  const kp = paddedCols(cols);
  if (dtype === 'f32') {
    const values = new Float32Array(weight.planes[0].buffer, weight.planes[0].byteOffset, weight.planes[0].length);
    for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[r * cols + c] = values[r * kp + c];
    return out;
  }
  if (dtype === 'f16') {
    const p = weight.planes[0];
    const bits = new Uint16Array(p.buffer, p.byteOffset, p.length * 2);
    for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[r * cols + c] = f16BitsToF32(bits[r * kp + c]);
    return out;
  }
  if (dtype === 'q4_k' || dtype === 'q5_k') return dequantizeQ45K(weight, out);
  if (dtype === 'q6_k') return dequantizeQ6K(weight, out);
  if (dtype === 'q2_k' || dtype === 'q3_k') return dequantizeQ23K(weight, out);
  return dequantizeBlocks32(weight, out);
}

/**
 * dequantize_row_q8_0 / q4_0 / q4_1 / q5_0 / q5_1 on the planes: column j of a block of 32 is
 * q_j * d (Q8_0), (q_j - 8) * d (Q4_0), (q_j - 16) * d (Q5_0) or q_j * d + m (Q4_1, Q5_1).
 */
function dequantizeBlocks32(weight: HostWeight, out: Float64Array): Float64Array {
  const dtype = weight.dtype as 'q8_0' | 'q4_0' | 'q4_1' | 'q5_0' | 'q5_1';
  const q = bytesOf(weight.planes[0]);
  const s = bytesOf(weight.planes[1]);
  const [qStride, sStride] = QUANT_LAYOUTS[dtype].stride;
  const half = (at: number) => f16BitsToF32(s[at] | (s[at + 1] << 8));
  const five = dtype === 'q5_0' || dtype === 'q5_1';
  for (let b = 0; b < out.length / QUANT_BLOCK; b++) {
    const d = half(b * sStride);
    const m = sStride === 4 ? half(b * sStride + 2) : 0;
    const at = b * qStride;
    const x = b * QUANT_BLOCK;
    if (dtype === 'q8_0') {
      for (let j = 0; j < QUANT_BLOCK; j++) out[x + j] = ((q[at + j] << 24) >> 24) * d;
      continue;
    }
    // Q5: qh (bit j = bit 4 of column j) as the block's first word, then the nibbles as Q4's.
    const qh = five ? (q[at] | (q[at + 1] << 8) | (q[at + 2] << 16) | (q[at + 3] << 24)) >>> 0 : 0;
    const nibbles = five ? at + 4 : at;
    for (let j = 0; j < QUANT_BLOCK; j++) {
      const v = ((q[nibbles + (j & 15)] >> (j & 16 ? 4 : 0)) & 15) | (((qh >>> j) & 1) << 4);
      out[x + j] = dtype === 'q4_0' ? (v - 8) * d : dtype === 'q5_0' ? (v - 16) * d : v * d + m;
    }
  }
  return out;
}

/** ggml's get_scale_min_k4: the 6-bit scale and min of sub-block j (0..7) from scales[12]. */
function scaleMinK4(j: number, q: ArrayLike<number>, offset = 0): [number, number] {
  if (j < 4) return [q[offset + j] & 63, q[offset + j + 4] & 63];
  return [
    (q[offset + j + 4] & 0xf) | ((q[offset + j - 4] >> 6) << 4),
    (q[offset + j + 4] >> 4) | ((q[offset + j] >> 6) << 4),
  ];
}

/**
 * dequantize_row_q4_K / dequantize_row_q5_K on the planes: sub-block j of 32 is
 * d * sc_j * q - dmin * m_j, q a nibble (Q4_K) or a nibble plus bit j of qh[l] as bit 4 (Q5_K).
 */
function dequantizeQ45K(weight: HostWeight, out: Float64Array): Float64Array {
  const five = weight.dtype === 'q5_k';
  const qBytes = bytesOf(weight.planes[0]);
  const sBytes = bytesOf(weight.planes[1]);
  const header = new Uint16Array(sBytes.buffer, sBytes.byteOffset, sBytes.byteLength / 2);
  const qStride = five ? 160 : 128;
  for (let b = 0; b < out.length / K_QUANT_BLOCK; b++) {
    const d = f16BitsToF32(header[b * 8]);
    const dmin = f16BitsToF32(header[b * 8 + 1]);
    const x = b * K_QUANT_BLOCK;
    const qh = b * qStride; // Q5_K: qh[32] first, then qs[128]
    for (let j = 0; j < 8; j++) {
      const [sc, m] = scaleMinK4(j, sBytes, b * 16 + 4);
      // Sub-blocks 2c and 2c + 1 share qs[32c .. 32c + 31]: low nibbles, then high nibbles.
      const qs = b * qStride + (five ? 32 : 0) + (j >> 1) * 32;
      const shift = (j & 1) * 4;
      for (let l = 0; l < 32; l++) {
        const q = ((qBytes[qs + l] >> shift) & 15) | (five ? ((qBytes[qh + l] >> j) & 1) << 4 : 0);
        out[x + 32 * j + l] = d * sc * q - dmin * m;
      }
    }
  }
  return out;
}

/** dequantize_row_q6_K on the planes: element e of a super-block is d * scales[e / 16] * (q - 32). */
function dequantizeQ6K(weight: HostWeight, out: Float64Array): Float64Array {
  const qBytes = bytesOf(weight.planes[0]);
  const sBytes = bytesOf(weight.planes[1]);
  const sc = new Int8Array(sBytes.buffer, sBytes.byteOffset, sBytes.byteLength);
  for (let b = 0; b < out.length / K_QUANT_BLOCK; b++) {
    const ql = b * 192;
    const qh = ql + 128;
    const s = b * 20;
    const d = f16BitsToF32(sBytes[s + 16] | (sBytes[s + 17] << 8));
    for (let e = 0; e < K_QUANT_BLOCK; e++) {
      // e = 128 h + 32 g + l: ql[64 h + 32 (g & 1) + l] nibble g >> 1, qh[32 h + l] bits 2g..2g+1.
      const h = e >> 7;
      const g = (e >> 5) & 3;
      const l = e & 31;
      const low = (qBytes[ql + 64 * h + 32 * (g & 1) + l] >> (4 * (g >> 1))) & 15;
      const high = (qBytes[qh + 32 * h + l] >> (2 * g)) & 3;
      out[b * K_QUANT_BLOCK + e] = d * sc[s + (e >> 4)] * ((low | (high << 4)) - 32);
    }
  }
  return out;
}

/**
 * dequantize_row_q2_K / dequantize_row_q3_K on the planes. Element e = 128 n + 32 j + 16 h + l of a
 * super-block (n 0..1, j 0..3, h 0..1, l 0..15) has its 2 low bits at bits 2j..2j+1 of
 * qs[32 n + 16 h + l] and sub-block scale s = 8 n + 2 j + h. Q2_K: d * (sc_s & 15) * q -
 * dmin * (sc_s >> 4). Q3_K: d * (sc_s - 32) * (q - 4), plus 4 when bit 4n + j of hmask[16 h + l] is
 * set; the 6-bit sc_s is the nibble s / 8 of scales[s % 8] with bits 2 (s / 4) .. +1 of
 * scales[8 + s % 4] above it.
 */
function dequantizeQ23K(weight: HostWeight, out: Float64Array): Float64Array {
  const three = weight.dtype === 'q3_k';
  const q = bytesOf(weight.planes[0]);
  const s = bytesOf(weight.planes[1]);
  const [qStride, sStride] = QUANT_LAYOUTS[weight.dtype as 'q2_k' | 'q3_k'].stride;
  const half = (at: number) => f16BitsToF32(s[at] | (s[at + 1] << 8));
  for (let b = 0; b < out.length / K_QUANT_BLOCK; b++) {
    const qs = b * qStride + (three ? 32 : 0); // Q3_K: hmask[32] first
    const sc = b * sStride;
    const d = half(sc + (three ? 12 : 16));
    const dmin = three ? 0 : half(sc + 18);
    for (let e = 0; e < K_QUANT_BLOCK; e++) {
      const [n, j, h, l] = [e >> 7, (e >> 5) & 3, (e >> 4) & 1, e & 15];
      const sub = 8 * n + 2 * j + h;
      const low = (q[qs + 32 * n + 16 * h + l] >> (2 * j)) & 3;
      if (three) {
        const high = (q[b * qStride + 16 * h + l] >> (4 * n + j)) & 1;
        const scale = (((s[sc + (sub % 8)] >> (4 * (sub >> 3))) & 15) | (((s[sc + 8 + (sub % 4)] >> (2 * (sub >> 2))) & 3) << 4)) - 32;
        out[b * K_QUANT_BLOCK + e] = d * scale * ((low | (high << 2)) - 4);
      } else {
        out[b * K_QUANT_BLOCK + e] = d * (s[sc + sub] & 15) * low - dmin * (s[sc + sub] >> 4);
      }
    }
  }
  return out;
}

// ---- upload ---------------------------------------------------------------------------------

/** u32 words of each plane, in binding order, for a (rows, cols) weight of `dtype`. */
export function planeWords(dtype: WeightDtype, rows: number, cols: number): number[] {
  checkDims('planeWords', dtype, rows, cols);
  const kp = paddedCols(cols);
  if (dtype === 'f32') return [rows * kp];
  if (dtype === 'f16') return [(rows * kp) / 2];
  const { columns, stride } = QUANT_LAYOUTS[dtype];
  const blocks = (rows * cols) / columns;
  return stride.map((bytes) => Math.ceil((blocks * bytes) / 4));
}

/** Bytes of all planes of a host weight. */
export function weightBytes(weight: HostWeight): number {
  return weight.planes.reduce((sum, plane) => sum + plane.byteLength, 0);
}

/**
 * Throw ShapeError unless every plane fits one storage binding and one buffer on this adapter.
 * Needs only `gpu.limits`, so it can run before anything is allocated.
 */
export function checkWeightFits(gpu: Pick<Gpu, 'limits'>, label: string, weight: HostWeight): void {
  const limit = Math.min(gpu.limits.maxStorageBufferBindingSize, gpu.limits.maxBufferSize);
  planeNames(weight.dtype).forEach((name, i) => {
    const bytes = Math.max(16, weight.planes[i].byteLength);
    if (bytes > limit) {
      throw new ShapeError(
        `weight "${label}" (${weight.rows}x${weight.cols} ${weight.dtype}): its ${name} plane is ${bytes} bytes, ` +
          `over this adapter's limit of ${limit} bytes per storage binding (uploadWeightChunks splits such a weight into row chunks)`,
      );
    }
  });
}

/** Throw ShapeError unless the weight's dims are valid and each plane has the words its dtype needs. */
function checkPlanes(label: string, weight: HostWeight): void {
  checkDims(`weight "${label}"`, weight.dtype, weight.rows, weight.cols);
  const names = planeNames(weight.dtype);
  if (weight.planes.length !== names.length) {
    throw new ShapeError(`weight "${label}": ${weight.dtype} has ${names.length} plane(s), got ${weight.planes.length}`);
  }
  const want = planeWords(weight.dtype, weight.rows, weight.cols);
  weight.planes.forEach((plane, i) => {
    if (plane.length !== want[i]) {
      throw new ShapeError(`weight "${label}": ${names[i]} plane has ${plane.length} words, expected ${want[i]}`);
    }
  });
}

/**
 * Create the GPU buffers for a packed weight (named `${label}.${plane}`), through `arena` when given.
 * Refuses (ShapeError naming the tensor) a plane larger than maxStorageBufferBindingSize: a weight
 * that may be that large goes through uploadWeightChunks.
 */
export function uploadWeight(gpu: Gpu, label: string, weight: HostWeight, arena?: BufferArena): PackedWeight {
  checkPlanes(label, weight);
  checkWeightFits(gpu, label, weight);
  const names = planeNames(weight.dtype);
  const planes = weight.planes.map((plane, i) => {
    const name = `${label}.${names[i]}`;
    return arena ? arena.upload(name, plane) : createStorage(gpu, name, plane);
  });
  const { dtype, rows, cols } = weight;
  return { label, dtype, rows, cols, planes, bytes: weightBytes(weight) };
}

// ---- row chunks -----------------------------------------------------------------------------
//
// A weight whose planes exceed one storage binding (a 7B model's f16 LM head, a 128k-vocabulary
// embedding) is split at load into row chunks, each its own PackedWeight with its own buffers, and
// Linear / Embed record one dispatch per chunk. Rows are independent in every dtype: each plane is
// (N, words per row) row-major, except the f16 block scales of Q8_0 / Q4_0 / Q5_0, which pack two
// blocks per u32 across row boundaries (block b = row * K/32 + k/32 is half b % 2). A chunk whose
// first block is odd would start mid-word there, so chunk scales are repacked to start at half 0.

/** Rows firstRow .. firstRow + weight.rows - 1 of a chunked weight, uploaded as one PackedWeight. */
export interface WeightChunk {
  readonly firstRow: number;
  readonly weight: PackedWeight;
}

/** A (rows, cols) weight on the GPU as row chunks in row order (one chunk when it fits one binding). */
export interface ChunkedWeight {
  readonly label: string;
  readonly dtype: WeightDtype;
  readonly rows: number;
  readonly cols: number;
  readonly chunks: readonly WeightChunk[];
  /** Bytes of all planes of all chunks (as packed). */
  readonly bytes: number;
}

export interface UploadChunksOptions {
  /** Allocate the buffers through this arena (named `${chunk label}.${plane}`). */
  arena?: BufferArena;
  /**
   * Most bytes per plane of one chunk, below the adapter's limit (tests force small chunks with it).
   * Default: min(maxStorageBufferBindingSize, maxBufferSize).
   */
  maxChunkBytes?: number;
  /** Every chunk holds a multiple of this many rows (2 keeps interleaveRowPairs' pairs whole); default 1. */
  rowMultiple?: number;
}

/** A single-chunk view of a PackedWeight; a ChunkedWeight is returned as is. */
export function asChunked(weight: PackedWeight | ChunkedWeight): ChunkedWeight {
  if ('chunks' in weight) return weight;
  const { label, dtype, rows, cols, bytes } = weight;
  return { label, dtype, rows, cols, bytes, chunks: [{ firstRow: 0, weight }] };
}

/** Bytes of the largest plane of a (rows, cols) weight of `dtype`, as its buffer would be (>= 16). */
function largestPlaneBytes(dtype: WeightDtype, rows: number, cols: number): number {
  return Math.max(16, ...planeWords(dtype, rows, cols).map((words) => words * 4));
}

/**
 * Row counts of the chunks of a (rows, cols) `dtype` weight whose planes must each stay within
 * `limitBytes`: as few chunks as possible, balanced (sizes differ by at most one row, larger first).
 * ShapeError when not even one row fits.
 */
export function chunkRows(label: string, dtype: WeightDtype, rows: number, cols: number, limitBytes: number, rowMultiple = 1): number[] {
  checkDims(`weight "${label}"`, dtype, rows, cols);
  if (!Number.isSafeInteger(limitBytes) || limitBytes < 1) {
    throw new ShapeError(`weight "${label}": chunk limit must be an integer >= 1 byte (got ${limitBytes})`);
  }
  if (!Number.isSafeInteger(rowMultiple) || rowMultiple < 1 || rows % rowMultiple !== 0) {
    throw new ShapeError(`weight "${label}": ${rows} rows are not a whole number of groups of ${rowMultiple} rows`);
  }
  const unit = rowMultiple;
  if (largestPlaneBytes(dtype, unit, cols) > limitBytes) {
    throw new ShapeError(
      `weight "${label}" (${rows}x${cols} ${dtype}): ${unit === 1 ? 'one row needs' : `${unit} rows need`} ` +
        `${largestPlaneBytes(dtype, unit, cols)} bytes in a plane, over the limit of ${limitBytes} bytes per storage binding`,
    );
  }
  // Largest count of row groups that fits (plane sizes grow with rows; binary search keeps this exact
  // for the rounded-up scale planes too).
  const groups = rows / unit;
  let lo = 1;
  let hi = groups;
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (largestPlaneBytes(dtype, mid * unit, cols) <= limitBytes) lo = mid;
    else hi = mid - 1;
  }
  const count = Math.ceil(groups / lo);
  const base = Math.floor(groups / count);
  return Array.from({ length: count }, (_, i) => (base + (i < groups % count ? 1 : 0)) * unit);
}

/**
 * One weight whose rows alternate between `a` and `b` (row 2i is a's row i, row 2i + 1 is b's): the
 * gate and up projections of a gated MLP, so one matvec reads each output's two rows together
 * (MatvecFusion.glu) and any even row chunk holds whole pairs.
 */
export function interleaveRowPairs(label: string, a: HostWeight, b: HostWeight): HostWeight {
  if (a.dtype !== b.dtype || a.rows !== b.rows || a.cols !== b.cols) {
    throw new ShapeError(`${label}: cannot interleave ${a.dtype} [${a.rows}, ${a.cols}] with ${b.dtype} [${b.rows}, ${b.cols}]`);
  }
  const rowBytes = ggufByteSize(a.dtype, 1, a.cols);
  const [left, right] = [ggufBytes(a), ggufBytes(b)];
  const all = new Uint8Array(2 * a.rows * rowBytes);
  for (let r = 0; r < a.rows; r++) {
    all.set(left.subarray(r * rowBytes, (r + 1) * rowBytes), 2 * r * rowBytes);
    all.set(right.subarray(r * rowBytes, (r + 1) * rowBytes), (2 * r + 1) * rowBytes);
  }
  return packGguf(a.dtype, 2 * a.rows, a.cols, all);
}

/** Rows firstRow .. firstRow + rows - 1 of a host weight (views of its planes where rows align). */
export function sliceWeightRows(weight: HostWeight, firstRow: number, rows: number): HostWeight {
  const { dtype, cols } = weight;
  if (!Number.isSafeInteger(firstRow) || !Number.isSafeInteger(rows) || firstRow < 0 || rows < 1 || firstRow + rows > weight.rows) {
    throw new ShapeError(`sliceWeightRows: rows ${firstRow}..${firstRow + rows - 1} are outside 0..${weight.rows - 1}`);
  }
  if (!isQuantDtype(dtype)) {
    const perRow = planeWords(dtype, 1, cols)[0];
    return { dtype, rows, cols, planes: [weight.planes[0].subarray(firstRow * perRow, (firstRow + rows) * perRow)] };
  }
  const { columns, stride } = QUANT_LAYOUTS[dtype];
  const planes = weight.planes.map((plane, i) => {
    const rowBytes = (cols / columns) * stride[i];
    if (rowBytes % 4 === 0) return plane.subarray((firstRow * rowBytes) / 4, ((firstRow + rows) * rowBytes) / 4);
    // f16 scales two per u32 across rows (an odd number of blocks per row): copy the chunk's bytes
    // so its first block is half 0.
    const out = new Uint32Array(Math.ceil((rows * rowBytes) / 4));
    bytesOf(out).set(bytesOf(plane).subarray(firstRow * rowBytes, (firstRow + rows) * rowBytes));
    return out;
  });
  return { dtype, rows, cols, planes };
}

/**
 * Upload a host weight as row chunks small enough for one storage binding each (see chunkRows):
 * one chunk labelled `label` when it fits (buffers named as uploadWeight names them), else chunks
 * labelled `${label}#0`, `${label}#1`, ...
 */
export function uploadWeightChunks(gpu: Gpu, label: string, weight: HostWeight, options: UploadChunksOptions = {}): ChunkedWeight {
  const { arena, maxChunkBytes, rowMultiple = 1 } = options;
  const adapterLimit = Math.min(gpu.limits.maxStorageBufferBindingSize, gpu.limits.maxBufferSize);
  if (maxChunkBytes !== undefined && (!Number.isSafeInteger(maxChunkBytes) || maxChunkBytes < 1)) {
    throw new ShapeError(`weight "${label}": maxChunkBytes must be an integer >= 1 (got ${maxChunkBytes})`);
  }
  const limit = Math.min(adapterLimit, maxChunkBytes ?? adapterLimit);
  checkPlanes(label, weight);
  const sizes = chunkRows(label, weight.dtype, weight.rows, weight.cols, limit, rowMultiple);
  if (sizes.length === 1) return asChunked(uploadWeight(gpu, label, weight, arena));
  const chunks: WeightChunk[] = [];
  let firstRow = 0;
  for (const [i, rows] of sizes.entries()) {
    const part = sliceWeightRows(weight, firstRow, rows);
    chunks.push({ firstRow, weight: uploadWeight(gpu, `${label}#${i}`, part, arena) });
    firstRow += rows;
  }
  const { dtype, rows, cols } = weight;
  return { label, dtype, rows, cols, chunks, bytes: chunks.reduce((sum, c) => sum + c.weight.bytes, 0) };
}

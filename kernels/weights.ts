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
//   q4_k  quants  (N, K/256, 32) per super-block the GGUF qs[128] as 32 u32
//         scales  (N, K/256, 4)  per super-block the GGUF header as 4 u32: d | dmin << 16 (f16),
//                                then scales[12] (6-bit scales and mins of the 8 sub-blocks)
//   q6_k  quants  (N, K/256, 48) per super-block the GGUF ql[128] as 32 u32, then qh[64] as 16 u32
//         scales  (N, K/256, 5)  per super-block the GGUF scales[16] (int8) as 4 u32, then d (f16)
//                                in the low half of a fifth word (high half zero)
// Q8_0 and Q4_0 need K % 32 == 0, Q4_K and Q6_K K % 256 == 0. Scales stay f16 (not widened to
// f32): see weights_scales.wgsl. The K-quant planes are each GGUF block cut in two at a byte
// boundary, so no value is rounded or re-encoded; bytes per weight read by the shaders:
//   q4_k  (128 + 16) / 256 = 0.5625 B = 4.5 bits, exactly the file's
//   q6_k  (192 + 20) / 256 = 0.828 B = 6.625 bits, the file's 6.5625 plus 2 bytes of padding per
//         256 weights (1%) so every super-block's scales start on a word
// See weights_q4_k.wgsl / weights_q6_k.wgsl for why the scales are not widened either.
// Planes are little-endian, as WebGPU buffers are; this module assumes a little-endian host.
import type { Gpu } from '../src/gpu/device.ts';
import { createStorage, type BufferArena } from '../src/gpu/buffers.ts';
import { ShapeError } from '../src/errors.ts';

export type WeightDtype = 'f32' | 'f16' | 'q8_0' | 'q4_0' | 'q4_k' | 'q6_k';
export const WEIGHT_DTYPES: readonly WeightDtype[] = ['f32', 'f16', 'q8_0', 'q4_0', 'q4_k', 'q6_k'];

/** The block-quantised dtypes (GGUF blocks along K). */
export type QuantDtype = 'q8_0' | 'q4_0' | 'q4_k' | 'q6_k';

/** Columns per quant block (Q8_0, Q4_0). */
export const QUANT_BLOCK = 32;

/** Columns per K-quant super-block (ggml's QK_K: Q4_K, Q6_K). */
export const K_QUANT_BLOCK = 256;

/**
 * Bytes of one GGUF block: Q8_0 = f16 d + 32 int8; Q4_0 = f16 d + 16 bytes of nibbles;
 * Q4_K = f16 d, f16 dmin, 12 bytes of scales, 128 of nibbles; Q6_K = 128 bytes ql, 64 qh,
 * 16 int8 scales, f16 d.
 */
export const GGUF_BLOCK_BYTES = { q8_0: 34, q4_0: 18, q4_k: 144, q6_k: 210 } as const;

/** Columns per block of each quant dtype: K must be a multiple of it. */
export const BLOCK_COLUMNS = { q8_0: QUANT_BLOCK, q4_0: QUANT_BLOCK, q4_k: K_QUANT_BLOCK, q6_k: K_QUANT_BLOCK } as const;

/** u32 words per block in the quants and scales planes of the K-quants. */
const K_QUANT_WORDS = { q4_k: [32, 4], q6_k: [48, 5] } as const;

const PLANE_NAMES: Record<WeightDtype, readonly string[]> = {
  f32: ['values'],
  f16: ['values'],
  q8_0: ['quants', 'scales'],
  q4_0: ['quants', 'scales'],
  q4_k: ['quants', 'scales'],
  q6_k: ['quants', 'scales'],
};

/** True for the block-quantised dtypes (q8_0, q4_0, q4_k, q6_k). */
export function isQuantDtype(dtype: WeightDtype): dtype is QuantDtype {
  return Object.hasOwn(BLOCK_COLUMNS, dtype);
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
  return PLANE_NAMES[dtype];
}

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
    case 'q4_k':
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
 * ([rows, cols]): f32 little-endian, f16 bits, Q8_0 34-byte, Q4_0 18-byte, Q4_K 144-byte or
 * Q6_K 210-byte blocks.
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
  if (dtype === 'q4_k' || dtype === 'q6_k') return kQuantPlanes(dtype, rows, cols, bytes);
  const { blocks, quants, scales, qBytes, d16 } = quantPlanes(dtype, rows, cols);
  const blockBytes = GGUF_BLOCK_BYTES[dtype];
  const qPerBlock = blockBytes - 2;
  for (let b = 0; b < blocks; b++) {
    const src = b * blockBytes;
    d16[b] = bytes[src] | (bytes[src + 1] << 8);
    const dst = b * qPerBlock;
    for (let j = 0; j < qPerBlock; j++) qBytes[dst + j] = bytes[src + 2 + j];
  }
  return { dtype, rows, cols, planes: [quants, scales] };
}

// Where each K-quant block is cut: the first `split` bytes go to one plane, the rest to the other.
// Q4_K: header (d, dmin, scales[12]) = 16 bytes -> scales; qs[128] -> quants.
// Q6_K: ql[128] qh[64] = 192 bytes -> quants; scales[16], d = 18 bytes -> scales (+ 2 zero bytes).
const K_QUANT_SPLIT = { q4_k: { split: 16, first: 'scales' }, q6_k: { split: 192, first: 'quants' } } as const;

/** Copy every block's two parts between raw GGUF data and the planes, either way. */
function cutKQuantBlocks(dtype: 'q4_k' | 'q6_k', blocks: number, raw: Uint8Array, quants: Uint8Array, scales: Uint8Array, toPlanes: boolean): void {
  const [qWords, sWords] = K_QUANT_WORDS[dtype];
  const blockBytes = GGUF_BLOCK_BYTES[dtype];
  const { split, first } = K_QUANT_SPLIT[dtype];
  const [head, tail] = first === 'scales' ? [scales, quants] : [quants, scales];
  const [headStride, tailStride] = first === 'scales' ? [sWords * 4, qWords * 4] : [qWords * 4, sWords * 4];
  for (let b = 0; b < blocks; b++) {
    const at = b * blockBytes;
    if (toPlanes) {
      head.set(raw.subarray(at, at + split), b * headStride);
      tail.set(raw.subarray(at + split, at + blockBytes), b * tailStride);
    } else {
      raw.set(head.subarray(b * headStride, b * headStride + split), at);
      raw.set(tail.subarray(b * tailStride, b * tailStride + blockBytes - split), at + split);
    }
  }
}

function kQuantPlanes(dtype: 'q4_k' | 'q6_k', rows: number, cols: number, bytes: Uint8Array): HostWeight {
  const [quants, scales] = planeWords(dtype, rows, cols).map((words) => new Uint32Array(words));
  cutKQuantBlocks(dtype, (rows * cols) / K_QUANT_BLOCK, bytes, bytesOf(quants), bytesOf(scales), true);
  return { dtype, rows, cols, planes: [quants, scales] };
}

/** The inverse of packGguf: the weight's raw GGUF tensor data (for writing GGUF files and tests). */
export function ggufBytes(weight: HostWeight): Uint8Array {
  const { dtype, rows, cols } = weight;
  const out = new Uint8Array(ggufByteSize(dtype, rows, cols));
  const kp = paddedCols(cols);
  if (dtype === 'f32' || dtype === 'f16') {
    const size = dtype === 'f32' ? 4 : 2;
    const plane = bytesOf(weight.planes[0]);
    for (let r = 0; r < rows; r++) {
      out.set(plane.subarray(r * kp * size, (r * kp + cols) * size), r * cols * size);
    }
    return out;
  }
  const [quants, scales] = weight.planes;
  const qBytes = bytesOf(quants);
  if (dtype === 'q4_k' || dtype === 'q6_k') {
    cutKQuantBlocks(dtype, (rows * cols) / K_QUANT_BLOCK, out, qBytes, bytesOf(scales), false);
    return out;
  }
  const d16 = new Uint16Array(scales.buffer, scales.byteOffset, scales.length * 2);
  const blockBytes = GGUF_BLOCK_BYTES[dtype];
  const qPerBlock = blockBytes - 2;
  for (let b = 0; b < (rows * cols) / QUANT_BLOCK; b++) {
    const dst = b * blockBytes;
    out[dst] = d16[b] & 0xff;
    out[dst + 1] = d16[b] >>> 8;
    out.set(qBytes.subarray(b * qPerBlock, (b + 1) * qPerBlock), dst + 2);
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
  if (dtype === 'q4_k') return dequantizeQ4K(weight, out);
  if (dtype === 'q6_k') return dequantizeQ6K(weight, out);
  const [quants, scales] = weight.planes;
  const d16 = new Uint16Array(scales.buffer, scales.byteOffset, scales.length * 2);
  const qBytes = bytesOf(quants);
  const q8 = new Int8Array(qBytes.buffer, qBytes.byteOffset, qBytes.byteLength);
  for (let b = 0; b < (rows * cols) / QUANT_BLOCK; b++) {
    const d = f16BitsToF32(d16[b]);
    const x = b * QUANT_BLOCK;
    if (dtype === 'q8_0') {
      for (let j = 0; j < QUANT_BLOCK; j++) out[x + j] = q8[x + j] * d;
    } else {
      for (let j = 0; j < QUANT_BLOCK / 2; j++) {
        const byte = qBytes[b * 16 + j];
        out[x + j] = ((byte & 15) - 8) * d;
        out[x + 16 + j] = ((byte >>> 4) - 8) * d;
      }
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

/** dequantize_row_q4_K on the planes: sub-block j of 32 is d * sc_j * nibble - dmin * m_j. */
function dequantizeQ4K(weight: HostWeight, out: Float64Array): Float64Array {
  const qBytes = bytesOf(weight.planes[0]);
  const sBytes = bytesOf(weight.planes[1]);
  const header = new Uint16Array(sBytes.buffer, sBytes.byteOffset, sBytes.byteLength / 2);
  for (let b = 0; b < out.length / K_QUANT_BLOCK; b++) {
    const d = f16BitsToF32(header[b * 8]);
    const dmin = f16BitsToF32(header[b * 8 + 1]);
    const x = b * K_QUANT_BLOCK;
    for (let j = 0; j < 8; j++) {
      const [sc, m] = scaleMinK4(j, sBytes, b * 16 + 4);
      // Sub-blocks 2c and 2c + 1 share qs[32c .. 32c + 31]: low nibbles, then high nibbles.
      const qs = b * 128 + (j >> 1) * 32;
      const shift = (j & 1) * 4;
      for (let l = 0; l < 32; l++) out[x + 32 * j + l] = d * sc * ((qBytes[qs + l] >> shift) & 15) - dmin * m;
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

// ---- upload ---------------------------------------------------------------------------------

/** u32 words of each plane, in binding order, for a (rows, cols) weight of `dtype`. */
export function planeWords(dtype: WeightDtype, rows: number, cols: number): number[] {
  checkDims('planeWords', dtype, rows, cols);
  const kp = paddedCols(cols);
  if (dtype === 'f32') return [rows * kp];
  if (dtype === 'f16') return [(rows * kp) / 2];
  if (dtype === 'q4_k' || dtype === 'q6_k') {
    const blocks = (rows * cols) / K_QUANT_BLOCK;
    return K_QUANT_WORDS[dtype].map((words) => blocks * words);
  }
  const blocks = (rows * cols) / QUANT_BLOCK;
  return [dtype === 'q8_0' ? blocks * 8 : blocks * 4, Math.ceil(blocks / 2)];
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
// (N, words per row) row-major, except the f16 block scales of Q8_0 / Q4_0, which pack two blocks
// per u32 across row boundaries (block b = row * K/32 + k/32 is half b % 2). A chunk whose first
// block is odd would start mid-word there, so chunk scales are repacked to start at half 0.

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
export function chunkRows(label: string, dtype: WeightDtype, rows: number, cols: number, limitBytes: number): number[] {
  checkDims(`weight "${label}"`, dtype, rows, cols);
  if (!Number.isSafeInteger(limitBytes) || limitBytes < 1) {
    throw new ShapeError(`weight "${label}": chunk limit must be an integer >= 1 byte (got ${limitBytes})`);
  }
  if (largestPlaneBytes(dtype, 1, cols) > limitBytes) {
    throw new ShapeError(
      `weight "${label}" (${rows}x${cols} ${dtype}): one row needs ${largestPlaneBytes(dtype, 1, cols)} bytes in a plane, ` +
        `over the limit of ${limitBytes} bytes per storage binding`,
    );
  }
  // Largest row count that fits (plane sizes grow with rows; binary search keeps this exact for
  // the rounded-up scale planes too).
  let lo = 1;
  let hi = rows;
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (largestPlaneBytes(dtype, mid, cols) <= limitBytes) lo = mid;
    else hi = mid - 1;
  }
  const count = Math.ceil(rows / lo);
  const base = Math.floor(rows / count);
  return Array.from({ length: count }, (_, i) => base + (i < rows % count ? 1 : 0));
}

/** Rows firstRow .. firstRow + rows - 1 of a host weight (views of its planes where rows align). */
export function sliceWeightRows(weight: HostWeight, firstRow: number, rows: number): HostWeight {
  const { dtype, cols } = weight;
  if (!Number.isSafeInteger(firstRow) || !Number.isSafeInteger(rows) || firstRow < 0 || rows < 1 || firstRow + rows > weight.rows) {
    throw new ShapeError(`sliceWeightRows: rows ${firstRow}..${firstRow + rows - 1} are outside 0..${weight.rows - 1}`);
  }
  const perRow = planeWords(dtype, 1, cols);
  const planes = weight.planes.map((plane, i) => {
    if ((dtype === 'q8_0' || dtype === 'q4_0') && i === 1) {
      // f16 scales two per u32 across rows: copy the chunk's halves so its first block is half 0.
      const blocksPerRow = cols / QUANT_BLOCK;
      const halves = new Uint16Array(plane.buffer, plane.byteOffset, plane.length * 2);
      const out = new Uint32Array(Math.ceil((rows * blocksPerRow) / 2));
      new Uint16Array(out.buffer).set(halves.subarray(firstRow * blocksPerRow, (firstRow + rows) * blocksPerRow));
      return out;
    }
    return plane.subarray(firstRow * perRow[i], (firstRow + rows) * perRow[i]);
  });
  return { dtype, rows, cols, planes };
}

/**
 * Upload a host weight as row chunks small enough for one storage binding each (see chunkRows):
 * one chunk labelled `label` when it fits (buffers named as uploadWeight names them), else chunks
 * labelled `${label}#0`, `${label}#1`, ...
 */
export function uploadWeightChunks(gpu: Gpu, label: string, weight: HostWeight, options: UploadChunksOptions = {}): ChunkedWeight {
  const { arena, maxChunkBytes } = options;
  const adapterLimit = Math.min(gpu.limits.maxStorageBufferBindingSize, gpu.limits.maxBufferSize);
  if (maxChunkBytes !== undefined && (!Number.isSafeInteger(maxChunkBytes) || maxChunkBytes < 1)) {
    throw new ShapeError(`weight "${label}": maxChunkBytes must be an integer >= 1 (got ${maxChunkBytes})`);
  }
  const limit = Math.min(adapterLimit, maxChunkBytes ?? adapterLimit);
  checkPlanes(label, weight);
  const sizes = chunkRows(label, weight.dtype, weight.rows, weight.cols, limit);
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

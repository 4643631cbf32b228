// Weight formats: the 4-byte-aligned planes the shaders read, and packing into them on the CPU from f32
// values or raw GGUF / safetensors tensor data. See shaders/weights_<dtype>.wgsl for the shader side;
// beside this module: weights-quantize.ts (f32 values to the 32-column block formats, as ggml rounds),
// weights-reference.ts (the float64 dequantisation the kernel tests compare with) and weights-upload.ts
// (planes to GPU buffers, in row chunks where a plane exceeds one storage binding).
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
export const QUANT_LAYOUTS: Record<QuantDtype, QuantLayout> = {
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

export function checkDims(label: string, dtype: WeightDtype, rows: number, cols: number): void {
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

export function checkLength(label: string, got: number, want: number, unit: string): void {
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
// ---- raw GGUF / safetensors tensor data -----------------------------------------------------

export function bytesOf(data: ArrayBufferView): Uint8Array {
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

export function cutBlocks(dtype: QuantDtype, rows: number, cols: number, raw: Uint8Array): HostWeight {
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

// ---- plane sizes ---------------------------------------------------------------------------

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

// ---- rows ------------------------------------------------------------------------------------

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

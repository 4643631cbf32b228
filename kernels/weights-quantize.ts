// f32 values to the 32-column GGML block formats (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1) as ggml's reference
// quantisers round, packed into the planes of kernels/weights.ts; packWeight picks by dtype. The
// K-quants are read from GGUF files only (packGguf), never made here.
import { ShapeError } from '../src/errors.ts';
import { QUANT_BLOCK, QUANT_LAYOUTS, checkDims, checkLength, cutBlocks, f32ToF16Bits, packF16, packF32, type HostWeight, type WeightDtype } from './weights.ts';

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

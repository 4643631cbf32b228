// GGML tensor types as GGUF files store them: the type table (block size, bytes per block), and CPU
// conversions for the types this runtime reads (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 both
// ways; the K-quants Q2_K .. Q6_K decode only: this runtime reads K-quant files but does not write
// them). Quantisation follows ggml's reference rows (quantize_row_q8_0_ref .. quantize_row_q5_1_ref)
// operation by operation in f32, so a file written here holds the same bytes llama.cpp's reference
// would write.
// All multi-byte values are little-endian, as GGUF stores them; every JS engine this runs on is too.

import { f16BitsToF32, f32ToF16Bits, ggufBytes, packGguf, type QuantDtype } from '../kernels/weights.ts';
import { packWeight } from '../kernels/weights-quantize.ts';
import { dequantize } from '../kernels/weights-reference.ts';

/** ggml_type ids (ggml.h). Ids 4, 5 and 31..33, 36..38 were removed from ggml and are unknown here. */
export const GgmlType = {
  F32: 0,
  F16: 1,
  Q4_0: 2,
  Q4_1: 3,
  Q5_0: 6,
  Q5_1: 7,
  Q8_0: 8,
  Q8_1: 9,
  Q2_K: 10,
  Q3_K: 11,
  Q4_K: 12,
  Q5_K: 13,
  Q6_K: 14,
  Q8_K: 15,
  IQ2_XXS: 16,
  IQ2_XS: 17,
  IQ3_XXS: 18,
  IQ1_S: 19,
  IQ4_NL: 20,
  IQ3_S: 21,
  IQ2_S: 22,
  IQ4_XS: 23,
  I8: 24,
  I16: 25,
  I32: 26,
  I64: 27,
  F64: 28,
  IQ1_M: 29,
  BF16: 30,
  TQ1_0: 34,
  TQ2_0: 35,
  MXFP4: 39,
} as const;
export type GgmlTypeName = keyof typeof GgmlType;

export interface GgmlTypeInfo {
  name: GgmlTypeName;
  /** Elements per block along ne[0]. */
  blockSize: number;
  /** Bytes per block. */
  blockBytes: number;
}

// [block size, bytes per block] from ggml's type_traits.
const LAYOUT: Record<GgmlTypeName, [number, number]> = {
  F32: [1, 4],
  F16: [1, 2],
  Q4_0: [32, 18],
  Q4_1: [32, 20],
  Q5_0: [32, 22],
  Q5_1: [32, 24],
  Q8_0: [32, 34],
  Q8_1: [32, 36],
  Q2_K: [256, 84],
  Q3_K: [256, 110],
  Q4_K: [256, 144],
  Q5_K: [256, 176],
  Q6_K: [256, 210],
  Q8_K: [256, 292],
  IQ2_XXS: [256, 66],
  IQ2_XS: [256, 74],
  IQ3_XXS: [256, 98],
  IQ1_S: [256, 50],
  IQ4_NL: [32, 18],
  IQ3_S: [256, 110],
  IQ2_S: [256, 82],
  IQ4_XS: [256, 136],
  I8: [1, 1],
  I16: [1, 2],
  I32: [1, 4],
  I64: [1, 8],
  F64: [1, 8],
  IQ1_M: [256, 56],
  BF16: [1, 2],
  TQ1_0: [256, 54],
  TQ2_0: [256, 66],
  MXFP4: [32, 17],
};

const BY_ID = new Map<number, GgmlTypeInfo>(
  (Object.keys(GgmlType) as GgmlTypeName[]).map((name) => {
    const [blockSize, blockBytes] = LAYOUT[name];
    return [GgmlType[name], { name, blockSize, blockBytes }];
  }),
);

/** The type's layout, or undefined for an id ggml does not define. */
export function ggmlTypeInfo(type: number): GgmlTypeInfo | undefined {
  return BY_ID.get(type);
}

/** Types whose bytes this runtime can turn into f32 (and the kernels can consume). */
export const SUPPORTED_GGML_TYPES: readonly GgmlTypeName[] = [
  'F32', 'F16', 'BF16', 'Q8_0', 'Q4_0', 'Q4_1', 'Q5_0', 'Q5_1', 'Q2_K', 'Q3_K', 'Q4_K', 'Q5_K', 'Q6_K',
];

export function isSupportedGgmlType(type: number): boolean {
  const info = BY_ID.get(type);
  return info !== undefined && SUPPORTED_GGML_TYPES.includes(info.name);
}

// ---------------------------------------------------------------------------------------------
// Half precision

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

// Half-precision conversion lives with the weight packing in kernels/weights.ts; re-exported here
// so file-format code has one place to import from.
export { f32ToF16Bits, f16BitsToF32 };

let f16Table: Float32Array | undefined;

/** The 65536 half values as f32, built on first use. */
function halfTable(): Float32Array {
  if (f16Table) return f16Table;
  f16Table = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    f16Table[h] = f16BitsToF32(h);
  }
  return f16Table;
}

/** bfloat16 bits of `value`, rounded to nearest even (NaN stays NaN). */
export function f32ToBf16Bits(value: number): number {
  f32Scratch[0] = value;
  const x = u32Scratch[0];
  if ((x & 0x7fffffff) > 0x7f800000) return ((x >>> 16) | 0x40) & 0xffff;
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

export function bf16BitsToF32(bits: number): number {
  u32Scratch[0] = (bits & 0xffff) << 16;
  return f32Scratch[0];
}

export function f16ArrayToF32(bits: Uint16Array): Float32Array {
  const table = halfTable();
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = table[bits[i]];
  return out;
}

export function bf16ArrayToF32(bits: Uint16Array): Float32Array {
  const out = new Float32Array(bits.length);
  const outBits = new Uint32Array(out.buffer);
  for (let i = 0; i < bits.length; i++) outBits[i] = bits[i] << 16;
  return out;
}

export function f32ArrayToF16(values: ArrayLike<number>): Uint16Array {
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = f32ToF16Bits(values[i]);
  return out;
}

export function f32ArrayToBf16(values: ArrayLike<number>): Uint16Array {
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = f32ToBf16Bits(values[i]);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Quantised types: kernels/weights.ts holds the one implementation of ggml's quantize_row_*_ref
// (the 32-blocks) and dequantize_row_* (values are exact in f32); encodeGgml / decodeGgml below
// reach it through GGUF block bytes.
// Q8_0 (34 bytes): f16 d, then 32 int8 q; value = q * d.
// Q4_0 (18 bytes): f16 d, then 16 bytes: byte j holds element j in its low nibble and element j + 16
//   in its high nibble; value = (nibble - 8) * d.
// Q4_1 (20 bytes): f16 d, f16 m, 16 bytes of nibbles as Q4_0's; value = nibble * d + m.
// Q5_0 (22 bytes): f16 d, qh[4] (bit j = bit 4 of element j), 16 bytes of low nibbles as Q4_0's;
//   value = (q - 16) * d.
// Q5_1 (24 bytes): f16 d, f16 m, qh[4], 16 bytes of low nibbles; value = q * d + m.

// K-quants, super-blocks of 256 along ne[0] (decoded only):
// Q2_K (84 bytes): scales[16] (4-bit scale | 4-bit min << 4 of 16 sub-blocks of 16), qs[64] (2-bit),
//   f16 d, f16 dmin; value = d * sc * q - dmin * m.
// Q3_K (110 bytes): hmask[32] (high bits), qs[64] (2 low bits), scales[12] (16 packed 6-bit scales),
//   f16 d; value = d * (sc - 32) * (q - 4), q the 3-bit quant.
// Q4_K (144 bytes): f16 d, f16 dmin, scales[12] (6-bit scale and min of 8 sub-blocks of 32,
//   get_scale_min_k4), qs[128]; sub-block j's value = d * sc_j * nibble - dmin * m_j.
// Q5_K (176 bytes): as Q4_K with qh[32] before qs[128]: bit j of qh[l] is bit 4 of element l of
//   sub-block j.
// Q6_K (210 bytes): ql[128], qh[64], int8 scales[16], f16 d; value = d * scales[i / 16] * (q - 32).

/** The GGUF types kernels/weights.ts decodes and (for the 32-blocks) quantises, by its dtype name. */
const QUANT_DTYPE: Partial<Record<GgmlTypeName, QuantDtype>> = {
  Q8_0: 'q8_0',
  Q4_0: 'q4_0',
  Q4_1: 'q4_1',
  Q5_0: 'q5_0',
  Q5_1: 'q5_1',
  Q2_K: 'q2_k',
  Q3_K: 'q3_k',
  Q4_K: 'q4_k',
  Q5_K: 'q5_k',
  Q6_K: 'q6_k',
};

/** dequantize_row_* of `count` elements of a quant type held in `bytes` (whole blocks). */
function dequantizeBlocks(name: GgmlTypeName, dtype: QuantDtype, bytes: Uint8Array, count: number): Float32Array {
  const { blockSize, blockBytes } = BY_ID.get(GgmlType[name])!;
  checkBlocks(name, bytes, count, blockSize, blockBytes);
  return Float32Array.from(dequantize(packGguf(dtype, 1, count, bytes)));
}

function checkBlocks(name: string, bytes: Uint8Array, count: number, block: number, blockBytes: number): void {
  if (count % block !== 0 || bytes.byteLength !== (count / block) * blockBytes) {
    throw new RangeError(`${name}: ${bytes.byteLength} bytes do not hold ${count} values`);
  }
}

/** Bytes of `count` elements of `type` (count must be whole blocks). */
export function ggmlByteLength(type: number, count: number): number {
  const info = BY_ID.get(type);
  if (!info) throw new RangeError(`unknown ggml type ${type}`);
  if (count % info.blockSize !== 0) throw new RangeError(`${info.name}: ${count} elements are not whole blocks of ${info.blockSize}`);
  return (count / info.blockSize) * info.blockBytes;
}

/** Quantise (as ggml's reference quantisers) or convert f32 values into `type`'s bytes (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1). */
export function encodeGgml(type: number, values: ArrayLike<number>): Uint8Array {
  switch (type) {
    case GgmlType.F32: {
      const out = Float32Array.from(values);
      return new Uint8Array(out.buffer);
    }
    case GgmlType.F16:
      return new Uint8Array(f32ArrayToF16(values).buffer);
    case GgmlType.BF16:
      return new Uint8Array(f32ArrayToBf16(values).buffer);
    case GgmlType.Q8_0:
    case GgmlType.Q4_0:
    case GgmlType.Q4_1:
    case GgmlType.Q5_0:
    case GgmlType.Q5_1: {
      const name = ggmlTypeInfo(type)!.name;
      if (values.length % 32 !== 0) throw new RangeError(`${name} needs a multiple of 32 values (got ${values.length})`);
      return ggufBytes(packWeight(QUANT_DTYPE[name]!, 1, values.length, Float32Array.from(values)));
    }
    default:
      throw new RangeError(`encoding to ggml type ${ggmlTypeInfo(type)?.name ?? type} is not supported`);
  }
}

/** f32 values of `count` elements of `type` held in `bytes` (the SUPPORTED_GGML_TYPES). */
export function decodeGgml(type: number, bytes: Uint8Array, count: number): Float32Array {
  switch (type) {
    case GgmlType.F32:
      return new Float32Array(alignedCopy(bytes, count * 4));
    case GgmlType.F16:
      return f16ArrayToF32(new Uint16Array(alignedCopy(bytes, count * 2)));
    case GgmlType.BF16:
      return bf16ArrayToF32(new Uint16Array(alignedCopy(bytes, count * 2)));
    default: {
      const name = ggmlTypeInfo(type)?.name;
      const dtype = name && QUANT_DTYPE[name];
      if (!name || !dtype) throw new RangeError(`decoding ggml type ${name ?? type} is not supported`);
      return dequantizeBlocks(name, dtype, bytes, count);
    }
  }
}

/** The bytes as their own ArrayBuffer (typed-array views need an aligned offset). */
function alignedCopy(bytes: Uint8Array, expected: number): ArrayBuffer {
  if (bytes.byteLength !== expected) throw new RangeError(`${bytes.byteLength} bytes where ${expected} were expected`);
  return bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer;
}

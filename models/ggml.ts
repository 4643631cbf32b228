// GGML tensor types as GGUF files store them: the type table (block size, bytes per block), and CPU
// conversions for the types this runtime reads (F32, F16, BF16, Q8_0, Q4_0), both ways. Quantisation
// follows ggml's reference rows (quantize_row_q8_0_ref, quantize_row_q4_0_ref) operation by
// operation in f32, so a file written here holds the same bytes llama.cpp's reference would write.
// All multi-byte values are little-endian, as GGUF stores them; every JS engine this runs on is too.

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
export const SUPPORTED_GGML_TYPES: readonly GgmlTypeName[] = ['F32', 'F16', 'BF16', 'Q8_0', 'Q4_0'];

export function isSupportedGgmlType(type: number): boolean {
  const info = BY_ID.get(type);
  return info !== undefined && SUPPORTED_GGML_TYPES.includes(info.name);
}

// ---------------------------------------------------------------------------------------------
// Half precision

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** IEEE binary16 bits of `value`, rounded to nearest even (what F16C's _cvtss_sh and ggml do). */
export function f32ToF16Bits(value: number): number {
  f32Scratch[0] = value;
  const x = u32Scratch[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  const mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    // Subnormal half (or zero): value = m * 2^-24.
    if (e < -10) return sign;
    const full = mant | 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    let m = full >>> shift;
    const rem = full & ((1 << shift) - 1);
    if (rem > half || (rem === half && (m & 1) !== 0)) m++;
    return sign | m;
  }
  const h = sign | (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  // A carry out of the mantissa correctly bumps the exponent (and overflows to infinity).
  return rem > 0x1000 || (rem === 0x1000 && (h & 1) !== 0) ? h + 1 : h;
}

let f16Table: Float32Array | undefined;

/** The 65536 half values as f32, built on first use. */
function halfTable(): Float32Array {
  if (f16Table) return f16Table;
  f16Table = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const e = (h >>> 10) & 0x1f;
    const m = h & 0x3ff;
    if (e === 0) f16Table[h] = sign * m * 2 ** -24;
    else if (e === 31) f16Table[h] = m !== 0 ? NaN : sign * Infinity;
    else f16Table[h] = sign * (1 + m / 1024) * 2 ** (e - 15);
  }
  return f16Table;
}

export function f16BitsToF32(bits: number): number {
  return halfTable()[bits & 0xffff];
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
// Q8_0: blocks of 32 along ne[0]; f16 scale d, then 32 int8 q; value = q * d.

export const Q8_0_BLOCK = 32;
export const Q8_0_BYTES = 34;

/** quantize_row_q8_0_ref: d = amax / 127, q = roundf(x / d), all in f32. */
export function quantizeQ8_0(values: ArrayLike<number>): Uint8Array {
  if (values.length % Q8_0_BLOCK !== 0) throw new RangeError(`Q8_0 needs a multiple of 32 values (got ${values.length})`);
  const blocks = values.length / Q8_0_BLOCK;
  const out = new Uint8Array(blocks * Q8_0_BYTES);
  const view = new DataView(out.buffer);
  const f = Math.fround;
  for (let b = 0; b < blocks; b++) {
    const base = b * Q8_0_BLOCK;
    let amax = 0;
    for (let j = 0; j < Q8_0_BLOCK; j++) amax = Math.max(amax, Math.abs(f(values[base + j])));
    const d = f(amax / 127);
    const id = d !== 0 ? f(1 / d) : 0;
    view.setUint16(b * Q8_0_BYTES, f32ToF16Bits(d), true);
    for (let j = 0; j < Q8_0_BLOCK; j++) {
      const x = f(f(values[base + j]) * id);
      // roundf: half away from zero.
      const q = Math.sign(x) * Math.round(Math.abs(x));
      view.setInt8(b * Q8_0_BYTES + 2 + j, q);
    }
  }
  return out;
}

export function dequantizeQ8_0(bytes: Uint8Array, count: number, out = new Float32Array(count)): Float32Array {
  checkBlocks('Q8_0', bytes, count, Q8_0_BLOCK, Q8_0_BYTES);
  const table = halfTable();
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let b = 0; b < count / Q8_0_BLOCK; b++) {
    const d = table[view.getUint16(b * Q8_0_BYTES, true)];
    for (let j = 0; j < Q8_0_BLOCK; j++) out[b * Q8_0_BLOCK + j] = view.getInt8(b * Q8_0_BYTES + 2 + j) * d;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Q4_0: blocks of 32 along ne[0]; f16 scale d, then 16 bytes: byte j holds element j in its low
// nibble and element j + 16 in its high nibble; value = (nibble - 8) * d.

export const Q4_0_BLOCK = 32;
export const Q4_0_BYTES = 18;

/** quantize_row_q4_0_ref: max = the value of largest magnitude, d = max / -8, q = min(15, trunc(x/d + 8.5)). */
export function quantizeQ4_0(values: ArrayLike<number>): Uint8Array {
  if (values.length % Q4_0_BLOCK !== 0) throw new RangeError(`Q4_0 needs a multiple of 32 values (got ${values.length})`);
  const blocks = values.length / Q4_0_BLOCK;
  const out = new Uint8Array(blocks * Q4_0_BYTES);
  const view = new DataView(out.buffer);
  const f = Math.fround;
  for (let b = 0; b < blocks; b++) {
    const base = b * Q4_0_BLOCK;
    let amax = 0;
    let max = 0;
    for (let j = 0; j < Q4_0_BLOCK; j++) {
      const v = f(values[base + j]);
      if (amax < Math.abs(v)) {
        amax = Math.abs(v);
        max = v;
      }
    }
    const d = f(max / -8);
    const id = d !== 0 ? f(1 / d) : 0;
    view.setUint16(b * Q4_0_BYTES, f32ToF16Bits(d), true);
    for (let j = 0; j < Q4_0_BLOCK / 2; j++) {
      const x0 = f(f(values[base + j]) * id);
      const x1 = f(f(values[base + 16 + j]) * id);
      const q0 = Math.min(15, Math.trunc(f(x0 + 8.5)));
      const q1 = Math.min(15, Math.trunc(f(x1 + 8.5)));
      out[b * Q4_0_BYTES + 2 + j] = q0 | (q1 << 4);
    }
  }
  return out;
}

export function dequantizeQ4_0(bytes: Uint8Array, count: number, out = new Float32Array(count)): Float32Array {
  checkBlocks('Q4_0', bytes, count, Q4_0_BLOCK, Q4_0_BYTES);
  const table = halfTable();
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let b = 0; b < count / Q4_0_BLOCK; b++) {
    const d = table[view.getUint16(b * Q4_0_BYTES, true)];
    for (let j = 0; j < 16; j++) {
      const byte = bytes[b * Q4_0_BYTES + 2 + j];
      out[b * Q4_0_BLOCK + j] = ((byte & 0x0f) - 8) * d;
      out[b * Q4_0_BLOCK + j + 16] = ((byte >>> 4) - 8) * d;
    }
  }
  return out;
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

/** Quantise or convert f32 values into `type`'s bytes (F32, F16, BF16, Q8_0, Q4_0). */
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
      return quantizeQ8_0(values);
    case GgmlType.Q4_0:
      return quantizeQ4_0(values);
    default:
      throw new RangeError(`encoding to ggml type ${ggmlTypeInfo(type)?.name ?? type} is not supported`);
  }
}

/** f32 values of `count` elements of `type` held in `bytes` (F32, F16, BF16, Q8_0, Q4_0). */
export function decodeGgml(type: number, bytes: Uint8Array, count: number): Float32Array {
  switch (type) {
    case GgmlType.F32:
      return new Float32Array(alignedCopy(bytes, count * 4));
    case GgmlType.F16:
      return f16ArrayToF32(new Uint16Array(alignedCopy(bytes, count * 2)));
    case GgmlType.BF16:
      return bf16ArrayToF32(new Uint16Array(alignedCopy(bytes, count * 2)));
    case GgmlType.Q8_0:
      return dequantizeQ8_0(bytes, count);
    case GgmlType.Q4_0:
      return dequantizeQ4_0(bytes, count);
    default:
      throw new RangeError(`decoding ggml type ${ggmlTypeInfo(type)?.name ?? type} is not supported`);
  }
}

/** The bytes as their own ArrayBuffer (typed-array views need an aligned offset). */
function alignedCopy(bytes: Uint8Array, expected: number): ArrayBuffer {
  if (bytes.byteLength !== expected) throw new RangeError(`${bytes.byteLength} bytes where ${expected} were expected`);
  return bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer;
}

// The float64 reference for every weight format: W decoded from its packed planes exactly as the
// shaders decode it, for the kernel tests to compare with.
import { K_QUANT_BLOCK, QUANT_BLOCK, QUANT_LAYOUTS, bytesOf, f16BitsToF32, paddedCols, type HostWeight } from './weights.ts';

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

/**
 * An activation row as the matvecs' q8 activations take it (float64): per block of 32, d = amax / 127
 * and each element round(x / d) * d (0 in a block of zeros). Row length a multiple of 32.
 */
export function roundQ8Activations(row: Float64Array): Float64Array {
  const out = new Float64Array(row.length);
  for (let b = 0; b < row.length; b += 32) {
    const block = row.subarray(b, b + 32);
    const d = block.reduce((amax, v) => Math.max(amax, Math.abs(v)), 0) / 127;
    for (let i = 0; i < block.length; i++) out[b + i] = d > 0 ? Math.round(block[i] / d) * d : 0;
  }
  return out;
}

// A quick check that the kernels compute correctly on this adapter: each runs once on a small
// random problem and is compared with a float64 CPU reference. `webgpu-miner info` runs it so a
// driver bug shows up before a validator sees wrong tokens.
import type { Gpu } from '../src/gpu/device.ts';
import { createStorage, readF32, readU32 } from '../src/gpu/buffers.ts';
import { runPass } from './dispatch.ts';
import { Elementwise } from './elementwise.ts';
import { Linear } from './linear.ts';
import { Matvec, postNormFoldFits, type MatvecOptions } from './matvec.ts';
import { hasPackedDot } from './tiers.ts';
import { defaultMatmulTier, projectionBound } from './matmul.ts';
import { GGUF_BLOCK_BYTES, f16BitsToF32, isKQuantDtype, packGguf, type HostWeight, type KQuantDtype, type WeightDtype } from './weights.ts';
import { packWeight } from './weights-quantize.ts';
import { dequantize, roundQ8Activations } from './weights-reference.ts';
import { uploadWeight } from './weights-upload.ts';
import { Norm } from './norm.ts';
import { Softmax } from './softmax.ts';
import { Rope, ropeInverseFrequencies } from './rope.ts';
import { DecodeAttention, KV_BLOCK_TOKENS, KvWrite, PrefillAttention, kvBlockBytes, type KvDtype } from './attention.ts';
import { TopK } from './sample.ts';

export interface SelfCheckResult {
  kernel: string;
  relL2: number;
  bound: number;
  ok: boolean;
}

/** Deterministic values in [-1, 1) (a linear congruential sequence: no test helpers below the CLI). */
function values(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s / 2 ** 31 - 1;
  }
  return out;
}

function relL2(got: ArrayLike<number>, want: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < want.length; i++) {
    const d = got[i] - want[i];
    num += Number.isFinite(d) ? d * d : Infinity;
    den += want[i] * want[i];
  }
  return Math.sqrt(num / Math.max(den, 1e-30));
}

type Check = (gpu: Gpu) => Promise<{ got: ArrayLike<number>; want: ArrayLike<number> }>;

/**
 * One paged KV pool read back (u32 words, as `dtype` stores it: kernels/attention.ts) as its
 * (blocks, Hkv, 16, D) f32 elements, `blockElements` = Hkv x 16 x D a block.
 */
function kvPoolValues(words: Uint32Array, blocks: number, blockElements: number, dtype: KvDtype): Float32Array {
  const out = new Float32Array(blocks * blockElements);
  if (dtype === 'f32') {
    out.set(new Float32Array(words.buffer, words.byteOffset, out.length));
  } else if (dtype === 'f16') {
    for (let i = 0; i < out.length; i++) out[i] = f16BitsToF32((words[i >> 1] >>> (16 * (i & 1))) & 0xffff);
  } else {
    // Per block: its int8 quants four to a word, then one f32 scale word per 32 elements.
    const perBlock = blockElements / 4 + blockElements / 32;
    const scales = new Float32Array(words.buffer, words.byteOffset, words.length);
    for (let b = 0; b < blocks; b++) {
      for (let e = 0; e < blockElements; e++) {
        const byte = (words[b * perBlock + (e >> 2)] >>> (8 * (e & 3))) & 0xff;
        out[b * blockElements + e] = ((byte << 24) >> 24) * scales[b * perBlock + blockElements / 4 + (e >> 5)];
      }
    }
  }
  return out;
}

/** The attention checks' shape: GQA 4/2, head dim 32, 45 keys in a 64-token paged cache. */
const ATTN = { Hq: 4, Hkv: 2, D: 32, L: 45, capacity: 64 } as const;

interface FilledKv {
  dtype: KvDtype;
  kCache: GPUBuffer;
  vCache: GPUBuffer;
  /** The block table: the last block first. */
  table: Uint32Array;
  blockTable: GPUBuffer;
  /** The keys and values written, (keys, Hkv, D) f32. */
  k: Float32Array;
  v: Float32Array;
  /** What the cache stores of them, read back and decoded, (keys, Hkv, D). */
  storedK: Float32Array;
  storedV: Float32Array;
}

/** What the cache stores at positions 0 .. keys - 1, read back and decoded: (keys, Hkv, D) each. */
async function storedKv(gpu: Gpu, kv: Omit<FilledKv, 'storedK' | 'storedV' | 'k' | 'v'>, keys: number): Promise<{ storedK: Float32Array; storedV: Float32Array }> {
  const { Hkv, D, capacity } = ATTN;
  const kvBlocks = capacity / KV_BLOCK_TOKENS;
  const blockElements = Hkv * KV_BLOCK_TOKENS * D;
  const words = (kvBlocks * kvBlockBytes(Hkv, D, kv.dtype)) / 4;
  const kPool = kvPoolValues(await readU32(gpu, kv.kCache, words), kvBlocks, blockElements, kv.dtype);
  const vPool = kvPoolValues(await readU32(gpu, kv.vCache, words), kvBlocks, blockElements, kv.dtype);
  // Where (position t, kv head g) is stored: block table[t / 16], row (g, t % 16).
  const at = (t: number, g: number) => kv.table[Math.floor(t / KV_BLOCK_TOKENS)] * blockElements + (g * KV_BLOCK_TOKENS + (t % KV_BLOCK_TOKENS)) * D;
  const storedK = new Float32Array(keys * Hkv * D);
  const storedV = new Float32Array(keys * Hkv * D);
  for (let t = 0; t < keys; t++) {
    for (let g = 0; g < Hkv; g++) {
      storedK.set(kPool.subarray(at(t, g), at(t, g) + D), (t * Hkv + g) * D);
      storedV.set(vPool.subarray(at(t, g), at(t, g) + D), (t * Hkv + g) * D);
    }
  }
  return { storedK, storedV };
}

/**
 * A `dtype` KV cache filled by KvWrite with `keys` keys and values (positions 0 .. keys - 1) through
 * a reversed block table (the last block first), and what it stores, read back.
 */
async function filledKvCache(gpu: Gpu, dtype: KvDtype, keys: number = ATTN.L): Promise<FilledKv> {
  const { Hkv, D, capacity } = ATTN;
  const k = values(keys * Hkv * D, 9);
  const v = values(keys * Hkv * D, 10);
  const kvBlocks = capacity / KV_BLOCK_TOKENS;
  const cache = (n: string) => createStorage(gpu, n, kvBlocks * kvBlockBytes(Hkv, D, dtype));
  const [kCache, vCache] = [cache('k'), cache('v')];
  const table = Uint32Array.from({ length: kvBlocks }, (_, i) => kvBlocks - 1 - i);
  const blockTable = createStorage(gpu, 'table', table);
  const write = new KvWrite(gpu, { Hkv, D, capacity, kvBlocks, dtype }, {
    k: createStorage(gpu, 'knew', k), v: createStorage(gpu, 'vnew', v), kCache, vCache, blockTable,
    rowMeta: createStorage(gpu, 'wmeta', Uint32Array.from({ length: 2 * keys }, (_, i) => (i % 2 ? i >> 1 : 0))),
  });
  await runPass(gpu, (pass) => write.encode(pass, { rows: keys }));
  const kv = { dtype, kCache, vCache, table, blockTable };
  return { ...kv, k, v, ...(await storedKv(gpu, kv, keys)) };
}

/** Float64 attention of query rows q (rows, Hq, D) over the stored keys, row r seeing keys 0 .. keys(r) - 1. */
function attentionReference(q: Float32Array | Float64Array, rows: number, keys: (row: number) => number, kv: FilledKv): Float64Array {
  const { Hq, Hkv, D } = ATTN;
  const want = new Float64Array(rows * Hq * D);
  for (let r = 0; r < rows; r++) {
    for (let h = 0; h < Hq; h++) {
      const g = Math.floor(h / (Hq / Hkv));
      const qh = q.subarray((r * Hq + h) * D, (r * Hq + h + 1) * D);
      const scores = Array.from({ length: keys(r) }, (_, t) => {
        let s = 0;
        for (let d = 0; d < D; d++) s += qh[d] * kv.storedK[(t * Hkv + g) * D + d];
        return s / Math.sqrt(D);
      });
      const max = Math.max(...scores);
      const e = scores.map((s) => Math.exp(s - max));
      const sum = e.reduce((a, b) => a + b, 0);
      const out = want.subarray((r * Hq + h) * D, (r * Hq + h + 1) * D);
      for (let t = 0; t < scores.length; t++) for (let d = 0; d < D; d++) out[d] += (e[t] / sum) * kv.storedV[(t * Hkv + g) * D + d];
    }
  }
  return want;
}

/**
 * Decode attention over a `dtype` KV cache its KvWrite filled. `measure` 'attention': one query row
 * over all ATTN.L keys, against a float64 reference reading the cache as stored; 'stored': the stored
 * keys and values against the f32 ones written.
 */
async function decodeCheck(gpu: Gpu, dtype: KvDtype, measure: 'attention' | 'stored'): Promise<{ got: ArrayLike<number>; want: ArrayLike<number> }> {
  const { Hq, Hkv, D, L, capacity } = ATTN;
  const kv = await filledKvCache(gpu, dtype);
  if (measure === 'stored') return { got: [...kv.storedK, ...kv.storedV], want: [...kv.k, ...kv.v] };
  const q = values(Hq * D, 11);
  const out = createStorage(gpu, 'out', Hq * D * 4);
  const attend = new DecodeAttention(gpu, { Hq, Hkv, D, capacity, kvBlocks: capacity / KV_BLOCK_TOKENS, dtype, maxRows: 1, splitKeys: 16 }, {
    q: createStorage(gpu, 'q', q), kCache: kv.kCache, vCache: kv.vCache, blockTable: kv.blockTable, out, rowMeta: createStorage(gpu, 'ameta', Uint32Array.from([0, L])),
  });
  await runPass(gpu, (pass) => attend.encode(pass, { rows: 1, maxLen: L }));
  return { got: await readF32(gpu, out, Hq * D), want: attentionReference(q, 1, () => L, kv) };
}

/** Float64 rotate_half RoPE of `heads` heads of D elements at `position` (the angle rounded to f32, as HF and the kernels take it). */
function ropeReference(x: Float32Array, heads: number, D: number, position: number, invFreq: Float32Array): Float64Array {
  const out = Float64Array.from(x);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < D / 2; i++) {
      const a = Math.fround(position * invFreq[i]);
      const [x0, x1] = [x[h * D + i], x[h * D + i + D / 2]];
      out[h * D + i] = x0 * Math.cos(a) - x1 * Math.sin(a);
      out[h * D + i + D / 2] = x1 * Math.cos(a) + x0 * Math.sin(a);
    }
  }
  return out;
}

/**
 * Decode attention with the step's RoPE and KV write folded in (the form the autotune picks where it
 * pays), over a `dtype` cache holding ATTN.L - 1 keys: the step's projection row (q, k, v heads
 * unrotated) goes in, and the kernel rotates q and k to position ATTN.L - 1, stores k and v there and
 * attends all ATTN.L keys. `measure` 'attention': the output against a float64 reference over the
 * cache as stored after the run; 'stored': the step's stored key and value against the rotated key and
 * the value.
 */
async function foldedDecodeCheck(gpu: Gpu, dtype: KvDtype, measure: 'attention' | 'stored'): Promise<{ got: ArrayLike<number>; want: ArrayLike<number> }> {
  const { Hq, Hkv, D, L, capacity } = ATTN;
  const kv = await filledKvCache(gpu, dtype, L - 1);
  const [q, kNew, vNew] = [values(Hq * D, 11), values(Hkv * D, 17), values(Hkv * D, 18)];
  const invFreq = ropeInverseFrequencies(D, 10000);
  const out = createStorage(gpu, 'out', Hq * D * 4);
  const attend = new DecodeAttention(gpu, {
    Hq, Hkv, D, capacity, kvBlocks: capacity / KV_BLOCK_TOKENS, dtype, maxRows: 1, splitKeys: 16, newKv: { rotaryDims: D, mode: 'half' },
  }, {
    q: createStorage(gpu, 'qkv', Float32Array.from([...q, ...kNew, ...vNew])), kCache: kv.kCache, vCache: kv.vCache, blockTable: kv.blockTable, out,
    rowMeta: createStorage(gpu, 'ameta', Uint32Array.from([0, L])), ropeTable: createStorage(gpu, 'inv', invFreq),
  });
  await runPass(gpu, (pass) => attend.encode(pass, { rows: 1, maxLen: L, qRowStride: (Hq + 2 * Hkv) * D, kOffset: Hq * D, vOffset: (Hq + Hkv) * D }));
  const stored = await storedKv(gpu, kv, L);
  if (measure === 'stored') {
    const step = (L - 1) * Hkv * D;
    return { got: [...stored.storedK.subarray(step), ...stored.storedV.subarray(step)], want: [...ropeReference(kNew, Hkv, D, L - 1, invFreq), ...vNew] };
  }
  return { got: await readF32(gpu, out, Hq * D), want: attentionReference(ropeReference(q, Hq, D, L - 1, invFreq), 1, () => L, { ...kv, ...stored }) };
}

/**
 * Causal prefill attention over the default (f16) KV cache: 17 query rows at positions 28 .. 44 (a
 * prompt's second chunk after 28 cached tokens), query t seeing keys 0 .. 28 + t.
 */
async function prefillCheck(gpu: Gpu): Promise<{ got: ArrayLike<number>; want: ArrayLike<number> }> {
  const { Hq, Hkv, D, L, capacity } = ATTN;
  const [tokens, pastLen] = [17, L - 17];
  const kv = await filledKvCache(gpu, 'f16');
  const q = values(tokens * Hq * D, 13);
  const out = createStorage(gpu, 'out', tokens * Hq * D * 4);
  const attend = new PrefillAttention(gpu, { Hq, Hkv, D, capacity, kvBlocks: capacity / KV_BLOCK_TOKENS, dtype: 'f16' }, {
    q: createStorage(gpu, 'q', q), kCache: kv.kCache, vCache: kv.vCache, blockTable: kv.blockTable, out,
  });
  await runPass(gpu, (pass) => attend.encode(pass, { tokens, pastLen, tableRow: 0 }));
  return { got: await readF32(gpu, out, tokens * Hq * D), want: attentionReference(q, tokens, (t) => pastLen + t + 1, kv) };
}

// Byte offsets of each K-quant block's f16 super-block scales (d, and dmin where it has one): the
// rest of a block is any bytes, but these must be finite and small.
const K_QUANT_SCALE_OFFSETS: Record<KQuantDtype, readonly number[]> = { q2_k: [80, 82], q3_k: [108], q4_k: [0, 2], q5_k: [0, 2], q6_k: [208] };

/** Deterministic K-quant blocks: pseudo-random bytes with d = dmin = 1/1024 (ggml does not quantise these on the fly). */
function kQuantWeight(dtype: KQuantDtype, rows: number, cols: number): HostWeight {
  const blockBytes = GGUF_BLOCK_BYTES[dtype];
  const blocks = (rows * cols) / 256;
  const bytes = Uint8Array.from(values(blocks * blockBytes, 8), (v) => Math.floor((v + 1) * 128));
  for (let b = 0; b < blocks; b++) for (const at of K_QUANT_SCALE_OFFSETS[dtype]) bytes.set([0x00, 0x14], b * blockBytes + at); // f16 0x1400
  return packGguf(dtype, rows, cols, bytes);
}

/** out[m, n] = sum_k x[m, k] W[n, k] with W dequantised exactly as packed. */
function linearCheck(dtype: WeightDtype, M: number, N: number, K: number): Check {
  return async (gpu) => {
    const host = isKQuantDtype(dtype) ? kQuantWeight(dtype, N, K) : packWeight(dtype, N, K, values(N * K, 3));
    const w = dequantize(host);
    const x = values(M * K, 4);
    const out = createStorage(gpu, 'selfcheck.out', M * N * 4);
    const op = new Linear(gpu, { weight: uploadWeight(gpu, `selfcheck.${dtype}`, host), input: createStorage(gpu, 'x', x), output: out, maxRows: M });
    await runPass(gpu, (pass) => op.encode(pass, { M }));
    const want = new Float64Array(M * N);
    for (let m = 0; m < M; m++) for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) want[m * N + n] += x[m * K + k] * w[n * K + k];
    return { got: await readF32(gpu, out, M * N), want };
  };
}

/**
 * Decode's gated MLP in one matvec, as decode runs it: RMSNorm folded into the loads, (gate, up) row
 * pairs and SwiGLU, N outputs from a (2N, K) weight, with `options` choosing the variant. Each input
 * element sits a quarter step off the q8 grid once normalised (x_i w_i is (k + 1/4) steps of its block's
 * largest / 127; the norm's scale cancels in that ratio), so q8 activations round alike on every
 * device and the reference rounds them as the kernel does. With `postNorm` (Gemma; f32 activations),
 * the kernel takes a sublayer's output a and the stream before it instead, and its input rows are the
 * stream x = base + RMSNorm(a) * post weight, which it also writes out: both are compared.
 */
function gatedMlpCheck(dtype: WeightDtype, options: Pick<MatvecOptions, 'layout' | 'activations'>, postNorm = false): Check {
  const [N, K, eps] = [12, 256, 1e-5];
  const rms = (v: ArrayLike<number>) => 1 / Math.sqrt(Array.from(v).reduce((a, e) => a + e * e, 0) / K + eps);
  return async (gpu) => {
    const normWeight = Float32Array.from(values(K, 14), (v) => 1 + v / 2);
    const steps = Float32Array.from(values(K, 15), (v, i) => (i % 32 === 7 ? 127 * Math.sign(v || 1) : Math.round(v * 120) + 0.25));
    let input: Float32Array = Float32Array.from(steps, (s, i) => s / 64 / normWeight[i]);
    let x = Float64Array.from(input);
    const post = postNorm
      ? { a: values(K, 19), base: values(K, 20), weight: Float32Array.from(values(K, 21), (v) => 1 + v / 2), stream: createStorage(gpu, 'stream', K * 4) }
      : undefined;
    if (post) {
      input = post.a;
      const r = rms(post.a);
      x = Float64Array.from(post.base, (b, i) => b + post.a[i] * r * post.weight[i]);
    }
    const host = isKQuantDtype(dtype) ? kQuantWeight(dtype, 2 * N, K) : packWeight(dtype, 2 * N, K, values(2 * N * K, 16));
    const w = dequantize(host);
    const out = createStorage(gpu, 'selfcheck.out', N * 4);
    const op = new Matvec(gpu, { weight: uploadWeight(gpu, `selfcheck.${dtype}`, host), input: createStorage(gpu, 'x', input), output: out }, {
      ...options,
      fusion: {
        norm: { kind: 'rms', weight: createStorage(gpu, 'norm', normWeight), eps }, activation: 'silu', glu: true,
        ...(post ? { postNorm: { weight: createStorage(gpu, 'post', post.weight), eps, base: createStorage(gpu, 'base', post.base), stream: post.stream } } : {}),
      },
    });
    await runPass(gpu, (pass) => op.encode(pass, { M: 1 }));
    const r = rms(x);
    const normalised = Float64Array.from(x, (v, i) => v * r * normWeight[i]);
    const normed = op.activations === 'q8' ? roundQ8Activations(normalised) : normalised;
    const dot = (row: number) => normed.reduce((a, v, k) => a + v * w[row * K + k], 0);
    const want = Float64Array.from({ length: N }, (_, n) => {
      const gate = dot(2 * n);
      return (gate / (1 + Math.exp(-gate))) * dot(2 * n + 1);
    });
    const got = await readF32(gpu, out, N);
    if (!post) return { got, want };
    return { got: [...got, ...(await readF32(gpu, post.stream, K))], want: [...want, ...x] };
  };
}

/** A check's relative L2 bound, or how to find it on a device (a kernel whose tier depends on it). */
type Bound = number | ((gpu: Gpu) => number);

/** `applies`: whether the adapter runs this variant at all (default: it does). */
const CHECKS: Array<{ kernel: string; bound: Bound; run: Check; applies?: (gpu: Gpu) => boolean }> = [
  { kernel: 'matvec q4_0 (decode)', bound: 1e-5, run: linearCheck('q4_0', 1, 67, 96) },
  { kernel: 'matvec q8_0 (decode)', bound: 1e-5, run: linearCheck('q8_0', 3, 37, 64) },
  { kernel: 'matvec q4_1 (decode)', bound: 1e-5, run: linearCheck('q4_1', 2, 29, 64) },
  { kernel: 'matvec q5_0 (decode)', bound: 1e-5, run: linearCheck('q5_0', 1, 31, 96) },
  { kernel: 'matvec q5_1 (decode)', bound: 1e-5, run: linearCheck('q5_1', 2, 23, 64) },
  { kernel: 'matvec q2_k (decode)', bound: 1e-5, run: linearCheck('q2_k', 1, 13, 256) },
  { kernel: 'matvec q3_k (decode)', bound: 1e-5, run: linearCheck('q3_k', 2, 11, 256) },
  { kernel: 'matvec q4_k (decode)', bound: 1e-5, run: linearCheck('q4_k', 1, 17, 512) },
  { kernel: 'matvec q5_k (decode)', bound: 1e-5, run: linearCheck('q5_k', 3, 7, 256) },
  { kernel: 'matvec q6_k (decode)', bound: 1e-5, run: linearCheck('q6_k', 1, 13, 512) },
  { kernel: 'matvec f16 (decode)', bound: 1e-5, run: linearCheck('f16', 2, 37, 72) },
  { kernel: 'matvec f32 (decode)', bound: 1e-5, run: linearCheck('f32', 1, 29, 53) },
  // The decode fusions in the variants the autotune may pick (README, Benchmark): the defaults, the
  // chunked layout, and q8 activations (against the q8-rounded rows) where WGSL has dot4I8Packed.
  { kernel: 'matvec q4_k + RMSNorm + SwiGLU', bound: 1e-5, run: gatedMlpCheck('q4_k', {}) },
  { kernel: 'matvec q4_0 chunked + RMSNorm + SwiGLU', bound: 1e-5, run: gatedMlpCheck('q4_0', { layout: 'chunked', activations: 'f32' }) },
  { kernel: 'matvec q4_0 q8 + RMSNorm + SwiGLU', bound: 1e-5, run: gatedMlpCheck('q4_0', { activations: 'q8', layout: 'chunked' }), applies: hasPackedDot },
  // Gemma's post-norm folded in too, where the adapter binds the storage buffers it needs.
  { kernel: 'matvec q4_k + post-norm + RMSNorm + SwiGLU', bound: 1e-5, run: gatedMlpCheck('q4_k', { activations: 'f32' }, true), applies: postNormFoldFits },
  // Prefill projections at the bound of the tier the device gives them (f16 storage on the f16 tier).
  { kernel: 'matmul q6_k (prefill)', bound: (gpu) => projectionBound(defaultMatmulTier(gpu, 'q6_k')), run: linearCheck('q6_k', 19, 9, 256) },
  { kernel: 'matmul f16 (prefill)', bound: (gpu) => projectionBound(defaultMatmulTier(gpu, 'f16')), run: linearCheck('f16', 19, 45, 70) },
  { kernel: 'matmul f32 (prefill)', bound: (gpu) => projectionBound(defaultMatmulTier(gpu, 'f32')), run: linearCheck('f32', 70, 33, 41) },
  {
    kernel: 'rmsnorm',
    bound: 1e-5,
    run: async (gpu) => {
      const [M, C] = [3, 131];
      const x = values(M * C, 5);
      const w = values(C, 6);
      const out = createStorage(gpu, 'out', M * C * 4);
      const op = new Norm(gpu, 'rms', { x: createStorage(gpu, 'x', x), weight: createStorage(gpu, 'w', w), out }, { eps: 1e-5 });
      await runPass(gpu, (pass) => op.encode(pass, { rows: M, cols: C }));
      const want = new Float64Array(M * C);
      for (let m = 0; m < M; m++) {
        let ss = 0;
        for (let c = 0; c < C; c++) ss += x[m * C + c] ** 2;
        const r = 1 / Math.sqrt(ss / C + 1e-5);
        for (let c = 0; c < C; c++) want[m * C + c] = x[m * C + c] * r * w[c];
      }
      return { got: await readF32(gpu, out, M * C), want };
    },
  },
  {
    kernel: 'log-softmax',
    bound: 1e-5,
    run: async (gpu) => {
      const [M, C] = [2, 1031];
      const x = values(M * C, 7).map((v) => v * 20);
      const out = createStorage(gpu, 'out', M * C * 4);
      const op = new Softmax(gpu, 'log_softmax', { x: createStorage(gpu, 'x', x), out });
      await runPass(gpu, (pass) => op.encode(pass, { rows: M, cols: C }));
      const want = new Float64Array(M * C);
      for (let m = 0; m < M; m++) {
        const row = Array.from(x.subarray(m * C, (m + 1) * C));
        const max = Math.max(...row);
        const lse = max + Math.log(row.reduce((a, v) => a + Math.exp(v - max), 0));
        row.forEach((v, c) => (want[m * C + c] = v - lse));
      }
      return { got: await readF32(gpu, out, M * C), want };
    },
  },
  {
    kernel: 'rope (rotate_half)',
    bound: 1e-5,
    run: async (gpu) => {
      const [T, H, D] = [5, 3, 16];
      const x = values(T * H * D, 8);
      const inv = ropeInverseFrequencies(D, 10000);
      const buffer = createStorage(gpu, 'x', x);
      const op = new Rope(gpu, 'half', { x: buffer, positions: createStorage(gpu, 'pos', Uint32Array.from([3, 4, 5, 6, 7])), invFreq: createStorage(gpu, 'inv', inv) });
      await runPass(gpu, (pass) => op.encode(pass, { tokens: T, heads: H, headDim: D }));
      const want = new Float64Array(T * H * D);
      for (let t = 0; t < T; t++) want.set(ropeReference(x.subarray(t * H * D, (t + 1) * H * D), H, D, t + 3, inv), t * H * D);
      return { got: await readF32(gpu, buffer, T * H * D), want };
    },
  },
  { kernel: 'attention prefill (causal, f16 KV)', bound: 1e-5, run: prefillCheck },
  { kernel: 'attention decode (GQA 4/2)', bound: 1e-5, run: (gpu) => decodeCheck(gpu, 'f32', 'attention') },
  // The default KV cache: attention over what the write stored, and what it stored against the
  // f32 keys and values (f16: 2^-11 relative at most; q8_0: half a step of 1/127 of a block's largest).
  { kernel: 'attention decode f16 KV', bound: 1e-5, run: (gpu) => decodeCheck(gpu, 'f16', 'attention') },
  { kernel: 'kv write f16', bound: 5e-4, run: (gpu) => decodeCheck(gpu, 'f16', 'stored') },
  { kernel: 'attention decode q8_0 KV', bound: 1e-5, run: (gpu) => decodeCheck(gpu, 'q8_0', 'attention') },
  { kernel: 'kv write q8_0', bound: 6e-3, run: (gpu) => decodeCheck(gpu, 'q8_0', 'stored') },
  // The step's RoPE and KV write folded into decode attention, on the default KV cache.
  { kernel: 'attention decode + RoPE + KV write', bound: 1e-5, run: (gpu) => foldedDecodeCheck(gpu, 'f16', 'attention') },
  { kernel: 'rope + kv write f16, folded', bound: 5e-4, run: (gpu) => foldedDecodeCheck(gpu, 'f16', 'stored') },
  {
    kernel: 'top-k (k=8 of 5003)',
    bound: 0,
    run: async (gpu) => {
      const V = 5003;
      const logits = values(V, 12);
      const buf = (n: string, b: number) => createStorage(gpu, n, b);
      const [vals, ids] = [buf('vals', 32), buf('ids', 32)];
      const op = new TopK(gpu, { logits: createStorage(gpu, 'logits', logits), values: vals, indices: ids }, { maxRows: 1, maxCols: V, maxK: 8 });
      await runPass(gpu, (pass) => op.encode(pass, { rows: 1, cols: V, k: 8 }));
      const want = Array.from(logits.keys()).sort((a, b) => logits[b] - logits[a] || a - b).slice(0, 8);
      return { got: Array.from(await readU32(gpu, ids, 8)), want };
    },
  },
  {
    kernel: 'swiglu (elementwise)',
    bound: 1e-5,
    run: async (gpu) => {
      const n = 301;
      const a = values(n, 1);
      const b = values(n, 2);
      const out = createStorage(gpu, 'selfcheck.out', n * 4);
      const op = new Elementwise(gpu, 'swiglu', { a: createStorage(gpu, 'a', a), b: createStorage(gpu, 'b', b), out });
      await runPass(gpu, (pass) => op.encode(pass, { count: n }));
      const want = Array.from(a, (x, i) => (x / (1 + Math.exp(-x))) * b[i]);
      return { got: await readF32(gpu, out, n), want };
    },
  },
];

export async function runSelfCheck(gpu: Gpu): Promise<SelfCheckResult[]> {
  const results: SelfCheckResult[] = [];
  for (const check of CHECKS) {
    if (check.applies && !check.applies(gpu)) continue;
    const { got, want } = await check.run(gpu);
    const err = relL2(got, want);
    const bound = typeof check.bound === 'number' ? check.bound : check.bound(gpu);
    results.push({ kernel: check.kernel, relL2: err, bound, ok: err <= bound });
  }
  return results;
}

// The matvec's decode fusions (MatvecFusion) on both tiers, against a float64 reference: RMSNorm and
// LayerNorm folded into the activation loads, the GELU epilogue, SwiGLU over interleaved (gate, up)
// row pairs, and Gemma's post-norm and residual add before the product (writing the new stream); at odd output counts, K not a multiple of the workgroup's stride, non-zero
// offsets and row strides, several dtypes; and through Linear over row chunks.
import { afterAll, describe, expect, it } from 'vitest';
import { Matvec, postNormFoldFits, type MatvecFusion, type MatvecLayout } from '../kernels/matvec.ts';
import { hasPackedDot, type MatvecActivations } from '../kernels/tiers.ts';
import { Linear } from '../kernels/linear.ts';
import type { Tier } from '../kernels/tiers.ts';
import { runPass } from '../kernels/dispatch.ts';
import type { WeightDtype } from '../kernels/weights.ts';
import { dequantize } from '../kernels/weights-reference.ts';
import { uploadWeight, uploadWeightChunks } from '../kernels/weights-upload.ts';
import { ShapeError } from '../src/errors.ts';
import { createStorage, poisoned, readF32, useGpu } from './support/gpu.ts';
import { randomWeight } from './support/kquants.ts';
import { expectClose, randomF32 } from './support/reference.ts';
import { ErrorLog, rowsWithNaNGaps } from './support/projection.ts';
import { describeFused, gelu, layout, silu, type FusedCase } from './support/matvec-cases.ts';

const gpu = useGpu();
const log = new ErrorLog();
afterAll(() => console.log(`matvec fusions\n${log.summary()}`));

function tiers(): Tier[] {
  return gpu().features.has('subgroups') ? ['baseline', 'subgroup'] : ['baseline'];
}

// f32 accumulation of the products and of the norm's statistics; weights dequantised exactly.
const TOLERANCE = 1e-5;

function reference(c: FusedCase, w: Float64Array, a: Float32Array, normWeight: Float32Array, normBias: Float32Array, bias?: Float32Array, residual?: Float32Array): Float64Array {
  const { M, N, K } = c;
  const L = layout(c);
  const eps = 1e-5;
  const out = new Float64Array(M * N);
  const dot = (row: Float64Array, r: number) => {
    let s = 0;
    for (let k = 0; k < K; k++) s += row[k] * w[r * K + k];
    return s + (bias ? bias[L.biasOffset + r] : 0);
  };
  for (let m = 0; m < M; m++) {
    const row = Float64Array.from({ length: K }, (_, k) => a[L.inputOffset + m * L.inputRowStride + k]);
    if (c.norm === 'rms') {
      const ms = row.reduce((s, v) => s + v * v, 0) / K;
      const scale = 1 / Math.sqrt(ms + eps);
      for (let k = 0; k < K; k++) row[k] = row[k] * scale * normWeight[k];
    } else if (c.norm === 'layer') {
      const mean = row.reduce((s, v) => s + v, 0) / K;
      const variance = row.reduce((s, v) => s + (v - mean) ** 2, 0) / K;
      const scale = 1 / Math.sqrt(variance + eps);
      for (let k = 0; k < K; k++) row[k] = (row[k] - mean) * scale * normWeight[k] + normBias[k];
    }
    const act = c.activation === 'silu' ? silu : c.activation === 'gelu' ? gelu : (x: number) => x;
    for (let n = 0; n < N; n++) {
      let v = c.glu ? act(dot(row, 2 * n)) * dot(row, 2 * n + 1) : act(dot(row, n));
      if (residual) v += residual[L.residualOffset + m * L.residualRowStride + n];
      out[m * N + n] = v;
    }
  }
  return out;
}

interface FusedSetup {
  weightRows: number;
  a: GPUBuffer;
  out: GPUBuffer;
  bias?: GPUBuffer;
  residual?: GPUBuffer;
  fusion: MatvecFusion;
  run: { M: number; inputOffset: number; inputRowStride: number; outputOffset: number; outputRowStride: number; biasOffset: number; residualOffset?: number; residualRowStride?: number };
  host: ReturnType<typeof randomWeight>;
  check(): Promise<void>;
}

/** `variant` names the kernel variant in messages (its tier, and layout). */
function setup(c: FusedCase, variant: string): FusedSetup {
  const L = layout(c);
  const weightRows = c.glu ? 2 * c.N : c.N;
  const host = randomWeight(c.dtype, weightRows, c.K, c.seed, 0.5);
  // Rows with a mean far from zero (LayerNorm's hard case) on odd rows.
  const aValues = rowsWithNaNGaps(c.M, c.K, L.inputOffset, L.inputRowStride, c.seed + 1);
  for (let m = 1; m < c.M; m += 2) for (let k = 0; k < c.K; k++) aValues[L.inputOffset + m * L.inputRowStride + k] += 20;
  const normWeight = randomF32(c.K, c.seed + 2, 1);
  const normBias = randomF32(c.K, c.seed + 3, 1);
  const biasValues = c.bias ? randomF32(L.biasOffset + weightRows + 1, c.seed + 4, 1) : undefined;
  const residualValues = c.residual ? rowsWithNaNGaps(c.M, c.N, L.residualOffset, L.residualRowStride, c.seed + 5) : undefined;
  const outLength = L.outputOffset + (c.M - 1) * L.outputRowStride + c.N + 3;
  const out = poisoned(gpu(), 'out', outLength);
  const fusion: MatvecFusion = {
    norm: c.norm && { kind: c.norm, weight: createStorage(gpu(), 'norm.weight', normWeight), bias: c.norm === 'layer' ? createStorage(gpu(), 'norm.bias', normBias) : undefined, eps: 1e-5 },
    activation: c.activation,
    glu: c.glu,
  };
  const ref = reference(c, dequantize(host), aValues, normWeight, normBias, biasValues, residualValues);
  const what = `${variant} ${describeFused(c)}`;
  return {
    weightRows,
    a: createStorage(gpu(), 'a', aValues),
    out,
    bias: biasValues && createStorage(gpu(), 'bias', biasValues),
    residual: residualValues && createStorage(gpu(), 'residual', residualValues),
    fusion,
    host,
    run: {
      M: c.M, inputOffset: L.inputOffset, inputRowStride: L.inputRowStride, outputOffset: L.outputOffset, outputRowStride: L.outputRowStride,
      biasOffset: L.biasOffset, ...(c.residual ? { residualOffset: L.residualOffset, residualRowStride: L.residualRowStride } : {}),
    },
    async check() {
      const all = await readF32(gpu(), out, outLength);
      const got = new Float64Array(c.M * c.N);
      for (let i = 0; i < all.length; i++) {
        const rel = i - L.outputOffset;
        const row = Math.floor(rel / L.outputRowStride);
        const col = rel - row * L.outputRowStride;
        if (rel >= 0 && row < c.M && col < c.N) got[row * c.N + col] = all[i];
        else if (!Number.isNaN(all[i])) throw new Error(`${what}: element ${i} outside the output was written (${all[i]})`);
      }
      log.add(`${variant} ${c.norm ?? ''}${c.glu ? ' glu' : ''} ${c.activation ?? ''}`, expectClose(got, ref, TOLERANCE, what));
    },
  };
}

// K per dtype: not a multiple of 4 x the workgroup size (f32 / f16 not even of 4), at least one block.
// Each case compiles its own pipeline, so the grid is kept small: every fusion on three dtypes (plain
// floats, a block quant, a K-quant), the gated MLP on the others.
const K_OF: Record<string, number> = { f32: 53, f16: 70, q8_0: 96, q4_0: 160, q5_1: 96, q4_k: 256, q6_k: 512 };
const cases: FusedCase[] = [];
for (const dtype of ['f32', 'q4_0', 'q4_k'] as const) {
  const K = K_OF[dtype];
  cases.push(
    // q/k/v: RMSNorm folded in, with Qwen2's bias; the GPT-2 c_attn: LayerNorm with bias.
    { dtype, M: 1, N: 37, K, norm: 'rms', bias: true, seed: 1 },
    { dtype, M: 5, N: 37, K, norm: 'layer', bias: true, seed: 2 },
    // The gated MLP: RMSNorm, then SwiGLU over (gate, up) pairs; GPT-2's MLP: LayerNorm, then GELU.
    { dtype, M: 1, N: 19, K, norm: 'rms', activation: 'silu', glu: true, seed: 3 },
    { dtype, M: 3, N: 23, K, norm: 'layer', activation: 'gelu', bias: true, seed: 5 },
  );
}
for (const dtype of ['f16', 'q8_0', 'q5_1', 'q6_k'] as const) {
  cases.push({ dtype, M: 8, N: 19, K: K_OF[dtype], norm: 'rms', activation: 'silu', glu: true, bias: true, residual: true, seed: 4 });
}
cases.push(
  // Fusions without a norm, and several outputs per workgroup with small workgroups.
  { dtype: 'q4_0', M: 2, N: 21, K: 160, activation: 'silu', glu: true, residual: true, seed: 6 },
  // Gemma's GeGLU: RMSNorm, then the tanh GELU over (gate, up) pairs.
  { dtype: 'f32', M: 1, N: 19, K: K_OF.f32, norm: 'rms', activation: 'gelu', glu: true, seed: 12 },
  { dtype: 'q8_0', M: 4, N: 23, K: 96, norm: 'rms', activation: 'gelu', glu: true, seed: 13 },
  { dtype: 'q8_0', M: 3, N: 11, K: 96, norm: 'rms', activation: 'silu', glu: true, rowsPerWorkgroup: 2, workgroupSize: 32, seed: 8 },
  // K far above the workgroup's stride (each thread walks many columns), several rows per workgroup.
  { dtype: 'q4_k', M: 2, N: 13, K: 2048, norm: 'layer', rowsPerWorkgroup: 3, workgroupSize: 32, seed: 9 },
  // f16 with K in whole 8-column chunks (70 has none): the gated MLP and LayerNorm, for the chunked layout.
  { dtype: 'f16', M: 8, N: 19, K: 136, norm: 'rms', activation: 'silu', glu: true, bias: true, residual: true, seed: 14 },
  { dtype: 'f16', M: 3, N: 23, K: 200, norm: 'layer', activation: 'gelu', bias: true, seed: 15 },
);

// Also run in the chunked layout: every fusion once (each variant is a pipeline per tier to compile).
const CHUNKED_CASES = new Set(cases.filter((c) =>
  (c.dtype === 'q4_0' && c.glu) || (c.dtype === 'q4_k' && c.norm === 'layer') || c.dtype === 'q8_0' || c.dtype === 'q6_k' ||
  (c.dtype === 'f16' && c.K % 8 === 0)));

// Each case compiles a fused pipeline per tier, which takes a software adapter up to a minute or two on
// a loaded machine (cached on disk afterwards): a case's time limit allows for that.
describe('matvec fusions', { timeout: 600_000 }, () => {
  for (const c of cases) {
    it(describeFused(c), async () => {
      for (const tier of tiers()) {
        // The chunked layout too on the cases that ask, on the fastest tier (the fused norm then loads
        // chunk by chunk; both tiers share the threads' partial sums).
        const layouts: MatvecLayout[] = CHUNKED_CASES.has(c) && tier === tiers().at(-1) ? ['strided', 'chunked'] : ['strided'];
        for (const layout of layouts) {
          const s = setup(c, `${tier} ${layout}`);
          const weight = uploadWeight(gpu(), `w_${c.dtype}`, s.host);
          const kernel = new Matvec(gpu(), { weight, input: s.a, output: s.out, bias: s.bias, residual: s.residual }, {
            tier, layout, fusion: s.fusion, rowsPerWorkgroup: c.rowsPerWorkgroup, workgroupSize: c.workgroupSize,
          });
          expect(kernel.outputs).toBe(c.N);
          await runPass(gpu(), (pass) => kernel.encode(pass, s.run));
          await s.check();
        }
      }
    });
  }

  // Linear over row chunks of an interleaved weight (a large model's gate/up): each chunk's matvec
  // writes its outputs at firstRow / 2 and reads its bias from firstRow; the matmul path writes the pairs.
  it('Linear: glu over row chunks, and its matmul over the same weight', async () => {
    const c: FusedCase = { dtype: 'q8_0', M: 3, N: 21, K: 96, norm: 'rms', activation: 'silu', glu: true, bias: true, seed: 11 };
    for (const tier of tiers()) {
      const s = setup(c, tier);
      // 6 rows of 96 q8_0 columns per chunk (3 x 34 bytes a row): chunks of 6, 6, 6, 6, 6, 6, 6 rows.
      const weight = uploadWeightChunks(gpu(), 'w_chunked', s.host, { maxChunkBytes: 6 * 96 + 40, rowMultiple: 2 });
      expect(weight.chunks.length).toBeGreaterThan(2);
      expect(weight.chunks.every((chunk) => chunk.weight.rows % 2 === 0)).toBe(true);
      const pairs = poisoned(gpu(), 'pairs', 16 * 2 * c.N);
      const linear = new Linear(gpu(), {
        weight, bias: s.bias, input: s.a, output: pairs, maxRows: 16,
        matvec: { tier }, fused: { input: s.a, output: s.out, fusion: s.fusion },
      });
      expect(linear.fusedFor(c.M)).toBe(true);
      expect(linear.fusedFor(9)).toBe(false);
      await runPass(gpu(), (pass) => linear.encode(pass, s.run));
      await s.check();
    }
  });

  it('refuses fusions it cannot run', () => {
    const host = randomWeight('f32', 7, 12, 1);
    const weight = uploadWeight(gpu(), 'w', host);
    const input = createStorage(gpu(), 'a', 12 * 4);
    const output = createStorage(gpu(), 'out', 8 * 4);
    const normWeight = createStorage(gpu(), 'nw', 12 * 4);
    const short = createStorage(gpu(), 'short', 8 * 4);
    const make = (fusion: MatvecFusion) => new Matvec(gpu(), { weight, input, output }, { fusion });
    expect(() => make({ glu: true })).toThrow(/glu needs \(gate, up\) row pairs, but the weight has 7 rows/);
    expect(() => make({ norm: { kind: 'rms', weight: short, eps: 1e-5 } })).toThrow(/norm weight needs 48 bytes/);
    expect(() => make({ norm: { kind: 'layer', weight: normWeight, eps: 1e-5 } })).toThrow(/LayerNorm needs norm bias/);
    expect(() => make({ norm: { kind: 'rms', weight: normWeight, eps: -1 } })).toThrow(/eps must be a finite number/);
    expect(() => make({ activation: 'relu' as 'gelu' })).toThrow(ShapeError);
    const even = uploadWeight(gpu(), 'w8', randomWeight('f32', 8, 12, 2));
    expect(() => new Matvec(gpu(), { weight: even, input, output }, { fusion: { glu: true }, rowsPerWorkgroup: 3 })).toThrow(/rowsPerWorkgroup must be 1..2 with glu/);
  });
});

// Gemma's post-norm before the product: the input is a sublayer's output a, the product takes
// x = base + RMSNorm(a) * post weight (then the pre-norm, if any), and the first workgroup writes x.
describe('matvec: a post-norm and residual add folded in (Gemma)', { timeout: 600_000 }, () => {
  interface PostCase { dtype: WeightDtype; M: number; N: number; K: number; norm: boolean; glu: boolean; rowsPerWorkgroup?: number; workgroupSize?: number; seed: number }
  const postCases: PostCase[] = [
    // q/k/v after the previous layer's post-MLP norm; the gated MLP after the attention's post-norm.
    { dtype: 'q4_0', M: 1, N: 37, K: 160, norm: true, glu: false, seed: 21 },
    { dtype: 'q4_k', M: 3, N: 19, K: 256, norm: true, glu: true, rowsPerWorkgroup: 2, workgroupSize: 32, seed: 22 },
    // K not a multiple of 4 (the strided loads' tail), no pre-norm, several rows.
    { dtype: 'f32', M: 2, N: 13, K: 53, norm: false, glu: false, seed: 23 },
  ];
  const eps = 1e-6;

  function postSetup(c: PostCase) {
    const fusedCase: FusedCase = { dtype: c.dtype, M: c.M, N: c.N, K: c.K, norm: c.norm ? 'rms' : undefined, activation: c.glu ? 'silu' : undefined, glu: c.glu, seed: c.seed };
    const L = layout(fusedCase);
    const weightRows = c.glu ? 2 * c.N : c.N;
    const host = randomWeight(c.dtype, weightRows, c.K, c.seed, 0.5);
    const a = rowsWithNaNGaps(c.M, c.K, L.inputOffset, L.inputRowStride, c.seed + 1);
    const base = rowsWithNaNGaps(c.M, c.K, L.inputOffset, L.inputRowStride, c.seed + 2);
    const postWeight = randomF32(c.K, c.seed + 3, 1);
    const normWeight = randomF32(c.K, c.seed + 4, 1);
    // Float64: x = base + a / rms(a) * post weight, then the product as the plain fusions' reference.
    const x = new Float32Array(a.length).fill(NaN);
    const x64 = new Float64Array(c.M * c.K);
    for (let m = 0; m < c.M; m++) {
      const at = L.inputOffset + m * L.inputRowStride;
      let squares = 0;
      for (let k = 0; k < c.K; k++) squares += a[at + k] ** 2;
      const scale = 1 / Math.sqrt(squares / c.K + eps);
      for (let k = 0; k < c.K; k++) x64[m * c.K + k] = base[at + k] + a[at + k] * scale * postWeight[k];
      for (let k = 0; k < c.K; k++) x[at + k] = x64[m * c.K + k];
    }
    // The reference normalises in float64 from x rounded to f32, the stream's precision: the
    // difference from an unrounded x is far below the bound.
    const want = reference(fusedCase, dequantize(host), x, normWeight, normWeight);
    return { L, weightRows, host, a, base, postWeight, normWeight, x64, want, fusedCase };
  }

  for (const c of postCases) {
    it(`${describeFused({ ...c, norm: c.norm ? 'rms' : undefined, activation: c.glu ? 'silu' : undefined })} post-norm`, async () => {
      if (!postNormFoldFits(gpu())) return;
      const s = postSetup(c);
      const weight = uploadWeight(gpu(), `w_${c.dtype}`, s.host);
      const variants: Array<{ tier: Tier; layout: MatvecLayout; activations: MatvecActivations }> = [];
      for (const tier of tiers()) variants.push({ tier, layout: 'strided', activations: 'f32' });
      if (c.dtype !== 'f32') {
        variants.push({ tier: tiers().at(-1)!, layout: 'chunked', activations: 'f32' });
        if (hasPackedDot(gpu())) variants.push({ tier: tiers().at(-1)!, layout: 'chunked', activations: 'q8' });
      }
      for (const v of variants) {
        const what = `${v.tier} ${v.layout} ${v.activations} post-norm ${describeFused(s.fusedCase)}`;
        const outLength = s.L.outputOffset + (c.M - 1) * s.L.outputRowStride + c.N + 3;
        const out = poisoned(gpu(), 'out', outLength);
        const stream = poisoned(gpu(), 'stream', s.a.length);
        const fusion: MatvecFusion = {
          norm: c.norm ? { kind: 'rms', weight: createStorage(gpu(), 'norm.weight', s.normWeight), eps: 1e-5 } : undefined,
          activation: c.glu ? 'silu' : undefined,
          glu: c.glu,
          postNorm: { weight: createStorage(gpu(), 'post.weight', s.postWeight), eps, base: createStorage(gpu(), 'base', s.base), stream },
        };
        const kernel = new Matvec(gpu(), { weight, input: createStorage(gpu(), 'a', s.a), output: out }, {
          tier: v.tier, layout: v.layout, activations: v.activations, fusion, rowsPerWorkgroup: c.rowsPerWorkgroup, workgroupSize: c.workgroupSize,
        });
        await runPass(gpu(), (pass) => kernel.encode(pass, { M: c.M, inputOffset: s.L.inputOffset, inputRowStride: s.L.inputRowStride, outputOffset: s.L.outputOffset, outputRowStride: s.L.outputRowStride }));
        // The stream: x at the input's layout, nothing else written.
        const streamValues = await readF32(gpu(), stream, s.a.length);
        const gotX = new Float64Array(c.M * c.K);
        for (let i = 0; i < streamValues.length; i++) {
          const rel = i - s.L.inputOffset;
          const row = Math.floor(rel / s.L.inputRowStride);
          const col = rel - row * s.L.inputRowStride;
          if (rel >= 0 && row < c.M && col < c.K) gotX[row * c.K + col] = streamValues[i];
          else expect(Number.isNaN(streamValues[i]), `${what}: stream element ${i} outside the rows was written`).toBe(true);
        }
        log.add(`${v.tier} ${v.layout} ${v.activations} post-norm stream`, expectClose(gotX, s.x64, TOLERANCE, `${what}: stream`));
        // The outputs; q8 activations round x to int8 per block of 32 (test/matvec-q8.test.ts's bound).
        const all = await readF32(gpu(), out, outLength);
        const got = new Float64Array(c.M * c.N);
        for (let m = 0; m < c.M; m++) for (let n = 0; n < c.N; n++) got[m * c.N + n] = all[s.L.outputOffset + m * s.L.outputRowStride + n];
        for (const i of [0, s.L.outputOffset - 1, outLength - 1]) expect(Number.isNaN(all[i]), `${what}: output element ${i} was written`).toBe(true);
        log.add(`${v.tier} ${v.layout} ${v.activations} post-norm`, expectClose(got, s.want, v.activations === 'q8' ? 1.5e-2 : TOLERANCE, what));
      }
    });
  }

  it('Linear over row chunks writes the stream once, from its first chunk; writeStream false writes none', async () => {
    if (!postNormFoldFits(gpu())) return;
    const c: PostCase = { dtype: 'q8_0', M: 2, N: 20, K: 96, norm: true, glu: true, seed: 24 };
    const s = postSetup(c);
    const weight = uploadWeightChunks(gpu(), 'w_chunked', s.host, { maxChunkBytes: 6 * 96 + 40, rowMultiple: 2 });
    expect(weight.chunks.length).toBeGreaterThan(2);
    const run = { M: c.M, inputOffset: s.L.inputOffset, inputRowStride: s.L.inputRowStride, outputOffset: s.L.outputOffset, outputRowStride: s.L.outputRowStride };
    for (const writeStream of [true, false]) {
      const outLength = s.L.outputOffset + (c.M - 1) * s.L.outputRowStride + c.N + 3;
      const out = poisoned(gpu(), 'out', outLength);
      const stream = poisoned(gpu(), 'stream', s.a.length);
      const a = createStorage(gpu(), 'a', s.a);
      const linear = new Linear(gpu(), {
        weight, input: a, output: poisoned(gpu(), 'pairs', 16 * 2 * c.N), maxRows: 16,
        fused: {
          input: a, output: out,
          fusion: {
            norm: { kind: 'rms', weight: createStorage(gpu(), 'norm.weight', s.normWeight), eps: 1e-5 }, activation: 'silu', glu: true,
            postNorm: { weight: createStorage(gpu(), 'post.weight', s.postWeight), eps, base: createStorage(gpu(), 'base', s.base), stream, writeStream },
          },
        },
      });
      expect(linear.normFoldedFor(c.M)).toBe(true);
      await runPass(gpu(), (pass) => linear.encode(pass, run));
      const all = await readF32(gpu(), out, outLength);
      const got = new Float64Array(c.M * c.N);
      for (let m = 0; m < c.M; m++) for (let n = 0; n < c.N; n++) got[m * c.N + n] = all[s.L.outputOffset + m * s.L.outputRowStride + n];
      expectClose(got, s.want, TOLERANCE, `Linear post-norm over chunks, writeStream ${writeStream}`);
      const streamValues = await readF32(gpu(), stream, s.a.length);
      const gotX = Float64Array.from({ length: c.M * c.K }, (_, i) => streamValues[s.L.inputOffset + Math.floor(i / c.K) * s.L.inputRowStride + (i % c.K)]);
      if (writeStream) expectClose(gotX, s.x64, TOLERANCE, 'Linear post-norm stream');
      else expect(gotX.every(Number.isNaN)).toBe(true);
    }
  });

  it('refuses a post-norm beside a residual or a LayerNorm, a stream that is another of its buffers, and a bad eps', () => {
    if (!postNormFoldFits(gpu())) return;
    const weight = uploadWeight(gpu(), 'w', randomWeight('f32', 8, 12, 1));
    const input = createStorage(gpu(), 'a', 12 * 4);
    const output = createStorage(gpu(), 'out', 8 * 4);
    const vector = createStorage(gpu(), 'v', 12 * 4);
    const base = createStorage(gpu(), 'base', 12 * 4);
    const stream = createStorage(gpu(), 'stream', 12 * 4);
    const post = { weight: vector, eps: 1e-6, base, stream };
    const make = (fusion: MatvecFusion, residual?: GPUBuffer) => new Matvec(gpu(), { weight, input, output, residual }, { fusion });
    expect(() => make({ postNorm: post }, createStorage(gpu(), 'r', 8 * 4))).toThrow(/cannot have a residual too/);
    expect(() => make({ postNorm: post, norm: { kind: 'layer', weight: vector, bias: vector, eps: 1e-5 } })).toThrow(/not a LayerNorm/);
    for (const clash of [input, base, output]) expect(() => make({ postNorm: { ...post, stream: clash } })).toThrow(/buffer of its own/);
    expect(() => make({ postNorm: { ...post, eps: Number.NaN } })).toThrow(/post-norm eps/);
    expect(() => make({ postNorm: { ...post, weight: createStorage(gpu(), 'short', 8 * 4) } })).toThrow(/post-norm weight needs/);
    const kernel = make({ postNorm: { ...post, base: createStorage(gpu(), 'short base', 8 * 4) } });
    expect(() => kernel.encode({} as GPUComputePassEncoder, { M: 1 })).toThrow(/post-norm base needs/);
  });
});

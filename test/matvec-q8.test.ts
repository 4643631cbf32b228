// The matvec's q8 activation tier (MatvecOptions.activations 'q8': activation rows quantised to int8
// as each workgroup loads them, products by dot4I8Packed) over every weight dtype it serves, on the
// adapter's fastest reduction tier (see tiers), at shapes that are not multiples of the tiles, with offsets,
// strides, bias, residual and the decode fusions. Two references per case, both float64 on the
// dequantised weight:
//   tight: on the activations rounded to Q8_0 in float64 (per block of 32, d = amax / 127 and
//          q = round(x / d)), the inputs first moved off the rounding ties (moveOffTies) so that the
//          kernel's f32 arithmetic rounds every element the same way: only f32 accumulation differs,
//          <= 1e-5 relative;
//   loose: on the unquantised activations: adds the activations' rounding, |x - q d| <= d / 2 with
//          d = amax / 127 per block of 32, random-signed over K products: about 2^-9 relative for
//          Gaussian rows, bound 1.5e-2 (a few times the expected, never near a real fault's error).
import { afterAll, describe, expect, it } from 'vitest';
import { Matvec, Q8_ACTIVATION_DTYPES, defaultMatvecActivations, type MatvecFusion } from '../kernels/matvec.ts';
import { hasPackedDot, kernelTiers, type Tier } from '../kernels/tiers.ts';
import { runPass } from '../kernels/dispatch.ts';
import { isKQuantDtype, type WeightDtype } from '../kernels/weights.ts';
import { packWeight } from '../kernels/weights-quantize.ts';
import { dequantize, roundQ8Activations } from '../kernels/weights-reference.ts';
import { uploadWeight } from '../kernels/weights-upload.ts';
import type { Gpu } from '../src/gpu/device.ts';
import { ShapeError } from '../src/errors.ts';
import { createStorage, poisoned, readF32, useGpu } from './support/gpu.ts';
import { randomWeight } from './support/kquants.ts';
import { expectClose, randomF32 } from './support/reference.ts';
import { ErrorLog, rowsWithNaNGaps } from './support/projection.ts';
import { describeFused, gelu, layout, silu, type FusedCase } from './support/matvec-cases.ts';

const gpu = useGpu();
const log = new ErrorLog();
afterAll(() => console.log(`matvec q8 activations\n${log.summary()}`));

const TIGHT = 1e-5;
// Each case compiles a matvec pipeline: a minute on a busy software adapter.
const CASE_TIMEOUT_MS = 600_000;
const LOOSE = 1.5e-2;

/**
 * The reduction tier each case runs on: the subgroup tier where the adapter has subgroups (the core
 * project), else the baseline (the compat project). The suite runs this file on both, so each tier is
 * checked at every case without compiling every case twice on one adapter; test/autotune.test.ts runs
 * the baseline q8 variant on the core adapter too.
 */
function tiers(): Tier[] {
  return gpu().features.has('subgroups') ? ['subgroup'] : ['baseline'];
}

/** The same device seen without the packed dot product language feature. */
function withoutPackedDot(device: Gpu): Gpu {
  return Object.create(device, { wgslLanguageFeatures: { value: new Set<string>() } }) as Gpu;
}

/** Each row of the input as the matvec multiplies it: normalised in float64 when the case has a norm. */
function normalisedRows(c: FusedCase, a: Float32Array, normWeight: Float32Array, normBias: Float32Array): Float64Array[] {
  const L = layout(c);
  const eps = 1e-5;
  return Array.from({ length: c.M }, (_, m) => {
    const row = Float64Array.from({ length: c.K }, (_, k) => a[L.inputOffset + m * L.inputRowStride + k]);
    if (c.norm === 'rms') {
      const scale = 1 / Math.sqrt(row.reduce((s, v) => s + v * v, 0) / c.K + eps);
      for (let k = 0; k < c.K; k++) row[k] = row[k] * scale * normWeight[k];
    } else if (c.norm === 'layer') {
      const mean = row.reduce((s, v) => s + v, 0) / c.K;
      const scale = 1 / Math.sqrt(row.reduce((s, v) => s + (v - mean) ** 2, 0) / c.K + eps);
      for (let k = 0; k < c.K; k++) row[k] = (row[k] - mean) * scale * normWeight[k] + normBias[k];
    }
    return row;
  });
}

/** Float64: out[m, n] = act(rows[m] · W[n] + bias[n]) (glu: act(gate) * up) + residual[m, n]. */
function reference(c: FusedCase, w: Float64Array, rows: Float64Array[], bias?: Float32Array, residual?: Float32Array): Float64Array {
  const L = layout(c);
  const out = new Float64Array(c.M * c.N);
  const act = c.activation === 'silu' ? silu : c.activation === 'gelu' ? gelu : (x: number) => x;
  for (let m = 0; m < c.M; m++) {
    const dot = (r: number) => {
      let s = 0;
      for (let k = 0; k < c.K; k++) s += rows[m][k] * w[r * c.K + k];
      return s + (bias ? bias[L.biasOffset + r] : 0);
    };
    for (let n = 0; n < c.N; n++) {
      let v = c.glu ? act(dot(2 * n)) * dot(2 * n + 1) : act(dot(n));
      if (residual) v += residual[L.residualOffset + m * L.residualRowStride + n];
      out[m * c.N + n] = v;
    }
  }
  return out;
}

/**
 * How close, in steps of q, x / d may come to a rounding tie (k + 1/2) before the test moves it: the
 * kernel computes x / d in f32 from f32 statistics, off from float64 by about 1e-4 of a step at
 * most (LayerNorm's rows with a mean of 20, where the mean's f32 error does not cancel), 4e-5 for
 * RMSNorm, whose scale cancels in x / amax.
 */
const TIE_MARGIN = 1e-3;

/** The first element (row, column, x / d) within TIE_MARGIN of a rounding tie, if any. */
function firstTie(rows: Float64Array[]): { m: number; k: number; steps: number; d: number } | undefined {
  for (let m = 0; m < rows.length; m++) {
    for (let b = 0; b < rows[m].length; b += 32) {
      const block = rows[m].subarray(b, b + 32);
      const d = block.reduce((amax, v) => Math.max(amax, Math.abs(v)), 0) / 127;
      for (let i = 0; i < 32 && d > 0; i++) {
        const steps = block[i] / d;
        if (Math.abs(Math.abs(steps % 1) - 0.5) < TIE_MARGIN) return { m, k: b + i, steps, d };
      }
    }
  }
  return undefined;
}

/**
 * Move the case's inputs until no normalised element lies near a rounding tie, a quarter step at a
 * time (so that |x / d| stays below 127 and the block's scale is kept): without a norm or with RMSNorm
 * x / d is proportional to the raw input, so scaling that one input moves it exactly; with LayerNorm
 * the input would also shift the row's mean, so the norm's bias at that column moves instead (which
 * moves the other rows' elements of that column too: the loop looks again until none is left).
 */
function moveOffTies(c: FusedCase, a: Float32Array, normWeight: Float32Array, normBias: Float32Array): void {
  const L = layout(c);
  for (let moves = 0; moves < 1000; moves++) {
    const tie = firstTie(normalisedRows(c, a, normWeight, normBias));
    if (!tie) return;
    const away = Math.abs(tie.steps) + 0.25;
    if (c.norm === 'layer') normBias[tie.k] += Math.sign(tie.steps) * 0.25 * tie.d;
    else a[L.inputOffset + tie.m * L.inputRowStride + tie.k] *= away / Math.abs(tie.steps);
  }
  throw new Error(`${describeFused(c)}: could not move the inputs off the q8 rounding ties`);
}

async function runCase(c: FusedCase, tier: Tier): Promise<void> {
  const what = `${tier} ${describeFused(c)}`;
  const L = layout(c);
  const weightRows = c.glu ? 2 * c.N : c.N;
  const host = randomWeight(c.dtype, weightRows, c.K, c.seed, 0.5);
  const w = dequantize(host);
  const a = rowsWithNaNGaps(c.M, c.K, L.inputOffset, L.inputRowStride, c.seed + 1);
  // LayerNorm's hard case (a mean far from zero) on odd rows.
  if (c.norm === 'layer') for (let m = 1; m < c.M; m += 2) for (let k = 0; k < c.K; k++) a[L.inputOffset + m * L.inputRowStride + k] += 20;
  const normWeight = randomF32(c.K, c.seed + 2, 1);
  const normBias = randomF32(c.K, c.seed + 3, 1);
  moveOffTies(c, a, normWeight, normBias);
  const biasValues = c.bias ? randomF32(L.biasOffset + weightRows + 1, c.seed + 4, 1) : undefined;
  const residualValues = c.residual ? rowsWithNaNGaps(c.M, c.N, L.residualOffset, L.residualRowStride, c.seed + 5) : undefined;
  const outLength = L.outputOffset + (c.M - 1) * L.outputRowStride + c.N + 3;
  const out = poisoned(gpu(), 'out', outLength);
  const fused = c.norm !== undefined || c.activation !== undefined || c.glu;
  const fusion: MatvecFusion | undefined = fused
    ? {
        norm: c.norm && { kind: c.norm, weight: createStorage(gpu(), 'norm.weight', normWeight), bias: c.norm === 'layer' ? createStorage(gpu(), 'norm.bias', normBias) : undefined, eps: 1e-5 },
        activation: c.activation,
        glu: c.glu,
      }
    : undefined;
  const kernel = new Matvec(
    gpu(),
    {
      weight: uploadWeight(gpu(), `w_${c.dtype}`, host),
      input: createStorage(gpu(), 'a', a),
      output: out,
      bias: biasValues && createStorage(gpu(), 'bias', biasValues),
      residual: residualValues && createStorage(gpu(), 'residual', residualValues),
    },
    { tier, activations: 'q8', fusion, rowsPerWorkgroup: c.rowsPerWorkgroup, workgroupSize: c.workgroupSize },
  );
  expect(kernel.activations).toBe('q8');
  await runPass(gpu(), (pass) => kernel.encode(pass, { M: c.M, ...L }));
  const all = await readF32(gpu(), out, outLength);
  const got = new Float32Array(c.M * c.N);
  for (let i = 0; i < outLength; i++) {
    const rel = i - L.outputOffset;
    const row = Math.floor(rel / L.outputRowStride);
    const col = rel - row * L.outputRowStride;
    if (rel >= 0 && row < c.M && col < c.N) got[row * c.N + col] = all[i];
    else if (!Number.isNaN(all[i])) throw new Error(`${what}: element ${i} outside the output was written (${all[i]})`);
  }
  const rows = normalisedRows(c, a, normWeight, normBias);
  log.add(`tight ${c.dtype}`, expectClose(got, reference(c, w, rows.map(roundQ8Activations), biasValues, residualValues), TIGHT, `${what} (q8-rounded reference)`));
  log.add(`loose ${c.dtype}`, expectClose(got, reference(c, w, rows, biasValues, residualValues), LOOSE, `${what} (unquantised reference)`));
}

const cases: FusedCase[] = [];
for (const dtype of Q8_ACTIVATION_DTYPES) {
  const K = isKQuantDtype(dtype) ? 768 : 160;
  // Pipelines compile slowly on the software adapter: two per dtype (the defaults at decode's M = 1,
  // and every option and operand at the full 8 rows), each on every reduction tier.
  cases.push(
    { dtype, M: 1, N: 37, K, bias: true, seed: 1 },
    // At 8 rows a workgroup quantises 24 blocks of each row at a time: K past 768 takes two segments.
    { dtype, M: 8, N: 11, K: isKQuantDtype(dtype) ? 1024 : 800, bias: true, residual: true, rowsPerWorkgroup: 3, workgroupSize: 32, seed: 3 },
  );
}
// The decode fusions on q8 activations (the norm applied before the rounding).
cases.push(
  { dtype: 'q4_0', M: 2, N: 19, K: 224, norm: 'rms', glu: true, activation: 'silu', seed: 4 },
  { dtype: 'q6_k', M: 1, N: 21, K: 512, norm: 'rms', residual: true, seed: 5 },
  { dtype: 'q8_0', M: 3, N: 9, K: 96, norm: 'layer', activation: 'gelu', bias: true, seed: 6 },
  { dtype: 'q4_k', M: 5, N: 7, K: 256, norm: 'rms', glu: true, activation: 'gelu', bias: true, residual: true, rowsPerWorkgroup: 2, workgroupSize: 64, seed: 7 },
);

describe('matvec on q8 activations', () => {
  for (const c of cases) {
    it(describeFused(c), async () => {
      if (!hasPackedDot(gpu())) {
        // Without the language feature the tier is refused, never silently replaced.
        await expect(runCase(c, 'baseline')).rejects.toThrow(/packed_4x8_integer_dot_product/);
        return;
      }
      for (const tier of tiers()) await runCase(c, tier);
    }, CASE_TIMEOUT_MS);
  }

  it('is refused for weights it does not serve and on devices without dot4I8Packed', () => {
    const input = createStorage(gpu(), 'a', 64 * 4);
    const output = createStorage(gpu(), 'out', 8 * 4);
    const f16 = uploadWeight(gpu(), 'w16', packWeight('f16', 8, 64, randomF32(8 * 64, 1)));
    const q40 = uploadWeight(gpu(), 'w40', packWeight('q4_0', 8, 64, randomF32(8 * 64, 1)));
    expect(new Matvec(gpu(), { weight: f16, input, output }).activations).toBe('f32');
    expect(() => new Matvec(gpu(), { weight: f16, input, output }, { activations: 'q8' })).toThrow(/q8 activations serve .* weights, not f16/);
    const plain = withoutPackedDot(gpu());
    expect(kernelTiers(plain).matvecActivations).toBe('f32');
    expect(new Matvec(plain, { weight: q40, input, output }).activations).toBe('f32');
    expect(() => new Matvec(plain, { weight: q40, input, output }, { activations: 'q8' })).toThrow(ShapeError);
    expect(() => new Matvec(plain, { weight: q40, input, output }, { activations: 'q8' })).toThrow(/language feature packed_4x8_integer_dot_product/);
    expect(() => new Matvec(gpu(), { weight: q40, input, output }, { activations: 'q4' as 'q8' })).toThrow(/unknown activations q4/);
    // q8 blocks are 32 columns: a weight row of 48 (an f16 or K-less layout) cannot be cut into them.
    const q80 = uploadWeight(gpu(), 'w80', packWeight('q8_0', 8, 64, randomF32(8 * 64, 1)));
    expect(() => new Matvec(gpu(), { weight: { ...q80, cols: 48 }, input, output }, { activations: 'q8' })).toThrow(/multiple of 32 \(got 48\)/);
    expect(defaultMatvecActivations(gpu(), 'f32')).toBe('f32');
    // The previous tier stays reachable: forced f32 activations run the f32 kernels.
    expect(new Matvec(gpu(), { weight: q40, input, output }, { activations: 'f32' }).activations).toBe('f32');
    expect(kernelTiers(gpu(), { f32Activations: true }).matvecActivations).toBe('f32');
    expect(kernelTiers(gpu(), { baselineOnly: true }).matvecActivations).toBe('f32');
  });
});

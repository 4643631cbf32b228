// The matvec's q8 activation tier (MatvecOptions.activations 'q8': activation rows quantised to int8
// once per run, products by dot4I8Packed) over every weight dtype it serves, on each reduction tier the
// device runs, at shapes that are not multiples of the tiles, with offsets, strides, bias, residual
// and the decode fusions. Two references per case, both float64 on the dequantised weight:
//   tight: on the activations exactly as the kernel quantised them (read back and checked to be a
//          valid Q8_0 rounding of the input): only f32 accumulation differs, <= 1e-5 relative;
//   loose: on the unquantised activations: adds the activations' rounding, |x - q d| <= d / 2 with
//          d = amax / 127 per block of 32, random-signed over K products: about 2^-9 relative for
//          Gaussian rows, bound 1.5e-2 (a few times the expected, never near a real fault's error).
import { afterAll, describe, expect, it } from 'vitest';
import { Matvec, Q8_ACTIVATION_DTYPES, defaultMatvecActivations, type MatvecFusion } from '../kernels/matvec.ts';
import { kernelTiers, type Tier } from '../kernels/tiers.ts';
import { runPass } from '../kernels/dispatch.ts';
import { hasPackedDot } from '../kernels/quantise.ts';
import { dequantize, isKQuantDtype, packWeight, uploadWeight, type WeightDtype } from '../kernels/weights.ts';
import { readBuffer } from '../src/gpu/buffers.ts';
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
// Each case compiles a quantise and a matvec pipeline per tier: minutes on a busy software adapter.
const CASE_TIMEOUT_MS = 600_000;
const LOOSE = 1.5e-2;

function tiers(): Tier[] {
  return gpu().features.has('subgroups') ? ['baseline', 'subgroup'] : ['baseline'];
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
 * The kernel's quantised rows, dequantised (q * d), after checking they are a Q8_0 rounding of
 * `rows`: per block of 32, d = amax / 127 (to f32 rounding) and every |x - q d| <= d / 2.
 */
async function quantisedRows(kernel: Matvec, c: FusedCase, rows: Float64Array[], what: string): Promise<Float64Array[]> {
  const q8 = kernel.q8Activations;
  if (!q8) throw new Error(`${what}: no q8 activations`);
  const quants = new Int8Array(await readBuffer(gpu(), q8.quants, c.M * c.K));
  const scales = new Float32Array(await readBuffer(gpu(), q8.scales, (c.M * c.K) / 8));
  return rows.map((row, m) => {
    const out = new Float64Array(c.K);
    for (let b = 0; b < c.K / 32; b++) {
      const d = scales[m * (c.K / 32) + b];
      let amax = 0;
      for (let i = 0; i < 32; i++) amax = Math.max(amax, Math.abs(row[b * 32 + i]));
      // The kernel normalises in f32, so its amax differs from the float64 row's by f32 rounding.
      if (Math.abs(d - amax / 127) > 1e-5 * (amax / 127) + 1e-30) throw new Error(`${what}: row ${m} block ${b} scale ${d}, want ${amax / 127}`);
      for (let i = 0; i < 32; i++) {
        const k = b * 32 + i;
        const q = quants[m * c.K + k];
        out[k] = q * d;
        if (Math.abs(out[k] - row[k]) > d * 0.5 * (1 + 1e-3) + 1e-6 * amax) {
          throw new Error(`${what}: row ${m} column ${k} quantised to ${q} x ${d} = ${out[k]}, but the value is ${row[k]}`);
        }
      }
    }
    return out;
  });
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
  const q8Rows = await quantisedRows(kernel, c, rows, what);
  log.add(`tight ${c.dtype}`, expectClose(got, reference(c, w, q8Rows, biasValues, residualValues), TIGHT, `${what} (q8-rounded reference)`));
  log.add(`loose ${c.dtype}`, expectClose(got, reference(c, w, rows, biasValues, residualValues), LOOSE, `${what} (unquantised reference)`));
}

const cases: FusedCase[] = [];
for (const dtype of Q8_ACTIVATION_DTYPES) {
  const K = isKQuantDtype(dtype) ? 768 : 160;
  // Pipelines compile slowly on the software adapter: two per dtype (the defaults at decode's M = 1,
  // and every option and operand at the full 8 rows), each on every reduction tier.
  cases.push(
    { dtype, M: 1, N: 37, K, bias: true, seed: 1 },
    { dtype, M: 8, N: 11, K: isKQuantDtype(dtype) ? 256 : 96, bias: true, residual: true, rowsPerWorkgroup: 3, workgroupSize: 32, seed: 3 },
  );
}
// The decode fusions on q8 activations (the norm moves into the quantise step).
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
    expect(defaultMatvecActivations(gpu(), 'f32')).toBe('f32');
    // The previous tier stays reachable: forced f32 activations run the f32 kernels.
    expect(new Matvec(gpu(), { weight: q40, input, output }, { activations: 'f32' }).q8Activations).toBeUndefined();
    expect(kernelTiers(gpu(), { f32Activations: true }).matvecActivations).toBe('f32');
    expect(kernelTiers(gpu(), { baselineOnly: true }).matvecActivations).toBe('f32');
  });
});

import { afterAll, describe, expect, it } from 'vitest';
import { F16_TIER_REL_L2, Matmul, type MatmulOptions } from '../kernels/matmul.ts';
import { kernelTiers, type Tier } from '../kernels/tiers.ts';
import type { Gpu } from '../src/gpu/device.ts';
import { runPass } from '../kernels/dispatch.ts';
import { packWeight } from '../kernels/weights-quantize.ts';
import { uploadWeight } from '../kernels/weights-upload.ts';
import { ShapeError } from '../src/errors.ts';
import { createStorage, readF32, useGpu } from './support/gpu.ts';
import { compare, expectClose, randomF32, type Comparison } from './support/reference.ts';
import { ErrorLog, describeCase, projectionCase, setupProjection, type ProjectionCase } from './support/projection.ts';

const gpu = useGpu();
const log = new ErrorLog();
afterAll(() => console.log(`matmul (${tiers().join(' and ')})\n${log.summary()}`));

// Every case runs on each tier the device can run: the baseline everywhere, the f16 tier too on an
// adapter with 'shader-f16' (the core software adapter), each against the float64 reference.
function tiers(): Tier[] {
  return gpu().features.has('shader-f16') ? ['baseline', 'f16'] : ['baseline'];
}

/** The same device seen as one without the 'shader-f16' feature. */
function withoutF16(device: Gpu): Gpu {
  const features = new Set([...device.features].filter((f) => f !== 'shader-f16'));
  return Object.create(device, { features: { value: features } }) as Gpu;
}

// Baseline: every dtype's reference multiplies by the dequantised packed weight, so the bound is f32
// accumulation error only: 1e-5 relative L2.
const TOLERANCE = 1e-5;

// f16 tier: the same products, with a (M, K) and the dequantised W (N, K) each rounded to f16 in
// workgroup memory; the products of two f16 values are exact in f32 and every sum is f32.
// - A conversion's relative error is below EPS = 2^-10: twice f16's unit roundoff 2^-11, because WGSL
//   lets an f32 -> f16 conversion return either neighbour of a value between two f16s, not only the
//   nearest. Below f16's smallest normal (2^-14) the value may be flushed to zero: an absolute error
//   below ETA = 2^-14.
// - So |fl(a) fl(w) - a w| <= (2 EPS + EPS^2) |a||w| + ETA (1 + EPS)(|a| + |w|) + ETA^2 per product, and
//   summing K of them in f32 (relative 2^-23 per operation, again allowing either neighbour) adds
//   (K + 3) 2^-23 of the magnitudes summed. Every output element is checked against this bound, built
//   from its own sums S = sum_k |a_k||w_k| and T = sum_k (|a_k| + |w_k|): a rigorous bound, data-dependent,
//   with no tuning.
// - It grows with K (S ~ K while the value grows like sqrt(K)), so a lost column can hide in it at
//   large K. The relative L2 over the whole output catches that: the roundings are independent of one
//   another and of the signs of the terms, so the error of a sum grows like the root of its terms'
//   squares, as the value does, and rel-L2 stays near one product's rounding, ~2^-11 at nearest, and
//   at most ~2^-10 were every conversion to truncate. Measured on lavapipe: 1.5e-4 .. 6e-4 per format,
//   1.0e-3 at most, on outputs of three elements where one rounding weighs most. F16_REL_L2 = 2^-8
//   allows four times 2^-10; one column lost at K = 512 costs ~5e-2.
const EPS = 2 ** -10;
const ETA = 2 ** -14;
const F32_OP = 2 ** -23;
const F16_REL_L2 = F16_TIER_REL_L2; // 2^-8

/** Check the f16 tier's output for case `c` against the element bounds and F16_REL_L2. */
function checkF16(c: ProjectionCase, got: Float32Array, reference: Float64Array, operands: { w: Float64Array; a: Float32Array }): Comparison {
  const { M, N, K } = c;
  const { w, a } = operands;
  const what = `f16 ${describeCase(c)}`;
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let S = 0;
      let T = 0;
      for (let k = 0; k < K; k++) {
        const x = Math.abs(a[c.inputOffset + m * c.inputRowStride + k]);
        const y = Math.abs(w[n * K + k]);
        S += x * y;
        T += x + y;
      }
      const ref = reference[m * N + n];
      // |bias + residual| <= |ref| + S: the f32 additions of the epilogue round values of that size.
      const bound = (2 * EPS + EPS ** 2) * S + ETA * (1 + EPS) * T + K * ETA ** 2 + (K + 3) * F32_OP * ((1 + 3 * EPS) * S + Math.abs(ref) + S + K * ETA);
      const err = Math.abs(got[m * N + n] - ref);
      if (!(err <= bound)) {
        throw new Error(`${what}: out[${m}, ${n}] = ${got[m * N + n]}, reference ${ref}: error ${err.toExponential(3)} > bound ${bound.toExponential(3)}`);
      }
    }
  }
  return expectClose(got, reference, F16_REL_L2, what);
}

const readOutput = (buffer: GPUBuffer, n: number) => readF32(gpu(), buffer, n);

/** Run case `c` on `tier` (a fresh set-up: the output starts NaN) and check it at that tier's bound. */
async function runCase(c: ProjectionCase, tier: Tier, options: MatmulOptions = {}): Promise<void> {
  const s = setupProjection(gpu(), c);
  const kernel = new Matmul(gpu(), s, { ...options, tier });
  expect(kernel.tier).toBe(tier);
  await runPass(gpu(), (pass) => kernel.encode(pass, s.run));
  const group = `${tier} ${c.dtype}${c.residual ? ' residual' : ''}${options.tileM ? ` ${options.tileM}x${options.tileN} tiles` : ''}`;
  log.add(group, tier === 'f16' ? checkF16(c, await s.read(), s.reference, s.operands) : await s.check(TOLERANCE));
}

const cases: ProjectionCase[] = [];
for (const dtype of ['f32', 'f16'] as const) {
  cases.push(
    projectionCase({ dtype, M: 1, N: 1, K: 1 }),
    projectionCase({ dtype, M: 7, N: 37, K: 53, bias: true }),
    projectionCase({ dtype, M: 70, N: 130, K: 160, seed: 3 }),
    projectionCase({ dtype, M: 65, N: 67, K: 35, bias: true, inputRowStride: 38, outputRowStride: 70, seed: 4 }),
  );
}
for (const dtype of ['q8_0', 'q4_0', 'q4_1', 'q5_0', 'q5_1'] as const) {
  cases.push(
    projectionCase({ dtype, M: 1, N: 3, K: 32 }),
    projectionCase({ dtype, M: 5, N: 37, K: 96, bias: true }),
    projectionCase({ dtype, M: 70, N: 130, K: 160, bias: true, seed: 3 }),
    projectionCase({ dtype, M: 66, N: 65, K: 64, inputRowStride: 70, outputRowStride: 67, seed: 4 }),
  );
}
// K-quants: random valid super-blocks (K % 256 == 0); K = 512 crosses super-blocks within a row.
for (const dtype of ['q2_k', 'q3_k', 'q4_k', 'q5_k', 'q6_k'] as const) {
  cases.push(
    projectionCase({ dtype, M: 1, N: 3, K: 256 }),
    projectionCase({ dtype, M: 5, N: 37, K: 512, bias: true }),
    projectionCase({ dtype, M: 70, N: 131, K: 256, bias: true, seed: 3 }),
    projectionCase({ dtype, M: 66, N: 67, K: 512, inputRowStride: 515, outputRowStride: 69, seed: 4 }),
  );
}
// Fused residual: out = residual + bias + a · Wᵀ, the residual with its own offset and row stride
// (NaN in its gaps), alone and with bias, at one row, below one tile and across two tiles.
const RESIDUAL_K = { f32: 53, f16: 35, q8_0: 64, q4_0: 96, q4_1: 64, q5_0: 96, q5_1: 160, q2_k: 512, q3_k: 256, q4_k: 256, q5_k: 512, q6_k: 512 } as const;
for (const [dtype, K] of Object.entries(RESIDUAL_K) as Array<[keyof typeof RESIDUAL_K, number]>) {
  cases.push(
    projectionCase({ dtype, M: 1, N: 3, K, residual: true, seed: 6 }),
    projectionCase({ dtype, M: 7, N: 37, K, bias: true, residual: true, residualRowStride: 41, seed: 7 }),
    projectionCase({
      dtype, M: 67, N: 69, K, bias: true, residual: true,
      inputRowStride: K + 3, outputRowStride: 70, residualOffset: 11, residualRowStride: 73, seed: 8,
    }),
  );
}

describe('matmul', () => {
  for (const c of cases) {
    it(describeCase(c), async () => {
      for (const tier of tiers()) await runCase(c, tier);
    });
  }

  it('smaller tiles (16x32) give the same result', async () => {
    const c = projectionCase({ dtype: 'q4_0', M: 37, N: 41, K: 64, bias: true, seed: 9 });
    for (const tier of tiers()) await runCase(c, tier, { tileM: 16, tileN: 32 });
  });

  it('q8_0 with residual and smaller tiles (16x32) gives the same result', async () => {
    const c = projectionCase({ dtype: 'q8_0', M: 37, N: 41, K: 64, bias: true, residual: true, residualRowStride: 45, seed: 10 });
    for (const tier of tiers()) await runCase(c, tier, { tileM: 16, tileN: 32 });
  });

  it('q6_k with smaller tiles (16x32) gives the same result', async () => {
    const c = projectionCase({ dtype: 'q6_k', M: 37, N: 41, K: 256, bias: true, seed: 9 });
    for (const tier of tiers()) await runCase(c, tier, { tileM: 16, tileN: 32 });
  });

  it('picks the f16 tier where the device has shader-f16, else the baseline', () => {
    expect(F16_TIER_REL_L2).toBe(2 ** -8);
    const weight = uploadWeight(gpu(), 'w', packWeight('q8_0', 8, 32, randomF32(256, 1)));
    const input = createStorage(gpu(), 'a', 4 * 32 * 4);
    const output = createStorage(gpu(), 'out', 4 * 8 * 4);
    const expected = gpu().features.has('shader-f16') ? 'f16' : 'baseline';
    expect(kernelTiers(gpu()).matmul).toBe(expected);
    expect(kernelTiers(gpu(), { baselineOnly: true }).matmul).toBe('baseline');
    expect(new Matmul(gpu(), { weight, input, output }).tier).toBe(expected);
    expect(new Matmul(gpu(), { weight, input, output }, { tier: 'baseline' }).tier).toBe('baseline');
    // f32 weights stay on the baseline unless told (an F32 model asks for f32 arithmetic).
    const f32 = uploadWeight(gpu(), 'w32', packWeight('f32', 8, 32, randomF32(256, 1)));
    expect(new Matmul(gpu(), { weight: f32, input, output }).tier).toBe('baseline');
    for (const tier of tiers()) expect(new Matmul(gpu(), { weight: f32, input, output }, { tier }).tier).toBe(tier);
    const plain = withoutF16(gpu());
    expect(new Matmul(plain, { weight, input, output }).tier).toBe('baseline');
    expect(() => new Matmul(plain, { weight, input, output }, { tier: 'f16' })).toThrow(
      /matmul\(w\): the f16 tier needs the device feature 'shader-f16', which this adapter does not offer/,
    );
    expect(() => new Matmul(gpu(), { weight, input, output }, { tier: 'subgroup' })).toThrow(/unknown tier subgroup/);
  });

  // f16's range ends at 65504: an activation beyond it is infinite on the f16 tier (the baseline takes
  // any f32). The bound above says nothing about such inputs, so this pins what happens to them.
  it('an activation beyond the f16 range is not finite on the f16 tier, finite on the baseline', async () => {
    const weight = uploadWeight(gpu(), 'w', packWeight('f32', 4, 4, Float32Array.from({ length: 16 }, () => 2 ** -8)));
    const input = createStorage(gpu(), 'a', Float32Array.from([1e6, 0, 0, 0]));
    for (const tier of tiers()) {
      const output = createStorage(gpu(), 'out', 4 * 4);
      const kernel = new Matmul(gpu(), { weight, input, output }, { tier });
      await runPass(gpu(), (pass) => kernel.encode(pass, { M: 1 }));
      const got = await readOutput(output, 4);
      if (tier === 'f16') expect(got.every((v) => !Number.isFinite(v))).toBe(true);
      else expect(compare(got, [3906.25, 3906.25, 3906.25, 3906.25]).relL2).toBe(0);
    }
  });

  it('refuses runs that do not fit their buffers', () => {
    const weight = uploadWeight(gpu(), 'w', packWeight('f32', 8, 12, randomF32(96, 1)));
    const input = createStorage(gpu(), 'a', 4 * 12 * 4);
    const output = createStorage(gpu(), 'out', 4 * 8 * 4);
    const kernel = new Matmul(gpu(), { weight, input, output });
    const pass = gpu().device.createCommandEncoder().beginComputePass();
    expect(() => kernel.encode(pass, { M: 5 })).toThrow(ShapeError);
    expect(() => kernel.encode(pass, { M: 4, inputOffset: 1 })).toThrow(/input needs/);
    expect(() => kernel.encode(pass, { M: 2, outputRowStride: 7 })).toThrow(/outputRowStride/);
    expect(() => kernel.encode(pass, { M: 0 })).toThrow(/M must be/);
    expect(() => new Matmul(gpu(), { weight, input, output }, { tileM: 6 })).toThrow(/multiple of 4/);
    pass.end();
  });

  it('refuses a residual that is the output buffer, or does not fit', () => {
    const weight = uploadWeight(gpu(), 'w', packWeight('f32', 8, 12, randomF32(96, 1)));
    const input = createStorage(gpu(), 'a', 4 * 12 * 4);
    const output = createStorage(gpu(), 'out', 4 * 8 * 4);
    expect(() => new Matmul(gpu(), { weight, input, output, residual: output })).toThrow(ShapeError);
    expect(() => new Matmul(gpu(), { weight, input, output, residual: output })).toThrow(/matmul\(w\): residual and output are the same buffer/);
    const kernel = new Matmul(gpu(), { weight, input, output, residual: createStorage(gpu(), 'res', 3 * 8 * 4) });
    const pass = gpu().device.createCommandEncoder().beginComputePass();
    expect(() => kernel.encode(pass, { M: 4 })).toThrow(/residual needs 128 bytes but its buffer has 96/);
    expect(() => kernel.encode(pass, { M: 3, residualOffset: 1 })).toThrow(/residual needs/);
    expect(() => kernel.encode(pass, { M: 1, residualRowStride: 7 })).toThrow(/residualRowStride 7 < N = 8/);
    pass.end();
  });
});

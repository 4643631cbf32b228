import { afterAll, describe, expect, it } from 'vitest';
import { CHUNKED_DTYPES, MATVEC_MAX_ROWS, Matvec, defaultMatvecWorkgroupSize, defaultSubgroupMatvecRows, type MatvecLayout } from '../kernels/matvec.ts';
import { kernelTiers, type Tier } from '../kernels/tiers.ts';
import type { Gpu } from '../src/gpu/device.ts';
import { runPass } from '../kernels/dispatch.ts';
import { packWeight } from '../kernels/weights-quantize.ts';
import { dequantize } from '../kernels/weights-reference.ts';
import { uploadWeight } from '../kernels/weights-upload.ts';
import { ShapeError } from '../src/errors.ts';
import { createStorage, poisoned, readF32, useGpu } from './support/gpu.ts';
import { expectClose, randomF32 } from './support/reference.ts';
import { ErrorLog, describeCase, projectionCase, projectionReference, setupProjection, type ProjectionCase } from './support/projection.ts';

const gpu = useGpu();
const log = new ErrorLog();
afterAll(() => console.log(`matvec (${tiers().join(' and ')})\n${log.summary()}`));

// Every case runs on each tier the device can run: the baseline everywhere, the subgroup tier too on
// an adapter with 'subgroups' (the core software adapter), each against the reference.
function tiers(): Tier[] {
  return gpu().features.has('subgroups') ? ['baseline', 'subgroup'] : ['baseline'];
}

/**
 * The layouts a case runs in on `tier`: strided, and chunked too where the case asks for it, on the
 * fastest tier (the layout is the threads' partial sums, which both tiers share; each variant is a
 * pipeline to compile, slow on a software adapter).
 */
function layouts(c: ProjectionCase & { chunked?: boolean }, tier: Tier): MatvecLayout[] {
  if (c.chunked && !CHUNKED_DTYPES.includes(c.dtype)) throw new Error(`${c.dtype} has no chunked layout`);
  return c.chunked && tier === tiers().at(-1) ? ['strided', 'chunked'] : ['strided'];
}

/** The same device seen as one without the 'subgroups' feature. */
function withoutSubgroups(device: Gpu): Gpu {
  const features = new Set([...device.features].filter((f) => f !== 'subgroups'));
  return Object.create(device, { features: { value: features } }) as Gpu;
}

// References multiply by the dequantised packed weight: f32 accumulation error only, every dtype.
const TOLERANCE = 1e-5;

// `chunked`: also run in the chunked layout (MatvecLayout).
const cases: Array<ProjectionCase & { rowsPerWorkgroup?: number; workgroupSize?: number; chunked?: boolean }> = [];
for (const dtype of ['f32', 'f16'] as const) {
  cases.push(
    projectionCase({ dtype, M: 1, N: 1, K: 1 }),
    projectionCase({ dtype, M: 1, N: 37, K: 53, bias: true }),
    projectionCase({ dtype, M: 7, N: 37, K: 53, inputRowStride: 57, outputRowStride: 40 }),
    projectionCase({ dtype, M: 8, N: 130, K: 1030, bias: true, seed: 3 }),
  );
}
// f16 in the chunked layout: K a multiple of 8 (one chunk), of 8 but not 16, and a long strided row.
cases.push(
  { ...projectionCase({ dtype: 'f16', M: 1, N: 3, K: 8 }), chunked: true },
  { ...projectionCase({ dtype: 'f16', M: 5, N: 37, K: 72, bias: true, seed: 4 }), chunked: true },
  { ...projectionCase({ dtype: 'f16', M: 8, N: 130, K: 1024, inputRowStride: 1030, outputRowStride: 131, seed: 3 }), chunked: true },
);
for (const dtype of ['q8_0', 'q4_0', 'q4_1', 'q5_0', 'q5_1'] as const) {
  cases.push(
    projectionCase({ dtype, M: 1, N: 3, K: 32 }),
    projectionCase({ dtype, M: 5, N: 37, K: 96, bias: true }),
    { ...projectionCase({ dtype, M: 8, N: 130, K: 1024, inputRowStride: 1030, outputRowStride: 131, seed: 3 }), chunked: true },
    { ...projectionCase({ dtype, M: 3, N: 37, K: 160, bias: true, seed: 5 }), rowsPerWorkgroup: 3, workgroupSize: 32 },
  );
}
// K-quants: random valid super-blocks (K % 256 == 0).
for (const dtype of ['q2_k', 'q3_k', 'q4_k', 'q5_k', 'q6_k'] as const) {
  cases.push(
    projectionCase({ dtype, M: 1, N: 3, K: 256 }),
    projectionCase({ dtype, M: 1, N: 37, K: 512, bias: true }),
    { ...projectionCase({ dtype, M: 8, N: 130, K: 1024, inputRowStride: 1030, outputRowStride: 131, seed: 3 }), chunked: true },
    { ...projectionCase({ dtype, M: 3, N: 37, K: 256, bias: true, seed: 5 }), rowsPerWorkgroup: 3, workgroupSize: 32 },
  );
}

// Fused residual: out = residual + bias + a · Wᵀ, the residual with its own offset and row stride
// (NaN in its gaps), alone and with bias, at M = 1, a middle M and the full 8 rows.
const RESIDUAL_K = { f32: 53, f16: 1030, q8_0: 96, q4_0: 1024, q4_1: 160, q5_0: 1024, q5_1: 96, q2_k: 256, q3_k: 512, q4_k: 512, q5_k: 256, q6_k: 256 } as const;
for (const [dtype, K] of Object.entries(RESIDUAL_K) as Array<[keyof typeof RESIDUAL_K, number]>) {
  cases.push(
    projectionCase({ dtype, M: 1, N: 37, K, residual: true, seed: 6 }),
    projectionCase({ dtype, M: 5, N: 37, K, bias: true, residual: true, residualRowStride: 41, outputRowStride: 39, seed: 7 }),
    projectionCase({
      dtype, M: 8, N: 130, K, bias: true, residual: true,
      inputRowStride: K + 3, outputRowStride: 131, residualOffset: 11, residualRowStride: 133, seed: 8,
    }),
  );
}
cases.push(
  { ...projectionCase({ dtype: 'q4_0', M: 3, N: 37, K: 160, bias: true, residual: true, residualRowStride: 40, seed: 9 }), rowsPerWorkgroup: 3, workgroupSize: 32, chunked: true },
  { ...projectionCase({ dtype: 'f16', M: 8, N: 13, K: 70, residual: true, seed: 9 }), rowsPerWorkgroup: 4, workgroupSize: 64 },
  { ...projectionCase({ dtype: 'f16', M: 8, N: 13, K: 136, residual: true, seed: 9 }), rowsPerWorkgroup: 4, workgroupSize: 64, chunked: true },
  // Workgroups smaller than, equal to and many times a subgroup (the subgroup tier needs no WG >= rows x 8).
  { ...projectionCase({ dtype: 'q8_0', M: 8, N: 37, K: 96, bias: true, residual: true, seed: 10 }), rowsPerWorkgroup: 2, workgroupSize: 256 },
  { ...projectionCase({ dtype: 'q6_k', M: 2, N: 7, K: 512, seed: 11 }), rowsPerWorkgroup: 4, workgroupSize: 128, chunked: true },
);
const subgroupOnlyCases: Array<ProjectionCase & { rowsPerWorkgroup: number; workgroupSize: number; chunked?: boolean }> = [
  { ...projectionCase({ dtype: 'f32', M: 8, N: 37, K: 53, bias: true, residual: true, seed: 12 }), rowsPerWorkgroup: 4, workgroupSize: 4 },
  { ...projectionCase({ dtype: 'q4_k', M: 3, N: 11, K: 512, seed: 13 }), rowsPerWorkgroup: 2, workgroupSize: 8, chunked: true },
  { ...projectionCase({ dtype: 'f16', M: 5, N: 9, K: 70, bias: true, seed: 14 }), rowsPerWorkgroup: 3, workgroupSize: 16 },
  { ...projectionCase({ dtype: 'f16', M: 5, N: 9, K: 200, bias: true, seed: 14 }), rowsPerWorkgroup: 3, workgroupSize: 4, chunked: true },
];

describe('matvec', () => {
  for (const c of cases) {
    const extra = c.rowsPerWorkgroup ? ` rows/wg=${c.rowsPerWorkgroup} wg=${c.workgroupSize}` : '';
    it(describeCase(c) + extra, async () => {
      for (const tier of tiers()) {
        for (const layout of layouts(c, tier)) {
          // A fresh set-up per variant: the output starts NaN for each.
          const s = setupProjection(gpu(), c);
          const kernel = new Matvec(gpu(), s, { rowsPerWorkgroup: c.rowsPerWorkgroup, workgroupSize: c.workgroupSize, tier, layout });
          expect([kernel.tier, kernel.layout]).toEqual([tier, layout]);
          await runPass(gpu(), (pass) => kernel.encode(pass, s.run));
          log.add(`${tier} ${layout} ${c.dtype}${c.residual ? ' residual' : ''}`, await s.check(TOLERANCE));
        }
      }
    });
  }

  // Workgroups of 4, 8 and 16 threads: below, at and above lavapipe's subgroup size of 8 (one partial
  // subgroup, one whole, two), with rows x 8 above the workgroup size. The baseline refuses these.
  for (const c of subgroupOnlyCases) {
    it(`subgroup tier: ${describeCase(c)} rows/wg=${c.rowsPerWorkgroup} wg=${c.workgroupSize}`, async () => {
      const options = { rowsPerWorkgroup: c.rowsPerWorkgroup, workgroupSize: c.workgroupSize, tier: 'subgroup' } as const;
      const s = setupProjection(gpu(), c);
      if (!gpu().features.has('subgroups')) {
        expect(() => new Matvec(gpu(), s, options)).toThrow(/subgroup tier needs the device feature 'subgroups'/);
        return;
      }
      for (const layout of layouts(c, 'subgroup')) {
        const run = layout === 'strided' ? s : setupProjection(gpu(), c);
        const kernel = new Matvec(gpu(), run, { ...options, layout });
        await runPass(gpu(), (pass) => kernel.encode(pass, run.run));
        log.add(`subgroup ${layout} ${c.dtype} small workgroups`, await run.check(TOLERANCE));
      }
    });
  }

  it('picks the subgroup tier where the device has subgroups, else the baseline', () => {
    const weight = uploadWeight(gpu(), 'w', packWeight('q4_0', 1024, 64, randomF32(1024 * 64, 1)));
    const input = createStorage(gpu(), 'a', 64 * 4);
    const output = createStorage(gpu(), 'out', 1024 * 4);
    const kernel = new Matvec(gpu(), { weight, input, output });
    const expected = gpu().features.has('subgroups') ? 'subgroup' : 'baseline';
    expect(kernelTiers(gpu()).matvec).toBe(expected);
    expect(kernel.tier).toBe(expected);
    expect(kernel.rowsPerWorkgroup).toBe(expected === 'subgroup' ? defaultSubgroupMatvecRows(1024) : 1);
    expect(new Matvec(gpu(), { weight, input, output }, { tier: 'baseline' }).tier).toBe('baseline');
    const plain = withoutSubgroups(gpu());
    expect(new Matvec(plain, { weight, input, output }).tier).toBe('baseline');
    expect(() => new Matvec(plain, { weight, input, output }, { tier: 'subgroup' })).toThrow(ShapeError);
    expect(() => new Matvec(plain, { weight, input, output }, { tier: 'subgroup' })).toThrow(
      /matvec\(w\): the subgroup tier needs the device feature 'subgroups', which this adapter does not offer/,
    );
  });

  // The two tiers sum in different orders, so they agree to f32 rounding, not bit for bit.
  it('the subgroup tier agrees with the baseline', async () => {
    if (!gpu().features.has('subgroups')) return; // compat: the test above proves the baseline is the one picked
    for (const dtype of ['f32', 'f16', 'q8_0', 'q4_1', 'q5_0', 'q3_k', 'q5_k'] as const) {
      const K = dtype === 'f32' || dtype === 'f16' ? 1030 : 1024;
      const c = projectionCase({ dtype, M: 8, N: 130, K, bias: true, residual: true, seed: 21 });
      const outputs: Float32Array[] = [];
      for (const tier of ['baseline', 'subgroup'] as const) {
        const s = setupProjection(gpu(), c);
        const kernel = new Matvec(gpu(), s, { tier });
        await runPass(gpu(), (pass) => kernel.encode(pass, s.run));
        outputs.push(await readF32(gpu(), s.output, s.output.size / 4));
      }
      const [base, fast] = outputs;
      // Same NaN gaps, and the written cells within 1e-6 of each other (relative L2).
      const written = (x: Float32Array) => Array.from(x).filter((v) => !Number.isNaN(v));
      expect(Array.from(base, Number.isNaN)).toEqual(Array.from(fast, Number.isNaN));
      log.add(`subgroup vs baseline ${dtype}`, expectClose(written(fast), written(base), 1e-6, `${dtype} subgroup vs baseline`));
    }
  });

  // 70001 rows need 2 workgroup rows of the grid (dispatchGrid): the vocabulary-sized case.
  it('q4_0 N=70001 K=32 M=2 (grid split over y)', async () => {
    const N = 70001;
    const K = 32;
    const M = 2;
    const host = packWeight('q4_0', N, K, randomF32(N * K, 11));
    const weight = uploadWeight(gpu(), 'lm_head', host);
    const a = randomF32(M * K, 12);
    const ref = projectionReference(dequantize(host), N, K, a, M, 0, K);
    const input = createStorage(gpu(), 'a', a);
    for (const tier of tiers()) {
      const output = poisoned(gpu(), 'out', M * N);
      // One row per workgroup on either tier: 70001 workgroups, over the 65535 of one grid dimension.
      const kernel = new Matvec(gpu(), { weight, input, output }, { workgroupSize: 32, tier, rowsPerWorkgroup: 1 });
      await runPass(gpu(), (pass) => kernel.encode(pass, { M }));
      log.add(`${tier} q4_0 N=70001`, expectClose(await readF32(gpu(), output, M * N), ref, TOLERANCE, `${tier} q4_0 N=70001`));
    }
  });

  it('default workgroup size follows K', () => {
    expect(defaultMatvecWorkgroupSize(1)).toBe(32);
    expect(defaultMatvecWorkgroupSize(896)).toBe(64);
    expect(defaultMatvecWorkgroupSize(4096)).toBe(256);
    expect(defaultMatvecWorkgroupSize(14336)).toBe(256);
  });

  it('refuses M above 8 and bad options', () => {
    const weight = uploadWeight(gpu(), 'w', packWeight('f16', 8, 12, randomF32(96, 1)));
    const input = createStorage(gpu(), 'a', 9 * 12 * 4);
    const output = createStorage(gpu(), 'out', 9 * 8 * 4);
    const kernel = new Matvec(gpu(), { weight, input, output });
    const pass = gpu().device.createCommandEncoder().beginComputePass();
    expect(() => kernel.encode(pass, { M: MATVEC_MAX_ROWS + 1 })).toThrow(ShapeError);
    expect(() => kernel.encode(pass, { M: 1, inputRowStride: 11 })).toThrow(/inputRowStride/);
    pass.end();
    expect(() => new Matvec(gpu(), { weight, input, output }, { rowsPerWorkgroup: 5 })).toThrow(/rowsPerWorkgroup/);
    expect(() => new Matvec(gpu(), { weight, input, output }, { workgroupSize: 48 })).toThrow(/power of two/);
    expect(() => new Matvec(gpu(), { weight, input, output }, { workgroupSize: 16, rowsPerWorkgroup: 4, tier: 'baseline' })).toThrow(/>= 32/);
    expect(() => new Matvec(gpu(), { weight, input, output }, { tier: 'fast' as Tier })).toThrow(/unknown tier fast/);
    // The chunked layout: block formats and f16 only, K in whole blocks of 32 or chunks of 8.
    expect(new Matvec(gpu(), { weight, input, output }).layout).toBe('strided');
    expect(() => new Matvec(gpu(), { weight, input, output }, { layout: 'chunked' })).toThrow(/chunked layout needs K to be a multiple of 8 for f16 \(got 12\)/);
    const f32Weight = uploadWeight(gpu(), 'w32', packWeight('f32', 8, 16, randomF32(128, 1)));
    expect(() => new Matvec(gpu(), { weight: f32Weight, input, output }, { layout: 'chunked' })).toThrow(/chunked layout serves .* weights, not f32/);
    expect(() => new Matvec(gpu(), { weight, input, output }, { layout: 'tiled' as MatvecLayout })).toThrow(/unknown layout tiled/);
    const q8Weight = uploadWeight(gpu(), 'w8', packWeight('q8_0', 8, 32, randomF32(256, 1)));
    const q8Input = createStorage(gpu(), 'a8', 32 * 4);
    expect(new Matvec(gpu(), { weight: q8Weight, input: q8Input, output }, { layout: 'chunked' }).layout).toBe('chunked');
    expect(() => new Matvec(gpu(), { weight: { ...q8Weight, cols: 48 }, input: q8Input, output }, { layout: 'chunked' })).toThrow(/chunked layout needs K to be a multiple of 32 for q8_0 \(got 48\)/);
  });

  it('refuses a residual that is the output buffer, or does not fit', () => {
    const weight = uploadWeight(gpu(), 'w', packWeight('q8_0', 8, 32, randomF32(256, 1)));
    const input = createStorage(gpu(), 'a', 2 * 32 * 4);
    const output = createStorage(gpu(), 'out', 2 * 8 * 4);
    expect(() => new Matvec(gpu(), { weight, input, output, residual: output })).toThrow(ShapeError);
    expect(() => new Matvec(gpu(), { weight, input, output, residual: output })).toThrow(/matvec\(w\): residual and output are the same buffer/);
    const kernel = new Matvec(gpu(), { weight, input, output, residual: createStorage(gpu(), 'res', 12 * 4) });
    const pass = gpu().device.createCommandEncoder().beginComputePass();
    expect(() => kernel.encode(pass, { M: 2 })).toThrow(/residual needs 64 bytes but its buffer has 48/);
    expect(() => kernel.encode(pass, { M: 1, residualOffset: 5 })).toThrow(/residual needs 52 bytes/);
    expect(() => kernel.encode(pass, { M: 1, residualRowStride: 7 })).toThrow(/residualRowStride 7 < N = 8/);
    pass.end();
  });
});

// Kernels at the shapes of a model: prefill matmul (GFLOP/s), decode matvec (GB/s of weight bytes)
// for each weight format, and attention prefill / decode at several context lengths, each kernel on
// every tier the adapter runs (the baseline, and beside it the fast tier where the adapter has one:
// subgroup matvec and attention, f16 matmul, and for quantised weights the matvec on q8 activations
// with dot4I8Packed and on f32 activations in the chunked layout), so one run compares them on one adapter. Each result
// carries its FLOP and minimum bytes moved, so it sits on the roofline: its share is achieved
// GFLOP/s over min(peak, intensity x bandwidth) as measured on this adapter (bench/roofline.ts).
//
// Weights are synthetic (random planes of the right dtype and size): speed does not depend on the
// values, and building them takes milliseconds where packing real values takes seconds at 7B sizes.
//
// Run directly: `npm run bench:kernels [-- --quick] [--model PATH | --shapes llama-7b]` measures the
// roofline, then prints every kernel's GFLOP/s, GB/s and share.
import { randomFillSync } from 'node:crypto';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import type { Gpu } from '../src/gpu/device.ts';
import { createStorage } from '../src/gpu/buffers.ts';
import { MinerError, OptionError, ShapeError } from '../src/errors.ts';
import { Matmul } from '../kernels/matmul.ts';
import { CHUNKED_DTYPES, Matvec, Q8_ACTIVATION_DTYPES, defaultMatvecActivations, type MatvecLayout } from '../kernels/matvec.ts';
import { Norm } from '../kernels/norm.ts';
import { hasPackedDot, kernelTiers, type MatvecActivations, type Tier } from '../kernels/tiers.ts';
import { DecodeAttention, PrefillAttention, kvBytesPerToken, kvTableWidth, type KvDtype } from '../kernels/attention.ts';
import { RopeKvWrite, ropeInverseFrequencies } from '../kernels/rope.ts';
import { BLOCK_COLUMNS, isKQuantDtype, isQuantDtype, K_QUANT_BLOCK, planeWords, WEIGHT_DTYPES, type HostWeight, type PackedWeight, type WeightDtype } from '../kernels/weights.ts';
import { checkWeightFits, uploadWeight } from '../kernels/weights-upload.ts';
import { attainableGflops, type Progress, type RooflineResult } from './roofline.ts';
import { projectionShape, type BenchPreset, type PresetName, type ProjectionName, type ShapeSet } from './presets.ts';
import { timeKernel, type Timing } from './timing.ts';

export type KernelKind = 'matmul' | 'matvec' | 'attention.prefill' | 'attention.decode';

export interface KernelResult {
  kind: KernelKind;
  /** What the shape is in the model: a projection name (ffn_up, ...) or 'attention'. */
  name: string;
  /** Weight dtype; 'f32' for attention (f32 KV cache). */
  dtype: WeightDtype;
  /** Dimensions: M, N, K for projections; T (queries), L (keys), Hq, Hkv, D for attention. */
  shape: Record<string, number>;
  /** Kernel variant (kernels/tiers.ts); each kernel comes once per tier the adapter runs. */
  tier: Tier;
  /** Matvecs: what they multiply (f32 activations, or q8 with dot4I8Packed over quantised weights). */
  activations?: MatvecActivations;
  /** Matvecs on f32 activations over a weight the chunked layout serves: how threads walk K (MatvecLayout). */
  layout?: MatvecLayout;
  /**
   * One of decode's folds timed both ways, on the variant a model runs: 'folded', the kernel doing
   * the step before it itself (label "+norm" / "+rope"); 'apart', that step's own kernel then this
   * one, two dispatches timed together (label "norm + matvec ..." / "rope-kv + attention.decode ...").
   * `op` names the step: 'norm', the RMSNorm before a projection; 'rope-kv', RoPE and the KV-cache
   * write before decode attention (DecodeAttention's newKv). Decode steps run the folded form.
   */
  fold?: { op: 'norm' | 'rope-kv'; form: 'folded' | 'apart' };
  /** One line naming the kernel and shape, e.g. "matvec subgroup q4_0 ffn_up 1x11008x4096" ("subgroup+q8" on q8 activations). */
  label: string;
  flops: number;
  /** Minimum bytes one run must move: weights (or KV cache) plus activations in and out. */
  bytes: number;
  /** Bytes of the weight planes (projections); the GB/s of decode is quoted over these. */
  weightBytes?: number;
  timing: Timing;
  gflops: number;
  /** bytes / time. */
  gbps: number;
  /** Weight bytes / time (projections only): the decode figure of merit. */
  weightGbps?: number;
  /** FLOP per byte. */
  intensity: number;
  /** Which ceiling binds at this intensity on this adapter. */
  bound: 'memory' | 'compute';
  /** min(peak, intensity x bandwidth) on this adapter, GFLOP/s. */
  attainableGflops: number;
  /** gflops / attainableGflops. Above 1 means the working set fit a cache the copy did not. */
  rooflineShare: number;
  /** The same bound on the reference A100 (bench/a100.json), and gflops over it. */
  a100?: { attainableGflops: number; share: number };
}

export interface SkippedKernel {
  kind: KernelKind;
  tier: Tier;
  name: string;
  dtype: WeightDtype;
  shape: Record<string, number>;
  label: string;
  skipped: string;
}

export interface KernelsReport {
  shapes: { name: string; architecture: string; hiddenSize: number; intermediateSize: number; vocabSize: number; numHeads: number; numKvHeads: number; headDim: number; numLayers: number };
  prefillTokens: number;
  decodeRows: number;
  results: KernelResult[];
  skipped: SkippedKernel[];
}

/** Projections a model runs right after an RMSNorm (the attention norm, the MLP norm). */
const NORMED_PROJECTIONS: readonly ProjectionName[] = ['attn_q', 'attn_kv', 'ffn_up'];

export function isSkipped(entry: KernelResult | SkippedKernel): entry is SkippedKernel {
  return 'skipped' in entry;
}

// ---- synthetic data -------------------------------------------------------------------------

/** Random words with every f32 in ±[0.5, 1): no NaN, no denormal (slow on some CPUs' software paths). */
function fillF32(words: Uint32Array): void {
  randomFillSync(words);
  for (let i = 0; i < words.length; i++) words[i] = (words[i] & 0x803fffff) | 0x3f000000;
}

/** Random words whose two f16 halves are in ±[0.5, 1). */
function fillF16Pairs(words: Uint32Array): void {
  randomFillSync(words);
  for (let i = 0; i < words.length; i++) words[i] = (words[i] & 0x83ff83ff) | 0x38003800;
}

/**
 * A (rows, cols) weight of `dtype` with random planes: f32/f16 values in ±[0.5, 1), random quants,
 * and block scales (and the mins of Q4_1 / Q5_1) set to 0.01 (K-quant sub-block scales random), so
 * every value is finite.
 */
export function syntheticWeight(dtype: WeightDtype, rows: number, cols: number): HostWeight {
  const planes = planeWords(dtype, rows, cols).map((n) => new Uint32Array(n));
  const D = 0x211f; // f16 0.01
  if (dtype === 'f32') fillF32(planes[0]);
  else if (dtype === 'f16') fillF16Pairs(planes[0]);
  else if (isKQuantDtype(dtype)) {
    // Per super-block: q4_k / q5_k scales are [d | dmin << 16, 12 bytes of 6-bit scales and mins];
    // q6_k [16 int8 scales as 4 words, d in the low half of a fifth]; q3_k [12 bytes of 6-bit
    // scales, d in the low half of a fourth]; q2_k [16 bytes of 4-bit scales and mins, d | dmin << 16].
    randomFillSync(planes[0]);
    randomFillSync(planes[1]);
    const words = planes[1].length / ((rows * cols) / K_QUANT_BLOCK);
    const at = { q2_k: 4, q3_k: 3, q4_k: 0, q5_k: 0, q6_k: 4 }[dtype];
    const value = dtype === 'q3_k' || dtype === 'q6_k' ? D : D | (D << 16);
    for (let i = 0; i < planes[1].length; i += words) planes[1][i + at] = value;
  } else {
    // Q8_0 / Q4_0 / Q5_0: f16 scales two per word; Q4_1 / Q5_1: one word d | m << 16 per block.
    randomFillSync(planes[0]);
    planes[1].fill(D | (D << 16));
  }
  return { dtype, rows, cols, planes };
}

function randomF32(elements: number): Float32Array {
  const data = new Float32Array(elements);
  fillF32(new Uint32Array(data.buffer));
  return data;
}

// ---- one result -----------------------------------------------------------------------------

export interface RoofSpec {
  gbps: number;
  gflops: number;
}

function result(
  base: Omit<KernelResult, 'gflops' | 'gbps' | 'intensity' | 'bound' | 'attainableGflops' | 'rooflineShare' | 'a100' | 'weightGbps'>,
  roof: RoofSpec,
  a100Roof?: RoofSpec,
): KernelResult {
  const seconds = base.timing.medianMs / 1000;
  const gflops = base.flops / seconds / 1e9;
  const intensity = base.flops / base.bytes;
  const attainable = attainableGflops(roof, intensity);
  const a100Attainable = a100Roof ? attainableGflops(a100Roof, intensity) : undefined;
  return {
    ...base,
    gflops,
    gbps: base.bytes / seconds / 1e9,
    weightGbps: base.weightBytes !== undefined ? base.weightBytes / seconds / 1e9 : undefined,
    intensity,
    bound: intensity * roof.gbps < roof.gflops ? 'memory' : 'compute',
    attainableGflops: attainable,
    rooflineShare: gflops / attainable,
    a100: a100Attainable !== undefined ? { attainableGflops: a100Attainable, share: gflops / a100Attainable } : undefined,
  };
}

/** Storage buffers made for one timed kernel, destroyed together when it is done. */
function benchBuffers(gpu: Gpu): { make: (name: string, data: ArrayBufferView | number) => GPUBuffer; destroy: () => void } {
  const made: GPUBuffer[] = [];
  return {
    make: (name, data) => {
      const buffer = createStorage(gpu, `bench.${name}`, data);
      made.push(buffer);
      return buffer;
    },
    destroy: () => made.forEach((buffer) => buffer.destroy()),
  };
}

// ---- the run --------------------------------------------------------------------------------

export interface KernelBenchOptions {
  roofline: RooflineResult;
  /** The reference A100's ceilings, to place each kernel against it too. */
  a100Roof?: RoofSpec;
  progress?: Progress;
  /** Only these weight dtypes (default: the preset's). */
  dtypes?: readonly WeightDtype[];
  /** Only these kernels (default: all). */
  kinds?: readonly KernelKind[];
  /**
   * The run's time budget: a kernel not started by `deadline` (a performance.now() time) is listed
   * as skipped, so a bench with a limited time on a machine still ends with a report.
   */
  budget?: { deadline: number; seconds: number };
}

export async function benchKernels(gpu: Gpu, shapes: ShapeSet, preset: BenchPreset, options: KernelBenchOptions): Promise<KernelsReport> {
  const progress = options.progress ?? (() => {});
  const roof = { gbps: options.roofline.bandwidth.gbps, gflops: options.roofline.compute.gflops };
  const cfg = shapes.config;
  const p = preset.kernels;
  const results: KernelResult[] = [];
  const skipped: SkippedKernel[] = [];
  const tiers = kernelTiers(gpu);
  // Each kernel on the baseline always, on the fast tier beside it where the adapter has one.
  const withBaseline = (fast: Tier): Tier[] => (fast === 'baseline' ? ['baseline'] : ['baseline', fast]);
  const wanted = (kind: KernelKind) => options.kinds === undefined || options.kinds.includes(kind);
  const matvecTiers = wanted('matvec') ? withBaseline(tiers.matvec) : [];
  const matmulTiers = wanted('matmul') ? withBaseline(tiers.matmul) : [];
  const attentionTiers = withBaseline(tiers.attention);
  // Decode attention over a cache another kernel wrote, on each tier; then, on the tier models run,
  // with RoPE and the KV write folded in (as decode steps run it) and apart (RopeKvWrite, then this
  // kernel): the two lines show whether the fold pays on this adapter.
  const decodeForms: Array<{ tier: Tier; form?: 'folded' | 'apart' }> = [
    ...attentionTiers.map((tier) => ({ tier })),
    { tier: tiers.attention, form: 'folded' },
    { tier: tiers.attention, form: 'apart' },
  ];
  const prefillLengths = wanted('attention.prefill') ? p.attentionPrefill : [];
  const decodeLengths = wanted('attention.decode') ? p.attentionDecode : [];
  const dtypes = options.dtypes ?? p.dtypes;
  // The q8-activation matvec beside the f32 ones, on the fast reduction tier, where it applies.
  const q8For = (dtype: WeightDtype) => wanted('matvec') && hasPackedDot(gpu) && Q8_ACTIVATION_DTYPES.includes(dtype);
  // And f32 activations in the chunked layout (a chunk of consecutive columns a thread), on the same tier.
  const chunkedFor = (dtype: WeightDtype) => wanted('matvec') && CHUNKED_DTYPES.includes(dtype);
  // The projections models run after an RMSNorm: timed with it folded in (as decode steps run them)
  // and apart (the norm kernel, then the plain matvec), on the variant models run.
  const normFoldsFor = (proj: ProjectionName) => wanted('matvec') && NORMED_PROJECTIONS.includes(proj);
  // Decode attention reads the whole KV cache: timed with each cache dtype the model's head dim takes.
  const kvDtypes: KvDtype[] = cfg.headDim % 32 === 0 ? ['f32', 'f16', 'q8_0'] : cfg.headDim % 2 === 0 ? ['f32', 'f16'] : ['f32'];
  const total =
    p.projections.reduce((n, proj) => n + dtypes.length * (matvecTiers.length + matmulTiers.length + (normFoldsFor(proj) ? 2 : 0)), 0) +
    p.projections.length * (dtypes.filter(q8For).length + dtypes.filter(chunkedFor).length) +
    prefillLengths.length * attentionTiers.length +
    decodeLengths.length * kvDtypes.length * decodeForms.length;
  let done = 0;
  const step = (label: string) => progress(`kernels [${++done}/${total}] ${label}`);

  const budget = options.budget;
  let outOfTime = 0;
  const attempt = async (kind: KernelKind, tier: Tier, name: string, dtype: WeightDtype, shape: Record<string, number>, label: string, run: (label: string) => Promise<KernelResult>) => {
    if (budget && performance.now() >= budget.deadline) {
      if (outOfTime++ === 0) progress(`kernels: the ${budget.seconds} s budget is spent; the ${total - done} kernels left are skipped`);
      skipped.push({ kind, tier, name, dtype, shape, label, skipped: `not started: the run's ${budget.seconds} s budget was spent` });
      return;
    }
    step(label);
    try {
      results.push(await run(label));
    } catch (err) {
      // A shape this adapter cannot hold (binding size, workgroup memory, dtype block size) is
      // reported as skipped with the kernel's own message; anything else is a real failure.
      if (!(err instanceof ShapeError)) throw err;
      skipped.push({ kind, tier, name, dtype, shape, label, skipped: err.message });
      progress(`  skipped: ${err.message}`);
    }
  };

  // Attention first: a few runs, and the ones a time budget should least leave out.
  const { numHeads: Hq, numKvHeads: Hkv, headDim: D } = cfg;
  for (const T of prefillLengths) for (const tier of attentionTiers) {
    const shape = { T, Hq, Hkv, D };
    const label = `attention.prefill ${tier} f32 T=${T} Hq=${Hq} Hkv=${Hkv} D=${D}`;
    await attempt('attention.prefill', tier, 'attention', 'f32', shape, label, async () => {
      // One sequence's blocks, in order (the identity table).
      const blocks = kvTableWidth(T);
      const kv = blocks * 16 * Hkv * D;
      const { make, destroy } = benchBuffers(gpu);
      try {
        const q = make('q', randomF32(T * Hq * D));
        const kCache = make('kCache', randomF32(kv));
        const vCache = make('vCache', randomF32(kv));
        const out = make('out', T * Hq * D * 4);
        const blockTable = make('blockTable', Uint32Array.from({ length: blocks }, (_, i) => i));
        const op = new PrefillAttention(gpu, { Hq, Hkv, D, capacity: T, kvBlocks: blocks }, { q, kCache, vCache, blockTable, out }, { tier });
        const timing = await timeKernel(gpu, (pass) => op.encode(pass, { tokens: T, pastLen: 0, tableRow: 0 }), preset.timing);
        // Causal: T(T+1)/2 query-key pairs per head, 2D FLOP for q.k and 2D for p.v.
        const flops = 4 * D * Hq * ((T * (T + 1)) / 2);
        const bytes = 4 * (2 * T * Hq * D + 2 * T * Hkv * D);
        return result({ kind: 'attention.prefill', tier, name: 'attention', dtype: 'f32', shape, label, flops, bytes, timing }, roof, options.a100Roof);
      } finally {
        destroy();
      }
    });
  }

  for (const L of decodeLengths) for (const kvDtype of kvDtypes) for (const { tier, form } of decodeForms) {
    const R = p.decodeRows;
    const shape = { R, L, Hq, Hkv, D };
    const kernel = `attention.decode ${tier}${form === 'folded' ? '+rope' : ''} ${kvDtype} KV R=${R} L=${L} Hq=${Hq} Hkv=${Hkv} D=${D}`;
    const label = form === 'apart' ? `rope-kv + ${kernel}` : kernel;
    await attempt('attention.decode', tier, 'attention', kvDtype, shape, label, async () => {
      // Row r's blocks r * B .. r * B + B - 1 (the identity table).
      const blocks = kvTableWidth(L);
      const region = blocks * 16 * Hkv * D;
      const { make, destroy } = benchBuffers(gpu);
      let op: DecodeAttention | undefined;
      try {
        // With RoPE and the KV write, q holds the step's projection rows: queries, keys and values.
        const width = (form ? Hq + 2 * Hkv : Hq) * D;
        const q = make('q', randomF32(R * width));
        // Sized for f32, which holds the other dtypes' pools too (their bits are timing data only).
        const kCache = make('kCache', randomF32(R * region));
        const vCache = make('vCache', randomF32(R * region));
        const out = make('out', R * Hq * D * 4);
        // Attention's rows (table_row, kv_len); RopeKvWrite's (table_row, position of the step).
        const rowMeta = make('rowMeta', Uint32Array.from({ length: 2 * R }, (_, i) => (i % 2 === 0 ? i >> 1 : L)));
        const blockTable = make('blockTable', Uint32Array.from({ length: R * blocks }, (_, i) => i));
        const invFreq = form ? make('invFreq', ropeInverseFrequencies(D, 10000)) : undefined;
        const pool = { Hq, Hkv, D, capacity: L, kvBlocks: R * blocks, dtype: kvDtype };
        const newKv = form === 'folded' ? { rotaryDims: D, mode: 'half' as const } : undefined;
        op = new DecodeAttention(gpu, { ...pool, maxRows: R, tier, newKv }, { q, kCache, vCache, blockTable, out, rowMeta, ropeTable: newKv ? invFreq : undefined });
        const attention = op;
        const run = { rows: R, maxLen: L, qRowStride: width, ...(newKv ? { kOffset: Hq * D, vOffset: (Hq + Hkv) * D } : {}) };
        let before: ((pass: GPUComputePassEncoder) => void) | undefined;
        if (form === 'apart') {
          const stepMeta = make('stepMeta', Uint32Array.from({ length: 2 * R }, (_, i) => (i % 2 === 0 ? i >> 1 : L - 1)));
          const ropeKvWrite = new RopeKvWrite(gpu, 'half', { ...pool, rotaryDims: D }, { qkv: q, rowMeta: stepMeta, invFreq: invFreq!, kCache, vCache, blockTable });
          const ropeRun = { rows: R, rowStride: width, qOffset: 0, kOffset: Hq * D, vOffset: (Hq + Hkv) * D };
          before = (pass) => ropeKvWrite.encode(pass, ropeRun);
        }
        const timing = await timeKernel(gpu, (pass) => {
          before?.(pass);
          attention.encode(pass, run);
        }, preset.timing);
        const flops = 4 * D * Hq * L * R;
        // K and V as stored (q8_0 scales included), plus the f32 queries (and the step's keys and values) and outputs.
        const bytes = R * L * kvBytesPerToken({ numLayers: 1, numKvHeads: Hkv, headDim: D }, kvDtype) + 4 * R * (width + Hq * D);
        const fold = form ? { fold: { op: 'rope-kv' as const, form } } : {};
        return result({ kind: 'attention.decode', tier, ...fold, name: 'attention', dtype: kvDtype, shape, label, flops, bytes, timing }, roof, options.a100Roof);
      } finally {
        op?.destroy();
        destroy();
      }
    });
  }

  for (const proj of p.projections) {
    const { N, K } = projectionShape(cfg, proj);
    for (const dtype of dtypes) {
      // One weight per (projection, dtype), uploaded once and timed by both kernels.
      let shared: { weight: PackedWeight; input: GPUBuffer } | undefined;
      const prepare = () => {
        if (shared) return shared;
        if (isQuantDtype(dtype) && K % BLOCK_COLUMNS[dtype] !== 0) {
          throw new ShapeError(`${dtype} needs K to be a multiple of ${BLOCK_COLUMNS[dtype]}`);
        }
        // Refuse a plane larger than one binding before building it (an f32 LM head of a 7B model is 0.5 GB).
        const limit = Math.min(gpu.limits.maxStorageBufferBindingSize, gpu.limits.maxBufferSize);
        const largest = Math.max(...planeWords(dtype, N, K)) * 4;
        if (largest > limit) throw new ShapeError(`a ${(largest / 2 ** 20).toFixed(0)} MiB weight plane exceeds this adapter's ${(limit / 2 ** 20).toFixed(0)} MiB per binding`);
        const host = syntheticWeight(dtype, N, K);
        checkWeightFits(gpu, proj, host);
        const weight = uploadWeight(gpu, `bench.${proj}`, host);
        try {
          shared = { weight, input: createStorage(gpu, 'bench.input', randomF32(Math.max(p.decodeRows, p.prefillTokens) * K)) };
        } catch (err) {
          weight.planes.forEach((b) => b.destroy());
          throw err;
        }
        return shared;
      };
      try {
        // The matvec variant models run over this dtype, for the RMSNorm fold's two forms.
        const modelMatvec = { kind: 'matvec' as const, tier: tiers.matvec, activations: defaultMatvecActivations(gpu, dtype) };
        const runs: Array<{ kind: 'matvec' | 'matmul'; tier: Tier; activations?: MatvecActivations; layout?: MatvecLayout; norm?: 'folded' | 'apart' }> = [
          ...matvecTiers.map((tier) => ({ kind: 'matvec' as const, tier, activations: 'f32' as const })),
          ...(chunkedFor(dtype) ? [{ kind: 'matvec' as const, tier: tiers.matvec, activations: 'f32' as const, layout: 'chunked' as const }] : []),
          ...(q8For(dtype) ? [{ kind: 'matvec' as const, tier: tiers.matvec, activations: 'q8' as const }] : []),
          ...(normFoldsFor(proj) ? [{ ...modelMatvec, norm: 'folded' as const }, { ...modelMatvec, norm: 'apart' as const }] : []),
          ...matmulTiers.map((tier) => ({ kind: 'matmul' as const, tier })),
        ];
        for (const { kind, tier, activations, layout, norm } of runs) {
          const M = kind === 'matvec' ? p.decodeRows : p.prefillTokens;
          const shape = { M, N, K };
          const variant = `${tier}${activations === 'q8' ? '+q8' : ''}${layout === 'chunked' ? '+chunked' : ''}${norm === 'folded' ? '+norm' : ''}`;
          const label = `${norm === 'apart' ? 'norm + ' : ''}${kind} ${variant} ${dtype} ${proj} ${M}x${N}x${K}`;
          await attempt(kind, tier, proj, dtype, shape, label, async (label) => {
            const { weight, input } = prepare();
            const { make, destroy } = benchBuffers(gpu);
            try {
              const output = make('output', M * N * 4);
              const normWeight = norm ? make('normWeight', randomF32(K)) : undefined;
              let before: ((pass: GPUComputePassEncoder) => void) | undefined;
              let op: Matvec | Matmul;
              if (kind === 'matmul') op = new Matmul(gpu, { weight, input, output }, { tier });
              else if (norm === 'apart') {
                // The model's norm kernel writes the normalised rows; the plain matvec reads them.
                const normed = make('normed', M * K * 4);
                const rmsNorm = new Norm(gpu, 'rms', { x: input, weight: normWeight!, out: normed }, { eps: 1e-5 });
                before = (pass) => rmsNorm.encode(pass, { rows: M, cols: K });
                op = new Matvec(gpu, { weight, input: normed, output }, { tier, activations });
              } else {
                const fusion = norm === 'folded' ? { norm: { kind: 'rms' as const, weight: normWeight!, eps: 1e-5 } } : undefined;
                op = new Matvec(gpu, { weight, input, output }, { tier, activations, layout, fusion });
              }
              const projection = op;
              const timing = await timeKernel(gpu, (pass) => {
                before?.(pass);
                projection.encode(pass, { M });
              }, preset.timing);
              // The q8 step's own traffic (M K bytes of quants and K / 8 of scales, written then read) is
              // left out: the figure of merit is weight bytes per second, the same for both. A norm adds
              // its weight, and apart its normalised rows, written then read.
              const normBytes = norm ? 4 * (K + (norm === 'apart' ? 2 * M * K : 0)) : 0;
              return result(
                {
                  kind, tier, ...(kind === 'matvec' ? { activations } : {}),
                  ...(kind === 'matvec' && activations === 'f32' && CHUNKED_DTYPES.includes(dtype) ? { layout: layout ?? 'strided' } : {}),
                  ...(norm ? { fold: { op: 'norm' as const, form: norm } } : {}),
                  name: proj, dtype, shape, label, flops: 2 * M * N * K, bytes: weight.bytes + 4 * (M * K + M * N) + normBytes, weightBytes: weight.bytes, timing,
                },
                roof,
                options.a100Roof,
              );
            } finally {
              destroy();
            }
          });
        }
      } finally {
        shared?.weight.planes.forEach((b) => b.destroy());
        shared?.input.destroy();
      }
    }
  }

  return {
    shapes: {
      name: shapes.name,
      architecture: cfg.architecture,
      hiddenSize: cfg.hiddenSize,
      intermediateSize: cfg.intermediateSize,
      vocabSize: cfg.vocabSize,
      numHeads: cfg.numHeads,
      numKvHeads: cfg.numKvHeads,
      headDim: cfg.headDim,
      numLayers: cfg.numLayers,
    },
    prefillTokens: p.prefillTokens,
    decodeRows: p.decodeRows,
    results,
    skipped,
  };
}

// ---- `npm run bench:kernels` -------------------------------------------------------------------

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      preset: { type: 'string' },
      model: { type: 'string' },
      shapes: { type: 'string' },
      adapter: { type: 'string' },
      json: { type: 'string' },
      // Comma-separated filters, e.g. --dtypes q4_0,q8_0 --kinds matvec.
      dtypes: { type: 'string' },
      kinds: { type: 'string' },
    },
  });
  const { runKernelsOnly } = await import('./run.ts');
  await runKernelsOnly({
    quick: values.quick, preset: values.preset as PresetName | undefined, model: values.model, shapes: values.shapes, adapter: values.adapter, json: values.json,
    dtypes: values.dtypes !== undefined ? parseList(values.dtypes, WEIGHT_DTYPES, 'dtypes') : undefined,
    kinds: values.kinds !== undefined ? parseList(values.kinds, KERNEL_KINDS, 'kinds') : undefined,
  });
}

const KERNEL_KINDS: readonly KernelKind[] = ['matmul', 'matvec', 'attention.prefill', 'attention.decode'];

/** A comma-separated list of names, each one of `allowed`. */
export function parseList<T extends string>(text: string, allowed: readonly T[], what: string): T[] {
  const names = text.split(',').map((s) => s.trim()).filter((s) => s !== '');
  for (const name of names) {
    if (!(allowed as readonly string[]).includes(name)) throw new OptionError(`--${what}: unknown ${JSON.stringify(name)} (one of ${allowed.join(', ')})`);
  }
  return names as T[];
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err) => {
    console.error(err instanceof MinerError ? `error [${err.code}]: ${err.message}` : err);
    process.exitCode = 1;
  });
}

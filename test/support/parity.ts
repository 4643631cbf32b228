// Shared by the llama.cpp parity tests: our logits at every position of a sequence, our greedy
// continuation through the decode path, and the comparisons; a decode step's dispatch count, and the
// check that decode with the RoPE + KV write kept apart (an autotune's other choice) matches the fold.
import { expect } from 'vitest';
import type { Gpu } from '../../src/gpu/device.ts';
import { Transformer, type RowCandidates, type TransformerOptions } from '../../models/transformer.ts';
import { openModelSource } from '../../models/source.ts';
import { defaultMatmulTier } from '../../kernels/matmul.ts';
import type { KvDtype } from '../../kernels/attention.ts';
import { kernelTiers } from '../../kernels/tiers.ts';
import { compare, expectClose } from './reference.ts';
import type { TinyDtype } from './tiny-models.ts';

/** Rel-L2 of our logits against the float64 reference on the same weights, where every kernel runs in f32. */
export const REFERENCE_BOUND = 1e-4;

/**
 * The same bound where prefill's projections take the f16 matmul tier (an adapter with 'shader-f16',
 * for every weight format but f32: kernels/matmul.ts defaultMatmulTier). That tier stores each
 * projection's activations and weights as f16 (2^-11 relative), a rounding of the kind llama.cpp's CPU
 * matmul applies to its activations, only finer: llama.cpp's Q8_0 / Q8_K blocks (a step of 1/127 of
 * the block's largest value) leave 1.6e-2 .. 3.6e-2 between it and the float64 reference in these
 * models, and the f16 tier, about eight times finer, leaves 7e-4 (F16, Q4_0) .. 3.3e-3 (Q4_K) on
 * lavapipe. 1e-2 is three times the largest, and stays below the gap llama.cpp's own rounding leaves.
 */
export const F16_TIER_REFERENCE_BOUND = 1e-2;

/**
 * The bound where decode matvecs over quantised weights take q8 activations (kernels/tiers.ts
 * matvecActivations: where the autotune picks it, or WEBGPU_MINER_MATVEC_ACTIVATIONS=q8 asks for it). Each projection then rounds its activations to int8 blocks of 32 (a step of 1/127 of
 * the block's largest value), as llama.cpp's CPU matmul does with its Q8_0 / Q8_K blocks, whose gap to
 * float64 in these models is 1.6e-2 .. 3.6e-2. Measured on lavapipe at seed 7 (the positions after the
 * first prefill chunk and every greedy step run the matvec): 1.1e-2 .. 1.5e-2 (Q8_0 .. Q5_1), 1.7e-2
 * (Q4_K), 2.2e-2 (Q5_K), 3.6e-2 (Q6_K), 2.6e-2 (Q4_K_M); 6e-2 is 1.5x the largest. The kernel itself
 * is held to 1e-5 against float64 on its own q8 rows (test/matvec-q8.test.ts).
 */
export const Q8_ACTIVATIONS_REFERENCE_BOUND = 6e-2;

/** The float64 bound for a model on this device: `f32Matrices` when every matrix of the model is F32. */
export function referenceBound(gpu: Gpu, f32Matrices: boolean): number {
  if (f32Matrices) return REFERENCE_BOUND;
  if (kernelTiers(gpu).matvecActivations === 'q8') return Q8_ACTIVATIONS_REFERENCE_BOUND;
  return defaultMatmulTier(gpu, 'q8_0') === 'f16' ? F16_TIER_REFERENCE_BOUND : REFERENCE_BOUND;
}

/**
 * Against llama.cpp, per format: the largest rel-L2 at any position, the least greedy agreement (of 32).
 * How they were set, and what was measured, is at the top of test/llamacpp-parity.test.ts.
 */
export const LLAMA_CPP_BOUNDS: Record<TinyDtype, { relL2: number; greedy: number }> = {
  f32: { relL2: 1e-4, greedy: 32 },
  f16: { relL2: 2e-3, greedy: 29 },
  q8_0: { relL2: 3e-2, greedy: 28 },
  q4_0: { relL2: 3e-2, greedy: 28 },
  q4_1: { relL2: 3e-2, greedy: 28 },
  q5_0: { relL2: 3e-2, greedy: 28 },
  q5_1: { relL2: 3e-2, greedy: 28 },
  q2_k: { relL2: 1.5e-1, greedy: 24 },
  q3_k: { relL2: 1.5e-1, greedy: 24 },
  q4_k: { relL2: 1.5e-1, greedy: 24 },
  q5_k: { relL2: 1.5e-1, greedy: 24 },
  q6_k: { relL2: 1.5e-1, greedy: 24 },
  q4_k_m: { relL2: 1.5e-1, greedy: 24 },
  q5_k_m: { relL2: 1.5e-1, greedy: 24 },
};

export const argmax = (row: ArrayLike<number>): number => {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
};

/**
 * The parity runs keep K and V in f32 (kvDtype 'f32', as llama.cpp's F32 cache in
 * test/support/llama-oracle.ts) unless a test asks for another KV dtype.
 */
const OPTIONS = { slots: 1, capacity: 128, prefillChunk: 32, kvDtype: 'f32' as KvDtype };

/** Our logits at every position of `tokens` for the model at `path` (a GGUF file or HF folder). */
export async function ourLogits(
  gpu: Gpu, path: string, tokens: number[], inspect?: (model: Transformer) => void, kvDtype: KvDtype = 'f32',
): Promise<Float32Array[]> {
  const source = await openModelSource(path);
  const model = await Transformer.load(gpu, source, { ...OPTIONS, kvDtype });
  try {
    inspect?.(model);
    return (await model.prefill(0, tokens, 0, { allLogits: true })).logits!;
  } finally {
    model.destroy();
    await source.close();
  }
}

/** `prompt` followed by our greedy continuation of `steps` tokens (prefill, then one decode step each). */
export async function ourGreedy(gpu: Gpu, path: string, prompt: number[], steps: number, kvDtype: KvDtype = 'f32'): Promise<number[]> {
  const source = await openModelSource(path);
  const model = await Transformer.load(gpu, source, { ...OPTIONS, kvDtype });
  try {
    const tokens = [...prompt];
    let { candidates } = await model.prefill(0, prompt, 0);
    for (let i = 0; i < steps; i++) {
      tokens.push(candidates!.ids[0]);
      [candidates] = await model.decode([{ slot: 0, token: tokens[tokens.length - 1], position: tokens.length - 1 }]);
    }
    return tokens;
  } finally {
    model.destroy();
    await source.close();
  }
}

/** Rel-L2 of each position's logits row; a non-finite entry on either side fails. */
export function errors(ours: ArrayLike<number>[], theirs: ArrayLike<number>[]): number[] {
  if (ours.length !== theirs.length) throw new Error(`${ours.length} rows of logits against ${theirs.length}`);
  return ours.map((row, i) => {
    const c = compare(row, theirs[i]);
    if (c.firstNonFinite >= 0) throw new Error(`position ${i}: logit ${c.firstNonFinite} is ${row[c.firstNonFinite]} against ${theirs[i][c.firstNonFinite]}`);
    for (let j = 0; j < theirs[i].length; j++) {
      if (!Number.isFinite(theirs[i][j])) throw new Error(`position ${i}: reference logit ${j} is ${theirs[i][j]}`);
    }
    return c.relL2;
  });
}

/** The largest rel-L2 over all positions. */
export function worst(ours: ArrayLike<number>[], theirs: ArrayLike<number>[]): number {
  return Math.max(...errors(ours, theirs));
}

/**
 * Teacher-forced greedy agreement: at how many generated positions of `sequence` (after
 * `promptLength`) the other side's argmax over the previous position's logits is our token.
 */
export function greedyAgreement(sequence: number[], promptLength: number, logits: ArrayLike<number>[]): number {
  let agree = 0;
  for (let i = promptLength; i < sequence.length; i++) if (argmax(logits[i - 1]) === sequence[i]) agree++;
  return agree;
}

/**
 * Compute dispatches recorded by one decode step of the model at `path`, after a 4-token prefill and
 * one untimed decode step (a context that fits one attention split). Two files of the same family that
 * differ only in their layer count give a layer's dispatches as the difference.
 */
export async function decodeStepDispatches(gpu: Gpu, path: string, options: Partial<TransformerOptions> = {}): Promise<number> {
  const source = await openModelSource(path);
  const model = await Transformer.load(gpu, source, { ...OPTIONS, ...options });
  const passProto = globalThis.GPUComputePassEncoder.prototype;
  const { dispatchWorkgroups } = passProto;
  let dispatches = 0;
  try {
    await model.prefill(0, [1, 2, 3, 4], 0);
    await model.decode([{ slot: 0, token: 5, position: 4 }]);
    passProto.dispatchWorkgroups = function (this: GPUComputePassEncoder, x: number, y?: number, z?: number) {
      dispatches++;
      return dispatchWorkgroups.call(this, x, y, z);
    };
    await model.decode([{ slot: 0, token: 6, position: 5 }]);
  } finally {
    passProto.dispatchWorkgroups = dispatchWorkgroups;
    model.destroy();
    await source.close();
  }
  return dispatches;
}

/**
 * The candidates of decode steps that feed `tokens` after a prefill of `tokens[0 .. prefill)`, one step
 * per remaining token (teacher-forced), for the model at `path` loaded with `options`.
 */
export async function decodeCandidates(gpu: Gpu, path: string, tokens: number[], prefill: number, options: Partial<TransformerOptions> = {}): Promise<RowCandidates[]> {
  const source = await openModelSource(path);
  const model = await Transformer.load(gpu, source, { ...OPTIONS, ...options });
  try {
    await model.prefill(0, tokens.slice(0, prefill), 0);
    const steps: RowCandidates[] = [];
    for (let position = prefill; position < tokens.length; position++) {
      steps.push(...(await model.decode([{ slot: 0, token: tokens[position], position }])));
    }
    return steps;
  } finally {
    model.destroy();
    await source.close();
  }
}

/**
 * With the step's RoPE (head norm) and KV write as their own kernel before decode attention
 * (ropeKvFold false, as an adapter's autotune may choose), a decode step runs one dispatch a layer
 * more than with the fold (`paths`: the same family at n and n + 1 layers) and decodes the fold's
 * candidates: the two compute the same expressions, so only the order of a few f32 sums may differ.
 * `tokens` run past a 16-key block, so the steps write into a block of their own.
 */
export async function expectRopeKvApartAsFolded(gpu: Gpu, paths: [string, string], tokens: number[], options: Partial<TransformerOptions> = {}): Promise<void> {
  const perLayer = async (ropeKvFold: boolean) =>
    (await decodeStepDispatches(gpu, paths[1], { ...options, ropeKvFold })) - (await decodeStepDispatches(gpu, paths[0], { ...options, ropeKvFold }));
  expect(await perLayer(false)).toBe((await perLayer(true)) + 1);
  const folded = await decodeCandidates(gpu, paths[0], tokens, 3, { ...options, ropeKvFold: true });
  const apart = await decodeCandidates(gpu, paths[0], tokens, 3, { ...options, ropeKvFold: false });
  expect(apart).toHaveLength(tokens.length - 3);
  apart.forEach((step, i) => {
    expect(Array.from(step.ids), `step ${i}`).toEqual(Array.from(folded[i].ids));
    expectClose(step.logits, folded[i].logits, 1e-5, `step ${i}: RoPE + KV write apart vs folded`);
  });
}

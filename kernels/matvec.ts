// Matrix-vector products for decode: out = input · Wᵀ (+ bias) (+ residual) for M = 1..8 rows, W any weight
// dtype. Memory-bound: judge it in GB/s of weight read. Optional fusions (MatvecFusion) fold the norm
// before a projection (and Gemma's post-norm before that) and the activation after it into the same
// dispatch, on both tiers. Two tiers with the same results: the baseline
// (shaders/matvec.wgsl, a workgroup-memory tree reduction, runs anywhere) and the subgroup tier
// (shaders/matvec_subgroup.wgsl, subgroupAdd and two barriers, needs the 'subgroups' feature), picked by
// kernelTiers() unless MatvecOptions.tier says which.
// Over block-quantised weights either tier may take q8 activations (MatvecOptions.activations): each
// workgroup quantises the activation rows to int8 as it loads them (after the fused norm, if any) and
// multiplies int8 by int8 with dot4I8Packed (shaders/matvec_sums_q8.wgsl), in the same one dispatch.
// Numerics (test/matvec-q8.test.ts): against a float64 reference on the same q8-rounded activations
// the error is f32 accumulation only (<= 1e-5 relative); against the unquantised activations it is
// the activations' rounding, at most d / 2 = amax / 254 per element of each block of 32, which over
// a dot product of random-signed errors is about 2^-8 .. 2^-9 relative (bound 1.5e-2 in the tests),
// the same rounding llama.cpp's CPU path applies (it quantises activations to Q8_0 / Q8_K for these
// weight types), and small next to the weight's own quantisation (Q4_0: about 2^-4).
import type { Gpu } from '../src/gpu/device.ts';
import { ShapeError } from '../src/errors.ts';
import { composeShader, dispatchGrid } from './shader.ts';
import { Dispatch, checkFits, checkWorkgroupSize } from './dispatch.ts';
import { paddedCols, weightShader, type PackedWeight, type WeightDtype } from './weights.ts';
import { PACKED_DOT_FEATURE, hasPackedDot, kernelTiers, subgroupSizes, type MatvecActivations, type Tier } from './tiers.ts';
import type { NormKind } from './norm.ts';
import {
  MatmulParams,
  checkProjectionBuffers,
  placeholderStorage,
  projectionBindings,
  projectionConstants,
  projectionValues,
  type MatmulBuffers,
  type MatmulRun,
  type ProjectionField,
} from './matmul.ts';

/** Most activation rows one matvec handles (MAX_M in the shader). */
export const MATVEC_MAX_ROWS = 8;
/** Most weight rows one workgroup owns (MAX_ROWS in the shader); with `glu`, half as many outputs. */
export const MATVEC_MAX_ROWS_PER_WORKGROUP = 4;

/**
 * What a matvec may fuse around its product (decode's layer steps in one dispatch each):
 * out = activation(norm(input) · Wᵀ + bias) + residual.
 */
export interface MatvecFusion {
  /**
   * Normalise each input row over its K elements as it is loaded (RMSNorm, or LayerNorm with `bias`),
   * as kernels/norm.ts would: the input is then the raw residual stream, and each workgroup computes
   * its rows' statistics itself (RMSNorm's from the loads the products make, its 1 / rms applied to
   * the row's totals: see shaders/matvec_fusion.wgsl).
   */
  norm?: { kind: NormKind; weight: GPUBuffer; bias?: GPUBuffer; eps: number };
  /** Applied to each result (to the gate with `glu`), before the residual. */
  activation?: 'silu' | 'gelu';
  /**
   * The weight's rows are (gate, up) pairs, rows 2n and 2n + 1 (see interleaveRowPairs), and output n
   * is activation(gate) * up: N / 2 outputs; the bias, if any, is per weight row (2N entries' worth).
   */
  glu?: boolean;
  /**
   * Gemma's post-norm and residual add before the product: the input holds a sublayer's output a, and
   * the rows the product (and `norm`, an RMSNorm if any) take are the residual stream
   * x = base + RMSNorm(a) * weight (shaders/matvec_post_norm.wgsl). With `writeStream` (default true)
   * the first workgroup also writes x to `stream`, where the next sublayer's residual add reads it:
   * the post-norm's kernel is not needed. base and stream are (M, K) rows laid out as the input's.
   * Needs 9 storage buffers per shader stage (postNormFoldFits); takes the place of a residual.
   */
  postNorm?: PostNormFusion;
}

export interface PostNormFusion {
  /** (K) f32. */
  weight: GPUBuffer;
  eps: number;
  /** The residual stream before the sublayer. */
  base: GPUBuffer;
  /** Where x is written: neither the input, base nor output. */
  stream: GPUBuffer;
  /** Whether this matvec writes the stream (one projection of those reading it does). Default true. */
  writeStream?: boolean;
}

/** Storage buffers a post-norm matvec binds: the weight's two, input, bias, base, output, norm weight, post weight, stream. */
const POST_NORM_STORAGE_BUFFERS = 9;

/** Whether this device binds enough storage buffers per shader stage for MatvecFusion.postNorm. */
export function postNormFoldFits(gpu: Pick<Gpu, 'limits'>): boolean {
  return gpu.limits.maxStorageBuffersPerShaderStage >= POST_NORM_STORAGE_BUFFERS;
}

export type MatvecBuffers = MatmulBuffers;
export type MatvecRun = MatmulRun;

export interface MatvecOptions {
  /**
   * Threads per workgroup, a power of two (default: about four vec4 steps of K per thread, 32..256; on
   * the subgroup tier at least the adapter's largest subgroup).
   */
  workgroupSize?: number;
  /** Weight rows per workgroup, 1..4 (default: 1 on the baseline, defaultSubgroupMatvecRows(N) on the subgroup tier). */
  rowsPerWorkgroup?: number;
  /**
   * Kernel variant (default kernelTiers(gpu).matvec: 'subgroup' where the device has the 'subgroups'
   * feature). 'subgroup' on a device without that feature is a ShapeError.
   */
  tier?: Tier;
  /**
   * f32 activations, or 'q8' (quantised as they are loaded, multiplied with dot4I8Packed). Default:
   * kernelTiers(gpu).matvecActivations for the dtypes in Q8_ACTIVATION_DTYPES, else 'f32'. 'q8' on a
   * device without the WGSL feature, or with another weight dtype, is a ShapeError.
   */
  activations?: MatvecActivations;
  /**
   * How f32 activations' threads walk K (default 'strided'): see MatvecLayout. 'chunked' needs a weight
   * dtype in CHUNKED_DTYPES; q8 activations always take their weights 16 columns at a time.
   */
  layout?: MatvecLayout;
  fusion?: MatvecFusion;
}

/**
 * 'strided': each thread takes 4 columns of K, then the 4 that lie 4 x WG further on
 * (shaders/matvec_sums.wgsl), a word and a scale per 4 columns of a quantised weight row, 8 bytes of an
 * f16 one. 'chunked': each thread takes a chunk of consecutive columns (shaders/matvec_sums_chunked.wgsl):
 * 16 of a block format, their quants in one 16-byte load (Q8_0, Q4_0, Q4_1, Q2_K, Q4_K), two (Q3_K,
 * Q5_K, Q6_K) or five words (Q5_0, Q5_1), and one scale; 8 of f16, one 16-byte load. The wider loads a GPU's memory system may prefer. Same
 * products, summed in another order.
 */
export type MatvecLayout = 'strided' | 'chunked';

/** Weight dtypes served 16 columns at a time as int8 quants (a shaders/weights_<dtype>_q8.wgsl module each): the q8 activations'. */
export const Q8_ACTIVATION_DTYPES: readonly WeightDtype[] = ['q8_0', 'q4_0', 'q4_1', 'q5_0', 'q5_1', 'q2_k', 'q3_k', 'q4_k', 'q5_k', 'q6_k'];

/** Weight dtypes the chunked layout serves: the block formats (K % 32 == 0) and f16 (K % 8 == 0). */
export const CHUNKED_DTYPES: readonly WeightDtype[] = [...Q8_ACTIVATION_DTYPES, 'f16'];

/** The columns K must be a multiple of for a `dtype` weight in the chunked layout (a whole chunk, or block). */
export function chunkedColumnMultiple(dtype: WeightDtype): number {
  return dtype === 'f16' ? 8 : 32;
}

/**
 * Workgroup memory of the q8 tier's quantised activation segment (Q8_BLOCKS in
 * shaders/matvec_sums_q8.wgsl: 192 blocks of 32 int8 and an f32 scale).
 */
const Q8_SEGMENT_BYTES = 192 * (32 + 4);

/** The activations a matvec over `dtype` takes unless told. */
export function defaultMatvecActivations(gpu: Pick<Gpu, 'features' | 'wgslLanguageFeatures'>, dtype: WeightDtype): MatvecActivations {
  return Q8_ACTIVATION_DTYPES.includes(dtype) ? kernelTiers(gpu).matvecActivations : 'f32';
}

/**
 * Default workgroup size on q8 activations (about a thread per 32-column block of K: it quantises the
 * block, then multiplies its two 16-column chunks) and in the chunked layout (32 columns a thread: two
 * chunks of a block format, four of f16).
 */
export function defaultQ8MatvecWorkgroupSize(cols: number): number {
  const want = Math.ceil(cols / 32);
  return Math.min(256, Math.max(32, 2 ** Math.ceil(Math.log2(want))));
}

/** Default workgroup size for K input features: each thread walks about 4 groups of 4 columns. */
export function defaultMatvecWorkgroupSize(cols: number): number {
  const want = Math.ceil(paddedCols(cols) / 16);
  return Math.min(256, Math.max(32, 2 ** Math.ceil(Math.log2(want))));
}

/**
 * Default weight rows per workgroup on the subgroup tier for N output features: four (each thread's
 * activations then serve four weight rows) while that leaves at least 256 workgroups, fewer below.
 */
export function defaultSubgroupMatvecRows(rows: number): number {
  return rows >= 1024 ? 4 : rows >= 512 ? 2 : 1;
}

/** out[M, N] = input[M, K] · Wᵀ (+ bias) (+ residual) for M <= 8; one workgroup per weight row (or few rows). */
export class Matvec {
  readonly weight: PackedWeight;
  readonly #buffers: MatvecBuffers;
  readonly #dispatch: Dispatch<ProjectionField>;
  /** The variant this instance runs. */
  readonly tier: Tier;
  /** What the product multiplies: f32 activations, or q8 ones (quantised in the same dispatch). */
  readonly activations: MatvecActivations;
  /** How the threads walk K (always 'chunked' on q8 activations). */
  readonly layout: MatvecLayout;
  readonly workgroupSize: number;
  /** Outputs per workgroup (weight rows, or row pairs with glu). */
  readonly rowsPerWorkgroup: number;
  readonly fusion: MatvecFusion;
  /** N: outputs per activation row (the weight's rows, half of them with glu). */
  readonly outputs: number;
  readonly #maxPerDimension: number;

  constructor(gpu: Gpu, buffers: MatvecBuffers, options: MatvecOptions = {}) {
    const label = `matvec(${buffers.weight.label})`;
    checkProjectionBuffers(label, buffers);
    const tier = options.tier ?? kernelTiers(gpu).matvec;
    if (tier !== 'baseline' && tier !== 'subgroup') throw new ShapeError(`${label}: unknown tier ${String(tier)}`);
    if (tier === 'subgroup' && !gpu.features.has('subgroups')) {
      throw new ShapeError(`${label}: the subgroup tier needs the device feature 'subgroups', which this adapter does not offer`);
    }
    const subgroup = tier === 'subgroup';
    const dtype = buffers.weight.dtype;
    const activations = options.activations ?? defaultMatvecActivations(gpu, dtype);
    if (activations !== 'f32' && activations !== 'q8') throw new ShapeError(`${label}: unknown activations ${String(activations)}`);
    const q8 = activations === 'q8';
    if (q8 && !Q8_ACTIVATION_DTYPES.includes(dtype)) {
      throw new ShapeError(`${label}: q8 activations serve ${Q8_ACTIVATION_DTYPES.join(', ')} weights, not ${dtype}`);
    }
    if (q8 && buffers.weight.cols % 32 !== 0) {
      throw new ShapeError(`${label}: q8 activations need K to be a multiple of 32 (got ${buffers.weight.cols})`);
    }
    if (q8 && !hasPackedDot(gpu)) {
      throw new ShapeError(`${label}: q8 activations need the WGSL language feature ${PACKED_DOT_FEATURE}, which this device does not offer`);
    }
    const layout = options.layout ?? (q8 ? 'chunked' : 'strided');
    if (layout !== 'strided' && layout !== 'chunked') throw new ShapeError(`${label}: unknown layout ${String(layout)}`);
    if (q8 && layout !== 'chunked') throw new ShapeError(`${label}: q8 activations take their weights in chunks (layout 'chunked')`);
    const chunked = layout === 'chunked' && !q8;
    if (chunked && !CHUNKED_DTYPES.includes(dtype)) {
      throw new ShapeError(`${label}: the chunked layout serves ${CHUNKED_DTYPES.join(', ')} weights, not ${dtype}`);
    }
    if (chunked && buffers.weight.cols % chunkedColumnMultiple(dtype) !== 0) {
      throw new ShapeError(`${label}: the chunked layout needs K to be a multiple of ${chunkedColumnMultiple(dtype)} for ${dtype} (got ${buffers.weight.cols})`);
    }
    const fusion = options.fusion ?? {};
    const glu = fusion.glu === true;
    checkFusion(gpu, label, buffers, fusion);
    // Outputs: weight rows, or pairs of them with glu; each workgroup reads `perOutput` rows per output.
    const outputs = glu ? buffers.weight.rows / 2 : buffers.weight.rows;
    const perOutput = glu ? 2 : 1;
    // The smallest subgroup sizes the shader's per-subgroup slots (rounded down: more slots, never
    // fewer); the largest sets the least default workgroup size.
    const { min: sgMin, max: sgMax } = subgroupSizes(gpu);
    const byK = q8 || chunked ? defaultQ8MatvecWorkgroupSize(buffers.weight.cols) : defaultMatvecWorkgroupSize(buffers.weight.cols);
    const {
      // The subgroup tier fills at least one whole subgroup.
      workgroupSize = subgroup ? Math.min(Math.max(byK, sgMax), gpu.limits.maxComputeInvocationsPerWorkgroup, gpu.limits.maxComputeWorkgroupSizeX) : byK,
      rowsPerWorkgroup = subgroup ? Math.min(defaultSubgroupMatvecRows(outputs), MATVEC_MAX_ROWS_PER_WORKGROUP / perOutput) : 1,
    } = options;
    const wg = checkWorkgroupSize(gpu, workgroupSize, label);
    const maxRows = MATVEC_MAX_ROWS_PER_WORKGROUP / perOutput;
    if (!Number.isSafeInteger(rowsPerWorkgroup) || rowsPerWorkgroup < 1 || rowsPerWorkgroup > maxRows) {
      throw new ShapeError(`${label}: rowsPerWorkgroup must be 1..${maxRows}${glu ? ' with glu' : ''} (got ${rowsPerWorkgroup})`);
    }
    const weightRows = rowsPerWorkgroup * perOutput;
    // Each thread's sums: weight rows x activation rows, and a fused RMSNorm's sums of squares per
    // activation row (SQUARE_ROWS in shaders/matvec_fusion.wgsl).
    const slots = (weightRows + (fusion.norm?.kind === 'rms' ? 1 : 0)) * MATVEC_MAX_ROWS;
    // Baseline: a (slots, WG) tree whose first rows x 8 threads write the outputs. Subgroup tier: the
    // leader bitmask and (subgroups, slots) sums.
    const outputThreads = rowsPerWorkgroup * MATVEC_MAX_ROWS;
    if (!subgroup && wg < outputThreads) {
      throw new ShapeError(`${label}: workgroup size ${wg} must be >= ${outputThreads} (rows x ${MATVEC_MAX_ROWS})`);
    }
    const shared = (subgroup ? (Math.ceil(wg / 32) + Math.ceil(wg / sgMin) * slots) * 4 : slots * wg * 4) + (q8 ? Q8_SEGMENT_BYTES : 0);
    if (shared > gpu.limits.maxComputeWorkgroupStorageSize) {
      throw new ShapeError(
        `${label}: ${rowsPerWorkgroup} rows x workgroup ${wg} need ${shared} bytes of workgroup memory, ` +
          `over this adapter's ${gpu.limits.maxComputeWorkgroupStorageSize}`,
      );
    }
    this.weight = buffers.weight;
    this.fusion = fusion;
    this.outputs = outputs;
    this.tier = tier;
    this.activations = activations;
    this.layout = layout;
    this.workgroupSize = wg;
    this.rowsPerWorkgroup = rowsPerWorkgroup;
    this.#buffers = buffers;
    this.#maxPerDimension = gpu.limits.maxComputeWorkgroupsPerDimension;
    const fused = fusion.norm !== undefined || fusion.activation !== undefined || glu || fusion.postNorm !== undefined;
    const post = fusion.postNorm;
    // A post-norm's module comes with the fusion module; without one, the input is taken as loaded.
    const fusionModules = !fused ? ['matvec_plain.wgsl'] : ['matvec_fusion.wgsl', post ? 'matvec_post_norm.wgsl' : 'matvec_input.wgsl'];
    // The weight's modules: its chunk module on q8 activations, a chunk reader in the chunked layout
    // (shaders/matvec_sums_chunked.wgsl), else its weight4 module.
    const chunkModule = weightShader(dtype).replace('.wgsl', '_q8.wgsl');
    const weightModules = q8 ? [chunkModule]
      : !chunked ? [weightShader(dtype)]
      : dtype === 'f16' ? ['weights_f16_chunked.wgsl']
      : [chunkModule, 'matvec_chunk_quant.wgsl'];
    const sumsModule = q8 ? 'matvec_sums_q8.wgsl' : chunked ? 'matvec_sums_chunked.wgsl' : 'matvec_sums.wgsl';
    this.#dispatch = new Dispatch(
      gpu,
      {
        name: 'matvec',
        variant: q8 ? `${dtype}-q8` : chunked ? `${dtype}-chunked` : dtype,
        // The fusion code is composed in only where a fusion is asked for: a plain projection's
        // shader stays small (and quick to compile on a software adapter).
        code: subgroup
          ? composeShader('matvec_subgroup_enable.wgsl', ...(q8 ? ['matvec_q8_requires.wgsl'] : []), ...weightModules, ...fusionModules, sumsModule, 'matvec_subgroup.wgsl')
          : composeShader(...(q8 ? ['matvec_q8_requires.wgsl'] : []), ...weightModules, ...fusionModules, sumsModule, 'matvec.wgsl'),
        entryPoint: subgroup ? 'matvec_subgroup' : 'matvec',
        constants: {
          WG: wg,
          ROWS: rowsPerWorkgroup,
          W_ROWS: weightRows,
          ...(subgroup ? { SG_MIN: sgMin } : {}),
          ...projectionConstants(buffers),
          ...(fused ? fusionConstants(fusion) : {}),
          ...(post ? { POST_EPS: post.eps, WRITE_STREAM: post.writeStream === false ? 0 : 1 } : {}),
        },
      },
      MatmulParams, // one run contract for both kernels (shaders/matmul_projection.wgsl)
      [
        // A post-norm's base rows take the residual's binding (5).
        ...projectionBindings(gpu, post ? { ...buffers, residual: post.base } : buffers),
        // The norm's scale and shift (bindings 7, 8; a post-norm's weight in the shift's place), fused
        // shaders only, and a post-norm's stream (9).
        ...(fused ? [fusion.norm?.weight ?? placeholderStorage(gpu), fusion.norm?.bias ?? post?.weight ?? placeholderStorage(gpu)] : []),
        ...(post ? [post.stream] : []),
      ],
    );
  }

  encode(pass: GPUComputePassEncoder, run: MatvecRun): void {
    const label = `matvec(${this.weight.label})`;
    const values = matvecValues(label, this.#buffers, this.fusion, run);
    const post = this.fusion.postNorm;
    if (post) {
      // base and stream rows are laid out as the input's.
      const span = (values.m - 1) * values.a_stride + values.k;
      checkFits(label, 'post-norm base', post.base, values.a_offset, span);
      checkFits(label, 'post-norm stream', post.stream, values.a_offset, span);
    }
    const [x, y] = dispatchGrid(Math.ceil(values.n / this.rowsPerWorkgroup), this.#maxPerDimension);
    this.#dispatch.encode(pass, values, x, y);
  }
}

/**
 * Validate a run (of a whole weight, or of one row chunk of it) and return the uniform values: as
 * projectionValues, but with glu the outputs are half the weight's rows and the bias runs over all
 * the weight's rows.
 */
export function matvecValues(
  label: string,
  buffers: Omit<MatvecBuffers, 'weight'> & { weight: Pick<PackedWeight, 'rows' | 'cols'> },
  fusion: MatvecFusion,
  run: MatvecRun,
): Record<ProjectionField, number> {
  if (!fusion.glu) return projectionValues(label, buffers, run, MATVEC_MAX_ROWS);
  const { rows, cols } = buffers.weight;
  const values = projectionValues(label, { ...buffers, bias: undefined, weight: { rows: rows / 2, cols } }, run, MATVEC_MAX_ROWS);
  if (buffers.bias) checkFits(label, 'bias', buffers.bias, values.bias_offset, rows);
  return values;
}

const NORM_CODE = { rms: 1, layer: 2 } as const;
const ACTIVATION_CODE = { silu: 1, gelu: 2 } as const;

/** The shader's fusion overrides (NORM, NORM_EPS, ACT, GLU in shaders/matvec_common.wgsl). */
function fusionConstants(fusion: MatvecFusion): Record<'NORM' | 'NORM_EPS' | 'ACT' | 'GLU', number> {
  return {
    NORM: fusion.norm ? NORM_CODE[fusion.norm.kind] : 0,
    NORM_EPS: fusion.norm?.eps ?? 0,
    ACT: fusion.activation ? ACTIVATION_CODE[fusion.activation] : 0,
    GLU: fusion.glu ? 1 : 0,
  };
}

/**
 * Refuse fusions the shader cannot run: unknown kinds, a norm weight shorter than K, an odd glu
 * weight, a post-norm beside a residual or LayerNorm or on a device that cannot bind its buffers.
 */
function checkFusion(gpu: Gpu, label: string, buffers: MatvecBuffers, fusion: MatvecFusion): void {
  const { norm, activation, glu, postNorm: post } = fusion;
  const K = buffers.weight.cols;
  if (norm) {
    if (norm.kind !== 'rms' && norm.kind !== 'layer') throw new ShapeError(`${label}: unknown norm kind ${String(norm.kind)}`);
    if ((norm.kind === 'layer') !== (norm.bias !== undefined)) {
      throw new ShapeError(`${label}: a ${norm.kind === 'layer' ? 'LayerNorm needs' : 'RMSNorm takes no'} norm bias`);
    }
    if (typeof norm.eps !== 'number' || !Number.isFinite(norm.eps) || norm.eps < 0) {
      throw new ShapeError(`${label}: norm eps must be a finite number >= 0 (got ${norm.eps})`);
    }
    checkFits(label, 'norm weight', norm.weight, 0, K);
    if (norm.bias) checkFits(label, 'norm bias', norm.bias, 0, K);
    if (norm.weight === buffers.output || norm.bias === buffers.output) throw new ShapeError(`${label}: the norm's buffers must not be the output`);
  }
  if (activation !== undefined && activation !== 'silu' && activation !== 'gelu') {
    throw new ShapeError(`${label}: unknown activation ${String(activation)}`);
  }
  if (glu && buffers.weight.rows % 2 !== 0) {
    throw new ShapeError(`${label}: glu needs (gate, up) row pairs, but the weight has ${buffers.weight.rows} rows`);
  }
  if (post) {
    if (!postNormFoldFits(gpu)) {
      throw new ShapeError(
        `${label}: a post-norm fold binds ${POST_NORM_STORAGE_BUFFERS} storage buffers, over this adapter's ` +
          `${gpu.limits.maxStorageBuffersPerShaderStage} per shader stage`,
      );
    }
    if (buffers.residual) throw new ShapeError(`${label}: a post-norm takes the residual's place; it cannot have a residual too`);
    if (norm?.kind === 'layer') throw new ShapeError(`${label}: a post-norm goes before an RMSNorm (or no norm), not a LayerNorm`);
    if (typeof post.eps !== 'number' || !Number.isFinite(post.eps) || post.eps < 0) {
      throw new ShapeError(`${label}: post-norm eps must be a finite number >= 0 (got ${post.eps})`);
    }
    checkFits(label, 'post-norm weight', post.weight, 0, K);
    const { input, output } = buffers;
    if (post.base === output) throw new ShapeError(`${label}: the post-norm's base must not be the output`);
    if ([input, post.base, output, post.weight].includes(post.stream)) {
      throw new ShapeError(`${label}: the post-norm's stream must be a buffer of its own, neither the input, base, output nor weight`);
    }
  }
}

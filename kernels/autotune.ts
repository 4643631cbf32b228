// Per-adapter autotune of the decode matvec: for each weight dtype of a model, the variant (reduction
// tier, f32 or q8 activations, the threads' layout over K, weight rows per workgroup, workgroup size) that runs fastest on this
// adapter, found by timing a few candidates at load on the model's own shapes, then cached in a JSON
// file keyed by the adapter (vendor, architecture, device, description, backend), the WebGPU
// implementation (Dawn, as the `webgpu` package version) and this project's version: a new driver
// or release re-tunes, a cached key loads at once.
//
// Cache file: $WEBGPU_MINER_AUTOTUNE_CACHE if set, else $XDG_CACHE_HOME/webgpu-miner/autotune.json,
// else ~/.cache/webgpu-miner/autotune.json. A file that cannot be read or parsed is ignored with a
// warning (and rewritten); one that cannot be written costs a warning, never the load.
//
// The search is coordinate descent from the static defaults (what Matvec picks untold), a handful of
// pipelines per dtype, not the whole grid: first tier x activations (f32 in both layouts), then rows per workgroup (1, 2,
// 4), then the workgroup size (half, double). Every candidate computes the same product (up to the
// q8 tier's stated bound, kernels/matvec.ts), so the choice changes speed, not results.
// Last, with the chosen variant, whether a projection after a norm folds it in (one dispatch; each
// workgroup also scales and squares the activations it loads) or reads the norm kernel's output (two
// dispatches): which costs less depends on the adapter (on lavapipe the fold loses, as a dispatch
// there is cheap), so it is timed too, both ways over the same shapes.
//
// The same file holds the one decode fold outside the matvecs (autotuneRopeKvFold): whether decode
// attention rotates and stores the step's key and value itself (DecodeAttention's newKv, one dispatch
// a layer fewer; every workgroup rotates its own query head, and the split holding the step's key
// also rounds or quantises it) or a RoPE + KV-write kernel runs before it. It is timed on the model's
// attention shape and KV dtype, both ways, at a short and a long context.
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import type { Gpu } from '../src/gpu/device.ts';
import { createStorage } from '../src/gpu/buffers.ts';
import { timeSample } from '../src/gpu/timing.ts';
import { ShapeError } from '../src/errors.ts';
import { CHUNKED_DTYPES, chunkedColumnMultiple, MATVEC_MAX_ROWS_PER_WORKGROUP, Matvec, postNormFoldFits, Q8_ACTIVATION_DTYPES, type MatvecFusion, type MatvecLayout, type MatvecOptions } from './matvec.ts';
import { Norm } from './norm.ts';
import { DecodeAttention, KvWrite, kvBlockBytes, kvTableWidth, type KvDtype } from './attention.ts';
import { RopeKvWrite, ropeInverseFrequencies, type RopeMode } from './rope.ts';
import { hasPackedDot, type MatvecActivations, type Tier } from './tiers.ts';
import { BLOCK_COLUMNS, isQuantDtype, planeWords, WEIGHT_DTYPES, type PackedWeight, type WeightDtype } from './weights.ts';
import { uploadWeight } from './weights-upload.ts';

/** One matvec variant: what Matvec's options say, and whether a norm before it is folded in. */
export interface MatvecTuning {
  tier: Tier;
  activations: MatvecActivations;
  layout: MatvecLayout;
  rowsPerWorkgroup: number;
  workgroupSize: number;
  /**
   * A projection after a norm (q/k/v, the MLP's input) folds the norm into its matvec (MatvecFusion's
   * norm) rather than reading the norm kernel's output: true where that timed faster on this adapter.
   */
  normFold: boolean;
  /**
   * Models with post-norms (Gemma): a projection after a post-norm and its norm folds both
   * (MatvecFusion.postNorm) rather than reading the output of the norm kernel that runs both: true
   * where that timed faster on this adapter. Absent where the model has no post-norms.
   */
  postNormFold?: boolean;
}

/** The tuned variant per weight dtype (a dtype absent: the static defaults). */
export type MatvecTunings = Partial<Record<WeightDtype, MatvecTuning>>;

export interface AutotuneOptions {
  /** Cache file (default: autotuneCachePath()). */
  cachePath?: string;
  /** Where warnings go (default: console.warn). */
  warn?: (message: string) => void;
  /** Progress lines while tuning (default: none). */
  progress?: (message: string) => void;
}

export interface AutotuneRequest {
  dtypes: readonly WeightDtype[];
  /** Representative (N outputs, K inputs) shapes; each candidate's time is summed over them. */
  shapes: ReadonlyArray<{ N: number; K: number }>;
  /** The model has post-norms: time MatvecTuning.postNormFold too. */
  postNorms?: boolean;
}

export interface AutotuneResult {
  tunings: MatvecTunings;
  /** Dtypes taken from the cache and dtypes timed now. */
  cached: WeightDtype[];
  tuned: WeightDtype[];
  key: string;
  path: string;
}

/**
 * Bumped when the file's shape or the meaning of a tuning changes (older files are then re-tuned).
 * 2: q8 activations are quantised inside the matvec, no longer by a dispatch before it.
 * 3: normFold, and the RMSNorm fold summing its squares from the products' own loads.
 * 4: layout (f32 activations strided or chunked over K).
 * 5: f16 weights in the chunked layout too.
 */
export const AUTOTUNE_CACHE_FORMAT = 5;

/** The cache file's path (see the header). */
export function autotuneCachePath(env: NodeJS.ProcessEnv = process.env): string {
  if (env.WEBGPU_MINER_AUTOTUNE_CACHE) return env.WEBGPU_MINER_AUTOTUNE_CACHE;
  const base = env.XDG_CACHE_HOME || join(homedir(), '.cache');
  return join(base, 'webgpu-miner', 'autotune.json');
}

function packageVersion(url: URL): string {
  try {
    const version = (JSON.parse(readFileSync(url, 'utf8')) as { version?: unknown }).version;
    return typeof version === 'string' ? version : 'unknown';
  } catch {
    return 'unknown';
  }
}

let versions: { project: string; webgpu: string } | undefined;
function implementationVersions(): { project: string; webgpu: string } {
  versions ??= {
    project: packageVersion(new URL('../package.json', import.meta.url)),
    webgpu: packageVersion(new URL('../node_modules/webgpu/package.json', import.meta.url)),
  };
  return versions;
}

/**
 * What a tuning is valid for: the adapter as Dawn describes it (the description carries the driver,
 * e.g. "llvmpipe: Mesa 25.0.7"), its backend, the Dawn build and this project's version.
 */
export function autotuneKey(gpu: Pick<Gpu, 'info'>): string {
  const { vendor, architecture, device, description, backend } = gpu.info;
  const { project, webgpu } = implementationVersions();
  return JSON.stringify({ vendor, architecture, device, description, backend, webgpu, project });
}

interface CacheEntry {
  tunedAt: string;
  /** By tuningId (a matvec's MatvecTuning) or ropeKvFoldId (a RopeKvFoldTuning). */
  tunings: Record<string, unknown>;
}

interface CacheFile {
  format: number;
  entries: Record<string, CacheEntry>;
}

/** The file's entries, or none (with a warning) when it is missing, unreadable or malformed. */
function readCache(path: string, warn: (message: string) => void): CacheFile {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    // No file yet (or no directory: the write that follows says so) is no cache, not a fault.
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT' && code !== 'ENOTDIR') warn(`autotune: cannot read ${path} (${(err as Error).message}); tuning again`);
    return { format: AUTOTUNE_CACHE_FORMAT, entries: {} };
  }
  try {
    const parsed = JSON.parse(text) as unknown;
    if (typeof parsed !== 'object' || parsed === null) throw new Error('not a JSON object');
    const file = parsed as Partial<CacheFile>;
    if (file.format !== AUTOTUNE_CACHE_FORMAT) throw new Error(`format ${String(file.format)}, expected ${AUTOTUNE_CACHE_FORMAT}`);
    if (typeof file.entries !== 'object' || file.entries === null || Array.isArray(file.entries)) throw new Error('no entries object');
    return { format: AUTOTUNE_CACHE_FORMAT, entries: file.entries };
  } catch (err) {
    warn(`autotune: ignoring the unreadable cache ${path} (${(err as Error).message}); tuning again`);
    return { format: AUTOTUNE_CACHE_FORMAT, entries: {} };
  }
}

/** Write the file whole (temporary file, then rename), or warn: a read-only cache never fails a load. */
function writeCache(path: string, file: CacheFile, warn: (message: string) => void): void {
  try {
    mkdirSync(dirname(path), { recursive: true });
    const temporary = `${path}.${process.pid}.tmp`;
    writeFileSync(temporary, JSON.stringify(file, null, 2) + '\n');
    renameSync(temporary, path);
  } catch (err) {
    warn(`autotune: cannot write the cache ${path} (${(err as Error).message}); the tuning holds for this process only`);
  }
}

/**
 * This adapter's entry of the cache file: its tunings by id as read, and the ones made now, which
 * save() writes back (keeping the entry's others).
 */
class TuningCache {
  readonly path: string;
  readonly key: string;
  readonly #warn: (message: string) => void;
  readonly #file: CacheFile;
  readonly #made: Record<string, unknown> = {};

  constructor(path: string, key: string, warn: (message: string) => void) {
    this.path = path;
    this.key = key;
    this.#warn = warn;
    this.#file = readCache(path, warn);
  }

  get(id: string): unknown {
    return this.#file.entries[this.key]?.tunings?.[id];
  }

  set(id: string, value: unknown): void {
    this.#made[id] = value;
  }

  save(): void {
    if (Object.keys(this.#made).length === 0) return;
    const tunings = { ...(this.#file.entries[this.key]?.tunings ?? {}), ...this.#made };
    this.#file.entries[this.key] = { tunedAt: new Date().toISOString(), tunings };
    writeCache(this.path, this.#file, this.#warn);
  }
}

/** The tuning's id inside an entry: the dtype and the shapes it was timed on, and whether with post-norms. */
function tuningId(dtype: WeightDtype, { shapes, postNorms }: AutotuneRequest): string {
  return `${dtype} ${shapes.map(({ N, K }) => `${N}x${K}`).join(',')}${postNorms ? ' post-norms' : ''}`;
}

/** A cached tuning this device can run, or undefined (then it is tuned again). */
function usable(gpu: Gpu, dtype: WeightDtype, value: unknown, postNorms: boolean): MatvecTuning | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  const t = value as Partial<MatvecTuning>;
  if (t.tier !== 'baseline' && t.tier !== 'subgroup') return undefined;
  if (t.tier === 'subgroup' && !gpu.features.has('subgroups')) return undefined;
  if (t.activations !== 'f32' && t.activations !== 'q8') return undefined;
  if (t.activations === 'q8' && !(hasPackedDot(gpu) && Q8_ACTIVATION_DTYPES.includes(dtype))) return undefined;
  if (t.layout !== 'strided' && t.layout !== 'chunked') return undefined;
  if (t.layout === 'chunked' ? !CHUNKED_DTYPES.includes(dtype) : t.activations === 'q8') return undefined;
  const rows = t.rowsPerWorkgroup;
  const wg = t.workgroupSize;
  if (!Number.isSafeInteger(rows) || rows! < 1 || rows! > MATVEC_MAX_ROWS_PER_WORKGROUP) return undefined;
  if (!Number.isSafeInteger(wg) || wg! < 1 || (wg! & (wg! - 1)) !== 0 || wg! > gpu.limits.maxComputeInvocationsPerWorkgroup) return undefined;
  if (typeof t.normFold !== 'boolean') return undefined;
  if (postNorms ? typeof t.postNormFold !== 'boolean' || (t.postNormFold && !postNormFoldFits(gpu)) : t.postNormFold !== undefined) return undefined;
  const tuning: MatvecTuning = { tier: t.tier, activations: t.activations, layout: t.layout, rowsPerWorkgroup: rows!, workgroupSize: wg!, normFold: t.normFold };
  return postNorms ? { ...tuning, postNormFold: t.postNormFold } : tuning;
}

/**
 * The tuned variant of every requested dtype: from the cache where this adapter's key has it, else
 * timed now (and written back).
 */
export async function autotuneMatvecs(gpu: Gpu, request: AutotuneRequest, options: AutotuneOptions = {}): Promise<AutotuneResult> {
  const warn = options.warn ?? ((message: string) => console.warn(message));
  for (const dtype of request.dtypes) {
    if (!WEIGHT_DTYPES.includes(dtype)) throw new ShapeError(`autotune: unknown weight dtype ${String(dtype)}`);
  }
  if (request.shapes.length === 0) throw new ShapeError('autotune: no shapes to time');
  for (const { N, K } of request.shapes) {
    if (!Number.isSafeInteger(N) || N < 1 || !Number.isSafeInteger(K) || K < 1) throw new ShapeError(`autotune: bad shape ${N}x${K}`);
  }
  const cache = new TuningCache(options.cachePath ?? autotuneCachePath(), autotuneKey(gpu), warn);
  const tunings: MatvecTunings = {};
  const cached: WeightDtype[] = [];
  const tuned: WeightDtype[] = [];
  for (const dtype of new Set(request.dtypes)) {
    const hit = usable(gpu, dtype, cache.get(tuningId(dtype, request)), request.postNorms === true);
    if (hit) {
      tunings[dtype] = hit;
      cached.push(dtype);
      continue;
    }
    options.progress?.(`autotune: timing ${dtype} matvec variants`);
    try {
      tunings[dtype] = await tuneDtype(gpu, dtype, request.shapes, request.postNorms === true);
      cache.set(tuningId(dtype, request), tunings[dtype]);
      tuned.push(dtype);
    } catch (err) {
      // Tuning is an optimisation: a failure leaves this dtype on the static defaults, never fails the load.
      warn(`autotune: ${dtype} keeps the static defaults (${(err as Error).message})`);
    }
  }
  cache.save();
  return { tunings, cached, tuned, key: cache.key, path: cache.path };
}

/**
 * Matvec options for `weight` under `tunings` (undefined: the static defaults). With glu a workgroup
 * holds half the outputs, so the rows are capped at what the fused kernel allows. The tuning was timed
 * at the model's K = hidden size; a weight whose K is not whole chunks (an f16 ffn_down over an
 * intermediate size that is not a multiple of 8) takes the strided layout instead.
 */
export function tunedMatvecOptions(tunings: MatvecTunings | undefined, weight: Pick<PackedWeight, 'dtype' | 'cols'>, fusion?: MatvecFusion): MatvecOptions | undefined {
  const tuning = tunings?.[weight.dtype];
  if (!tuning) return undefined;
  const { normFold: _, postNormFold: __, ...variant } = tuning;
  const maxRows = fusion?.glu ? MATVEC_MAX_ROWS_PER_WORKGROUP / 2 : MATVEC_MAX_ROWS_PER_WORKGROUP;
  const wholeChunks = weight.cols % chunkedColumnMultiple(weight.dtype) === 0;
  const layout = variant.layout === 'chunked' && !wholeChunks ? 'strided' : variant.layout;
  return { ...variant, layout, rowsPerWorkgroup: Math.min(variant.rowsPerWorkgroup, maxRows) };
}

/** Whether a projection over `dtype` folds the norm before it in (the static default: yes). */
export function tunedNormFold(tunings: MatvecTunings | undefined, dtype: WeightDtype): boolean {
  return tunings?.[dtype]?.normFold ?? true;
}

/**
 * Whether a projection over `dtype` folds a post-norm and the norm after it in. The static default is
 * no, unlike the norm fold's: every workgroup of the fold reads its input rows three times (the
 * post-norm's statistics, then the sublayer's output and the stream beside it) where the plain or
 * norm-folded matvec reads them once, which a GPU whose caches are the limit pays for; the kernel
 * that runs both norms costs one dispatch and one pass over the rows. The autotune says where folding wins.
 */
export function tunedPostNormFold(tunings: MatvecTunings | undefined, dtype: WeightDtype): boolean {
  return tunings?.[dtype]?.postNormFold ?? false;
}

/** What a model's decode steps run: each weight dtype's matvec variant (absent: the static defaults) and the RoPE + KV-write fold. */
export interface DecodeTuning {
  matvecs: MatvecTunings;
  ropeKvFold: boolean;
}

/** One line naming it, e.g. "q4_0 matvec subgroup, chunked, 2 rows x 64 threads, norm folded; RoPE + KV write folded into attention". */
export function describeDecodeTuning({ matvecs, ropeKvFold }: DecodeTuning): string {
  const tuned = Object.entries(matvecs).map(([dtype, t]) =>
    `${dtype} matvec ${t.tier}${t.activations === 'q8' ? '+q8' : ''}, ${t.layout}, ${t.rowsPerWorkgroup} rows x ${t.workgroupSize} threads, norm ${t.normFold ? 'folded' : 'apart'}` +
    (t.postNormFold === undefined ? '' : `, post-norm ${t.postNormFold ? 'folded' : 'apart'}`));
  const matvec = tuned.length > 0 ? tuned.join('; ') : 'matvecs on the static defaults';
  return `${matvec}; RoPE + KV write ${ropeKvFold ? 'folded into attention' : 'its own kernel before attention'}`;
}

/** A model's decode attention, whose RoPE + KV-write fold autotuneRopeKvFold times. */
export interface RopeKvFoldRequest {
  Hq: number;
  Hkv: number;
  D: number;
  kvDtype: KvDtype;
  /** Leading dimensions of a head that RoPE rotates; 0 for learned positions (the fold is then the KV write alone). */
  rotaryDims: number;
  mode: RopeMode;
  /** Qwen3, Gemma 3: an RMSNorm of each query and key head before RoPE. */
  headNorm: boolean;
  /** The model's most positions per sequence. */
  capacity: number;
  /** Keys in the cache at the steps timed, each <= capacity (each length timed both ways; the times summed). */
  lengths: readonly number[];
}

export interface RopeKvFoldTuning {
  /** Decode attention rotates and stores the step's key and value itself (DecodeAttention's newKv). */
  fold: boolean;
  /** Milliseconds of one batch-1 decode step's attention (with its RoPE + KV write) summed over the lengths, each way. */
  foldedMs: number;
  apartMs: number;
}

export interface RopeKvFoldResult {
  tuning: RopeKvFoldTuning;
  /** True when the cache had it (nothing was timed). */
  cached: boolean;
}

/** The tuning's id inside an entry: the attention shape, KV dtype, RoPE and lengths it was timed on. */
function ropeKvFoldId(r: RopeKvFoldRequest): string {
  return `rope-kv ${r.kvDtype} Hq=${r.Hq} Hkv=${r.Hkv} D=${r.D} rotary=${r.rotaryDims} ${r.mode}${r.headNorm ? ' head-norm' : ''} capacity=${r.capacity} L=${r.lengths.join(',')}`;
}

function usableRopeKvFold(value: unknown): RopeKvFoldTuning | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  const { fold, foldedMs, apartMs } = value as Partial<RopeKvFoldTuning>;
  if (typeof fold !== 'boolean' || typeof foldedMs !== 'number' || typeof apartMs !== 'number') return undefined;
  return { fold, foldedMs, apartMs };
}

/**
 * Whether decode attention should fold the step's RoPE and KV write in on this adapter, for this
 * attention shape: from the cache where this adapter's key has it, else timed now (and written back).
 * A failure to time costs a warning and gives the static default (fold), never the load.
 */
export async function autotuneRopeKvFold(gpu: Gpu, request: RopeKvFoldRequest, options: AutotuneOptions = {}): Promise<RopeKvFoldResult> {
  const warn = options.warn ?? ((message: string) => console.warn(message));
  if (request.lengths.length === 0) throw new ShapeError('autotune: no context lengths to time the RoPE + KV-write fold at');
  for (const L of request.lengths) {
    if (!Number.isSafeInteger(L) || L < 1 || L > request.capacity) throw new ShapeError(`autotune: context length ${L} is not in 1..capacity (${request.capacity})`);
  }
  const cache = new TuningCache(options.cachePath ?? autotuneCachePath(), autotuneKey(gpu), warn);
  const id = ropeKvFoldId(request);
  const hit = usableRopeKvFold(cache.get(id));
  if (hit) return { tuning: hit, cached: true };
  options.progress?.('autotune: timing the RoPE + KV-write fold of decode attention');
  let tuning: RopeKvFoldTuning;
  try {
    tuning = await tuneRopeKvFold(gpu, request);
  } catch (err) {
    warn(`autotune: decode attention keeps the RoPE + KV-write fold (${(err as Error).message})`);
    return { tuning: { fold: true, foldedMs: NaN, apartMs: NaN }, cached: false };
  }
  cache.set(id, tuning);
  cache.save();
  return { tuning, cached: false };
}

// ---- timing -----------------------------------------------------------------------------------

/**
 * A weight with planes of the right size and values that are finite in every dtype: quants from a
 * fixed pseudo-random sequence, scales (and f32 / f16 values) 0x211f211f (f16 0.01 twice; as f32 a
 * small normal number). Speed does not depend on the values.
 */
function timingWeight(gpu: Gpu, dtype: WeightDtype, rows: number, cols: number): PackedWeight {
  let state = 0x9e3779b9;
  const planes = planeWords(dtype, rows, cols).map((n, i) => {
    const words = new Uint32Array(n);
    if (i === 0 && isQuantDtype(dtype)) {
      for (let j = 0; j < n; j++) {
        state ^= state << 13;
        state ^= state >>> 17;
        state ^= state << 5;
        words[j] = state >>> 0;
      }
    } else words.fill(0x211f211f);
    return words;
  });
  return uploadWeight(gpu, `autotune.${dtype}`, { dtype, rows, cols, planes });
}

interface Bench {
  weight: PackedWeight;
  input: GPUBuffer;
  output: GPUBuffer;
  /** (K) norm weights, and the norm kernel's (K) output. */
  normWeight: GPUBuffer;
  normed: GPUBuffer;
  /** A post-norm's (K) stream before the sublayer and (K) stream after it. */
  base: GPUBuffer;
  stream: GPUBuffer;
}

/**
 * How a candidate runs: the matvec alone, with an RMSNorm folded in, or after the norm kernel
 * (reading its output); with a post-norm and that RMSNorm folded in, or after the kernel that runs
 * both (Gemma's layers).
 */
type NormForm = 'none' | 'folded' | 'apart' | 'post-folded' | 'post-apart';

/** Milliseconds per run of one candidate summed over the shapes; Infinity if it cannot run. */
async function timeCandidate(gpu: Gpu, benches: Bench[], options: MatvecOptions, norm: NormForm = 'none'): Promise<number> {
  let total = 0;
  for (const b of benches) {
    let record: (pass: GPUComputePassEncoder) => void;
    try {
      const K = b.weight.cols;
      const rms = { kind: 'rms' as const, weight: b.normWeight, eps: 1e-5 };
      const fusion = norm === 'folded' ? { norm: rms }
        : norm === 'post-folded' ? { norm: rms, postNorm: { weight: b.normWeight, eps: 1e-5, base: b.base, stream: b.stream } }
        : undefined;
      const apart = norm === 'apart' || norm === 'post-apart';
      const kernel = new Matvec(gpu, { weight: b.weight, input: apart ? b.normed : b.input, output: b.output }, { ...options, fusion });
      const before = norm === 'apart' ? new Norm(gpu, 'rms', { x: b.input, weight: b.normWeight, out: b.normed }, { eps: 1e-5 })
        : norm === 'post-apart'
          ? new Norm(gpu, 'rms', { x: b.input, weight: b.normWeight, residual: b.base, out: b.stream, next: { weight: b.normWeight, out: b.normed } }, { eps: 1e-5 })
          : undefined;
      record = (pass) => {
        before?.encode(pass, { rows: 1, cols: K });
        kernel.encode(pass, { M: 1 });
      };
    } catch (err) {
      if (err instanceof ShapeError) return Infinity; // not a variant this shape or adapter allows
      throw err;
    }
    total += (await msPerRun(gpu, [record]))[0];
  }
  return total;
}

/**
 * Milliseconds per run of what each of `records` records: after one sample each that compiles and
 * warms, the best of three samples of several runs, the records sampled in turns so that a spell of
 * load on the machine falls on all of them alike.
 */
async function msPerRun(gpu: Gpu, records: Array<(pass: GPUComputePassEncoder) => void>): Promise<number[]> {
  const reps = [];
  for (const record of records) {
    const first = await timeSample(gpu, record, 1);
    reps.push(Math.max(1, Math.min(64, Math.ceil(4 / Math.max(first, 1e-3)))));
  }
  const best = records.map(() => Infinity);
  for (let s = 0; s < 3; s++) {
    for (const [i, record] of records.entries()) best[i] = Math.min(best[i], (await timeSample(gpu, record, reps[i])) / reps[i]);
  }
  return best;
}

async function tuneDtype(gpu: Gpu, dtype: WeightDtype, shapes: AutotuneRequest['shapes'], postNorms: boolean): Promise<MatvecTuning> {
  const benches: Bench[] = [];
  // A block-quantised weight needs K in whole blocks: a model's other widths (a Q4_K ffn_down beside a
  // hidden size of 96) are timed at K rounded up to the block.
  const block = isQuantDtype(dtype) ? BLOCK_COLUMNS[dtype] : 1;
  try {
    for (const shape of shapes) {
      const N = shape.N;
      const K = Math.ceil(shape.K / block) * block;
      benches.push({
        weight: timingWeight(gpu, dtype, N, K),
        input: createStorage(gpu, 'autotune.input', Float32Array.from({ length: K }, (_, i) => Math.sin(i))),
        output: createStorage(gpu, 'autotune.output', N * 4),
        normWeight: createStorage(gpu, 'autotune.normWeight', new Float32Array(K).fill(1)),
        normed: createStorage(gpu, 'autotune.normed', K * 4),
        base: createStorage(gpu, 'autotune.base', Float32Array.from({ length: K }, (_, i) => Math.cos(i))),
        stream: createStorage(gpu, 'autotune.stream', K * 4),
      });
    }
    const describe = (options: MatvecOptions): MatvecTuning => {
      const b = benches[0];
      const kernel = new Matvec(gpu, { weight: b.weight, input: b.input, output: b.output }, options);
      return {
        tier: kernel.tier, activations: kernel.activations, layout: kernel.layout,
        rowsPerWorkgroup: kernel.rowsPerWorkgroup, workgroupSize: kernel.workgroupSize, normFold: true,
      };
    };
    // 1. Tier x activations (f32 strided or chunked, q8), each with its own defaults.
    const tiers: Tier[] = gpu.features.has('subgroups') ? ['subgroup', 'baseline'] : ['baseline'];
    const forms: Array<Pick<MatvecOptions, 'activations' | 'layout'>> = [{ activations: 'f32', layout: 'strided' }];
    if (CHUNKED_DTYPES.includes(dtype)) forms.push({ activations: 'f32', layout: 'chunked' });
    if (hasPackedDot(gpu) && Q8_ACTIVATION_DTYPES.includes(dtype)) forms.push({ activations: 'q8' });
    let best: MatvecTuning | undefined;
    let bestTime = Infinity;
    const consider = async (candidate: MatvecTuning) => {
      const time = await timeCandidate(gpu, benches, candidate);
      if (time < bestTime) {
        best = candidate;
        bestTime = time;
      }
    };
    for (const tier of tiers) for (const form of forms) await consider(describe({ tier, ...form }));
    if (!best) throw new ShapeError(`autotune: no matvec variant runs ${dtype} on this adapter`);
    // 2. Rows per workgroup, 3. workgroup size, each around the best so far.
    const start: MatvecTuning = best;
    for (const rows of [1, 2, 4]) if (rows !== start.rowsPerWorkgroup) await consider({ ...start, rowsPerWorkgroup: rows });
    const chosen: MatvecTuning = best;
    for (const wg of [chosen.workgroupSize / 2, chosen.workgroupSize * 2]) {
      if (wg >= 8 && wg <= Math.min(256, gpu.limits.maxComputeInvocationsPerWorkgroup)) await consider({ ...chosen, workgroupSize: wg });
    }
    // 4. The norm folded in, or the norm kernel before: the variant above, timed both ways.
    const variant: MatvecTuning = best;
    const folded = await timeCandidate(gpu, benches, variant, 'folded');
    const apart = await timeCandidate(gpu, benches, variant, 'apart');
    const tuning = { ...variant, normFold: folded <= apart };
    if (!postNorms) return tuning;
    // 5. With post-norms, the post-norm and the norm folded in, or the kernel that runs both before.
    const postFolded = postNormFoldFits(gpu) ? await timeCandidate(gpu, benches, variant, 'post-folded') : Infinity;
    const postApart = await timeCandidate(gpu, benches, variant, 'post-apart');
    return { ...tuning, postNormFold: postFolded <= postApart };
  } finally {
    for (const b of benches) {
      b.weight.planes.forEach((plane) => plane.destroy());
      for (const buffer of [b.input, b.output, b.normWeight, b.normed, b.base, b.stream]) buffer.destroy();
    }
  }
}

/**
 * Time a batch-1 decode step's attention at each length both ways: folded (one DecodeAttention with
 * newKv) and apart (RopeKvWrite, or KvWrite without RoPE, then DecodeAttention), on buffers of the
 * request's shape. The values are arbitrary (speed does not depend on them); the apart form rotates
 * the same queries again on each run, which keeps them finite.
 */
async function tuneRopeKvFold(gpu: Gpu, r: RopeKvFoldRequest): Promise<RopeKvFoldTuning> {
  const { Hq, Hkv, D, kvDtype: dtype, rotaryDims, mode, capacity } = r;
  // The model's capacity sets the kernels' split plan and table width; the pool holds only the keys timed.
  const blocks = kvTableWidth(Math.max(...r.lengths));
  const width = (Hq + 2 * Hkv) * D;
  const kOffset = Hq * D;
  const vOffset = (Hq + Hkv) * D;
  const headNorm = r.headNorm ? { eps: 1e-6 } : undefined;
  const pool = { Hq, Hkv, D, capacity, kvBlocks: blocks, dtype };
  const poolBytes = blocks * kvBlockBytes(Hkv, D, dtype);
  const owned: Array<{ destroy(): void }> = [];
  const storage = (label: string, data: Float32Array | Uint32Array | number) => {
    const buffer = createStorage(gpu, `autotune.${label}`, data);
    owned.push(buffer);
    return buffer;
  };
  try {
    const qkv = storage('qkv', Float32Array.from({ length: width }, (_, i) => Math.sin(i)));
    const kCache = storage('kCache', poolBytes);
    const vCache = storage('vCache', poolBytes);
    const out = storage('out', Hq * D * 4);
    const blockTable = storage('blockTable', Uint32Array.from({ length: kvTableWidth(capacity) }, (_, i) => Math.min(i, blocks - 1)));
    // (table row, position of the step's key) for the write, then (table row, kv_len) for attention.
    const rowMeta = storage('rowMeta', new Uint32Array(4));
    // Inverse frequencies, then (with the head norm) the query and key heads' norm weights.
    const table = new Float32Array(rotaryDims / 2 + 2 * D).fill(1);
    if (rotaryDims > 0) table.set(ropeInverseFrequencies(rotaryDims, 10000));
    const ropeTable = storage('ropeTable', table);
    const headNormWeight = storage('headNormWeight', new Float32Array(2 * D).fill(1));
    const folded = new DecodeAttention(gpu, { ...pool, maxRows: 1, newKv: { rotaryDims, mode, headNorm } }, {
      q: qkv, kCache, vCache, blockTable, out, rowMeta, ropeTable: rotaryDims > 0 ? ropeTable : undefined,
    });
    owned.push(folded);
    const attention = new DecodeAttention(gpu, { ...pool, maxRows: 1 }, { q: qkv, kCache, vCache, blockTable, out, rowMeta });
    owned.push(attention);
    let before: (pass: GPUComputePassEncoder) => void;
    if (rotaryDims > 0) {
      const rope = new RopeKvWrite(gpu, mode, { ...pool, rotaryDims, headNorm }, {
        qkv, rowMeta, invFreq: ropeTable, kCache, vCache, blockTable, headNormWeight: headNorm ? headNormWeight : undefined,
      });
      before = (pass) => rope.encode(pass, { rows: 1, rowStride: width, qOffset: 0, kOffset, vOffset });
    } else {
      const write = new KvWrite(gpu, pool, { k: qkv, v: qkv, rowMeta, kCache, vCache, blockTable });
      before = (pass) => write.encode(pass, { rows: 1, kOffset, kRowStride: width, vOffset, vRowStride: width });
    }
    let foldedMs = 0;
    let apartMs = 0;
    for (const L of r.lengths) {
      gpu.device.queue.writeBuffer(rowMeta, 0, Uint32Array.of(0, L - 1, 0, L));
      const run = { rows: 1, maxLen: L, qRowStride: width, metaOffset: 2 };
      const [foldedRun, apartRun] = await msPerRun(gpu, [
        (pass) => folded.encode(pass, { ...run, kOffset, vOffset }),
        (pass) => {
          before(pass);
          attention.encode(pass, run);
        },
      ]);
      foldedMs += foldedRun;
      apartMs += apartRun;
    }
    return { fold: foldedMs <= apartMs, foldedMs, apartMs };
  } finally {
    for (const item of owned) item.destroy();
  }
}

/**
 * The autotune setting of a model load: the options to tune with, or undefined for the static
 * defaults (setting false, or left unset while WEBGPU_MINER_AUTOTUNE is 0 / off / false / no, as the
 * test suite sets it).
 */
export function autotuneSetting(setting: boolean | AutotuneOptions | undefined, env: NodeJS.ProcessEnv = process.env): AutotuneOptions | undefined {
  if (setting === false) return undefined;
  if (setting === undefined && /^(0|off|false|no)$/i.test(env.WEBGPU_MINER_AUTOTUNE ?? '')) return undefined;
  return typeof setting === 'object' ? setting : {};
}

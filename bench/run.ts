// `webgpu-miner bench`: roofline, end to end, host overhead, (for a GGUF, when node-llama-cpp is
// installed) llama.cpp side by side, kernels and the KV memory report, in that order, and the A100
// comparison; then the JSON, Markdown and SVG outputs. The kernels come last because a time budget
// (--budget) cuts them short. Progress goes to stderr; the CLI prints the table to stdout.
import { mkdirSync, writeFileSync } from 'node:fs';
import { basename, dirname, extname, join, relative } from 'node:path';
import { acquireGpu, type Gpu } from '../src/gpu/device.ts';
import { OptionError } from '../src/errors.ts';
import { openModelSource } from '../models/source.ts';
import { gpuMemoryBytes, parseGpuMemory } from '../models/memory-plan.ts';
import { TINY_MODEL_ID } from '../models/tiny.ts';
import { kernelTiers } from '../kernels/tiers.ts';
import type { KvDtype } from '../kernels/attention.ts';
import type { WeightDtype } from '../kernels/weights.ts';
import { a100KernelRoof, compareWithA100, loadA100 } from './a100.ts';
import { renderChart } from './chart.ts';
import { benchE2e } from './e2e.ts';
import { HOST_STEPS, benchHost, type HostReport } from './host.ts';
import { benchKernels, type KernelBenchOptions, type KernelsReport } from './kernels.ts';
import { benchPeer } from './peer.ts';
import { memoryReport } from './memory.ts';
import { LLAMA_7B_SHAPES, MEMORY_SHAPES, PRESETS, type BenchPreset, type MemoryShape, type MemoryShapeName, type PresetName, type ShapeSet } from './presets.ts';
import { adapterName, formatHostTable, formatKernelsTable, formatMarkdown, formatTable, type AdapterReport, type BenchReport } from './report.ts';
import { measureRoofline, type Progress, type RooflineResult } from './roofline.ts';
import { timingMethod } from './timing.ts';

export interface BenchOptions {
  /** 'quick' fits the software adapter in about two minutes; 'full' fits a real GPU. */
  preset?: PresetName;
  /** Shorthand for preset 'quick'. */
  quick?: boolean;
  /** HF folder, .gguf file or 'tiny-random-llama' (default) for the end-to-end run. */
  model?: string;
  /**
   * Comma-separated shapes. The first sets the kernel shapes: 'model' (the model's config),
   * 'llama-7b', 'llama-3-8b' or 'qwen3-8b' (built in); default: the model's when --model or
   * --quick is given, Llama-7B's otherwise. The memory report covers the loaded model and every
   * built-in 8B shape listed (default: llama-3-8b and qwen3-8b).
   */
  shapes?: string;
  /** GPU memory budget of the memory report (bytes or a fraction of maxBufferSize; default 12GiB). */
  gpuMemory?: string;
  adapter?: string;
  /** The larger decode batch. */
  batch?: number;
  prefillChunk?: number;
  /** The end-to-end run's KV cache dtype (default: the engine's, f16). */
  kvDtype?: KvDtype;
  /** Run llama.cpp on the same GGUF when possible (default true). */
  peer?: boolean;
  /** Run the peer on llama.cpp's GPU build when one is installed (default: its CPU build). */
  peerGpu?: boolean;
  json?: string;
  /** Default: next to the JSON, .md. */
  markdown?: string;
  /** Default: next to the JSON, .svg. */
  svg?: string;
  /** Tune the decode matvec variants at model load (default true; false: --no-autotune). */
  autotune?: boolean;
  /**
   * Seconds the run may take. The kernels come last, and those not started when it is spent are
   * listed as skipped; every other section always runs.
   */
  budgetSeconds?: number;
  /** Kernel timings for these weight dtypes only (default: the preset's, every dtype). */
  dtypes?: readonly WeightDtype[];
  /** Use this device (tests); otherwise one is acquired and released. */
  gpu?: Gpu;
  /** Progress lines; default: stderr. false: silent. */
  progress?: Progress | false;
}

function stderrProgress(): Progress {
  const start = performance.now();
  return (message) => process.stderr.write(`[${((performance.now() - start) / 1000).toFixed(1).padStart(6)}s] ${message}\n`);
}

export function resolvePreset(options: Pick<BenchOptions, 'preset' | 'quick'>): BenchPreset {
  const name = options.preset ?? (options.quick ? 'quick' : 'full');
  const preset = PRESETS[name as PresetName];
  if (!preset) throw new OptionError(`preset must be one of ${Object.keys(PRESETS).join(', ')} (got "${name}")`);
  return preset;
}

const SHAPE_CHOICES = ['model', 'llama-7b', ...Object.keys(MEMORY_SHAPES)];

/** The --shapes list, each entry checked. */
export function shapeList(shapes: string | undefined): string[] {
  if (shapes === undefined) return [];
  const list = shapes.split(',').map((s) => s.trim());
  for (const name of list) {
    if (!SHAPE_CHOICES.includes(name)) throw new OptionError(`--shapes takes a comma-separated list of ${SHAPE_CHOICES.map((c) => `"${c}"`).join(', ')} (got "${name}")`);
  }
  return list;
}

/** Built-in shapes of the memory report: those --shapes names, else Llama-3-8B and Qwen3-8B. */
export function memoryShapes(shapes: string | undefined): MemoryShape[] {
  const named = shapeList(shapes).filter((s): s is MemoryShapeName => s in MEMORY_SHAPES);
  return (named.length > 0 ? named : (Object.keys(MEMORY_SHAPES) as MemoryShapeName[])).map((name) => MEMORY_SHAPES[name]);
}

export async function resolveShapes(options: Pick<BenchOptions, 'shapes' | 'model'>, preset: BenchPreset): Promise<ShapeSet> {
  const choice = shapeList(options.shapes)[0] ?? (options.model || preset.name !== 'full' ? 'model' : 'llama-7b');
  if (choice === 'llama-7b') return LLAMA_7B_SHAPES;
  if (choice in MEMORY_SHAPES) return MEMORY_SHAPES[choice as MemoryShapeName];
  const source = await openModelSource(options.model ?? TINY_MODEL_ID);
  try {
    return { name: source.id, config: source.config };
  } finally {
    await source.close();
  }
}

function warnIfSlow(gpu: Gpu, preset: BenchPreset, progress: Progress): void {
  if (gpu.info.isSoftware && preset.name === 'full') {
    progress('warning: the full preset sizes fit a real GPU; on the software adapter it takes a very long time (use --quick)');
  }
}

function checkPositiveInt(name: string, value: number | undefined): void {
  if (value !== undefined && (!Number.isSafeInteger(value) || value < 1)) throw new OptionError(`${name} must be an integer >= 1 (got ${value})`);
}

function describeAdapter(gpu: Gpu): AdapterReport {
  const limits: Record<string, number> = {};
  for (const key of ['maxStorageBufferBindingSize', 'maxBufferSize', 'maxComputeWorkgroupStorageSize', 'maxComputeInvocationsPerWorkgroup', 'maxComputeWorkgroupsPerDimension'] as const) {
    limits[key] = gpu.limits[key];
  }
  return {
    ...gpu.info,
    features: [...gpu.features],
    tiers: kernelTiers(gpu),
    limits,
    timing: timingMethod(gpu),
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
  };
}

async function withGpu<T>(options: Pick<BenchOptions, 'gpu' | 'adapter'>, run: (gpu: Gpu) => Promise<T>): Promise<T> {
  const gpu = options.gpu ?? (await acquireGpu({ adapter: options.adapter }));
  try {
    return await run(gpu);
  } finally {
    if (!options.gpu) gpu.destroy();
  }
}

export async function runBench(options: BenchOptions = {}): Promise<BenchReport> {
  const started = performance.now();
  const preset = resolvePreset(options);
  checkPositiveInt('batch', options.batch);
  checkPositiveInt('prefillChunk', options.prefillChunk);
  const budgetSeconds = options.budgetSeconds;
  if (budgetSeconds !== undefined && !(Number.isFinite(budgetSeconds) && budgetSeconds > 0)) {
    throw new OptionError(`budget must be a positive number of seconds (got ${budgetSeconds})`);
  }
  const progress = options.progress === false ? () => {} : (options.progress ?? stderrProgress());
  const model = options.model ?? TINY_MODEL_ID;
  const shapes = await resolveShapes(options, preset);
  const gpuMemory = parseGpuMemory(options.gpuMemory ?? '12GiB');
  const data = loadA100();
  const head = {
    tool: 'webgpu-miner bench', version: 1, createdAt: new Date().toISOString(), preset: preset.name,
    ...(budgetSeconds !== undefined ? { budgetSeconds } : {}),
  } as const;
  // The JSON so far, rewritten after each section: a run stopped from outside keeps what it measured.
  const checkpoint = (sections: Partial<BenchReport>) => {
    if (options.json) write(options.json, JSON.stringify({ ...head, complete: false, ...sections }, null, 2) + '\n');
  };
  const report = await withGpu(options, async (gpu) => {
    progress(`adapter: ${adapterName(gpu.info)} (${gpu.info.backend}); preset ${preset.name}; timing by ${timingMethod(gpu)}`);
    warnIfSlow(gpu, preset, progress);
    const adapter = describeAdapter(gpu);
    const roofline = await measureRoofline(gpu, preset, progress);
    progress(`roofline: ${roofline.bandwidth.gbps.toFixed(2)} GB/s, ${roofline.compute.gflops.toFixed(1)} GFLOP/s`);
    const e2e = await benchE2e({ model, gpu, preset, batch: options.batch, prefillChunk: options.prefillChunk, kvDtype: options.kvDtype, progress, autotune: options.autotune });
    checkpoint({ adapter, roofline, e2e });
    const host = await benchHost({ gpu, steps: HOST_STEPS[preset.name], progress });
    progress(`host: ${host.ms_per_step.toFixed(3)} ms per decode step (${host.critical_ms_per_step.toFixed(3)} ms between GPU steps when recorded ahead; wall ${host.serial_wall_ms_per_step.toFixed(3)} ms one at a time, ${host.overlapped_wall_ms_per_step.toFixed(3)} ms two in flight), ${host.dispatches_per_token} dispatches, ${host.buffer_writes_per_token} writeBuffer calls per token`);
    checkpoint({ adapter, roofline, e2e, host });
    // llama.cpp on the same file comes before the kernels, so that a time budget never leaves it out.
    // What this runtime allocated for the sections above is freed by now.
    const peer = options.peer !== false && model.endsWith('.gguf') ? await benchPeer(model, preset, progress, { gpu: options.peerGpu }) : undefined;
    if (peer) checkpoint({ adapter, roofline, e2e, host, peer });
    const budget = budgetSeconds !== undefined ? { deadline: started + budgetSeconds * 1000, seconds: budgetSeconds } : undefined;
    const kernels = await benchKernels(gpu, shapes, preset, { roofline, a100Roof: a100KernelRoof(data), progress, dtypes: options.dtypes, budget });
    const limits = { maxBufferSize: gpu.limits.maxBufferSize, maxStorageBufferBindingSize: gpu.limits.maxStorageBufferBindingSize };
    const memory = memoryReport({
      gpuMemoryBytes: gpuMemoryBytes(gpuMemory, limits),
      limits,
      models: [
        { name: e2e.model.id, config: e2e.model, weightBytes: e2e.memory.weightBytes, weightSource: `measured: ${e2e.model.dtype} as uploaded to this adapter` },
        ...memoryShapes(options.shapes),
      ],
      peakRssBytes: e2e.memory.peakRssBytes,
    });
    return { adapter, roofline, kernels, e2e, host, memory, ...(peer ? { peer } : {}) };
  });
  const result: BenchReport = {
    ...head,
    complete: true,
    ...report,
    a100: compareWithA100(data, report.roofline, report.e2e),
  };
  writeOutputs(result, options, progress);
  return result;
}

/** Paths of the Markdown and SVG: given, or next to the JSON. */
export function outputPaths(options: Pick<BenchOptions, 'json' | 'markdown' | 'svg'>): { json?: string; markdown?: string; svg?: string } {
  const stem = options.json ? join(dirname(options.json), basename(options.json, extname(options.json))) : undefined;
  return {
    json: options.json,
    markdown: options.markdown ?? (stem ? `${stem}.md` : undefined),
    svg: options.svg ?? (stem ? `${stem}.svg` : undefined),
  };
}

function write(path: string, text: string): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, text);
}

function writeOutputs(report: BenchReport, options: BenchOptions, progress: Progress): void {
  const paths = outputPaths(options);
  if (paths.json) write(paths.json, JSON.stringify(report, null, 2) + '\n');
  if (paths.svg) write(paths.svg, renderChart(report));
  if (paths.markdown) {
    const chart = paths.svg ? relative(dirname(paths.markdown), paths.svg) : undefined;
    write(paths.markdown, formatMarkdown(report, chart));
  }
  const written = Object.values(paths).filter(Boolean);
  if (written.length) progress(`wrote ${written.join(', ')}`);
}

/** Print the full report as a table (the CLI's `bench`). */
export function printReport(report: BenchReport): void {
  process.stdout.write(formatTable(report) + '\n');
}

// ---- `webgpu-miner bench --host-only`: the host overhead of a decode step only --------------------

export async function runHostOnly(options: Pick<BenchOptions, 'quick' | 'preset' | 'adapter' | 'json' | 'gpu' | 'progress'>): Promise<{ adapter: AdapterReport; host: HostReport }> {
  const preset = resolvePreset(options);
  const progress = options.progress === false ? () => {} : (options.progress ?? stderrProgress());
  const report = await withGpu(options, async (gpu) => {
    progress(`adapter: ${adapterName(gpu.info)} (${gpu.info.backend}); preset ${preset.name}`);
    return { adapter: describeAdapter(gpu), host: await benchHost({ gpu, steps: HOST_STEPS[preset.name], progress }) };
  });
  if (options.json) write(options.json, JSON.stringify(report, null, 2) + '\n');
  process.stdout.write(formatHostTable(report) + '\n');
  return report;
}

// ---- `npm run bench:kernels`: roofline and kernels only ------------------------------------------

export interface KernelsOnlyReport {
  adapter: AdapterReport;
  roofline: RooflineResult;
  kernels: KernelsReport;
}

export async function runKernelsOnly(
  options: Pick<BenchOptions, 'quick' | 'preset' | 'model' | 'shapes' | 'adapter' | 'json' | 'gpu' | 'progress'> & Pick<KernelBenchOptions, 'dtypes' | 'kinds'>,
): Promise<KernelsOnlyReport> {
  const preset = resolvePreset(options);
  const progress = options.progress === false ? () => {} : (options.progress ?? stderrProgress());
  const shapes = await resolveShapes(options, preset);
  const data = loadA100();
  const report = await withGpu(options, async (gpu) => {
    warnIfSlow(gpu, preset, progress);
    const roofline = await measureRoofline(gpu, preset, progress);
    const kernels = await benchKernels(gpu, shapes, preset, { roofline, a100Roof: a100KernelRoof(data), progress, dtypes: options.dtypes, kinds: options.kinds });
    return { adapter: describeAdapter(gpu), roofline, kernels };
  });
  if (options.json) write(options.json, JSON.stringify(report, null, 2) + '\n');
  process.stdout.write(formatKernelsTable({ preset: preset.name, ...report }, a100KernelRoof(data).figure) + '\n');
  return report;
}

// The bench's report: its JSON shape, and the terminal table and Markdown summary made from it.
// Every ratio printed names the figure it divides by; every A100 figure names its source.
import type { KernelTiers } from '../kernels/tiers.ts';
import { describeDecodeTuning } from '../kernels/autotune.ts';
import type { AdapterDescription } from '../src/gpu/device.ts';
import type { A100Report } from './a100.ts';
import type { E2eReport } from './e2e.ts';
import type { HostReport } from './host.ts';
import type { KernelResult, KernelsReport } from './kernels.ts';
import { MEMORY_SEQUENCE_TOKENS, type MemoryReport } from './memory.ts';
import type { PeerReport, PeerSkipped } from './peer.ts';
import type { PresetName } from './presets.ts';
import type { RooflineResult } from './roofline.ts';
import { median, type TimingMethod } from './timing.ts';

export interface AdapterReport extends AdapterDescription {
  features: string[];
  /** The kernel variant each family ran (kernels/tiers.ts). */
  tiers: KernelTiers;
  limits: Record<string, number>;
  timing: TimingMethod;
  node: string;
  platform: string;
}

/** Everything one run measured; written as JSON with `--json`. */
export interface BenchReport {
  tool: 'webgpu-miner bench';
  version: 1;
  createdAt: string;
  preset: PresetName;
  /**
   * True in the finished report. The JSON is also written after each section while the run goes
   * on, with false here and the sections measured so far.
   */
  complete: boolean;
  /** The run's time budget (--budget), when it had one: kernels not started within it are skipped. */
  budgetSeconds?: number;
  adapter: AdapterReport;
  roofline: RooflineResult;
  kernels: KernelsReport;
  e2e: E2eReport;
  /** Host overhead of a batch-1 decode step (CPU time to record and submit it). */
  host: HostReport;
  a100: A100Report;
  peer?: PeerReport | PeerSkipped;
  /** KV memory: bytes per token, the block pool a budget leaves, and the sequences that fit. */
  memory: MemoryReport;
}

export function isPeerSkipped(peer: PeerReport | PeerSkipped): peer is PeerSkipped {
  return 'skipped' in peer;
}

// ---- number formatting ----------------------------------------------------------------------

/** Three significant digits, thousands grouped, no exponent for everyday magnitudes. */
export function num(value: number, digits = 3): string {
  if (!Number.isFinite(value)) return String(value);
  if (value === 0) return '0';
  const abs = Math.abs(value);
  if (abs >= 1e6) return `${(value / 1e6).toPrecision(digits)}M`;
  if (abs >= 10 ** digits) return Math.round(value).toLocaleString('en-US');
  if (abs < 1e-3) return value.toExponential(1);
  return value.toPrecision(digits).replace(/(\.\d*?[1-9])0+$|\.0+$/, '$1');
}

export function pct(ratio: number): string {
  const p = ratio * 100;
  if (!Number.isFinite(p)) return String(p);
  if (p === 0) return '0 %';
  if (Math.abs(p) < 0.01) return `${p.toExponential(1)} %`;
  return `${num(p, p >= 100 ? 3 : 2)} %`;
}

export function bytes(n: number): string {
  if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(2)} GiB`;
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(1)} MiB`;
  return `${(n / 2 ** 10).toFixed(1)} KiB`;
}

/** Decimal bytes (the unit bandwidth figures use): MB or GB. */
export function decimalBytes(n: number): string {
  return n >= 1e9 ? `${num(n / 1e9)} GB` : `${num(n / 1e6)} MB`;
}

export function adapterName(a: AdapterDescription): string {
  return [a.vendor, a.architecture, a.device, a.description].filter(Boolean).join(' / ') || '(unnamed adapter)';
}

/** Fixed-width columns; numbers right-aligned. */
function table(header: string[], rows: string[][], rightAlign: boolean[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) =>
    cells.map((c, i) => (rightAlign[i] ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join('  ').trimEnd();
  return [line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}

function markdownTable(header: string[], rows: string[][], rightAlign: boolean[]): string {
  const esc = (s: string) => s.replace(/\|/g, '\\|');
  return [
    `| ${header.map(esc).join(' | ')} |`,
    `|${rightAlign.map((r) => (r ? '---:' : ':---')).join('|')}|`,
    ...rows.map((r) => `| ${r.map(esc).join(' | ')} |`),
  ].join('\n');
}

// ---- sections as rows -------------------------------------------------------------------------

function rooflineRows(r: RooflineResult): string[][] {
  const spread = (s: number) => `±${num(s, 2)} %`;
  return [
    ['memory bandwidth', `${num(r.bandwidth.gbps)} GB/s`, spread(r.bandwidth.timing.spreadPct), `copy of ${bytes(r.bandwidth.bytes / 2)} (read + written = ${bytes(r.bandwidth.bytes)})`],
    ['FMA peak (f32)', `${num(r.compute.gflops)} GFLOP/s`, spread(r.compute.timing.spreadPct), `${num(r.compute.flops / 1e9)} GFLOP per run`],
    ['ridge point', `${num(r.ridgeIntensity)} FLOP/B`, '', 'kernels below it are memory-bound'],
    ['dispatch', `${num(r.dispatch.perDispatchUs)} µs`, spread(r.dispatch.timing.spreadPct), `per trivial dispatch, ${r.dispatch.dispatchesPerSample} in one pass`],
    ['submit round trip', `${num(r.submit.roundTripUs)} µs`, spread(r.submit.timing.spreadPct), 'submit one dispatch and wait for the queue'],
  ];
}

const KERNEL_HEADER = ['kernel', 'ms', '±%', 'GFLOP/s', 'GB/s', 'FLOP/B', 'bound', 'of roofline', 'of A100 ceiling'];
const KERNEL_ALIGN = [false, true, true, true, true, true, false, true, true];

function kernelRows(k: KernelsReport): string[][] {
  const rows = k.results.map((r) => [
    r.label,
    num(r.timing.medianMs),
    num(r.timing.spreadPct, 2),
    num(r.gflops),
    num(r.weightGbps ?? r.gbps),
    num(r.intensity),
    r.bound,
    pct(r.rooflineShare),
    r.a100 ? pct(r.a100.share) : '',
  ]);
  return rows;
}

/**
 * Decode's folds measured both ways (KernelResult.fold): per folded kernel with its apart twin (same
 * kind, tier, activations, dtype, projection and shape), both times and what the fold saves (negative:
 * it costs). Decode steps run the folded form; a GPU where it loses says to revisit that.
 */
export function foldComparisons(k: KernelsReport): Array<{ folded: KernelResult; apart: KernelResult; saved: number }> {
  const key = (r: KernelResult) => JSON.stringify([r.kind, r.tier, r.activations, r.layout, r.dtype, r.name, r.shape, r.fold?.op]);
  const apart = new Map(k.results.filter((r) => r.fold?.form === 'apart').map((r) => [key(r), r]));
  return k.results.flatMap((folded) => {
    const twin = folded.fold?.form === 'folded' ? apart.get(key(folded)) : undefined;
    return twin ? [{ folded, apart: twin, saved: 1 - folded.timing.medianMs / twin.timing.medianMs }] : [];
  });
}

const FOLD_HEADER = ['fold', 'folded ms', 'apart ms', 'saved'];
const FOLD_ALIGN = [false, true, true, true];

function foldRows(k: KernelsReport): string[][] {
  return foldComparisons(k).map(({ folded, apart, saved }) => [folded.label, num(folded.timing.medianMs), num(apart.timing.medianMs), pct(saved)]);
}

const FOLD_NOTE =
  'Decode folds: each kernel with the norm, or RoPE and the KV write, inside it against the separate kernel then ' +
  'the plain one, timed together; "saved" is 1 - folded / apart (a model\'s decode takes the form its autotune timed faster)';

/** Skipped kernels grouped by reason: one line per reason (a long list counted; the JSON names each). */
function skippedLines(k: KernelsReport): string[] {
  const byReason = new Map<string, string[]>();
  for (const s of k.skipped) byReason.set(s.skipped, [...(byReason.get(s.skipped) ?? []), s.label]);
  return [...byReason].map(([reason, labels]) =>
    `skipped (${reason}): ${labels.length > 8 ? `${labels.length} kernels, from ${labels.slice(0, 4).join(', ')}, ...` : labels.join(', ')}`);
}

function e2eRows(e: E2eReport): string[][] {
  const rows: string[][] = [];
  for (const p of e.prompt) rows.push([`prompt processing, ${p.tokens} tokens`, `${num(p.tokensPerS)} tok/s`, `±${num(p.timing.spreadPct, 2)} %`, `median of ${p.timing.samples}, ${num(p.timing.medianMs)} ms each`]);
  rows.push([`time to first token, ${e.ttft.promptTokens}-token prompt`, `${num(e.ttft.timing.medianMs)} ms`, `±${num(e.ttft.timing.spreadPct, 2)} %`, `median of ${e.ttft.timing.samples}, through generate()`]);
  const c = e.ttftCachedPrefix;
  rows.push([
    `time to first token, ${c.promptTokens}-token prompt, ${c.cachedTokens} cached`,
    `${num(c.timing.medianMs)} ms`,
    `±${num(c.timing.spreadPct, 2)} %`,
    `median of ${c.timing.samples}, prefix left by an earlier request`,
  ]);
  for (const d of e.decode) {
    rows.push([
      `decode, batch ${d.batch}`,
      `${num(d.tokensPerS)} tok/s`,
      '',
      `${d.tokens} tokens in ${num(d.seconds)} s${d.batch > 1 ? `, ${num(d.perSequenceTokensPerS)} tok/s per sequence` : ''}${d.stoppedEarly ? `, ${d.stoppedEarly} stopped at EOS` : ''}`,
    ]);
  }
  const { twoInFlight, oneAtATime } = e.decodeOverlap;
  const [overlapped, serial] = [median(twoInFlight), median(oneAtATime)];
  rows.push([
    '  batch 1, one step at a time',
    `${num(serial)} tok/s`,
    '',
    `median of ${oneAtATime.length}, the host between every two steps; in turns with ${twoInFlight.length} runs two in flight (median ${num(overlapped)} tok/s): ${num(overlapped / serial, 3)}x`,
  ]);
  const v = e.verify;
  rows.push([
    `verified (teacher-forced), ${v.responses} responses`,
    `${num(v.tokensPerS)} tok/s`,
    '',
    `${v.tokens} completion tokens (${v.rows} rows with prompts) in ${num(v.seconds)} s; generated at ${num(v.generatedTokensPerS)} tok/s`,
  ]);
  return rows;
}

function hostRows(h: HostReport): string[][] {
  return [
    ['CPU time per decode step, batch 1', `${num(h.ms_per_step)} ms`, `±${num(h.spread_pct, 2)} %`, `median of ${h.steps} steps (${num(h.min_ms)} .. ${num(h.max_ms)} ms), from the call to after queue.submit`],
    ['  of which before submit', `${num(h.encode_ms_per_step)} ms`, '', 'median: checks, step inputs, recording'],
    ['  of which in queue.submit', `${num(h.submit_ms_per_step)} ms`, '', 'median (a software OpenGL ES adapter runs the commands here)'],
    ['  floor: the same passes as bare calls', `${num(h.replay_ms_per_step)} ms`, '', "median: this WebGPU implementation's own cost for the step's commands"],
    ['host time between GPU steps', `${num(h.critical_ms_per_step)} ms`, '', 'median, each step recorded during the one before (as the engine runs): inputs and submit'],
    ['  recording the next step', `${num(h.ahead_ms_per_step)} ms`, '', 'median, after the submit, while the GPU runs: caps decode only where it outlasts the GPU step'],
    ['wall time per step, one at a time', `${num(h.serial_wall_ms_per_step)} ms`, '', `greedy, ${h.steps} steps: the host reads each pick and feeds the next step; GPU time included`],
    ['wall time per step, two in flight', `${num(h.overlapped_wall_ms_per_step)} ms`, '', "each step fed the step before's pick on the GPU, submitted before that one is read (the engine's way)"],
    ['  host time per step, two in flight', `${num(h.overlapped_host_ms_per_step)} ms`, '', `median decode() call (inputs, submit, recording the next), beside the GPU's work: caps batch-1 decode at ${num(1000 / h.overlapped_host_ms_per_step)} tok/s on this CPU (OpenGL ES runs the step inside submit)`],
    ['dispatches per token', String(h.dispatches_per_token), '', 'compute dispatches recorded per step'],
    ['writeBuffer calls per token', String(h.buffer_writes_per_token), '', 'step inputs and kernel uniforms'],
  ];
}

function hostLine(h: HostReport): string {
  const s = h.shape;
  return `${h.layers}-layer Llama, ${h.dtype}, C=${s.hidden}, F=${s.intermediate}, ${s.heads}/${s.kvHeads} heads, vocabulary ${s.vocab}; the GPU's time is not counted`;
}

/** The host-overhead section alone (`bench --host-only`). */
export function formatHostTable(report: { adapter: AdapterReport; host: HostReport }): string {
  const a = report.adapter;
  return [
    `adapter  ${adapterName(a)}${a.isSoftware ? '  [software]' : ''}, backend ${a.backend} (${a.featureLevel})`,
    `Host overhead of decode: ${hostLine(report.host)}`,
    table(['', 'value', 'spread', 'detail'], hostRows(report.host), [false, true, true, false]),
  ].join('\n');
}

const A100_HEADER = ['line', 'ours', 'A100', 'ours / A100', 'A100 figure', 'ours / our roofline'];
const A100_ALIGN = [false, true, true, true, false, true];

function a100Rows(a: A100Report): string[][] {
  return a.lines.map((l) => [
    l.label,
    `${num(l.ours)} ${l.unit}`,
    `${num(l.a100)} ${l.unit}`,
    l.unit === 'ms' ? `${pct(l.ratio)} speed` : pct(l.ratio),
    l.a100Kind === 'measured' ? `measured: ${l.a100Figure} (${l.a100Source})` : l.a100Figure,
    pct(l.oursOverOurRoofline),
  ]);
}

function peerRows(report: BenchReport): string[][] | undefined {
  const peer = report.peer;
  if (!peer || isPeerSkipped(peer)) return undefined;
  const rows = peer.prompt.map((p) => {
    const ours = report.e2e.prompt.find((o) => o.tokens === p.tokens);
    return [`prompt processing, ${p.tokens} tokens`, ours ? `${num(ours.tokensPerS)} tok/s` : '', `${num(p.tokensPerS)} tok/s`, ours ? pct(ours.tokensPerS / p.tokensPerS) : ''];
  });
  const b1 = report.e2e.decode.find((d) => d.batch === 1);
  rows.push(['decode, batch 1', b1 ? `${num(b1.tokensPerS)} tok/s` : '', `${num(peer.decode.tokensPerS)} tok/s`, b1 ? pct(b1.tokensPerS / peer.decode.tokensPerS) : '']);
  return rows;
}

function modelLine(e: E2eReport): string {
  const m = e.model;
  return (
    `${m.id} (${m.architecture}, ${num(m.parameters / 1e6)}M parameters, ${m.dtype}); ` +
    `GPU memory ${bytes(e.memory.totalBytes)} = weights ${bytes(e.memory.weightBytes)} + KV cache ${bytes(e.memory.kvBytes)} (${e.engine.kvDtype ?? 'f32'}) + activations ${bytes(e.memory.activationBytes)}; ` +
    `${decimalBytes(m.bytesPerToken)} and ${num(m.flopsPerToken / 1e9)} GFLOP per token; ${e.engine.slots} slots x ${e.engine.capacity} tokens; ` +
    `RSS ${bytes(e.memory.rssBeforeLoadBytes)} before loading, ${bytes(e.memory.rssAfterLoadBytes)} after, peak ${bytes(e.memory.peakRssBytes)}`
  );
}

// ---- KV memory ------------------------------------------------------------------------------------

export const MEMORY_HEADER = ['model', 'KV bytes/token f32 / f16 / q8_0', 'weights', 'before: f32 slots', ...MEMORY_SEQUENCE_TOKENS.map((t) => `${t / 1024}k seqs before -> after`), 'after: f16 blocks'];
const MEMORY_ALIGN = [false, true, true, false, ...MEMORY_SEQUENCE_TOKENS.map(() => true), false];

export function memoryLine(m: MemoryReport): string {
  return (
    `KV memory at --gpu-memory ${bytes(m.gpuMemoryBytes)} (before: ${m.models[0]?.before.slots ?? 8} f32 slots of ${m.models[0]?.before.capacity ?? 8192} tokens reserved at load; ` +
    `after: paged f16 blocks of ${m.models[0]?.after.blockTokens ?? 16} tokens, taken as sequences grow)` +
    (m.peakRssBytes !== undefined ? `; peak RSS after loading the model ${bytes(m.peakRssBytes)}` : '')
  );
}

export function memoryRows(m: MemoryReport): string[][] {
  return m.models.map((x) => [
    x.name,
    `${bytes(x.bytesPerToken.f32)} / ${bytes(x.bytesPerToken.f16)} / ${bytes(x.bytesPerToken.q8_0)}`,
    bytes(x.weightBytes),
    `${bytes(x.before.reservedBytes)} reserved${x.before.fits ? '' : ' (over budget)'}`,
    ...MEMORY_SEQUENCE_TOKENS.map((t) => `${x.before.sequences[t]} -> ${x.after.sequences[t]}`),
    `${x.after.blocks} blocks, ${bytes(x.after.kvBytes)} (limited by ${x.after.limitedBy})`,
  ]);
}

function memorySources(m: MemoryReport): string[] {
  return m.models.map((x) => `${x.name}: weights ${x.weightSource}`);
}

function timingNote(method: TimingMethod): string {
  return method === 'timestamp-query'
    ? 'GPU timestamps around each pass (timestamp-query)'
    : 'wall time from submit to queue completion (no timestamp-query on this adapter), runs repeated within each sample';
}

// ---- terminal -----------------------------------------------------------------------------------

/** The part of the table the kernels-only run (`npm run bench:kernels`) prints too. */
export function formatKernelsTable(report: Pick<BenchReport, 'preset' | 'adapter' | 'roofline' | 'kernels'>, a100KernelFigure: string): string {
  const a = report.adapter;
  const out: string[] = [];
  out.push(`webgpu-miner bench (${report.preset})`);
  out.push(`adapter  ${adapterName(a)}${a.isSoftware ? '  [software]' : ''}, backend ${a.backend} (${a.featureLevel})`);
  out.push(`timing   ${timingNote(a.timing)}; median of samples after warm-up, spread = median absolute deviation`);
  out.push('');
  out.push('Roofline of this adapter (measured)');
  out.push(table(['', 'value', 'spread', 'how'], rooflineRows(report.roofline), [false, true, true, false]));
  out.push('');
  const k = report.kernels;
  out.push(`Kernels at ${k.shapes.name} shapes (prefill M=${k.prefillTokens}, decode M=${k.decodeRows}); GB/s of matvec/matmul = weight bytes / time`);
  out.push(`"of A100 ceiling" = GFLOP/s / min(FP32 peak, intensity x bandwidth) of ${a100KernelFigure}`);
  out.push(table(KERNEL_HEADER, kernelRows(k), KERNEL_ALIGN));
  for (const line of skippedLines(k)) out.push(line);
  const folds = foldRows(k);
  if (folds.length) out.push('', FOLD_NOTE, table(FOLD_HEADER, folds, FOLD_ALIGN));
  return out.join('\n');
}

export function formatTable(report: BenchReport): string {
  const out: string[] = [formatKernelsTable(report, report.a100.kernelRoof.figure)];
  out.push('');
  out.push(`End to end: ${modelLine(report.e2e)}`);
  out.push(`Decode on this adapter: ${describeDecodeTuning(report.e2e.model.decodeTuning)}`);
  out.push(table(['', 'value', 'spread', 'detail'], e2eRows(report.e2e), [false, true, true, false]));
  out.push('');
  out.push(memoryLine(report.memory));
  out.push(table(MEMORY_HEADER, memoryRows(report.memory), MEMORY_ALIGN));
  out.push(...memorySources(report.memory).map((line) => `  ${line}`));
  out.push('');
  out.push(`Host overhead of decode: ${hostLine(report.host)}`);
  out.push(table(['', 'value', 'spread', 'detail'], hostRows(report.host), [false, true, true, false]));
  out.push('');
  const x = report.a100;
  out.push(`Against the A100 (reference ${x.reference.gpu}; model family ${x.family ?? 'none in bench/a100.json: roofline figures only'}, ${x.dtype})`);
  out.push(table(A100_HEADER, a100Rows(x), A100_ALIGN));
  out.push(`  A100 roofline decode for ${decimalBytes(x.bytesPerToken)} per token: ${x.rooflineDecode.map((r) => `${r.gpu} ${num(r.tokensPerS)} tok/s`).join(', ')}`);
  out.push('  sources: ' + [...new Set(x.lines.map((l) => l.a100Source))].join('; '));
  const peer = report.peer;
  if (peer) {
    out.push('');
    if (isPeerSkipped(peer)) out.push(`Peer ${peer.stack}: skipped (${peer.skipped})`);
    else {
      out.push(`Peer: ${peer.stack}, ${peer.threads} threads, same GGUF, same machine`);
      out.push(table(['', 'ours', 'llama.cpp', 'ours / llama.cpp'], peerRows(report)!, [false, true, true, true]));
    }
  }
  return out.join('\n');
}

// ---- Markdown -----------------------------------------------------------------------------------

export function formatMarkdown(report: BenchReport, chartFile?: string): string {
  const a = report.adapter;
  const out: string[] = [];
  out.push(`# webgpu-miner bench (${report.preset})`);
  out.push('');
  out.push(`- adapter: ${adapterName(a)}${a.isSoftware ? ' (software adapter: correct but slow)' : ''}, backend ${a.backend}, featureLevel ${a.featureLevel}`);
  out.push(`- features: ${a.features.length ? a.features.join(', ') : 'none of shader-f16, subgroups, timestamp-query'}`);
  out.push(`- kernel tiers: ${Object.entries(a.tiers).map(([family, tier]) => `${family} ${tier}`).join(', ')}`);
  out.push(`- timing: ${timingNote(a.timing)}; median of samples after warm-up, spread = median absolute deviation / median`);
  out.push(`- run: ${report.createdAt}, Node ${a.node} on ${a.platform}`);
  if (chartFile) out.push('', `![roofline and tokens/s against the A100](${chartFile})`);
  out.push('', '## Roofline of this adapter (measured)', '');
  out.push(markdownTable(['', 'value', 'spread', 'how'], rooflineRows(report.roofline), [false, true, true, false]));
  const k = report.kernels;
  out.push('', `## Kernels at ${k.shapes.name} shapes`, '');
  out.push(
    `Prefill matmul with M = ${k.prefillTokens} rows, decode matvec with M = ${k.decodeRows}; GB/s of projections is weight bytes / time. ` +
      `"of roofline" is GFLOP/s over min(peak, intensity x bandwidth) measured above (above 100 % means the working set ` +
      `stayed in a cache the bandwidth copy did not fit). "of A100 ceiling" uses ${k.results.length ? report.a100.kernelRoof.figure : ''}.`,
  );
  out.push('');
  out.push(markdownTable(KERNEL_HEADER, kernelRows(k), KERNEL_ALIGN));
  if (k.skipped.length) out.push('', ...skippedLines(k).map((line) => `- ${line}`));
  const folds = foldRows(k);
  if (folds.length) out.push('', `${FOLD_NOTE}.`, '', markdownTable(FOLD_HEADER, folds, FOLD_ALIGN));
  out.push('', '## End to end', '', modelLine(report.e2e), '', `Decode on this adapter: ${describeDecodeTuning(report.e2e.model.decodeTuning)}.`, '');
  out.push(markdownTable(['', 'value', 'spread', 'detail'], e2eRows(report.e2e), [false, true, true, false]));
  out.push('', '## KV memory', '', `${memoryLine(report.memory)}.`, '');
  out.push(markdownTable(MEMORY_HEADER, memoryRows(report.memory), MEMORY_ALIGN));
  out.push('', ...memorySources(report.memory).map((line) => `- ${line}`));
  out.push('', '## Host overhead of decode', '', `${hostLine(report.host)}.`, '');
  out.push(markdownTable(['', 'value', 'spread', 'detail'], hostRows(report.host), [false, true, true, false]));
  const x = report.a100;
  out.push('', '## Against the A100', '');
  out.push(
    `Reference: ${x.reference.gpu} (${x.reference.fp32Tflops} TFLOP/s FP32, ${x.reference.fp16TensorTflops} TFLOP/s FP16 tensor, ` +
      `${x.reference.bandwidthGBps} GB/s; ${x.reference.source}). Model family: ${x.family ?? 'not one with sourced A100 measurements, so roofline figures only'}; weights ${x.dtype}, ` +
      `${decimalBytes(x.bytesPerToken)} and ${num(x.flopsPerToken / 1e9)} GFLOP per token. "ours / A100" for a time is A100 time / our time.`,
  );
  out.push('');
  out.push(markdownTable(A100_HEADER, a100Rows(x), A100_ALIGN));
  out.push('');
  out.push(markdownTable(['A100', 'bandwidth', 'roofline decode, batch 1', 'source'], x.rooflineDecode.map((r) => [r.gpu, `${r.bandwidthGBps} GB/s`, `${num(r.tokensPerS)} tok/s`, r.source]), [false, true, true, false]));
  if (x.unmatched.length) {
    out.push('', 'Sourced figures for this model family not used above (other weights or settings):', '');
    for (const m of x.unmatched) out.push(`- ${m.stack}, ${m.weights}, ${m.setting}: ${m.tokensPerS !== undefined ? `${m.tokensPerS} tok/s` : `${m.ms} ms`} (${m.source})`);
  }
  const peer = report.peer;
  if (peer) {
    out.push('', '## Peer: llama.cpp on the same machine', '');
    if (isPeerSkipped(peer)) out.push(`Skipped: ${peer.skipped}`);
    else {
      out.push(`${peer.stack}, ${peer.threads} threads, ${peer.model}.`, '');
      out.push(markdownTable(['', 'ours', 'llama.cpp', 'ours / llama.cpp'], peerRows(report)!, [false, true, true, true]));
    }
  }
  out.push('', 'Sources: every reference figure in bench/a100.json names its source; docs/baselines.md says where to read each.', '');
  return out.join('\n');
}

// The bench: `webgpu-miner bench` runs end to end (the smallest preset, through the CLI) and writes
// JSON with the documented keys and sane values: positive, finite, every ratio equal to the figures
// it divides, the decode runs produced tokens, and no measured time exceeds the run's own wall time.
// No speed assertions. The A100 comparison is also checked on its own, for a model whose family and
// dtype have sourced A100 measurements (the tiny model has none).
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { compareWithA100, loadA100, matchFamily } from '../bench/a100.ts';
import type { E2eReport } from '../bench/e2e.ts';
import { MEMORY_SHAPES, PRESETS } from '../bench/presets.ts';
import { memoryReport } from '../bench/memory.ts';
import { memoryShapes, shapeList } from '../bench/run.ts';
import { benchPeer } from '../bench/peer.ts';
import { writeTinyLlamaGguf } from './support/tiny-models.ts';
import { estimateActivationBytes } from '../models/memory-plan.ts';
import { foldComparisons, type BenchReport } from '../bench/report.ts';
import { describeDecodeTuning } from '../kernels/autotune.ts';
import type { RooflineResult } from '../bench/roofline.ts';
import { benchKernels } from '../bench/kernels.ts';
import { CHUNKED_DTYPES } from '../kernels/matvec.ts';
import { acquireGpu } from '../src/gpu/device.ts';
import { configFromHf } from '../models/config.ts';
import { TINY_CONFIG } from '../models/tiny.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'bench-test-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** a == b to a relative tolerance (the JSON holds doubles computed from the same numbers). */
function close(a: number, b: number, rel = 1e-9): void {
  expect(Number.isFinite(a), `${a} is finite`).toBe(true);
  expect(Math.abs(a - b), `${a} vs ${b}`).toBeLessThanOrEqual(rel * Math.max(Math.abs(a), Math.abs(b)));
}

function positive(value: number, what: string): void {
  expect(Number.isFinite(value) && value > 0, `${what} = ${value} should be positive and finite`).toBe(true);
}

// How long the bench may take is not guessed from a machine's speed: it prints a progress line to
// stderr at every step (the test preset's steps take well under a second here, startup ~2 s), so a
// run is stopped only when it has printed nothing for STALL_MS, however long it takes in all. The
// hook's limit is the ceiling of the suite's budget for it, not an estimate.
const STALL_MS = 90_000;
const CEILING_MS = 10 * 60_000;

/** Run the CLI to completion; rejects if it exits non-zero or stays silent on stderr for STALL_MS. */
function runCli(args: string[]): Promise<{ stdout: string; stderr: string; wallMs: number }> {
  return new Promise((resolve, reject) => {
    const start = performance.now();
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let stalled = false;
    let timer: NodeJS.Timeout;
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        stalled = true;
        child.kill('SIGKILL');
      }, STALL_MS);
    };
    arm();
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk));
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk;
      arm();
    });
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const wallMs = performance.now() - start;
      if (stalled) reject(new Error(`bench printed nothing for ${STALL_MS / 1000} s; last output:\n${stderr.slice(-2000)}`));
      else if (code !== 0) reject(new Error(`bench exited with ${code ?? signal}:\n${stderr.slice(-4000)}`));
      else resolve({ stdout, stderr, wallMs });
    });
  });
}

describe('webgpu-miner bench (CLI, test preset)', () => {
  let report: BenchReport;
  let stdout: string;
  let wallMs: number;

  beforeAll(async () => {
    const json = join(dir, 'bench.json');
    ({ stdout, wallMs } = await runCli(['bench', '--preset', 'test', '--json', json]));
    report = JSON.parse(readFileSync(json, 'utf8'));
  }, CEILING_MS);

  /** A measured time is positive and no longer than the whole run that measured it. */
  function plausibleMs(ms: number, what: string): void {
    positive(ms, what);
    expect(ms, `${what}: ${ms} ms within the run's ${wallMs} ms`).toBeLessThan(wallMs);
  }

  it('has the documented top-level keys', () => {
    for (const key of ['adapter', 'roofline', 'kernels', 'e2e', 'host', 'a100']) expect(report).toHaveProperty(key);
    expect(report.peer).toBeUndefined(); // the embedded model is no GGUF
    expect(report.preset).toBe('test');
    expect(report.complete).toBe(true);
    expect(report.budgetSeconds).toBeUndefined();
    expect(typeof report.adapter.backend).toBe('string');
    expect(['timestamp-query', 'queue-completion']).toContain(report.adapter.timing);
    // The tiers the kernels ran: subgroup matvec and attention exactly where the adapter has subgroups,
    // the f16 matmul where it has shader-f16.
    const subgroups = report.adapter.features.includes('subgroups');
    expect(report.adapter.tiers).toEqual({
      matvec: subgroups ? 'subgroup' : 'baseline',
      // q8 activations without autotuning: on hardware adapters with dot4I8Packed (kernels/tiers.ts).
      matvecActivations: process.env.WEBGPU_MINER_MATVEC_ACTIVATIONS === 'q8' ? expect.stringMatching(/^(f32|q8)$/) : 'f32',
      matmul: report.adapter.features.includes('shader-f16') ? 'f16' : 'baseline',
      attention: subgroups ? 'subgroup' : 'baseline',
      rows: 'baseline',
    });
  });

  it('host: a 32-layer decode step counted and timed', () => {
    expect(report.host.layers).toBe(32);
    // The fused decode path: 5 dispatches a layer (norm + q/k/v, attention with RoPE and the KV write
    // in one pass since the bench's context fits one split, o-projection, norm + gate/up + SwiGLU,
    // down), plus the embedding and the head; one upload per step. On f32 and q8 activations alike: a
    // q8 matvec quantises its activations in the same dispatch.
    expect(report.host.dispatches_per_token).toBeGreaterThanOrEqual(32 * 5);
    expect(report.host.dispatches_per_token).toBeLessThanOrEqual(32 * 5 + 8);
    expect(report.host.buffer_writes_per_token).toBeGreaterThanOrEqual(1);
    plausibleMs(report.host.ms_per_step, 'host ms per step');
    plausibleMs(report.host.critical_ms_per_step, 'host ms between GPU steps');
    plausibleMs(report.host.ahead_ms_per_step, 'host ms recording ahead');
    plausibleMs(report.host.serial_wall_ms_per_step, 'wall ms per step, one at a time');
    plausibleMs(report.host.overlapped_wall_ms_per_step, 'wall ms per step, two in flight');
    plausibleMs(report.host.overlapped_host_ms_per_step, 'host ms per step, two in flight');
  });

  it('roofline: positive figures, each the quotient it claims to be', () => {
    const r = report.roofline;
    close(r.bandwidth.gbps, r.bandwidth.bytes / r.bandwidth.timing.medianMs / 1e6);
    close(r.compute.gflops, r.compute.flops / r.compute.timing.medianMs / 1e6);
    close(r.ridgeIntensity, r.compute.gflops / r.bandwidth.gbps);
    positive(r.dispatch.perDispatchUs, 'dispatch µs');
    positive(r.submit.roundTripUs, 'submit µs');
    for (const t of [r.bandwidth.timing, r.compute.timing, r.dispatch.timing, r.submit.timing]) {
      plausibleMs(t.medianMs, 'roofline sample');
      expect(t.samples).toBeGreaterThan(0);
      expect(t.minMs).toBeLessThanOrEqual(t.medianMs);
      expect(t.medianMs).toBeLessThanOrEqual(t.maxMs);
      expect(t.spreadPct).toBeGreaterThanOrEqual(0);
    }
  });

  it('kernels: every kind and weight dtype, on the roofline', () => {
    const { results, skipped } = report.kernels;
    expect(new Set(results.map((k) => k.kind))).toEqual(new Set(['matmul', 'matvec', 'attention.prefill', 'attention.decode']));
    for (const dtype of ['f32', 'f16', 'q8_0', 'q4_0']) expect(results.some((k) => k.kind === 'matvec' && k.dtype === dtype)).toBe(true);
    // Each kernel on the baseline and, beside it, on its family's fast tier where the adapter has one.
    const family = { matvec: 'matvec', matmul: 'matmul', 'attention.prefill': 'attention', 'attention.decode': 'attention' } as const;
    for (const [kind, name] of Object.entries(family)) {
      const fast = report.adapter.tiers[name];
      expect(new Set(results.filter((k) => k.kind === kind).map((k) => k.tier)), kind).toEqual(new Set(fast === 'baseline' ? ['baseline'] : ['baseline', fast]));
    }
    // The q8 matvec runs beside the f32 ones, on the fast matvec tier, for quantised weights only.
    for (const k of results.filter((r) => r.activations === 'q8')) {
      expect(k.kind).toBe('matvec');
      expect(k.tier).toBe(report.adapter.tiers.matvec);
      expect(['q8_0', 'q4_0', 'q4_1', 'q5_0', 'q5_1', 'q4_k', 'q5_k', 'q6_k']).toContain(k.dtype);
      expect(k.label).toContain(`${k.tier}+q8`);
    }
    // So does the chunked layout on f32 activations, for the block formats and f16, once per
    // projection and format; every other f32 matvec over those formats says it is strided.
    const chunkedFormats = results.filter((r) => r.kind === 'matvec' && CHUNKED_DTYPES.includes(r.dtype));
    for (const k of chunkedFormats.filter((r) => r.activations === 'f32')) expect(['strided', 'chunked']).toContain(k.layout);
    const chunked = results.filter((r) => r.layout === 'chunked');
    expect(new Set(chunked.map((k) => `${k.dtype} ${k.name}`)).size).toBe(chunked.length);
    expect(new Set(chunked.map((k) => k.dtype))).toEqual(new Set(chunkedFormats.map((k) => k.dtype)));
    for (const k of chunked) {
      expect([k.kind, k.tier, k.activations, k.fold]).toEqual(['matvec', report.adapter.tiers.matvec, 'f32', undefined]);
      expect(k.label).toContain(`${k.tier}+chunked `);
    }
    const { gbps, gflops } = { gbps: report.roofline.bandwidth.gbps, gflops: report.roofline.compute.gflops };
    for (const k of results) {
      plausibleMs(k.timing.medianMs, `${k.label} ms`);
      positive(k.flops, `${k.label} FLOP`);
      close(k.gflops, k.flops / k.timing.medianMs / 1e6);
      close(k.gbps, k.bytes / k.timing.medianMs / 1e6);
      close(k.intensity, k.flops / k.bytes);
      close(k.attainableGflops, Math.min(gflops, k.intensity * gbps));
      close(k.rooflineShare, k.gflops / k.attainableGflops);
      expect(k.bound).toBe(k.intensity * gbps < gflops ? 'memory' : 'compute');
      if (k.weightBytes !== undefined) close(k.weightGbps!, k.weightBytes / k.timing.medianMs / 1e6);
      close(k.a100!.attainableGflops, Math.min(report.a100.kernelRoof.gflops, k.intensity * report.a100.kernelRoof.gbps));
      close(k.a100!.share, k.gflops / k.a100!.attainableGflops);
    }
    for (const s of skipped) expect(s.skipped.length).toBeGreaterThan(0);
    // Decode's folds, both ways, on the variant models run: RoPE + KV write before decode attention
    // (each context length and cache dtype), the RMSNorm before each projection that follows one.
    const decode = results.filter((k) => k.kind === 'attention.decode');
    const folds = results.filter((k) => k.fold);
    const kvCombos = new Set(decode.map((k) => `${k.dtype} ${k.shape.L}`));
    const normed: string[] = PRESETS.test.kernels.projections.filter((p) => ['attn_q', 'attn_kv', 'ffn_up'].includes(p));
    expect(normed.length).toBeGreaterThan(0);
    expect(folds.filter((k) => k.fold!.op === 'rope-kv')).toHaveLength(2 * kvCombos.size);
    // Each (projection, dtype) the tiny shapes take (K-quants need K % 256 == 0), once each way.
    const plainNormed = results.filter((k) => k.kind === 'matvec' && k.tier === 'baseline' && k.activations !== 'q8' && k.layout !== 'chunked' && !k.fold && normed.includes(k.name));
    expect(plainNormed.length).toBeGreaterThan(0);
    expect(folds.filter((k) => k.fold!.op === 'norm')).toHaveLength(2 * plainNormed.length);
    for (const k of folds) {
      const { op, form } = k.fold!;
      expect(k.kind).toBe(op === 'norm' ? 'matvec' : 'attention.decode');
      expect(k.tier).toBe(op === 'norm' ? report.adapter.tiers.matvec : report.adapter.tiers.attention);
      if (form === 'folded') expect(k.label).toContain(op === 'norm' ? '+norm ' : `${k.tier}+rope `);
      else expect(k.label.startsWith(op === 'norm' ? 'norm + matvec ' : 'rope-kv + attention.decode ')).toBe(true);
      // The plain kernel of the same shape is timed too.
      expect(results.some((plain) => !plain.fold && plain.kind === k.kind && plain.tier === k.tier && plain.dtype === k.dtype && plain.name === k.name && plain.shape.L === k.shape.L)).toBe(true);
    }
    // Each folded kernel against its apart twin, in the report.
    const pairs = foldComparisons(report.kernels);
    expect(pairs).toHaveLength(folds.length / 2);
    for (const { folded, apart, saved } of pairs) {
      expect(folded.fold!.form).toBe('folded');
      expect(apart.fold).toEqual({ op: folded.fold!.op, form: 'apart' });
      expect(apart.shape).toEqual(folded.shape);
      close(saved, 1 - folded.timing.medianMs / apart.timing.medianMs);
      expect(stdout).toContain(folded.label);
    }
    expect(stdout).toContain('Decode folds:');
  });

  it('end to end: prompt, time to first token, decode at batch 1 and 2, memory', () => {
    const e = report.e2e;
    expect(e.prompt.map((p) => p.tokens)).toEqual([...PRESETS.test.e2e.promptTokens]);
    for (const p of e.prompt) {
      plausibleMs(p.timing.medianMs, `prompt of ${p.tokens}`);
      close(p.tokensPerS, (p.tokens * 1000) / p.timing.medianMs);
    }
    plausibleMs(e.ttft.timing.medianMs, 'ttft');
    positive(e.ttft.promptTokens, 'ttft prompt tokens');
    plausibleMs(e.ttftCachedPrefix.timing.medianMs, 'ttft with a cached prefix');
    // The shared prefix is reused: only the question at the end is computed.
    expect(e.ttftCachedPrefix.cachedTokens).toBeGreaterThan(e.ttftCachedPrefix.promptTokens / 2);
    expect(e.ttftCachedPrefix.cachedTokens).toBeLessThan(e.ttftCachedPrefix.promptTokens);
    expect(e.decode.map((d) => d.batch)).toEqual([1, PRESETS.test.e2e.batch]);
    const n = PRESETS.test.e2e.decodeTokens;
    // Batch 1 again, two in flight and one step at a time in turns: a rate per run.
    expect(e.decodeOverlap.twoInFlight).toHaveLength(PRESETS.test.e2e.repeats);
    expect(e.decodeOverlap.oneAtATime).toHaveLength(PRESETS.test.e2e.repeats);
    for (const rate of [...e.decodeOverlap.twoInFlight, ...e.decodeOverlap.oneAtATime]) positive(rate, 'batch-1 tok/s');
    for (const d of e.decode) {
      // Tokens after the last sequence's first one: without an early stop, the last sequence's other
      // n - 1 at least, and never more than every sequence's n less that first token.
      expect(d.tokens, `batch ${d.batch} tokens`).toBeGreaterThan(0);
      expect(d.tokens).toBeLessThanOrEqual(d.batch * n - 1);
      if (d.stoppedEarly === 0) expect(d.tokens).toBeGreaterThanOrEqual(n - 1);
      if (d.batch === 1 && d.stoppedEarly === 0) expect(d.tokens).toBe(n - 1);
      plausibleMs(d.seconds * 1000, `decode window, batch ${d.batch}`);
      close(d.tokensPerS, d.tokens / d.seconds);
      // A sequence that stopped after one token reports 0 tok/s.
      if (d.stoppedEarly === 0) positive(d.perSequenceTokensPerS, `batch ${d.batch} tok/s per sequence`);
      else expect(d.perSequenceTokensPerS).toBeGreaterThanOrEqual(0);
    }
    // A validator's check of the larger batch's responses: every completion token, with the prompts' rows.
    expect(e.verify.responses).toBe(PRESETS.test.e2e.batch);
    const batchRun = e.decode[e.decode.length - 1];
    expect(e.verify.tokens).toBeGreaterThanOrEqual(batchRun.tokens); // the window's tokens are some of them
    expect(e.verify.tokens).toBeLessThanOrEqual(batchRun.batch * n);
    expect(e.verify.rows).toBeGreaterThan(e.verify.tokens);
    plausibleMs(e.verify.seconds * 1000, 'verification');
    close(e.verify.tokensPerS, e.verify.tokens / e.verify.seconds);
    close(e.verify.generatedTokensPerS, e.decode[e.decode.length - 1].tokensPerS);
    for (const key of ['weightBytes', 'kvBytes', 'activationBytes', 'totalBytes'] as const) positive(e.memory[key], key);
    close(e.memory.totalBytes, e.memory.weightBytes + e.memory.kvBytes + e.memory.activationBytes);
    positive(e.model.bytesPerToken, 'bytes per token');
    expect(e.model.bytesPerToken).toBeLessThanOrEqual(e.model.weightBytes);
    positive(e.model.flopsPerToken, 'FLOP per token');
    // The bench autotunes (its own cache, under the suite's): the model's one weight dtype, and the RoPE + KV fold.
    expect(Object.keys(e.model.decodeTuning.matvecs)).toEqual([e.model.dtype]);
    expect(typeof e.model.decodeTuning.ropeKvFold).toBe('boolean');
  });

  it('memory: the loaded model and the 8B shapes at the default 12 GiB, before and after paging; peak RSS', () => {
    const m = report.memory;
    expect(m.gpuMemoryBytes).toBe(12 * 2 ** 30);
    expect(m.models.map((x) => x.name)).toEqual([report.e2e.model.id, MEMORY_SHAPES['llama-3-8b'].name, MEMORY_SHAPES['qwen3-8b'].name]);
    const [loaded] = m.models;
    expect(loaded.weightBytes).toBe(report.e2e.memory.weightBytes);
    const { numLayers: L, numKvHeads: H, headDim: D } = report.e2e.model;
    expect(loaded.bytesPerToken).toEqual({ f32: 8 * L * H * D, f16: 4 * L * H * D, q8_0: 2 * L * H * D * (1 + 4 / 32) });
    // The tiny model's pool is bounded by one layer's buffer under the adapter's binding limit, not the budget.
    expect(loaded.after.limitedBy).toBe('maxStorageBufferBindingSize');
    expect(loaded.after.blocks).toBe(Math.floor(m.limits.maxStorageBufferBindingSize / (16 * H * D * 2)));
    positive(m.peakRssBytes!, 'peak RSS');
    expect(m.peakRssBytes).toBe(report.e2e.memory.peakRssBytes);
    positive(report.e2e.memory.rssBeforeLoadBytes, 'RSS before load');
    expect(report.e2e.memory.rssAfterLoadBytes).toBeLessThanOrEqual(m.peakRssBytes!);
    expect(stdout).toMatch(/KV memory at --gpu-memory 12\.00 GiB/);
    expect(stdout).toMatch(/llama-3-8b \(built-in shapes\) .* 3 -> 58 .* 3 -> 14 /);
  });

  it('A100: every line names its figure, and its ratios divide the numbers shown', () => {
    const a = report.a100;
    const e = report.e2e;
    expect(a.reference.gpu).toBe('A100 80GB SXM');
    expect(a.family).toBeUndefined(); // tiny-random-llama matches no sourced model
    expect(a.lines.length).toBe(e.prompt.length + e.decode.length + 1);
    for (const l of a.lines) {
      positive(l.ours, `${l.label} ours`);
      positive(l.a100, `${l.label} A100`);
      expect(l.a100Figure).toMatch(/A100/);
      expect(l.a100Source.length).toBeGreaterThan(0);
      close(l.ratio, l.unit === 'ms' ? l.a100 / l.ours : l.ours / l.a100);
      close(l.oursOverOurRoofline, l.unit === 'ms' ? l.ourRoofline / l.ours : l.ours / l.ourRoofline);
    }
    const b1 = a.lines.find((l) => l.label === 'decode, batch 1')!;
    close(b1.a100, (2039e9) / e.model.bytesPerToken);
    close(b1.ourRoofline, (report.roofline.bandwidth.gbps * 1e9) / e.model.bytesPerToken);
    close(b1.ours, e.decode[0].tokensPerS);
    const sxm = a.rooflineDecode.find((r) => r.gpu === 'A100 80GB SXM')!;
    close(sxm.tokensPerS, b1.a100);
  });

  it('prints the table and writes the Markdown summary and the SVG chart next to the JSON', () => {
    expect(stdout).toContain('Roofline of this adapter');
    expect(stdout).toContain('decode, batch 1');
    const md = readFileSync(join(dir, 'bench.md'), 'utf8');
    expect(md).toContain('## Against the A100');
    const decode = `Decode on this adapter: ${describeDecodeTuning(report.e2e.model.decodeTuning)}`;
    expect(decode).toMatch(/: f32 matvec (baseline|subgroup), (strided|chunked), [1-4] rows x \d+ threads, norm (folded|apart); RoPE \+ KV write (folded into attention|its own kernel before attention)$/);
    expect(stdout).toContain(decode);
    expect(md).toContain(`${decode}.`);
    expect(md).toContain('NVIDIA A100 datasheet');
    expect(md).toContain('](bench.svg)');
    const svg = readFileSync(join(dir, 'bench.svg'), 'utf8');
    expect(svg.startsWith('<svg')).toBe(true);
    expect(svg.trimEnd().endsWith('</svg>')).toBe(true);
    expect(svg).not.toMatch(/NaN|Infinity|undefined/);
  });
});

describe('a bench with limited time', () => {
  it('writes the JSON after each section: a run stopped during one keeps those before it', async () => {
    const json = join(dir, 'stopped.json');
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'bench', '--preset', 'test', '--no-peer', '--json', json], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
    // Stopped as the host section starts: the end-to-end section is measured and written by then,
    // and the host section takes seconds more before the next write.
    await new Promise<void>((resolve, reject) => {
      let stderr = '';
      child.stderr.on('data', (chunk: Buffer) => {
        stderr += chunk;
        if (/host: \d+ warm-up/.test(stderr)) child.kill('SIGKILL');
      });
      child.on('error', reject);
      child.on('close', (code, signal) => (signal === 'SIGKILL' ? resolve() : reject(new Error(`bench ended (${code}) before it was stopped:\n${stderr.slice(-3000)}`))));
    });
    const partial = JSON.parse(readFileSync(json, 'utf8'));
    expect(partial.complete).toBe(false);
    expect(partial.preset).toBe('test');
    for (const key of ['adapter', 'roofline', 'e2e']) expect(partial).toHaveProperty(key);
    for (const key of ['host', 'kernels', 'memory', 'a100']) expect(partial).not.toHaveProperty(key);
    positive(partial.e2e.decode[0].tokensPerS, 'decode tok/s in the partial report');
  });

  it('refuses a budget that is not a positive number of seconds and an unknown weight dtype, before it measures anything', async () => {
    const refused = (args: string[]) =>
      new Promise<string>((resolve, reject) => {
        const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'bench', '--preset', 'test', '--no-peer', ...args], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
        let stderr = '';
        child.stderr.on('data', (chunk: Buffer) => (stderr += chunk));
        child.on('error', reject);
        child.on('close', (code) => (code !== 0 ? resolve(stderr) : reject(new Error(`bench ${args.join(' ')} ran (exit 0)`))));
      });
    expect(await refused(['--budget', '0'])).toMatch(/budget must be a positive number of seconds \(got 0\)/);
    expect(await refused(['--dtypes', 'q4_0,q9_9'])).toMatch(/--dtypes: unknown "q9_9" \(one of f32, f16, q8_0/);
  });

  it('kernels not started within the budget are listed as skipped; one started runs to its end', async () => {
    const gpu = await acquireGpu();
    try {
      const budget = { deadline: Infinity, seconds: 42 };
      const lines: string[] = [];
      let total = 0;
      const kernels = await benchKernels(gpu, { name: 'tiny', config: configFromHf(TINY_CONFIG) }, PRESETS.test, {
        roofline: { bandwidth: { gbps: 1 }, compute: { gflops: 1 } } as RooflineResult,
        budget,
        // The budget runs out as the first kernel starts.
        progress: (line) => {
          lines.push(line);
          const first = /^kernels \[1\/(\d+)\]/.exec(line);
          if (first) {
            total = Number(first[1]);
            budget.deadline = performance.now();
          }
        },
      });
      expect(total).toBeGreaterThan(10);
      expect(kernels.results).toHaveLength(1);
      expect(kernels.results[0].kind).toBe('attention.prefill'); // attention comes first
      positive(kernels.results[0].timing.medianMs, 'the started kernel');
      expect(kernels.skipped).toHaveLength(total - 1);
      for (const s of kernels.skipped) expect(s.skipped).toBe("not started: the run's 42 s budget was spent");
      expect(lines.filter((line) => line.includes('budget is spent'))).toEqual([`kernels: the 42 s budget is spent; the ${total - 1} kernels left are skipped`]);
    } finally {
      gpu.destroy();
    }
  });
});

describe('A100 comparison for a model with sourced A100 measurements', () => {
  const roofline = {
    bandwidth: { gbps: 500 },
    compute: { gflops: 20_000 },
  } as unknown as RooflineResult;
  const e2e = (dtype: string, bytesPerToken: number): E2eReport =>
    ({
      model: {
        id: 'llama-2-7b.gguf', architecture: 'llama', dtype, dtypes: {}, parameters: 6.74e9, hiddenSize: 4096, intermediateSize: 11008,
        numLayers: 32, numHeads: 32, numKvHeads: 32, vocabSize: 32000, weightBytes: bytesPerToken, bytesPerToken, flopsPerToken: 2 * 6.6e9,
      },
      prompt: [{ tokens: 128, tokensPerS: 1000 }, { tokens: 512, tokensPerS: 900 }],
      ttft: { promptTokens: 128, timing: { medianMs: 150 } },
      decode: [{ batch: 1, tokensPerS: 50 }, { batch: 8, tokensPerS: 300 }],
    }) as unknown as E2eReport;

  it('matches Llama-2-7B by shape, and Q4_0 picks the llama.cpp A100 figures', () => {
    const data = loadA100();
    expect(matchFamily(data, e2e('q4_0', 3.82e9).model)).toBe('llama-2-7b');
    const a = compareWithA100(data, roofline, e2e('q4_0', 3.82e9));
    const measured = a.lines.filter((l) => l.a100Kind === 'measured');
    const decode = measured.find((l) => l.label === 'decode, batch 1')!;
    expect(decode.a100).toBe(136.2);
    expect(decode.a100Source).toMatch(/XiongjieDai/);
    close(decode.ratio, 50 / 136.2);
    // The source states no prompt length: it is set against our longest prompt only.
    expect(measured.filter((l) => l.metric === 'prompt').map((l) => [l.label, l.a100])).toEqual([['prompt, 512 tokens', 3444]]);
    const roof = a.lines.find((l) => l.label === 'decode, batch 1' && l.a100Kind === 'roofline')!;
    close(roof.a100, 2039e9 / 3.82e9); // ~533 tok/s, as baselines.md derives
    close(roof.ourRoofline, 500e9 / 3.82e9);
  });

  it('F16 picks gpt-fast, TensorRT-LLM throughput and time to first token', () => {
    const a = compareWithA100(loadA100(), roofline, e2e('f16', 13.5e9));
    const measured = a.lines.filter((l) => l.a100Kind === 'measured');
    expect(measured.find((l) => l.label === 'decode, batch 1')!.a100).toBe(104.9);
    expect(measured.find((l) => l.label === 'decode, batch 8')!.a100).toBe(5586);
    const ttft = measured.find((l) => l.metric === 'ttft')!;
    expect(ttft.a100).toBe(16);
    close(ttft.ratio, 16 / 150);
    expect(a.unmatched.every((m) => m.dtype !== 'f16' || m.metric === 'ttft')).toBe(true);
  });
});

describe('memory report (exact arithmetic)', () => {
  const limits = { maxBufferSize: 2 ** 32, maxStorageBufferBindingSize: 2 ** 30 };

  it('Llama-3-8B Q4_K_M on 12 GiB: 3 f32 slots of 8192 before; 58 sequences of 1k and 14 of 4k after', () => {
    const m = memoryReport({ gpuMemoryBytes: 12 * 2 ** 30, limits, models: [MEMORY_SHAPES['llama-3-8b']] });
    const [x] = m.models;
    const cfg = MEMORY_SHAPES['llama-3-8b'].config;
    expect(x.bytesPerToken).toEqual({ f32: 262144, f16: 131072, q8_0: 73728 });
    // Before: 8 slots x 8192 tokens x 256 KiB = 16 GiB reserved; what is left after 4.92 GB of weights holds 3 slots of 2 GiB.
    expect(x.before.reservedBytes).toBe(16 * 2 ** 30);
    expect(x.before.fits).toBe(false);
    const beforeAct = estimateActivationBytes(cfg, { slots: 8, prefillChunk: 128 });
    expect(x.before.sequences).toEqual({ 1024: Math.floor((12 * 2 ** 30 - 4.92e9 - beforeAct) / 2 ** 31), 4096: 3 });
    expect(x.before.sequences[1024]).toBe(3);
    // After: blocks of 16 tokens x 128 KiB = 2 MiB from what the weights and activations leave.
    const afterAct = estimateActivationBytes(cfg, { slots: 32, prefillChunk: 128 });
    expect(x.after.activationBytes).toBe(afterAct);
    expect(x.after.blocks).toBe(Math.floor((12 * 2 ** 30 - 4.92e9 - afterAct) / 2 ** 21));
    expect(x.after).toMatchObject({ limitedBy: 'budget', blockTokens: 16, kvBytes: x.after.blocks * 2 ** 21 });
    expect(x.after.sequences).toEqual({ 1024: Math.floor(x.after.blocks / 64), 4096: Math.floor(x.after.blocks / 256) });
    expect(x.after.sequences).toEqual({ 1024: 58, 4096: 14 });
  });

  it('Qwen3-8B: 36 layers, so 144 KiB per f16 token', () => {
    const [x] = memoryReport({ gpuMemoryBytes: 12 * 2 ** 30, limits, models: [MEMORY_SHAPES['qwen3-8b']] }).models;
    expect(x.bytesPerToken.f16).toBe(36 * 2 * 8 * 128 * 2);
    const afterAct = estimateActivationBytes(MEMORY_SHAPES['qwen3-8b'].config, { slots: 32, prefillChunk: 128 });
    const blocks = Math.floor((12 * 2 ** 30 - 5.03e9 - afterAct) / (16 * 147456));
    expect(x.after.blocks).toBe(blocks);
    expect(x.after.sequences).toEqual({ 1024: Math.floor(blocks / 64), 4096: Math.floor(blocks / 256) });
    expect(x.before.sequences[1024]).toBe(Math.floor((12 * 2 ** 30 - 5.03e9 - estimateActivationBytes(MEMORY_SHAPES['qwen3-8b'].config, { slots: 8, prefillChunk: 128 })) / (8192 * 36 * 2 * 8 * 128 * 4)));
  });

  it('a budget the weights overflow leaves no pool; sequences longer than a slot never fit before', () => {
    const [x] = memoryReport({ gpuMemoryBytes: 4e9, limits, models: [MEMORY_SHAPES['llama-3-8b']] }).models;
    expect(x.after).toMatchObject({ blocks: 0, limitedBy: 'budget', sequences: { 1024: 0, 4096: 0 } });
    expect(x.before.sequences).toEqual({ 1024: 0, 4096: 0 });
  });

  it('--shapes: the first entry picks the kernel shapes, the 8B ones listed pick the memory shapes', () => {
    expect(shapeList('model,llama-3-8b')).toEqual(['model', 'llama-3-8b']);
    expect(() => shapeList('model,gpt-5')).toThrow(/--shapes takes a comma-separated list .*\(got "gpt-5"\)/);
    expect(memoryShapes(undefined).map((s) => s.name)).toEqual([MEMORY_SHAPES['llama-3-8b'].name, MEMORY_SHAPES['qwen3-8b'].name]);
    expect(memoryShapes('model,qwen3-8b').map((s) => s.name)).toEqual([MEMORY_SHAPES['qwen3-8b'].name]);
  });
});

// llama.cpp on the same GGUF: the peer section names where llama.cpp ran. Asked for its GPU build,
// it may get the CPU build (no GPU build installed) or a GPU build that finds no GPU device and
// offloads no layer (llama.cpp's Vulkan backend passes over lavapipe); either way the CPU ran it,
// and the report must say so rather than name the build.
describe('peer: llama.cpp on the same GGUF', () => {
  it('runs prompt processing and decode, and says where it ran', async () => {
    const path = join(dir, 'peer.gguf');
    writeTinyLlamaGguf(path, { dtype: 'q8_0' });
    const peer = await benchPeer(path, PRESETS.test, undefined, { gpu: true });
    if ('skipped' in peer) throw new Error(`llama.cpp was skipped: ${peer.skipped}`);
    expect(peer.device).toMatch(/^CPU(: its \w+ build offloaded no layer \(.+\))?$|^\w+: .+, [1-9]\d* of \d+ layers offloaded$/);
    expect(peer.stack).toContain(peer.device);
    expect(peer.prompt.map((p) => p.tokens)).toEqual(PRESETS.test.e2e.promptTokens);
    for (const p of peer.prompt) positive(p.tokensPerS, `peer prompt ${p.tokens}`);
    expect(peer.decode.tokens).toBeGreaterThan(0);
    positive(peer.decode.tokensPerS, 'peer decode');
  });
});

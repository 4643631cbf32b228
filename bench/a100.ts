// The A100 baseline: the sourced figures of bench/a100.json, and for the model that was run, every
// comparison line with the A100 figure it divides by named on the line. Also our own roofline for
// the same line (the same arithmetic on this adapter's measured bandwidth and FMA peak).
//
// Decode at batch 1 streams every weight once per token: tok/s <= bandwidth / bytes per token.
// Prompt processing is compute-bound: tok/s <= peak FLOP/s / FLOP per token (2 x parameters).
// A batch of B sequences decodes at most min(B x bandwidth / bytes, peak / FLOP per token).
import { readFileSync } from 'node:fs';
import type { E2eModel, E2eReport } from './e2e.ts';
import type { RooflineResult } from './roofline.ts';

export interface PeakFigure {
  gpu: string;
  fp32Tflops: number;
  fp16TensorTflops: number;
  tf32Tflops?: number;
  bandwidthGBps: number;
  source: string;
}

export interface MeasuredFigure {
  stack: string;
  family: string;
  dtype: string;
  weights: string;
  metric: 'decode' | 'prompt' | 'throughput' | 'ttft';
  batch: number | null;
  promptTokens?: number;
  tokensPerS?: number;
  ms?: number;
  setting: string;
  source: string;
}

export interface A100Data {
  about: string;
  reference: string;
  peaks: PeakFigure[];
  families: Record<string, Record<string, number>>;
  measured: MeasuredFigure[];
  otherDevices: Record<string, unknown>;
}

export function loadA100(): A100Data {
  const data = JSON.parse(readFileSync(new URL('./a100.json', import.meta.url), 'utf8')) as A100Data;
  if (!data.peaks.some((p) => p.gpu === data.reference)) throw new Error(`bench/a100.json: reference "${data.reference}" is not among its peaks`);
  return data;
}

export function referencePeak(data: A100Data): PeakFigure {
  return data.peaks.find((p) => p.gpu === data.reference)!;
}

/** The reference A100's roofline for f32 kernels (ours compute in f32): FP32 peak, memory bandwidth. */
export function a100KernelRoof(data: A100Data): { gbps: number; gflops: number; figure: string } {
  const peak = referencePeak(data);
  return {
    gbps: peak.bandwidthGBps,
    gflops: peak.fp32Tflops * 1000,
    figure: `${peak.gpu}: ${peak.fp32Tflops} TFLOP/s FP32 (non-tensor), ${peak.bandwidthGBps} GB/s (${peak.source})`,
  };
}

/** The family in a100.json whose shape the model has, if any (e.g. 'llama-2-7b'). */
export function matchFamily(data: A100Data, model: Pick<E2eModel, 'hiddenSize' | 'intermediateSize' | 'numLayers' | 'numHeads' | 'numKvHeads' | 'vocabSize'>): string | undefined {
  return Object.entries(data.families).find(([, shape]) =>
    Object.entries(shape).every(([key, value]) => (model as unknown as Record<string, number>)[key] === value),
  )?.[0];
}

export interface A100Line {
  /** What is compared, e.g. "decode, batch 1". */
  label: string;
  metric: 'decode' | 'prompt' | 'ttft';
  unit: 'tok/s' | 'ms';
  ours: number;
  /** The A100 figure this line divides by, and what it is. */
  a100: number;
  a100Figure: string;
  a100Source: string;
  /** 'roofline' (derived from datasheet peaks) or 'measured' (a sourced run). */
  a100Kind: 'roofline' | 'measured';
  /** ours / a100 for tok/s; a100 / ours for ms (so above 1 is always "faster than the A100 figure"). */
  ratio: number;
  /** The same bound on this adapter (its measured bandwidth and FMA peak). */
  ourRoofline: number;
  /** ours / ourRoofline for tok/s; ourRoofline / ours for ms. */
  oursOverOurRoofline: number;
}

export interface A100Report {
  reference: PeakFigure;
  /** Which model family of a100.json the run matches (sourced measured figures apply), if any. */
  family?: string;
  dtype: string;
  bytesPerToken: number;
  flopsPerToken: number;
  /** Roofline-implied batch-1 decode tok/s of every A100 variant for this model's bytes per token. */
  rooflineDecode: Array<{ gpu: string; bandwidthGBps: number; tokensPerS: number; source: string }>;
  /** The ceiling each kernel is placed against (FP32 non-tensor peak and bandwidth). */
  kernelRoof: { gbps: number; gflops: number; figure: string };
  lines: A100Line[];
  /** Sourced figures for the matched family that no line used (other dtypes, other settings). */
  unmatched: MeasuredFigure[];
}

const fmtBytes = (b: number) => (b >= 1e9 ? `${(b / 1e9).toPrecision(3)} GB` : `${(b / 1e6).toPrecision(3)} MB`);
const fmtGflop = (f: number) => `${(f / 1e9).toPrecision(3)} GFLOP`;

export function compareWithA100(data: A100Data, roofline: RooflineResult, e2e: E2eReport): A100Report {
  const ref = referencePeak(data);
  const { model } = e2e;
  const family = matchFamily(data, model);
  const bytes = model.bytesPerToken;
  const flops = model.flopsPerToken;
  const ourBw = roofline.bandwidth.gbps * 1e9;
  const ourPeak = roofline.compute.gflops * 1e9;
  const refBw = ref.bandwidthGBps * 1e9;
  const refTensor = ref.fp16TensorTflops * 1e12;
  const lines: A100Line[] = [];
  const speed = (ours: number, a100: number) => (a100 > 0 ? ours / a100 : 0);
  const used = new Set<MeasuredFigure>();
  const matching = family ? data.measured.filter((m) => m.family === family) : [];
  const sameDtype = matching.filter((m) => m.dtype === model.dtype);

  const b1 = e2e.decode.find((d) => d.batch === 1);
  if (b1) {
    const ourRoof = ourBw / bytes;
    const a100 = refBw / bytes;
    lines.push({
      label: 'decode, batch 1',
      metric: 'decode',
      unit: 'tok/s',
      ours: b1.tokensPerS,
      a100,
      a100Figure: `${ref.gpu} roofline: ${ref.bandwidthGBps} GB/s / ${fmtBytes(bytes)} per token`,
      a100Source: ref.source,
      a100Kind: 'roofline',
      ratio: speed(b1.tokensPerS, a100),
      ourRoofline: ourRoof,
      oursOverOurRoofline: speed(b1.tokensPerS, ourRoof),
    });
    for (const m of sameDtype.filter((m) => m.metric === 'decode' && m.batch === 1 && m.tokensPerS)) {
      used.add(m);
      lines.push({
        label: 'decode, batch 1',
        metric: 'decode',
        unit: 'tok/s',
        ours: b1.tokensPerS,
        a100: m.tokensPerS!,
        a100Figure: `${m.stack}, ${family} ${m.weights}, ${m.setting}`,
        a100Source: m.source,
        a100Kind: 'measured',
        ratio: speed(b1.tokensPerS, m.tokensPerS!),
        ourRoofline: ourRoof,
        oursOverOurRoofline: speed(b1.tokensPerS, ourRoof),
      });
    }
  }

  for (const d of e2e.decode.filter((d) => d.batch > 1)) {
    const ourRoof = Math.min((d.batch * ourBw) / bytes, ourPeak / flops);
    const a100 = Math.min((d.batch * refBw) / bytes, refTensor / flops);
    lines.push({
      label: `decode, batch ${d.batch}`,
      metric: 'decode',
      unit: 'tok/s',
      ours: d.tokensPerS,
      a100,
      a100Figure: `${ref.gpu} roofline: min(${d.batch} x ${ref.bandwidthGBps} GB/s / ${fmtBytes(bytes)}, ${ref.fp16TensorTflops} TFLOP/s FP16 / ${fmtGflop(flops)} per token)`,
      a100Source: ref.source,
      a100Kind: 'roofline',
      ratio: speed(d.tokensPerS, a100),
      ourRoofline: ourRoof,
      oursOverOurRoofline: speed(d.tokensPerS, ourRoof),
    });
    for (const m of sameDtype.filter((m) => m.metric === 'throughput' && m.tokensPerS)) {
      used.add(m);
      lines.push({
        label: `decode, batch ${d.batch}`,
        metric: 'decode',
        unit: 'tok/s',
        ours: d.tokensPerS,
        a100: m.tokensPerS!,
        a100Figure: `${m.stack}, ${family} ${m.weights}, ${m.setting} (batch ${m.batch ?? 'max'}, not ${d.batch})`,
        a100Source: m.source,
        a100Kind: 'measured',
        ratio: speed(d.tokensPerS, m.tokensPerS!),
        ourRoofline: ourRoof,
        oursOverOurRoofline: speed(d.tokensPerS, ourRoof),
      });
    }
  }

  const longest = Math.max(...e2e.prompt.map((p) => p.tokens));
  for (const p of e2e.prompt) {
    const ourRoof = ourPeak / flops;
    const a100 = refTensor / flops;
    lines.push({
      label: `prompt, ${p.tokens} tokens`,
      metric: 'prompt',
      unit: 'tok/s',
      ours: p.tokensPerS,
      a100,
      a100Figure: `${ref.gpu} roofline: ${ref.fp16TensorTflops} TFLOP/s FP16 tensor / ${fmtGflop(flops)} per token`,
      a100Source: ref.source,
      a100Kind: 'roofline',
      ratio: speed(p.tokensPerS, a100),
      ourRoofline: ourRoof,
      oursOverOurRoofline: speed(p.tokensPerS, ourRoof),
    });
    // A sourced prompt figure applies to its own prompt length, or to our longest when it states none.
    for (const m of sameDtype.filter((m) => m.metric === 'prompt' && m.tokensPerS && (m.promptTokens ?? longest) === p.tokens)) {
      used.add(m);
      lines.push({
        label: `prompt, ${p.tokens} tokens`,
        metric: 'prompt',
        unit: 'tok/s',
        ours: p.tokensPerS,
        a100: m.tokensPerS!,
        a100Figure: `${m.stack}, ${family} ${m.weights}, ${m.setting}${m.promptTokens ? '' : ' (prompt length not stated)'}`,
        a100Source: m.source,
        a100Kind: 'measured',
        ratio: speed(p.tokensPerS, m.tokensPerS!),
        ourRoofline: ourRoof,
        oursOverOurRoofline: speed(p.tokensPerS, ourRoof),
      });
    }
  }

  const ttft = e2e.ttft;
  if (ttft.promptTokens > 0 && ttft.timing.medianMs > 0) {
    const ours = ttft.timing.medianMs;
    const ourRoofMs = ((ttft.promptTokens * flops) / ourPeak) * 1000;
    const a100Ms = ((ttft.promptTokens * flops) / refTensor) * 1000;
    lines.push({
      label: `time to first token, ${ttft.promptTokens}-token prompt`,
      metric: 'ttft',
      unit: 'ms',
      ours,
      a100: a100Ms,
      a100Figure: `${ref.gpu} roofline: ${ttft.promptTokens} x ${fmtGflop(flops)} / ${ref.fp16TensorTflops} TFLOP/s FP16`,
      a100Source: ref.source,
      a100Kind: 'roofline',
      ratio: a100Ms / ours,
      ourRoofline: ourRoofMs,
      oursOverOurRoofline: ourRoofMs / ours,
    });
    for (const m of sameDtype.filter((m) => m.metric === 'ttft' && m.ms && m.promptTokens === nearest(ttft.promptTokens, sameDtype))) {
      used.add(m);
      lines.push({
        label: `time to first token, ${ttft.promptTokens}-token prompt`,
        metric: 'ttft',
        unit: 'ms',
        ours,
        a100: m.ms!,
        a100Figure: `${m.stack}, ${family} ${m.weights}, ${m.setting}`,
        a100Source: m.source,
        a100Kind: 'measured',
        ratio: m.ms! / ours,
        ourRoofline: ourRoofMs,
        oursOverOurRoofline: ourRoofMs / ours,
      });
    }
  }

  return {
    reference: ref,
    family,
    dtype: model.dtype,
    bytesPerToken: bytes,
    flopsPerToken: flops,
    rooflineDecode: data.peaks.map((p) => ({ gpu: p.gpu, bandwidthGBps: p.bandwidthGBps, tokensPerS: (p.bandwidthGBps * 1e9) / bytes, source: p.source })),
    kernelRoof: a100KernelRoof(data),
    lines,
    unmatched: matching.filter((m) => !used.has(m)),
  };
}

/** The sourced TTFT prompt length within 10 % of ours (sources give 128 and 2048), if any. */
function nearest(tokens: number, figures: MeasuredFigure[]): number | undefined {
  return figures.find((m) => m.metric === 'ttft' && m.promptTokens && Math.abs(m.promptTokens / tokens - 1) <= 0.1)?.promptTokens;
}

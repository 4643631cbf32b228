// Host overhead of a decode step: the JavaScript from Transformer.decode's call until its work is
// submitted (recording every dispatch, writing the step's inputs and uniforms, queue.submit), with
// the GPU's own time left out. A 32-layer Llama with small dimensions and random Q4_0 weights is
// built in memory, so the GPU work per step is small and what is measured is the host's share:
// on a fast GPU this, not the kernels, caps batch-1 decode.
//
// Timing: Transformer.decode runs synchronously up to its readback's mapAsync and only then awaits,
// so the time until the call returns its promise is the host work of the step; the wait for the GPU
// comes after. Steps are timed twice: recorded on the call (recordNext off: all of a step's host
// work lies between two GPU steps), then as the engine runs them, each recorded while the GPU ran the
// step before (DecodeOptions.recordNext): what lies between two GPU steps is then the inputs' upload
// and the submit, and the recording of the next step follows the submit, beside the GPU's work.
// Wall time: greedy batch-1 decoding, the token picked on the GPU, timed over a run of steps twice:
// one step at a time (the host reads each step's pick and feeds it to the next: the GPU waits for
// the readback, the host's work and the submit between every two steps), and two in flight (each
// step takes the step before's pick on the GPU and is submitted before that one is read: the
// engine's way). Their difference is the GPU's idle time per step that overlapping removes.
// Counting: a separate step runs with queue.writeBuffer and the compute pass's dispatchWorkgroups
// wrapped by counters (installed here only, and removed after), so the timed steps carry no
// counting. That step's pass commands are also recorded, then replayed as bare calls (the same
// pipelines, bind groups and grids, none of this runtime's code in between): the replay's time is
// what Dawn itself costs for those commands, the floor under ms_per_step.
import type { Gpu } from '../src/gpu/device.ts';
import { randomLlamaSource } from '../models/source.ts';
import { TINY_CONFIG } from '../models/tiny.ts';
import { Transformer } from '../models/transformer.ts';
import type { WeightDtype } from '../kernels/weights.ts';
import type { RowSampling } from '../kernels/sample.ts';
import type { PresetName } from './presets.ts';
import type { Progress } from './roofline.ts';
import { median } from './timing.ts';

export interface HostReport {
  /** Median CPU time of one batch-1 decode step recorded on the call, from the call to after queue.submit (ms). */
  ms_per_step: number;
  /**
   * Median time from the call to after queue.submit when the step was recorded during the previous
   * one (the engine's way): the host time between two GPU steps (ms).
   */
  critical_ms_per_step: number;
  /** Median time, after that submit, to record the next step: host work done while the GPU runs (ms). */
  ahead_ms_per_step: number;
  /** Wall time per step of greedy decoding one step at a time, the host reading each pick and feeding it (ms). */
  serial_wall_ms_per_step: number;
  /** Wall time per step with two steps in flight, each fed the step before's pick on the GPU (ms). */
  overlapped_wall_ms_per_step: number;
  /**
   * Median CPU time of one decode() call with two steps in flight (its inputs, the submit of the
   * step recorded ahead, the recording of the next): the host's work per step, all of it beside the
   * GPU's, which caps batch-1 decode at 1000 / this tokens/s whatever the GPU (ms).
   */
  overlapped_host_ms_per_step: number;
  /** Median time from the call to queue.submit: checks, step inputs, recording (ms). */
  encode_ms_per_step: number;
  /**
   * Median time inside queue.submit (ms). On Dawn's OpenGL ES backend submit replays the recorded
   * commands into GL, and a software GL driver runs them there: that time is the GPU's, not the host's.
   */
  submit_ms_per_step: number;
  /**
   * Median time to record and submit the same step's compute passes as bare WebGPU calls (no checks,
   * no uniforms, no step inputs): the cost of the calls themselves in this WebGPU implementation.
   */
  replay_ms_per_step: number;
  /** Compute dispatches recorded per decoded token (batch 1). */
  dispatches_per_token: number;
  /** queue.writeBuffer calls per decoded token (batch 1): step inputs and uniforms. */
  buffer_writes_per_token: number;
  layers: number;
  /** Weight dtype of the model's matrices. */
  dtype: string;
  /** The model's shape: hidden size, MLP size, heads, KV heads, vocabulary. */
  shape: { hidden: number; intermediate: number; heads: number; kvHeads: number; vocab: number };
  /** Steps timed; fastest and slowest; median absolute deviation as a percentage of the median. */
  steps: number;
  min_ms: number;
  max_ms: number;
  spread_pct: number;
}

/** Timed decode steps per preset (after HOST_WARMUP untimed ones). */
export const HOST_STEPS: Record<PresetName, number> = { full: 256, quick: 64, test: 16 };
const HOST_WARMUP = 8;

export interface HostOptions {
  gpu: Gpu;
  /** Decode steps timed (after `warmup` untimed ones). */
  steps: number;
  warmup?: number;
  layers?: number;
  progress?: Progress;
}

/** One compute pass's commands, in order. */
type PassCommand =
  | { kind: 'pipeline'; pipeline: GPUComputePipeline }
  | { kind: 'bindGroup'; index: number; bindGroup: GPUBindGroup | null }
  | { kind: 'dispatch'; x: number; y?: number; z?: number };

/**
 * Count queue.writeBuffer calls and compute dispatches while `run` runs, and record every compute
 * pass's commands (wrappers removed after).
 */
async function counted(gpu: Gpu, run: () => Promise<unknown>): Promise<{ writes: number; dispatches: number; passes: PassCommand[][] }> {
  const queue = gpu.device.queue;
  const passProto = globalThis.GPUComputePassEncoder.prototype;
  const encoderProto = globalThis.GPUCommandEncoder.prototype;
  const ownWrite = Object.getOwnPropertyDescriptor(queue, 'writeBuffer');
  const writeBuffer = queue.writeBuffer;
  const { dispatchWorkgroups, setPipeline, setBindGroup } = passProto;
  const beginComputePass = encoderProto.beginComputePass;
  let writes = 0;
  let dispatches = 0;
  const passes: PassCommand[][] = [];
  const commands = new Map<GPUComputePassEncoder, PassCommand[]>();
  queue.writeBuffer = function (this: GPUQueue, ...args: Parameters<GPUQueue['writeBuffer']>) {
    writes++;
    return writeBuffer.apply(this, args);
  };
  encoderProto.beginComputePass = function (this: GPUCommandEncoder, descriptor?: GPUComputePassDescriptor) {
    const pass = beginComputePass.call(this, descriptor);
    const list: PassCommand[] = [];
    passes.push(list);
    commands.set(pass, list);
    return pass;
  };
  passProto.setPipeline = function (this: GPUComputePassEncoder, pipeline: GPUComputePipeline) {
    commands.get(this)?.push({ kind: 'pipeline', pipeline });
    return setPipeline.call(this, pipeline);
  };
  passProto.setBindGroup = function (this: GPUComputePassEncoder, index: number, bindGroup: GPUBindGroup | null, ...rest: unknown[]) {
    commands.get(this)?.push({ kind: 'bindGroup', index, bindGroup });
    return (setBindGroup as (...args: unknown[]) => undefined).call(this, index, bindGroup, ...rest);
  };
  passProto.dispatchWorkgroups = function (this: GPUComputePassEncoder, x: number, y?: number, z?: number) {
    dispatches++;
    commands.get(this)?.push({ kind: 'dispatch', x, y, z });
    return dispatchWorkgroups.call(this, x, y, z);
  };
  try {
    await run();
  } finally {
    if (ownWrite) Object.defineProperty(queue, 'writeBuffer', ownWrite);
    else delete (queue as Partial<GPUQueue>).writeBuffer;
    Object.assign(passProto, { dispatchWorkgroups, setPipeline, setBindGroup });
    encoderProto.beginComputePass = beginComputePass;
  }
  return { writes, dispatches, passes };
}

/** Record `passes` as bare calls and submit them, `count` times (each awaited); ms of each up to after submit. */
async function replay(gpu: Gpu, passes: PassCommand[][], count: number): Promise<number[]> {
  const { device } = gpu;
  const times: number[] = [];
  for (let i = 0; i < count; i++) {
    const start = performance.now();
    const encoder = device.createCommandEncoder();
    for (const commands of passes) {
      const pass = encoder.beginComputePass();
      for (const c of commands) {
        if (c.kind === 'pipeline') pass.setPipeline(c.pipeline);
        else if (c.kind === 'bindGroup') pass.setBindGroup(c.index, c.bindGroup);
        else pass.dispatchWorkgroups(c.x, c.y, c.z);
      }
      pass.end();
    }
    device.queue.submit([encoder.finish()]);
    times.push(performance.now() - start);
    await gpu.sync();
  }
  return times;
}

const GREEDY: RowSampling = { temperature: 0, topK: 0, topP: 1, minP: 0, uniform: 0, repetitionPenalty: 1 };
const WALL_RUN = 8;

/**
 * Wall time per step of greedy batch-1 decode steps of slot 0 from `position`, picked on the GPU,
 * `count` steps each way: one at a time (each pick read back and fed by the host) and two in flight
 * (each step fed the step before's pick on the GPU, submitted before that one is read). The two
 * alternate in runs of WALL_RUN steps, so that both see the same range of positions (a step's
 * attention grows with them) and the same spells of machine load.
 */
async function wallPerStep(model: Transformer, position: number, count: number): Promise<{ serial: number; overlapped: number; overlappedHost: number }> {
  const ms = { serial: 0, overlapped: 0 };
  const calls: number[] = [];
  const options = { sample: [GREEDY], nextTokensFromPicks: true };
  for (let done = 0; done < count; done += WALL_RUN) {
    const n = Math.min(WALL_RUN, count - done);
    let start = performance.now();
    let token = 1;
    for (let i = 0; i < n; i++) {
      const [row] = await model.decode([{ slot: 0, token, position: position++ }], 1, { sample: [GREEDY] });
      token = row.ids[row.picked!];
    }
    ms.serial += performance.now() - start;
    start = performance.now();
    let inFlight = model.decode([{ slot: 0, token, position: position++ }], 1, options);
    for (let i = 1; i <= n; i++) {
      const called = performance.now();
      const next = i < n ? model.decode([{ slot: 0, token: 0, position: position++ }], 1, { ...options, tokensFromPicks: true }) : undefined;
      if (next) calls.push(performance.now() - called);
      await inFlight;
      if (next) inFlight = next;
    }
    ms.overlapped += performance.now() - start;
  }
  return { serial: ms.serial / count, overlapped: ms.overlapped / count, overlappedHost: median(calls) };
}

/**
 * Run `step` `count` times, one after another (each awaited), and time the part of each before
 * queue.submit, the submit itself and what follows it until the call returns, with queue.submit
 * wrapped by a timer for the duration.
 */
async function timed(gpu: Gpu, step: () => Promise<unknown>, count: number): Promise<{ encode: number[]; submit: number[]; after: number[] }> {
  const queue = gpu.device.queue;
  const own = Object.getOwnPropertyDescriptor(queue, 'submit');
  const submit = queue.submit;
  let entered = 0;
  let left = 0;
  queue.submit = function (this: GPUQueue, buffers: Iterable<GPUCommandBuffer>) {
    entered = performance.now();
    submit.call(this, buffers);
    left = performance.now();
  };
  const encodeMs: number[] = [];
  const submitMs: number[] = [];
  const afterMs: number[] = [];
  try {
    for (let i = 0; i < count; i++) {
      entered = left = 0;
      const start = performance.now();
      const pending = step();
      const returned = performance.now();
      await pending;
      // A step submits once; were it not to, the whole call counts as encoding.
      if (entered === 0) [entered, left] = [returned, returned];
      encodeMs.push(entered - start);
      submitMs.push(left - entered);
      afterMs.push(returned - left);
    }
  } finally {
    if (own) Object.defineProperty(queue, 'submit', own);
    else delete (queue as Partial<GPUQueue>).submit;
  }
  return { encode: encodeMs, submit: submitMs, after: afterMs };
}

export async function benchHost(options: HostOptions): Promise<HostReport> {
  const { gpu, steps, warmup = HOST_WARMUP, layers = 32 } = options;
  const progress = options.progress ?? (() => {});
  const dtype: WeightDtype = 'q4_0';
  // tiny-random-llama's shapes (C=128, F=384) at `layers` layers: small enough that a software
  // adapter runs a step in milliseconds, deep enough to have a real model's dispatch count.
  const source = randomLlamaSource(`host-bench-llama (random ${dtype})`, { ...TINY_CONFIG, num_hidden_layers: layers }, dtype);
  const cfg = source.config;
  progress(`host: building a ${layers}-layer Llama (C=${cfg.hiddenSize}, F=${cfg.intermediateSize}, ${dtype}) in memory`);
  // One prompt token, then warm-up, counted, timed-on-call and timed-ahead (one more) decode steps,
  // then the two wall-time runs.
  const capacity = 1 + warmup + 1 + steps + (steps + 1) + 2 * steps;
  // The static matvec variants: every variant, tuned or not, is one dispatch per projection, so the
  // host's cost per step does not depend on which runs, and tuning a Q4_0 model at load would add
  // minutes on a software adapter.
  const model = await Transformer.load(gpu, source, { slots: 1, capacity, prefillChunk: 16, autotune: false });
  try {
    await model.prefill(0, [1], 0, { candidates: 1 });
    let position = 1;
    const step = (recordNext: boolean) => model.decode([{ slot: 0, token: (position * 7) % cfg.vocabSize, position: position++ }], 1, { recordNext });
    const onCall = () => step(false);
    progress(`host: ${warmup} warm-up decode steps, then ${steps} timed recorded on the call and ${steps} recorded ahead`);
    for (let i = 0; i < warmup; i++) await onCall();
    const count = await counted(gpu, onCall);
    const { encode, submit } = await timed(gpu, onCall, steps);
    const times = encode.map((e, i) => e + submit[i]);
    const mid = median(times);
    // The first step recorded ahead is recorded on its call (nothing was recorded before it): dropped.
    const ahead = await timed(gpu, () => step(true), steps + 1);
    const critical = ahead.encode.slice(1).map((e, i) => e + ahead.submit[i + 1]);
    // The replay re-runs the last step's kernels on the same inputs: it changes nothing.
    const replayed = await replay(gpu, count.passes, steps);
    progress(`host: ${steps} greedy steps one at a time and ${steps} two in flight, in turns of ${WALL_RUN}, timed by the wall clock`);
    const wall = await wallPerStep(model, position, steps);
    return {
      ms_per_step: mid,
      critical_ms_per_step: median(critical),
      ahead_ms_per_step: median(ahead.after.slice(1)),
      serial_wall_ms_per_step: wall.serial,
      overlapped_wall_ms_per_step: wall.overlapped,
      overlapped_host_ms_per_step: wall.overlappedHost,
      dispatches_per_token: count.dispatches,
      buffer_writes_per_token: count.writes,
      layers,
      dtype,
      shape: { hidden: cfg.hiddenSize, intermediate: cfg.intermediateSize, heads: cfg.numHeads, kvHeads: cfg.numKvHeads, vocab: cfg.vocabSize },
      encode_ms_per_step: median(encode),
      submit_ms_per_step: median(submit),
      replay_ms_per_step: median(replayed),
      steps,
      min_ms: Math.min(...times),
      max_ms: Math.max(...times),
      spread_pct: mid > 0 ? (100 * median(times.map((t) => Math.abs(t - mid)))) / mid : 0,
    };
  } finally {
    model.destroy();
  }
}

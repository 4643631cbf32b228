// The device's own roofline, measured on this adapter: memory bandwidth from a large buffer copy
// (bytes read + bytes written), arithmetic peak from an FMA-bound loop, and the fixed costs of a
// dispatch and of a submit round trip. Every kernel of the bench is reported as a share of
// min(peak, intensity x bandwidth), the classic roofline bound.
import type { Gpu } from '../src/gpu/device.ts';
import { createStorage } from '../src/gpu/buffers.ts';
import { CopyProbe, FmaProbe } from '../kernels/bench.ts';
import type { BenchPreset } from './presets.ts';
import { summarize, timeKernel, timeSample, timeWall, timingMethod, type Timing } from './timing.ts';

export interface RooflineResult {
  bandwidth: {
    /** Bytes read plus bytes written by one copy. */
    bytes: number;
    gbps: number;
    timing: Timing;
  };
  compute: {
    /** FLOP of one run of the FMA loop. */
    flops: number;
    gflops: number;
    timing: Timing;
  };
  dispatch: {
    /** Cost of one trivial dispatch inside a long pass, microseconds. */
    perDispatchUs: number;
    dispatchesPerSample: number;
    timing: Timing;
  };
  submit: {
    /** Wall time of submitting one trivial dispatch and waiting for it, microseconds. */
    roundTripUs: number;
    timing: Timing;
  };
  /** Intensity (FLOP/byte) where the two ceilings meet: gflops / gbps. */
  ridgeIntensity: number;
}

/** The roofline bound in GFLOP/s at `intensity` FLOP/byte: min(peak, intensity x bandwidth). */
export function attainableGflops(roof: { gbps: number; gflops: number }, intensity: number): number {
  return Math.min(roof.gflops, intensity * roof.gbps);
}

export type Progress = (message: string) => void;

export async function measureRoofline(gpu: Gpu, preset: BenchPreset, progress: Progress = () => {}): Promise<RooflineResult> {
  const p = preset.roofline;
  const limit = Math.min(gpu.limits.maxStorageBufferBindingSize, gpu.limits.maxBufferSize);
  const bufferBytes = Math.floor(Math.min(p.copyBytes, limit) / 16) * 16;
  const count = bufferBytes / 16;

  progress(`roofline: copy ${(bufferBytes / 2 ** 20).toFixed(0)} MiB -> ${(bufferBytes / 2 ** 20).toFixed(0)} MiB`);
  const src = createStorage(gpu, 'bench.copy.src', bufferBytes);
  const dst = createStorage(gpu, 'bench.copy.dst', bufferBytes);
  let bandwidth: RooflineResult['bandwidth'];
  let dispatch: RooflineResult['dispatch'];
  let submit: RooflineResult['submit'];
  try {
    const copy = new CopyProbe(gpu, { src, dst });
    const copyTiming = await timeKernel(gpu, (pass) => copy.encode(pass, { count }), preset.timing);
    const bytes = CopyProbe.bytes(count);
    bandwidth = { bytes, gbps: bytes / copyTiming.medianMs / 1e6, timing: copyTiming };

    // A dispatch that does next to nothing (16 vec4s), many times in one pass: what remains is
    // the per-dispatch cost (barrier, state, launch) that a forward pass of ~10 dispatches per
    // layer pays.
    progress(`roofline: ${p.dispatches} trivial dispatches per pass, ${p.submits} submit round trips`);
    const tiny = (pass: GPUComputePassEncoder) => copy.encode(pass, { count: 16 });
    await timeSample(gpu, tiny, p.dispatches);
    const perDispatch: number[] = [];
    for (let i = 0; i < Math.max(3, preset.timing.samples); i++) perDispatch.push((await timeSample(gpu, tiny, p.dispatches)) / p.dispatches);
    const dispatchTiming = summarize(perDispatch, p.dispatches, timingMethod(gpu));
    dispatch = { perDispatchUs: dispatchTiming.medianMs * 1000, dispatchesPerSample: p.dispatches, timing: dispatchTiming };

    // Submit and wait, always wall time: this is the latency one engine step pays at least once.
    const submitOnce = async () => {
      const encoder = gpu.device.createCommandEncoder({ label: 'bench.submit' });
      const pass = encoder.beginComputePass();
      tiny(pass);
      pass.end();
      gpu.device.queue.submit([encoder.finish()]);
      await gpu.sync();
    };
    await submitOnce();
    const submitTiming = await timeWall(submitOnce, p.submits, preset.timing.budgetMs);
    submit = { roundTripUs: submitTiming.medianMs * 1000, timing: submitTiming };
  } finally {
    src.destroy();
    dst.destroy();
  }

  const invocations = p.fmaWorkgroups * 256;
  progress(`roofline: FMA loop, ${invocations} invocations x ${p.fmaIterations * 256} FLOP`);
  const sink = createStorage(gpu, 'bench.fma.sink', invocations * 4);
  let compute: RooflineResult['compute'];
  try {
    const fma = new FmaProbe(gpu, sink, 256);
    const run = { workgroups: p.fmaWorkgroups, iterations: p.fmaIterations };
    const fmaTiming = await timeKernel(gpu, (pass) => fma.encode(pass, run), preset.timing);
    const flops = fma.flops(run);
    compute = { flops, gflops: flops / fmaTiming.medianMs / 1e6, timing: fmaTiming };
  } finally {
    sink.destroy();
  }
  return { bandwidth, compute, dispatch, submit, ridgeIntensity: compute.gflops / bandwidth.gbps };
}


// Timing GPU work, for the bench and the matvec autotune. With the adapter's `timestamp-query`
// feature a sample is the GPU time between the start and the end of one compute pass; without it,
// the wall time from submit to queue completion (gpu.sync()).
import type { Gpu } from './device.ts';
import { mapForRead } from './buffers.ts';

export type TimingMethod = 'timestamp-query' | 'queue-completion';

export function timingMethod(gpu: Pick<Gpu, 'features'>): TimingMethod {
  return gpu.features.has('timestamp-query') ? 'timestamp-query' : 'queue-completion';
}

interface Timestamps {
  querySet: GPUQuerySet;
  resolve: GPUBuffer;
  readback: GPUBuffer;
}

const timestampState = new WeakMap<Gpu, Timestamps>();

function timestamps(gpu: Gpu): Timestamps {
  let state = timestampState.get(gpu);
  if (!state) {
    const { device } = gpu;
    state = {
      querySet: device.createQuerySet({ label: 'timing.timestamps', type: 'timestamp', count: 2 }),
      resolve: device.createBuffer({ label: 'timing.timestamps.resolve', size: 16, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC }),
      readback: device.createBuffer({ label: 'timing.timestamps.readback', size: 16, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST }),
    };
    timestampState.set(gpu, state);
  }
  return state;
}

/**
 * Run `record` `reps` times in one compute pass and return the time of the whole sample in ms:
 * GPU time from timestamps when the adapter has them (wall time if they come back empty, as a
 * quantised clock can), else wall time from submit to completion.
 */
export async function timeSample(gpu: Gpu, record: (pass: GPUComputePassEncoder) => void, reps: number): Promise<number> {
  const { device } = gpu;
  const useTimestamps = timingMethod(gpu) === 'timestamp-query';
  const encoder = device.createCommandEncoder({ label: 'timing.sample' });
  const ts = useTimestamps ? timestamps(gpu) : undefined;
  const pass = encoder.beginComputePass(
    ts ? { timestampWrites: { querySet: ts.querySet, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1 } } : {},
  );
  for (let r = 0; r < reps; r++) record(pass);
  pass.end();
  if (ts) {
    encoder.resolveQuerySet(ts.querySet, 0, 2, ts.resolve, 0);
    encoder.copyBufferToBuffer(ts.resolve, 0, ts.readback, 0, 16);
  }
  const commands = encoder.finish();
  const start = performance.now();
  device.queue.submit([commands]);
  await gpu.sync();
  const wallMs = performance.now() - start;
  if (!ts) return wallMs;
  await mapForRead(gpu, ts.readback);
  const [begin, end] = new BigInt64Array(ts.readback.getMappedRange().slice(0));
  ts.readback.unmap();
  const gpuMs = Number(end - begin) / 1e6;
  return gpuMs > 0 && gpuMs <= wallMs * 1.5 ? gpuMs : wallMs;
}


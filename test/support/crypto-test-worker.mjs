// A crypto worker for tests: the real one (src/wire/crypto-worker.mjs) with cues from workerData.test:
//   hold: SharedArrayBuffer (Int32 at 0); holdIds: frame ids whose verification waits until the test
//     sets hold[0] to 1 (the worker is stuck meanwhile, like a very slow verify); holdJobs: the same by
//     the pool's job number (1 = the pool's first job), for response frames, which share their request's id
//   crashVerifyIds / crashSignIds: frame ids whose verification / signing kills the worker (uncaught throw);
//     crashJobs: the same by the pool's job number
import { workerData } from 'node:worker_threads';
import { serveCryptoJobs } from '../../src/wire/crypto-worker.mjs';

const { keypair, test = {} } = workerData;
const hold = test.hold ? new Int32Array(test.hold) : undefined;
await serveCryptoJobs({
  keypair,
  beforeJob(job) {
    const crashIds = job.kind === 'verify' ? test.crashVerifyIds : test.crashSignIds;
    if (crashIds?.includes(job.id) || test.crashJobs?.includes(job.job)) throw new Error(`test worker: crash on cue (${job.kind} ${job.id})`);
    const held = test.holdIds?.includes(job.id) || test.holdJobs?.includes(job.job);
    if (job.kind === 'verify' && hold && held) Atomics.wait(hold, 0, 0); // no timeout: every test releases its gate (in a finally)
  },
});

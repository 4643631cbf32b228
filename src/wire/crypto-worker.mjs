// A crypto worker thread (crypto-pool.ts starts them): loads the sr25519 WebAssembly once, then
// answers each CryptoJob with a CryptoReply. Plain JavaScript: see sr25519.mjs.
//
// The pool hands every job over at once (the main thread may be busy for a while and must not be
// needed to feed the worker), so fairness is kept here: jobs wait in one queue per key (the pool's
// number for a connection) and the keys take turns, so one connection's backlog delays another's job
// by one job, not by the whole backlog. Between jobs the event loop runs, which takes in new jobs.
import { parentPort, workerData } from 'node:worker_threads';
import { cryptoWaitReady } from '@polkadot/util-crypto';
import { runCryptoJob } from './sr25519.mjs';

/**
 * Serve the pool's messages on parentPort: CryptoJob (queued under its key), { forget: key } (drop
 * that key's queued jobs: its connection closed). `beforeJob(job)` runs before each job (tests use it
 * to stall or die on cue).
 */
export async function serveCryptoJobs({ keypair, beforeJob } = {}) {
  if (!(await cryptoWaitReady())) {
    parentPort.postMessage({ ready: false, error: 'the sr25519 WebAssembly did not load' });
    return;
  }
  const queues = new Map(); // key -> jobs, in the order the keys take their turns
  let scheduled = false;
  const schedule = () => {
    if (scheduled || queues.size === 0) return;
    scheduled = true;
    setImmediate(runNext);
  };
  const runNext = () => {
    scheduled = false;
    const next = queues.entries().next();
    if (next.done) return;
    const [key, jobs] = next.value;
    const job = jobs.shift();
    queues.delete(key); // to the back of the line
    if (jobs.length > 0) queues.set(key, jobs);
    beforeJob?.(job);
    parentPort.postMessage(runCryptoJob(job, keypair));
    schedule();
  };
  parentPort.on('message', (message) => {
    if ('forget' in message) {
      queues.delete(message.forget);
      return;
    }
    const jobs = queues.get(message.key);
    if (jobs) jobs.push(message);
    else queues.set(message.key, [message]);
    schedule();
  });
  parentPort.postMessage({ ready: true });
}

// Started by the pool as the worker's own script (a test worker imports serveCryptoJobs instead).
if (workerData?.script === import.meta.url) await serveCryptoJobs({ keypair: workerData.keypair });

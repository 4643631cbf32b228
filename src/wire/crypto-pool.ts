// sr25519 off the main thread. Verifying a signature costs about 4 ms of CPU on a slow machine and
// signing a response about 1 ms; on the main thread that is time the event loop (the miner's GPU
// scheduler, a validator's other streams) does not run. A CryptoPool does both on a few worker
// threads (crypto-worker.mjs, which runs the same code as signing.ts: sr25519.mjs). The miner's axon
// verifies requests and signs responses with one; validator clients verify responses with one
// (createVerifyPool: no signing key; any number of clients of a process may share it).
//
//   verify(key, fields) -> Promise<boolean | Error>   Error: the worker died during the job, or the job was dropped
//   sign(key, fields)   -> Promise<string | null>     null: the job was dropped (forget, close)
//
// Neither promise rejects. Each job is handed at once to the worker with the fewest jobs outstanding
// (a main thread busy with the GPU must not be needed to keep the workers fed); each worker lets the
// keys (the server passes the connection, a validator client itself) take turns, so one connection's
// backlog delays another's job by about one job, not by the whole backlog. A worker that exits unexpectedly is replaced at
// once; its outstanding verifications resolve to a CryptoWorkerError (the server answers INTERNAL), its
// signatures are made on the calling thread instead, so a stream of token frames is never broken.
// Bounding the work is the caller's job (the server caps verifications per connection and in all,
// and signatures per connection: see AxonLimits).
//
// With 0 workers nothing is started and `inline` is true: the caller verifies and signs itself, as
// before the pool existed. A Signer whose key cannot be exported (not made by signing.ts) is always
// used on the calling thread (`signsInline`). A pool made without a signer only verifies: sign() throws.
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { pino, type Logger } from 'pino';
import { CryptoWorkerError, OptionError, OverloadedError } from '../errors.ts';
import type { CryptoForget, CryptoJob, CryptoReady, CryptoReply, Keypair, SignedFields } from './sr25519.mjs';
import { signedMessage, signerKeypair, type Signer } from './signing.ts';

export const MAX_CRYPTO_WORKERS = 64;
const START_TIMEOUT_MS = 30_000;
/** A replacement worker that dies before it is ready is tried again after this long. */
const RESTART_DELAY_MS = 1000;

/** min(4, max(1, cores - 1)): leave a core to the main thread, and do not crowd the GPU driver's threads. */
export function defaultCryptoWorkers(): number {
  return Math.min(4, Math.max(1, availableParallelism() - 1));
}

/** A request's signed fields and its claimed signature and signer. */
export interface VerifyFields extends SignedFields {
  signature: unknown;
  /** ss58 hotkey of the signer. */
  address: string;
}

export interface CryptoPoolOptions {
  /** Worker threads, 0..64; 0: everything on the calling thread. */
  workers: number;
  /** The key responses are signed with; absent for a pool that only verifies (a validator's). */
  signer?: Signer;
  /** Where worker failures are reported. Default: errors only, as JSON lines on stderr. */
  logger?: Logger;
  /** Replaces crypto-worker.mjs (tests use one that stalls or dies on cue); `data` reaches it as workerData.test. */
  script?: { url: URL; data?: unknown };
}

export interface CryptoPoolStats {
  workers: number;
  /** Worker threads started and not exited (0 after close). */
  running: number;
  /** Verifications queued or running. */
  verifying: number;
  /** Signatures queued or running. */
  signing: number;
  /** Jobs that worker threads finished. */
  verifiedInWorkers: number;
  signedInWorkers: number;
  /** Signatures of failed jobs made on the calling thread instead. */
  signedInline: number;
  /** Workers that exited unexpectedly (each was replaced). */
  workerExits: number;
}

type Job = { key: number } & (
  | { kind: 'verify'; fields: VerifyFields; settle: (valid: boolean | Error) => void }
  | { kind: 'sign'; fields: SignedFields; settle: (signature: string | null) => void }
);

interface Thread {
  worker: Worker;
  ready: boolean;
  /** Jobs handed to it and not yet answered, by job number. */
  jobs: Map<number, Job>;
}

export class CryptoPool {
  readonly workers: number;
  /** True when there are no workers: the caller verifies and signs on its own thread. */
  readonly inline: boolean;
  /** True when responses are signed on the calling thread (no workers, or a key that cannot be exported). */
  readonly signsInline: boolean;
  #signer: Signer | undefined;
  #logger: Logger;
  #script: URL;
  #workerData: { script: string; keypair?: Keypair; test?: unknown };
  #threads = new Set<Thread>();
  /** Jobs that came while no worker was ready (all of them being replaced). */
  #waiting: Job[] = [];
  #keys = new WeakMap<object, number>();
  #nextKey = 1;
  #nextJob = 1;
  #starting: Promise<void> | undefined;
  #running = false;
  #closed = false;
  #stats = { verifying: 0, signing: 0, verifiedInWorkers: 0, signedInWorkers: 0, signedInline: 0, workerExits: 0 };

  constructor(options: CryptoPoolOptions) {
    const n = options.workers;
    if (!Number.isSafeInteger(n) || n < 0 || n > MAX_CRYPTO_WORKERS) {
      throw new OptionError(`crypto workers must be an integer in [0, ${MAX_CRYPTO_WORKERS}] (got ${n})`);
    }
    this.workers = n;
    this.inline = n === 0;
    this.#signer = options.signer;
    this.#logger = options.logger ?? pino({ name: 'crypto-pool', level: 'error' }, pino.destination(2));
    this.#script = options.script?.url ?? new URL('./crypto-worker.mjs', import.meta.url);
    const keypair = this.inline || !options.signer ? undefined : signerKeypair(options.signer);
    this.signsInline = keypair === undefined;
    this.#workerData = { script: this.#script.href, keypair, test: options.script?.data };
  }

  /** Start the workers and wait until each has loaded its WebAssembly. Idempotent: later calls wait for the first. */
  start(): Promise<void> {
    this.#starting ??= this.#start();
    return this.#starting;
  }

  async #start(): Promise<void> {
    if (this.inline || this.#closed) return;
    const started = await Promise.allSettled(Array.from({ length: this.workers }, () => this.#spawn()));
    const failed = started.find((s): s is PromiseRejectedResult => s.status === 'rejected');
    if (failed) throw failed.reason;
    this.#running = true;
  }

  stats(): CryptoPoolStats {
    let running = 0;
    for (const thread of this.#threads) if (thread.ready) running += 1;
    return { workers: this.workers, running, ...this.#stats };
  }

  /** True once close() was called: verify() answers an Error at once. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Verifications queued or running, over all keys. */
  get verifying(): number {
    return this.#stats.verifying;
  }

  /** Verify `fields.signature` by `fields.address` over the signed string of `fields`. */
  verify(key: object, fields: VerifyFields): Promise<boolean | Error> {
    if (this.#closed) return Promise.resolve(new OverloadedError('the crypto pool is closed'));
    this.#stats.verifying += 1;
    return new Promise((resolve) => {
      const settle = (valid: boolean | Error) => {
        this.#stats.verifying -= 1;
        resolve(valid);
      };
      this.#hand({ key: this.#keyOf(key), kind: 'verify', fields, settle });
    });
  }

  /** Sign the signed string of `fields` with the miner's key ("0x" + hex). Throws when the pool has no signer. */
  sign(key: object, fields: SignedFields): Promise<string | null> {
    if (!this.#signer) throw new OptionError('this crypto pool only verifies: it was made without a signer');
    if (this.#closed) return Promise.resolve(null);
    this.#stats.signing += 1;
    return new Promise((resolve) => {
      const settle = (signature: string | null) => {
        this.#stats.signing -= 1;
        resolve(signature);
      };
      this.#hand({ key: this.#keyOf(key), kind: 'sign', fields, settle });
    });
  }

  /** Drop the unanswered jobs of `key` (its connection closed): verifications end in an Error, signatures in null. */
  forget(key: object): void {
    const id = this.#keys.get(key);
    if (id === undefined) return;
    const dropped = new CryptoWorkerError('dropped: its connection closed');
    for (const thread of this.#threads) {
      let any = false;
      for (const [number, job] of thread.jobs) {
        if (job.key !== id) continue;
        thread.jobs.delete(number);
        this.#drop(job, dropped);
        any = true;
      }
      if (!any) continue;
      thread.worker.postMessage({ forget: id } satisfies CryptoForget);
      if (thread.jobs.size === 0) thread.worker.unref();
    }
    const waiting = this.#waiting.filter((job) => job.key === id);
    this.#waiting = this.#waiting.filter((job) => job.key !== id);
    for (const job of waiting) this.#drop(job, dropped);
  }

  /** Drop every unanswered job and stop the workers. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const closing = new OverloadedError('the crypto pool is closed');
    for (const job of this.#waiting.splice(0)) this.#drop(job, closing);
    const threads = [...this.#threads];
    for (const thread of threads) {
      for (const job of thread.jobs.values()) this.#drop(job, closing);
      thread.jobs.clear();
    }
    await Promise.all(threads.map((t) => t.worker.terminate()));
    this.#threads.clear();
  }

  // -------------------------------------------------------------------------------------------

  #keyOf(key: object): number {
    let id = this.#keys.get(key);
    if (id === undefined) this.#keys.set(key, (id = this.#nextKey++));
    return id;
  }

  /** Give a job to the ready worker with the fewest outstanding, or keep it until one is ready. */
  #hand(job: Job): void {
    let best: Thread | undefined;
    for (const thread of this.#threads) {
      if (thread.ready && (!best || thread.jobs.size < best.jobs.size)) best = thread;
    }
    if (!best) {
      this.#waiting.push(job);
      return;
    }
    const number = this.#nextJob++;
    // A copy of just these bytes (a decoded body may be a view into a larger buffer, which a
    // structured clone would copy whole), moved to the worker rather than copied again.
    const body = new Uint8Array(job.fields.body);
    const { id, timestamp, signedFor } = job.fields;
    const message: CryptoJob =
      job.kind === 'verify'
        ? { job: number, key: job.key, kind: 'verify', body, id, timestamp, signedFor, signature: job.fields.signature, address: job.fields.address }
        : { job: number, key: job.key, kind: 'sign', body, id, timestamp, signedFor };
    best.jobs.set(number, job);
    best.worker.ref(); // a worker with work keeps the process alive; an idle one does not (#onReply)
    best.worker.postMessage(message, [body.buffer]);
  }

  #spawn(): Promise<void> {
    const worker = new Worker(this.#script, { workerData: this.#workerData });
    const thread: Thread = { worker, ready: false, jobs: new Map() };
    this.#threads.add(thread);
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      const fail = (err: Error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        reject(err);
        void worker.terminate();
      };
      const timer = setTimeout(() => fail(new CryptoWorkerError(`crypto worker did not start within ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS);
      timer.unref();
      worker.on('message', (message: CryptoReady | CryptoReply) => {
        if ('ready' in message) {
          if (!message.ready) return fail(new CryptoWorkerError(`crypto worker failed to start: ${message.error}`));
          settled = true;
          clearTimeout(timer);
          thread.ready = true;
          worker.unref();
          resolve();
          for (const job of this.#waiting.splice(0)) this.#hand(job);
          return;
        }
        this.#onReply(thread, message);
      });
      worker.on('error', (err) => {
        this.#logger.error({ event: 'crypto_worker_error', err }, 'crypto worker threw');
        fail(new CryptoWorkerError(`crypto worker failed: ${err.message}`, { cause: err }));
      });
      worker.on('exit', (code) => {
        fail(new CryptoWorkerError(`crypto worker exited with code ${code} before it was ready`));
        this.#onExit(thread, code);
      });
    });
  }

  #onExit(thread: Thread, code: number): void {
    this.#threads.delete(thread);
    if (this.#closed || (!thread.ready && !this.#running)) return; // closing, or start() is failing and says so
    this.#stats.workerExits += 1;
    const jobs = [...thread.jobs.values()];
    thread.jobs.clear();
    this.#logger.error(
      { event: 'crypto_worker_exit', code, jobs: jobs.length },
      `crypto worker exited (code ${code}) with ${jobs.length} jobs outstanding: verifications fail, signatures are made on the main thread; replacing it`,
    );
    for (const job of jobs) this.#drop(job, new CryptoWorkerError(`crypto worker exited (code ${code}) before it answered`), true);
    const restart = () => {
      if (this.#closed) return;
      this.#spawn().catch((err: Error) => {
        this.#logger.error({ event: 'crypto_worker_exit', err: err.message }, 'replacement crypto worker failed to start; trying again');
      });
    };
    // A worker that had started is replaced at once; one that never got ready, after a pause.
    if (thread.ready) restart();
    else setTimeout(restart, RESTART_DELAY_MS).unref();
  }

  #onReply(thread: Thread, reply: CryptoReply): void {
    const job = thread.jobs.get(reply.job);
    if (!job) return; // dropped meanwhile (forget)
    thread.jobs.delete(reply.job);
    if (thread.jobs.size === 0) thread.worker.unref();
    if ('error' in reply) {
      this.#logger.error({ event: 'crypto_worker_job', err: reply.error }, 'crypto worker failed a job');
      this.#drop(job, new CryptoWorkerError(`crypto worker failed the job: ${reply.error}`), true);
    } else if (job.kind === 'verify' && 'valid' in reply) {
      this.#stats.verifiedInWorkers += 1;
      job.settle(reply.valid);
    } else if (job.kind === 'sign' && 'signature' in reply) {
      this.#stats.signedInWorkers += 1;
      job.settle(reply.signature);
    } else {
      this.#drop(job, new CryptoWorkerError('crypto worker answered with the wrong kind of reply'), true);
    }
  }

  /** End a job no worker will finish: a verification with `err`; a signature made here instead when `signHere`, else null. */
  #drop(job: Job, err: Error, signHere = false): void {
    if (job.kind === 'verify') return job.settle(err);
    if (!signHere || !this.#signer) return job.settle(null);
    const { body, id, timestamp, signedFor } = job.fields;
    let signature: string | null = null;
    try {
      signature = this.#signer.sign(signedMessage(body, id, timestamp, signedFor));
      this.#stats.signedInline += 1;
    } catch (signErr) {
      this.#logger.error({ event: 'crypto_worker_job', err: signErr }, 'signing on the main thread failed too; the frame is dropped');
    }
    job.settle(signature);
  }
}

export interface VerifyPoolOptions {
  /** Worker threads, 0..64 (0: clients verify on their own thread). Default min(4, max(1, cores - 1)). */
  workers?: number;
  /** Where worker failures are reported. Default: errors only, as JSON lines on stderr. */
  logger?: Logger;
  /** Replaces crypto-worker.mjs (tests). */
  script?: { url: URL; data?: unknown };
}

/**
 * A started pool that only verifies, for validator clients (ValidatorClient.connect's `cryptoPool`):
 * one per process, shared by every client; close() it when done (idle workers do not keep the process
 * alive meanwhile).
 */
export async function createVerifyPool(options: VerifyPoolOptions = {}): Promise<CryptoPool> {
  const pool = new CryptoPool({ workers: options.workers ?? defaultCryptoWorkers(), logger: options.logger, script: options.script });
  await pool.start();
  return pool;
}

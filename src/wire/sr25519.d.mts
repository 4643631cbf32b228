// Types for sr25519.mjs (plain JavaScript so worker threads can load it without a TypeScript loader).

export declare const SS58_FORMAT: 42;

/** An sr25519 key pair: 32-byte public key, 64-byte secret key. */
export interface Keypair {
  publicKey: Uint8Array;
  secretKey: Uint8Array;
}

/** What Epistula v2's signed string is made of. */
export interface SignedFields {
  body: Uint8Array;
  id: string;
  timestamp: number;
  signedFor: string;
}

export declare function signedMessage(body: Uint8Array, id: string, timestamp: number, signedFor: string): Uint8Array;
export declare function verifySignature(message: Uint8Array, signature: unknown, address: string): boolean;
export declare function signFields(keypair: Keypair, fields: SignedFields): string;

/** Main thread -> worker. `job` numbers the job within the pool; `key` numbers its connection (jobs of different keys take turns). */
export type CryptoJob =
  | ({ job: number; key: number; kind: 'verify'; signature: unknown; address: string } & SignedFields)
  | ({ job: number; key: number; kind: 'sign' } & SignedFields);

/** Main thread -> worker: drop the queued jobs of `forget` (their connection closed; they were answered already). */
export type CryptoForget = { forget: number };

/** Worker -> main thread: the job's verdict or signature, or why it failed. */
export type CryptoReply = { job: number; valid: boolean } | { job: number; signature: string } | { job: number; error: string };

/** Worker -> main thread once, after the WebAssembly is ready (or failed to load). */
export type CryptoReady = { ready: true } | { ready: false; error: string };

export declare function runCryptoJob(job: CryptoJob, keypair: Keypair | undefined): CryptoReply;

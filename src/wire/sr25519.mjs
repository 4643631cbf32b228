// sr25519 over Epistula v2's signed string: the one implementation that both the main thread
// (signing.ts) and the crypto worker threads (crypto-worker.mjs) run. Plain JavaScript importing only
// Node built-ins and npm packages, so a worker thread loads it with no TypeScript loader (tsx and
// vitest both leave a Worker's own module graph alone). Types: sr25519.d.mts.
//
// Every function here needs the sr25519 WebAssembly: await cryptoWaitReady() first.
import { createHash } from 'node:crypto';
import { hexToU8a, u8aToHex, u8aWrapBytes } from '@polkadot/util';
import { decodeAddress, sr25519Sign, sr25519Verify } from '@polkadot/util-crypto';

export const SS58_FORMAT = 42;
const SIGNATURE = /^0x[0-9a-fA-F]{128}$/;

/** Epistula v2's signed string `${sha256_hex(body)}.${id}.${timestamp}.${signedFor}`, as UTF-8 bytes. */
export function signedMessage(body, id, timestamp, signedFor) {
  const digest = createHash('sha256').update(body).digest('hex');
  return Buffer.from(`${digest}.${id}.${timestamp}.${signedFor}`, 'utf8');
}

/**
 * Verify an sr25519 signature by `address` over `message`; also accepts the message wrapped as
 * <Bytes>...</Bytes> (what browser wallets and btwallet sign). Never throws: a malformed or empty
 * signature or address is simply not valid.
 */
export function verifySignature(message, signature, address) {
  if (typeof signature !== 'string' || !SIGNATURE.test(signature)) return false;
  let publicKey;
  try {
    publicKey = decodeAddress(address, false, SS58_FORMAT);
  } catch {
    return false;
  }
  if (publicKey.length !== 32) return false;
  try {
    const sig = hexToU8a(signature);
    return sr25519Verify(message, sig, publicKey) || sr25519Verify(u8aWrapBytes(message), sig, publicKey);
  } catch {
    return false;
  }
}

/** Sign the signed string of `fields` with an sr25519 key pair; "0x" + hex. */
export function signFields(keypair, fields) {
  return u8aToHex(sr25519Sign(signedMessage(fields.body, fields.id, fields.timestamp, fields.signedFor), keypair));
}

/** One job of the worker protocol (see sr25519.d.mts): verify a request's signature, or sign a response. */
export function runCryptoJob(job, keypair) {
  try {
    if (job.kind === 'verify') {
      return { job: job.job, valid: verifySignature(signedMessage(job.body, job.id, job.timestamp, job.signedFor), job.signature, job.address) };
    }
    if (job.kind === 'sign') {
      if (!keypair) return { job: job.job, error: 'this worker holds no signing key' };
      return { job: job.job, signature: signFields(keypair, job) };
    }
    return { job: job.job, error: `unknown job kind ${String(job.kind)}` };
  } catch (err) {
    return { job: job.job, error: err instanceof Error ? err.message : String(err) };
  }
}

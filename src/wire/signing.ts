// Signatures: sr25519 over Epistula v2's string, hotkeys as ss58 (format 42), via @polkadot.
//
// The signed message (UTF-8) is `${sha256_hex(body)}.${id}.${timestamp}.${signed_for}`, so a
// validator's existing Epistula signing code carries over. Verification is strict: anything but
// "0x" + 128 hex digits, or an address that does not decode, is a failure, never a skip.
import { createHash, randomUUID } from 'node:crypto';
import { Keyring } from '@polkadot/keyring';
import { decodePair } from '@polkadot/keyring/pair/decode';
import type { KeyringPair } from '@polkadot/keyring/types';
import { u8aToHex, hexToU8a } from '@polkadot/util';
import { checkAddress, cryptoIsReady, cryptoWaitReady } from '@polkadot/util-crypto';
import { MinerError, OptionError } from '../errors.ts';
import { SS58_FORMAT, signedMessage as epistulaMessage, verifySignature as verifySr25519, type Keypair } from './sr25519.mjs';
import {
  PROTOCOL_VERSION,
  encodeBody,
  type RequestFrame,
  type RequestOp,
  type ResponseFrame,
  type ResponseType,
} from './protocol.ts';

export { SS58_FORMAT };

/** Load the sr25519 WebAssembly once; every other function here needs it. */
export async function cryptoReady(): Promise<void> {
  await cryptoWaitReady();
}

function requireReady(): void {
  if (!cryptoIsReady()) throw new MinerError('CRYPTO_NOT_READY', 'call cryptoReady() (await) before signing or verifying');
}

/** A hotkey that can sign: the miner's, or a validator's in the client. */
export interface Signer {
  /** ss58 address, format 42. */
  readonly address: string;
  /** sr25519 signature of `message` as "0x" + hex. */
  sign(message: Uint8Array): string;
}

// The key pair behind each signer made here, for crypto worker threads (signerKeypair). Kept out of
// the Signer object itself, so that logging or serialising a signer cannot leak its secret.
const pairs = new WeakMap<Signer, KeyringPair>();

function signerFromPair(pair: KeyringPair): Signer {
  const signer: Signer = {
    address: pair.address,
    sign: (message) => u8aToHex(pair.sign(message)),
  };
  pairs.set(signer, pair);
  return signer;
}

/**
 * The raw sr25519 key pair of a signer made by signerFromUri/signerFromSeed (undefined for any other
 * Signer), so that worker threads of this process can sign with the same key.
 */
export function signerKeypair(signer: Signer): Keypair | undefined {
  const pair = pairs.get(signer);
  if (!pair || pair.isLocked) return undefined;
  return decodePair(undefined, pair.encodePkcs8(), 'none');
}

function keyring(): Keyring {
  requireReady();
  return new Keyring({ type: 'sr25519', ss58Format: SS58_FORMAT });
}

/** A signer from a keyring URI: `//Alice` development keys, or a mnemonic with an optional derivation path. */
export async function signerFromUri(uri: string): Promise<Signer> {
  await cryptoReady();
  try {
    return signerFromPair(keyring().addFromUri(uri));
  } catch {
    // The message of a failed URI parse may echo the secret, so it is not repeated here.
    throw new OptionError('hotkey URI is not a valid keyring URI (e.g. //Alice, or a mnemonic with an optional //path)');
  }
}

/** A signer from a 32-byte sr25519 mini-secret (a Bittensor wallet's secretSeed), hex or bytes. */
export async function signerFromSeed(seed: string | Uint8Array): Promise<Signer> {
  await cryptoReady();
  const bytes = typeof seed === 'string' ? (/^0x[0-9a-fA-F]{64}$/.test(seed) ? hexToU8a(seed) : null) : seed;
  if (!bytes || bytes.length !== 32) throw new OptionError('secret seed must be 32 bytes ("0x" + 64 hex digits)');
  return signerFromPair(keyring().addFromSeed(bytes));
}

/** True when `address` is an ss58 address of format 42 with a valid checksum. */
export function isValidHotkey(address: unknown): address is string {
  if (typeof address !== 'string' || address.length > 64) return false;
  try {
    return checkAddress(address, SS58_FORMAT)[0];
  } catch {
    return false;
  }
}

export function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** Epistula v2's signed string, as UTF-8 bytes. */
export function signedMessage(body: Uint8Array, id: string, timestamp: number, signedFor: string): Uint8Array {
  return epistulaMessage(body, id, timestamp, signedFor);
}

/**
 * Verify an sr25519 signature by `address` over `message`. Also accepts the same message wrapped
 * as <Bytes>...</Bytes> (what browser wallets and btwallet sign). Never throws: a malformed or
 * empty signature or address is simply not valid. (The crypto workers run the same code: sr25519.mjs.)
 */
export function verifySignature(message: Uint8Array, signature: unknown, address: string): boolean {
  requireReady();
  return verifySr25519(message, signature, address);
}

/** Verify a frame's signature against its own signed_by. */
export function verifyFrame(frame: RequestFrame | ResponseFrame): boolean {
  return verifySignature(signedMessage(frame.body, frame.id, frame.timestamp, frame.signed_for), frame.signature, frame.signed_by);
}

export interface SignRequestFields {
  op: RequestOp;
  /** The op's payload, msgpack-encoded here ... */
  payload?: unknown;
  /** ... or the body bytes as they are (for tests and proxies). */
  body?: Uint8Array;
  signedFor: string;
  id?: string;
  timestamp?: number;
}

/** Build and sign a request frame (the validator's side). */
export function signRequest(signer: Signer, fields: SignRequestFields): RequestFrame {
  const body = fields.body ?? encodeBody(fields.payload ?? {});
  const id = fields.id ?? randomUUID();
  const timestamp = fields.timestamp ?? Date.now();
  const signature = signer.sign(signedMessage(body, id, timestamp, fields.signedFor));
  return { v: PROTOCOL_VERSION, id, op: fields.op, timestamp, signed_by: signer.address, signed_for: fields.signedFor, body, signature };
}

export interface SignResponseFields {
  type: ResponseType;
  id: string;
  signedFor: string;
  body: Uint8Array;
  timestamp?: number;
}

/** Build and sign a response frame (the miner's side). */
export function signResponse(signer: Signer, fields: SignResponseFields): ResponseFrame {
  const timestamp = fields.timestamp ?? Date.now();
  const signature = signer.sign(signedMessage(fields.body, fields.id, timestamp, fields.signedFor));
  return responseFrame(signer.address, { ...fields, timestamp }, signature);
}

/** A response frame from its fields and a signature made elsewhere (a crypto worker). */
export function responseFrame(signedBy: string, fields: SignResponseFields & { timestamp: number }, signature: string): ResponseFrame {
  return {
    v: PROTOCOL_VERSION,
    id: fields.id,
    type: fields.type,
    timestamp: fields.timestamp,
    signed_by: signedBy,
    signed_for: fields.signedFor,
    body: fields.body,
    signature,
  };
}

/** Epistula v2's request headers for `body` (the validator's side of the HTTP face). */
export function epistulaHeaders(signer: Signer, fields: { body: Uint8Array; signedFor: string; id?: string; timestamp?: number }): Record<string, string> {
  const id = fields.id ?? randomUUID();
  const timestamp = fields.timestamp ?? Date.now();
  return {
    'Epistula-Version': '2',
    'Epistula-Timestamp': String(timestamp),
    'Epistula-Uuid': id,
    'Epistula-Signed-By': signer.address,
    'Epistula-Signed-For': fields.signedFor,
    'Epistula-Request-Signature': signer.sign(signedMessage(fields.body, id, timestamp, fields.signedFor)),
  };
}

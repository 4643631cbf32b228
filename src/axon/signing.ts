// Signatures: sr25519 over Epistula v2's string, hotkeys as ss58 (format 42), via @polkadot.
//
// The signed message (UTF-8) is `${sha256_hex(body)}.${id}.${timestamp}.${signed_for}`, so a
// validator's existing Epistula signing code carries over. Verification is strict: anything but
// "0x" + 128 hex digits, or an address that does not decode, is a failure, never a skip.
import { createHash, randomUUID } from 'node:crypto';
import { Keyring } from '@polkadot/keyring';
import type { KeyringPair } from '@polkadot/keyring/types';
import { u8aToHex, hexToU8a, u8aWrapBytes } from '@polkadot/util';
import { checkAddress, cryptoIsReady, cryptoWaitReady, decodeAddress, sr25519Verify } from '@polkadot/util-crypto';
import { MinerError, OptionError } from '../errors.ts';
import {
  PROTOCOL_VERSION,
  encodeBody,
  type RequestFrame,
  type RequestOp,
  type ResponseFrame,
  type ResponseType,
} from './protocol.ts';

export const SS58_FORMAT = 42;
const SIGNATURE = /^0x[0-9a-fA-F]{128}$/;

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

function signerFromPair(pair: KeyringPair): Signer {
  return {
    address: pair.address,
    sign: (message) => u8aToHex(pair.sign(message)),
  };
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
  return Buffer.from(`${sha256Hex(body)}.${id}.${timestamp}.${signedFor}`, 'utf8');
}

/**
 * Verify an sr25519 signature by `address` over `message`. Also accepts the same message wrapped
 * as <Bytes>...</Bytes> (what browser wallets and btwallet sign). Never throws: a malformed or
 * empty signature or address is simply not valid.
 */
export function verifySignature(message: Uint8Array, signature: unknown, address: string): boolean {
  requireReady();
  if (typeof signature !== 'string' || !SIGNATURE.test(signature)) return false;
  let publicKey: Uint8Array;
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
  return {
    v: PROTOCOL_VERSION,
    id: fields.id,
    type: fields.type,
    timestamp,
    signed_by: signer.address,
    signed_for: fields.signedFor,
    body: fields.body,
    signature,
  };
}

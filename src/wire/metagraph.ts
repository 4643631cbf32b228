// The metagraph file both sides read: the miner to admit validators by stake and permit, the validator
// to find the miners it scores. No chain access: a JSON snapshot of what the chain says.
import { readFileSync } from 'node:fs';
import { OptionError } from '../errors.ts';
import { isValidHotkey } from './signing.ts';

export interface MetagraphNeuron {
  uid: number;
  hotkey: string;
  /** Stake in TAO (or alpha): whatever unit --min-stake is given in. */
  stake: number;
  validatorPermit: boolean;
}

export interface Metagraph {
  netuid: number;
  block: number;
  /** By hotkey. */
  neurons: ReadonlyMap<string, MetagraphNeuron>;
}

/** Check and index a metagraph JSON value `{netuid, block, neurons: [{uid, hotkey, stake, validator_permit}]}`. */
export function parseMetagraph(value: unknown, source = 'metagraph'): Metagraph {
  const fail = (detail: string): never => {
    throw new OptionError(`${source}: ${detail}`);
  };
  if (typeof value !== 'object' || value === null || Array.isArray(value)) fail('must be a JSON object {netuid, block, neurons}');
  const { netuid, block, neurons } = value as Record<string, unknown>;
  if (!Number.isSafeInteger(netuid) || (netuid as number) < 0) fail('netuid must be a non-negative integer');
  if (!Number.isSafeInteger(block) || (block as number) < 0) fail('block must be a non-negative integer');
  if (!Array.isArray(neurons)) fail('neurons must be an array');
  const byHotkey = new Map<string, MetagraphNeuron>();
  for (const [i, n] of (neurons as unknown[]).entries()) {
    if (typeof n !== 'object' || n === null) fail(`neurons[${i}] must be an object`);
    const { uid, hotkey, stake, validator_permit } = n as Record<string, unknown>;
    if (!Number.isSafeInteger(uid) || (uid as number) < 0) fail(`neurons[${i}].uid must be a non-negative integer`);
    if (!isValidHotkey(hotkey)) fail(`neurons[${i}].hotkey must be an ss58 address (format 42) with a valid checksum`);
    if (typeof stake !== 'number' || !Number.isFinite(stake) || stake < 0) fail(`neurons[${i}].stake must be a finite number >= 0`);
    if (typeof validator_permit !== 'boolean') fail(`neurons[${i}].validator_permit must be true or false`);
    if (byHotkey.has(hotkey as string)) fail(`hotkey ${hotkey} appears twice (neurons[${i}])`);
    byHotkey.set(hotkey as string, { uid: uid as number, hotkey: hotkey as string, stake: stake as number, validatorPermit: validator_permit as boolean });
  }
  return { netuid: netuid as number, block: block as number, neurons: byHotkey };
}

/** The JSON value of a metagraph file, or an OptionError naming the file and what is wrong with it. */
export function readMetagraphJson(path: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new OptionError(`cannot read metagraph file ${path}: ${(err as Error).message}`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new OptionError(`metagraph file ${path} is not JSON: ${(err as Error).message}`);
  }
}

export function loadMetagraphFile(path: string): Metagraph {
  return parseMetagraph(readMetagraphJson(path), `metagraph file ${path}`);
}

// `webgpu-miner validate` and `webgpu-miner verify` on the command line (the CLI registers them).
import { readFileSync } from 'node:fs';
import type { Command, Option } from 'commander';
import type { Writable } from 'node:stream';
import { loadSigner } from '../wire/wallet.ts';
import { MinerError, OptionError } from '../errors.ts';
import { TINY_MODEL_ID } from '../../models/tiny.ts';
import { ReferenceModel } from './recompute.ts';
import { validate, verifyEvidence } from './validate.ts';

export interface ValidateFlags {
  metagraph: string;
  model: string;
  adapter?: string;
  /** false with --no-autotune. */
  autotune?: boolean;
  hotkeyUri?: string;
  'wallet.path'?: string;
  'wallet.name'?: string;
  'wallet.hotkey'?: string;
  rounds: string;
  seed: string;
  concurrency: string;
  challenges?: string;
  timeoutMs: string;
  json?: string;
  evidence?: string;
  maxTtftMs?: string;
  maxGapMs?: string;
  minTokensPerS?: string;
}

function int(flag: string, value: string | undefined, min: number): number | undefined {
  if (value === undefined) return undefined;
  const n = /^-?\d+$/.test(value.trim()) ? Number(value) : NaN;
  if (!Number.isSafeInteger(n) || n < min) throw new OptionError(`--${flag} must be an integer >= ${min} (got ${value})`);
  return n;
}

function num(flag: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n < 0) throw new OptionError(`--${flag} must be a number >= 0 (got ${value})`);
  return n;
}

export async function validateCommand(flags: ValidateFlags, err: Writable = process.stderr): Promise<void> {
  const signer = await loadSigner({
    hotkeyUri: flags.hotkeyUri,
    wallet: { path: flags['wallet.path'], name: flags['wallet.name'], hotkey: flags['wallet.hotkey'] },
  });
  const report = await validate({
    metagraph: flags.metagraph,
    signer,
    model: flags.model,
    adapter: flags.adapter,
    autotune: flags.autotune,
    rounds: int('rounds', flags.rounds, 1),
    seed: int('seed', flags.seed, Number.MIN_SAFE_INTEGER),
    concurrency: int('concurrency', flags.concurrency, 1),
    challengesPerRound: int('challenges', flags.challenges, 1),
    timeoutMs: int('timeout-ms', flags.timeoutMs, 1),
    thresholds: { maxTtftMs: num('max-ttft-ms', flags.maxTtftMs), gapMs: num('max-gap-ms', flags.maxGapMs), minTokensPerS: num('min-tokens-per-s', flags.minTokensPerS) },
    json: flags.json,
    evidence: flags.evidence,
    log: (line) => err.write(line + '\n'),
  });
  err.write(`weights: ${report.weights.map((w) => `uid ${w.uid} ${w.weight.toFixed(4)}`).join(', ') || 'none (no miner scored above 0)'}\n`);
  err.write(`recomputed ${report.recompute.tokens} tokens in ${report.recompute.seconds} s (${report.recompute.tokensPerS} tokens/s)\n`);
  for (const s of report.skipped) err.write(`skipped uid ${s.uid}: ${s.reason}\n`);
}

export interface VerifyFlags {
  transcript: string;
  model: string;
  adapter?: string;
  /** false with --no-autotune. */
  autotune?: boolean;
}

/** Prints the verdict as JSON; fails (BAD_VERDICT) when it differs from the saved one. */
export async function verifyCommand(flags: VerifyFlags, out: Writable = process.stdout): Promise<void> {
  let value: unknown;
  try {
    value = JSON.parse(readFileSync(flags.transcript, 'utf8'));
  } catch (err) {
    throw new OptionError(`cannot read transcript ${flags.transcript}: ${(err as Error).message}`);
  }
  const reference = await ReferenceModel.load({ model: flags.model, adapter: flags.adapter, slots: 1, autotune: flags.autotune });
  try {
    const result = await verifyEvidence(value, reference);
    out.write(JSON.stringify(result, null, 2) + '\n');
    if (result.saved && result.saved.weightsDigest !== result.reference.weightsDigest) {
      process.stderr.write(`note: the verdict was reached with ${result.saved.model} (weights ${result.saved.weightsDigest.slice(0, 12)}), this check used ${result.reference.model} (${result.reference.weightsDigest.slice(0, 12)})\n`);
    }
    if (result.differences.length > 0) throw new MinerError('VERDICT_DIFFERS', `the saved verdict does not stand: ${result.differences.join('; ')}`);
  } finally {
    await reference.close();
  }
}

/** Add `validate` and `verify` to the program. */
export function addValidatorCommands(program: Command, adapterOption: Option): void {
  program
    .command('validate')
    .description("score the metagraph's miners: seeded challenges, every signature verified, answers recomputed with this model, weights out")
    .requiredOption('--metagraph <file>', 'metagraph JSON; neurons with axon: {ip, port, protocol: "ws" | "http"} are queried')
    .option('--model <path>', 'the reference: Hugging Face folder, .gguf file, or the embedded model', TINY_MODEL_ID)
    .option('--hotkey-uri <uri>', 'validator key as a keyring URI, e.g. //Alice (development)')
    .option('--wallet.path <dir>', 'Bittensor wallets folder', '~/.bittensor/wallets')
    .option('--wallet.name <name>', 'wallet name', 'default')
    .option('--wallet.hotkey <name>', 'hotkey name', 'default')
    .option('--rounds <n>', 'rounds of challenges', '1')
    .option('--seed <n>', 'challenge seed (same seed, same challenges)', '0')
    .option('--concurrency <n>', 'miners queried at once', '4')
    .option('--challenges <n>', 'challenges per round (default 6)')
    .option('--timeout-ms <n>', 'longest one answer may take', '60000')
    .option('--max-ttft-ms <n>', 'time to first token above this costs speed (default 12000)')
    .option('--max-gap-ms <n>', 'a gap between frames this long costs speed (default 1000, SN1)')
    .option('--min-tokens-per-s <n>', 'decode speed below this costs speed (default 0: not judged)')
    .option('--json <file>', 'write {round, model, miners, weights} here after each round')
    .option('--evidence <dir>', 'save every exchange (signed frames, arrival times) with its verdict here')
    .addOption(adapterOption)
    .option('--no-autotune', 'use the static decode matvec variants for the reference model: no timing of candidates at load')
    .action((flags: ValidateFlags) => validateCommand(flags));

  program
    .command('verify')
    .description('re-check a saved exchange offline: signatures, transcript digest, recomputation and every check')
    .requiredOption('--transcript <file>', 'an evidence file written by validate --evidence')
    .option('--model <path>', 'the reference: Hugging Face folder, .gguf file, or the embedded model', TINY_MODEL_ID)
    .addOption(adapterOption)
    .option('--no-autotune', 'use the static decode matvec variants for the reference model: no timing of candidates at load')
    .action((flags: VerifyFlags) => verifyCommand(flags));
}

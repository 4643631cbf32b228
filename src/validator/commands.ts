// `webgpu-miner ping` and `webgpu-miner query`: the validator client from the command line.
// Kept apart from cli.ts so they can be run (and tested) without the CLI's process handling.
import type { Command } from 'commander';
import type { Writable } from 'node:stream';
import { OptionError } from '../errors.ts';
import { loadSigner } from '../wire/wallet.ts';
import { connectMiner, type MinerClient } from './client.ts';

export interface ConnectFlags {
  url: string;
  miner?: string;
  hotkeyUri?: string;
  'wallet.path'?: string;
  'wallet.name'?: string;
  'wallet.hotkey'?: string;
  timeoutMs?: string;
}

export interface PingFlags extends ConnectFlags {
  count?: string;
}

export interface QueryFlags extends ConnectFlags {
  maxTokens?: string;
  seed?: string;
  logprobs?: string;
  temperature?: string;
  topP?: string;
  topK?: string;
  stop?: string[];
  chat?: boolean;
  system?: string;
  json?: boolean;
}

const collect = (value: string, previous: string[] = []) => [...previous, value];

/** The flags ping and query share: where the miner is and which key signs. */
export function addConnectOptions(command: Command): Command {
  return command
    .requiredOption('--url <url>', "the miner's axon: ws://127.0.0.1:8091 (protocol v1) or http://127.0.0.1:8091 (its OpenAI-compatible face)")
    .option('--miner <hotkey>', "the miner's ss58 hotkey (default: read from its /health, then held to)")
    .option('--hotkey-uri <uri>', 'validator key as a keyring URI, e.g. //Alice (development)')
    .option('--wallet.path <dir>', 'Bittensor wallets folder', '~/.bittensor/wallets')
    .option('--wallet.name <name>', 'wallet name', 'default')
    .option('--wallet.hotkey <name>', 'hotkey name', 'default')
    .option('--timeout-ms <n>', 'connect and answer timeout', '10000');
}

export function addQueryOptions(command: Command): Command {
  return addConnectOptions(command)
    .option('--max-tokens <n>', 'completion tokens at most', '64')
    .option('--seed <n>', 'sampler seed')
    .option('--logprobs <k>', 'alternatives per token with their logprobs (0..20)')
    .option('--temperature <t>', 'sampling temperature (0 = greedy)')
    .option('--top-p <p>', 'nucleus sampling')
    .option('--top-k <k>', 'top-k sampling')
    .option('--stop <text>', 'stop string (repeatable)', collect, [])
    .option('--chat', 'send the prompt as a user message (the model renders its chat template)', false)
    .option('--system <text>', 'system message (implies --chat)')
    .option('--json', 'print the verified result as JSON instead of streaming text', false);
}

function int(flag: string, value: string | undefined, min: number, max = Number.MAX_SAFE_INTEGER): number | undefined {
  if (value === undefined) return undefined;
  const n = /^-?\d+$/.test(value.trim()) ? Number(value) : NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) throw new OptionError(`--${flag} must be an integer in [${min}, ${max}] (got ${value})`);
  return n;
}

function num(flag: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n)) throw new OptionError(`--${flag} must be a number (got ${value})`);
  return n;
}

async function connect(flags: ConnectFlags): Promise<MinerClient> {
  const signer = await loadSigner({
    hotkeyUri: flags.hotkeyUri,
    wallet: { path: flags['wallet.path'], name: flags['wallet.name'], hotkey: flags['wallet.hotkey'] },
  });
  const timeoutMs = int('timeout-ms', flags.timeoutMs ?? '10000', 1);
  return connectMiner({ url: flags.url, signer, minerHotkey: flags.miner, connectTimeoutMs: timeoutMs, requestTimeoutMs: timeoutMs });
}

const ms = (x: number) => `${x.toFixed(x < 10 ? 2 : 1)} ms`;

export async function pingCommand(flags: PingFlags, out: Writable = process.stdout): Promise<void> {
  const count = int('count', flags.count ?? '1', 1, 1000)!;
  const client = await connect(flags);
  try {
    const latencies: number[] = [];
    let pong;
    for (let i = 0; i < count; i++) {
      const r = await client.ping();
      latencies.push(r.latencyMs);
      pong = r.pong;
    }
    const p = pong!;
    const line = (label: string, value: string) => out.write(`${label.padEnd(10)}${value}\n`);
    line('miner', `${client.minerHotkey}  (signature OK${flags.miner ? '' : ', hotkey from /health'})`);
    line('validator', client.hotkey);
    line('model', `${p.model_id}  weights sha256 ${p.weights_digest}`);
    line('adapter', `${p.adapter} (${p.backend})`);
    line('queue', String(p.queue_depth));
    line('version', `${p.version} (protocol ${p.protocol})`);
    const avg = latencies.reduce((a, b) => a + b, 0) / latencies.length;
    line('latency', count === 1 ? ms(avg) : `min ${ms(Math.min(...latencies))} / avg ${ms(avg)} / max ${ms(Math.max(...latencies))} over ${count}`);
  } finally {
    await client.close();
  }
}

export async function queryCommand(prompt: string, flags: QueryFlags, out: Writable = process.stdout, err: Writable = process.stderr): Promise<void> {
  const chat = flags.chat === true || flags.system !== undefined;
  const params = {
    ...(chat
      ? { messages: [...(flags.system !== undefined ? [{ role: 'system', content: flags.system }] : []), { role: 'user', content: prompt }] }
      : { prompt }),
    maxTokens: int('max-tokens', flags.maxTokens ?? '64', 1)!,
    seed: int('seed', flags.seed, Number.MIN_SAFE_INTEGER),
    logprobs: int('logprobs', flags.logprobs, 0, 20),
    temperature: num('temperature', flags.temperature),
    topP: num('top-p', flags.topP),
    topK: int('top-k', flags.topK, 0),
    stop: flags.stop && flags.stop.length > 0 ? flags.stop : undefined,
  };
  for (const key of Object.keys(params) as (keyof typeof params)[]) if (params[key] === undefined) delete params[key];
  const client = await connect(flags);
  try {
    const stream = client.generate(params);
    const onSigint = () => stream.cancel();
    process.once('SIGINT', onSigint);
    try {
      if (!flags.json) for await (const token of stream) out.write(token.text);
      const result = await stream.result;
      if (flags.json) {
        out.write(JSON.stringify({ miner: client.minerHotkey, validator: client.hotkey, ...result }, null, 2) + '\n');
        return;
      }
      out.write('\n');
      const line = (label: string, value: string) => err.write(`${label.padEnd(11)}${value}\n`);
      line('finish', `${result.finishReason} (${result.usage.completionTokens} tokens, prompt ${result.usage.promptTokens})`);
      const http = client.transport === 'http'; // the HTTP face reports no timing of its own
      line('ttft', `${ms(result.measured.ttftMs)}${http ? '' : ` (miner reports ${ms(result.minerTiming.ttftMs)})`}`);
      line('speed', `${result.measured.tokensPerS.toFixed(1)} tokens/s${http ? '' : ` (miner reports ${result.minerTiming.tokensPerS.toFixed(1)})`}`);
      line('transcript', `sha256 ${result.transcriptSha256} verified`);
      line('signatures', http ? `stream signature of ${client.minerHotkey} verified` : `${result.framesVerified} frames from ${client.minerHotkey} verified`);
    } finally {
      process.off('SIGINT', onSigint);
    }
  } finally {
    await client.close();
  }
}

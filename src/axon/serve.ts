// Everything `webgpu-miner serve` starts around a TextGenerator: the miner's key, the metagraph
// (watched), the policy, the axon server; plus the command-line flags that configure them. The CLI
// loads the model and calls `serve(generator, parseServeOptions(flags))`.
import type { Command } from 'commander';
import { pino, type Logger } from 'pino';
import { OptionError } from '../errors.ts';
import type { TextGenerator } from '../engine/types.ts';
import type { Gpu } from '../gpu/device.ts';
import { MAX_CRYPTO_WORKERS } from '../wire/crypto-pool.ts';
import { MetagraphWatcher } from './policy.ts';
import { parseMetagraph, type Metagraph } from '../wire/metagraph.ts';
import { resolveLimits, type AxonLimits } from './limits.ts';
import { AxonServer } from './server.ts';
import { signerFromUri, type Signer } from '../wire/signing.ts';
import { loadSigner, type WalletLocation } from '../wire/wallet.ts';

export interface ServeOptions {
  /** Default 8091. */
  port?: number;
  /** Default 127.0.0.1; 0.0.0.0 to serve the network. */
  host?: string;
  /** A metagraph JSON file (reloaded on change), or a metagraph already in memory. */
  metagraph?: string | Metagraph;
  /** How often the metagraph file is polled for changes. Default 2000 ms. */
  metagraphPollMs?: number;
  minStake?: number;
  requirePermit?: boolean;
  allow?: string[];
  deny?: string[];
  /** The miner key: a keyring URI (development) ... */
  hotkeyUri?: string;
  /** ... else a Bittensor wallet hotkey. */
  wallet?: WalletLocation;
  /** ... or a signer already loaded (takes precedence). */
  signer?: Signer;
  limits?: Partial<AxonLimits>;
  ratePerSecond?: number;
  rateBurst?: number;
  maxConcurrentPerHotkey?: number;
  /** Generations per hotkey that wait for a slot beyond maxConcurrentPerHotkey (then RATE_LIMITED). Default 16. */
  maxQueuedPerHotkey?: number;
  replayCacheSize?: number;
  /** Serve /metrics on this address (and metricsPort) instead of the axon's port. */
  metricsHost?: string;
  /** Default: the axon's port + 1. */
  metricsPort?: number;
  /** Worker threads for sr25519 verification and response signing; 0 = the main thread. Default min(4, max(1, cores - 1)). */
  cryptoWorkers?: number;
  logger?: Logger;
  /** pino level when no logger is given. Default info. */
  logLevel?: string;
  /** Export Node process metrics on /metrics. Default true. */
  processMetrics?: boolean;
}

export interface ServeHandle {
  server: AxonServer;
  port: number;
  host: string;
  /** ws://host:port (protocol v1) */
  url: string;
  /** http://host:port (the OpenAI-compatible face, on the same port) */
  httpUrl: string;
  /** The miner's hotkey (ss58). */
  hotkey: string;
  /** Stop the axon (graceful: finish or cancel in-flight work within graceMs), the watcher and the generator. */
  close(graceMs?: number): Promise<void>;
}

/**
 * Serve until SIGINT or SIGTERM, then finish or cancel in-flight work within `graceMs`. A lost GPU
 * device ends it too: the axon closes at once and the loss is thrown, since nothing can run on the
 * device again in this process and a supervisor should start a new one (README: Serving validators).
 */
export async function serveUntilStopped(handle: ServeHandle, gpu: Pick<Gpu, 'lost'>, log: (line: string) => void, graceMs = 10_000): Promise<void> {
  let stop!: () => void;
  const signalled = new Promise<undefined>((resolve) => (stop = () => resolve(undefined)));
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  const lost = await Promise.race([signalled, gpu.lost]);
  process.off('SIGINT', stop);
  process.off('SIGTERM', stop);
  log(lost ? `${lost.message}\nshutting down` : `shutting down: finishing in-flight requests (${graceMs / 1000} s at most)`);
  await handle.close(lost ? 0 : graceMs);
  if (lost) throw lost;
}

/** Start the axon in front of `generator`. */
export async function serve(generator: TextGenerator, options: ServeOptions = {}): Promise<ServeHandle> {
  const logger = options.logger ?? pino({ name: 'axon', level: options.logLevel ?? 'info' });
  const signer = options.signer ?? (await loadSigner({ hotkeyUri: options.hotkeyUri, wallet: options.wallet }));
  let watcher: MetagraphWatcher | undefined;
  let metagraph: Metagraph | (() => Metagraph | undefined) | undefined;
  if (typeof options.metagraph === 'string') {
    const w = new MetagraphWatcher(options.metagraph, {
      intervalMs: options.metagraphPollMs,
      onReload: (m) => logger.info({ event: 'metagraph', netuid: m.netuid, block: m.block, neurons: m.neurons.size }, 'metagraph reloaded'),
      onError: (err) => logger.warn({ event: 'metagraph', err: err.message }, 'metagraph file changed but does not parse; keeping the previous one'),
    });
    watcher = w;
    metagraph = () => w.current;
  } else {
    metagraph = options.metagraph;
  }
  if (metagraph === undefined && (options.allow ?? []).length === 0) {
    watcher?.close();
    throw new OptionError('no validator could be admitted: pass --metagraph FILE (and/or --allow HOTKEY)');
  }
  let server: AxonServer;
  try {
    server = new AxonServer({
      generator,
      signer,
      logger,
      processMetrics: options.processMetrics ?? true,
      limits: options.limits,
      cryptoWorkers: options.cryptoWorkers,
      metrics: options.metricsHost === undefined ? undefined : { host: options.metricsHost, port: options.metricsPort ?? (options.port ?? 8091) + 1 },
      policy: {
        metagraph,
        minStake: options.minStake,
        requirePermit: options.requirePermit,
        allow: options.allow,
        deny: options.deny,
        ratePerSecond: options.ratePerSecond,
        rateBurst: options.rateBurst,
        maxConcurrentPerHotkey: options.maxConcurrentPerHotkey,
        maxQueuedPerHotkey: options.maxQueuedPerHotkey ?? 16,
        replayCacheSize: options.replayCacheSize,
      },
    });
  } catch (err) {
    watcher?.close();
    throw err;
  }
  const host = options.host ?? '127.0.0.1';
  let port: number;
  try {
    ({ port } = await server.listen(options.port ?? 8091, host));
  } catch (err) {
    watcher?.close();
    await server.close(0);
    throw err;
  }
  const urlHost = host.includes(':') ? `[${host}]` : host === '0.0.0.0' ? '127.0.0.1' : host;
  return {
    server,
    port,
    host,
    url: `ws://${urlHost}:${port}`,
    httpUrl: `http://${urlHost}:${port}`,
    hotkey: signer.address,
    async close(graceMs = 5000) {
      await server.close(graceMs);
      watcher?.close();
      await generator.close(0);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Development setup for `npm start`

export interface DevelopmentSetup {
  options: ServeOptions;
  /** The validator URI the development metagraph admits. */
  validatorUri: string;
  validatorHotkey: string;
}

/**
 * Options for a local development miner: a dev key (//Miner by default), 127.0.0.1, and an
 * in-memory metagraph in which `validatorUri` (//Alice by default) is a permitted validator.
 */
export async function developmentServeOptions(setup: { minerUri?: string; validatorUri?: string; port?: number } = {}): Promise<DevelopmentSetup> {
  const validatorUri = setup.validatorUri ?? '//Alice';
  const minerUri = setup.minerUri ?? '//Miner';
  const validator = await signerFromUri(validatorUri);
  const miner = await signerFromUri(minerUri);
  const metagraph = parseMetagraph(
    {
      netuid: 0,
      block: 0,
      neurons: [
        { uid: 0, hotkey: miner.address, stake: 0, validator_permit: false },
        { uid: 1, hotkey: validator.address, stake: 1000, validator_permit: true },
      ],
    },
    'development metagraph',
  );
  return {
    options: { host: '127.0.0.1', port: setup.port ?? 8091, signer: miner, metagraph },
    validatorUri,
    validatorHotkey: validator.address,
  };
}

/** The exact command a developer can paste to query a running miner. */
export function queryCommandHint(handle: Pick<ServeHandle, 'url' | 'hotkey'>, validatorUri = '//Alice'): string {
  return `npx webgpu-miner query --url ${handle.url} --miner ${handle.hotkey} --hotkey-uri ${validatorUri} --max-tokens 32 --seed 1 "Hello"`;
}

// ---------------------------------------------------------------------------------------------
// Command-line flags

const collect = (value: string, previous: string[] = []) => [...previous, ...value.split(',').map((s) => s.trim()).filter(Boolean)];

/** Register serve's flags on a commander command (the model flags are the CLI's own). */
export function addServeOptions(command: Command): Command {
  return command
    .option('--port <n>', 'port for the WebSocket, the OpenAI-compatible HTTP face, /metrics and /health', '8091')
    .option('--host <addr>', 'address to bind (0.0.0.0 to serve the network)', '127.0.0.1')
    .option('--metagraph <file>', 'metagraph JSON {netuid, block, neurons:[{uid, hotkey, stake, validator_permit}]}, reloaded on change')
    .option('--min-stake <n>', 'minimum stake of a metagraph validator', '0')
    .option('--require-permit', 'admit only validators with a validator permit', false)
    .option('--allow <hotkeys>', 'hotkeys admitted without metagraph, stake or permit (repeat or comma-separate)', collect, [])
    .option('--deny <hotkeys>', 'hotkeys always refused (repeat or comma-separate)', collect, [])
    .option('--wallet.path <dir>', 'Bittensor wallets folder', '~/.bittensor/wallets')
    .option('--wallet.name <name>', 'wallet name', 'default')
    .option('--wallet.hotkey <name>', 'hotkey name', 'default')
    .option('--hotkey-uri <uri>', 'development key instead of a wallet, e.g. //Miner')
    .option('--max-connections <n>', 'WebSocket connections in all')
    .option('--max-connections-per-ip <n>', 'WebSocket connections per address')
    .option('--max-frame-bytes <n>', 'largest request frame')
    .option('--max-tokens <n>', 'largest max_tokens a request may ask for')
    .option('--request-timeout-ms <n>', 'longest a generation may run (also widens the timestamp window)')
    .option('--idle-timeout-ms <n>', 'close connections idle this long')
    .option('--handshake-timeout-ms <n>', 'time allowed for the WebSocket upgrade')
    .option('--max-buffered-bytes <n>', 'unsent bytes per socket before generation pauses')
    .option('--slow-reader-timeout-ms <n>', 'drop a request whose reader stays behind this long')
    .option('--rate-limit <n>', 'requests per second per validator hotkey', '10')
    .option('--rate-burst <n>', 'burst of requests per validator hotkey', '20')
    .option('--max-concurrent <n>', 'generations in flight per validator hotkey', '8')
    .option('--max-queued <n>', 'generations per validator hotkey that wait for a slot beyond --max-concurrent (then 429 / RATE_LIMITED)', '16')
    .option('--metrics-host <addr>', 'serve /metrics on this address instead of the axon port (e.g. 127.0.0.1 while --host is 0.0.0.0)')
    .option('--metrics-port <n>', 'port for /metrics with --metrics-host (default: --port + 1)')
    .option('--crypto-workers <n>', 'worker threads that verify request signatures and sign responses (0: on the main thread; default min(4, cores - 1))')
    .option('--log-level <level>', 'pino log level', 'info');
}

function integer(flag: string, value: unknown, min = 1): number | undefined {
  if (value === undefined) return undefined;
  const n = typeof value === 'number' ? value : /^\s*\d+\s*$/.test(String(value)) ? Number(value) : NaN;
  if (!Number.isSafeInteger(n) || n < min) throw new OptionError(`--${flag} must be an integer >= ${min} (got ${String(value)})`);
  return n;
}

function positive(flag: string, value: unknown, allowZero: boolean): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (String(value).trim() === '' || !Number.isFinite(n) || n < 0 || (!allowZero && n === 0)) {
    throw new OptionError(`--${flag} must be a ${allowZero ? 'non-negative' : 'positive'} number (got ${String(value)})`);
  }
  return n;
}

const LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

/** Turn commander's parsed flags (as addServeOptions registers them) into ServeOptions. */
export function parseServeOptions(flags: Record<string, unknown>): ServeOptions {
  const limits: Partial<AxonLimits> = {
    maxConnections: integer('max-connections', flags.maxConnections),
    maxConnectionsPerIp: integer('max-connections-per-ip', flags.maxConnectionsPerIp),
    maxFrameBytes: integer('max-frame-bytes', flags.maxFrameBytes),
    maxTokens: integer('max-tokens', flags.maxTokens),
    requestTimeoutMs: integer('request-timeout-ms', flags.requestTimeoutMs),
    idleTimeoutMs: integer('idle-timeout-ms', flags.idleTimeoutMs),
    handshakeTimeoutMs: integer('handshake-timeout-ms', flags.handshakeTimeoutMs),
    maxBufferedBytes: integer('max-buffered-bytes', flags.maxBufferedBytes),
    slowReaderTimeoutMs: integer('slow-reader-timeout-ms', flags.slowReaderTimeoutMs),
  };
  resolveLimits(limits); // fail now, with the flag's value in the message
  const logLevel = String(flags.logLevel ?? 'info');
  if (!LEVELS.includes(logLevel)) throw new OptionError(`--log-level must be one of ${LEVELS.join(', ')}`);
  const port = integer('port', flags.port ?? '8091', 0)!;
  if (port > 65535) throw new OptionError(`--port must be at most 65535 (got ${port})`);
  const options: ServeOptions = {
    port,
    host: String(flags.host ?? '127.0.0.1'),
    metagraph: flags.metagraph === undefined ? undefined : String(flags.metagraph),
    minStake: positive('min-stake', flags.minStake ?? '0', true),
    requirePermit: flags.requirePermit === true,
    allow: (flags.allow as string[] | undefined) ?? [],
    deny: (flags.deny as string[] | undefined) ?? [],
    hotkeyUri: flags.hotkeyUri === undefined ? undefined : String(flags.hotkeyUri),
    wallet: {
      path: String(flags['wallet.path'] ?? '~/.bittensor/wallets'),
      name: String(flags['wallet.name'] ?? 'default'),
      hotkey: String(flags['wallet.hotkey'] ?? 'default'),
    },
    limits: Object.fromEntries(Object.entries(limits).filter(([, v]) => v !== undefined)),
    ratePerSecond: positive('rate-limit', flags.rateLimit ?? '10', false),
    rateBurst: integer('rate-burst', flags.rateBurst ?? '20'),
    maxConcurrentPerHotkey: integer('max-concurrent', flags.maxConcurrent ?? '8'),
    maxQueuedPerHotkey: integer('max-queued', flags.maxQueued ?? '16', 0),
    metricsHost: flags.metricsHost === undefined ? undefined : String(flags.metricsHost),
    metricsPort: integer('metrics-port', flags.metricsPort, 0),
    cryptoWorkers: integer('crypto-workers', flags.cryptoWorkers, 0),
    logLevel,
  };
  if (options.metricsPort !== undefined && options.metricsPort > 65535) throw new OptionError(`--metrics-port must be at most 65535 (got ${options.metricsPort})`);
  if (options.cryptoWorkers !== undefined && options.cryptoWorkers > MAX_CRYPTO_WORKERS) {
    throw new OptionError(`--crypto-workers must be at most ${MAX_CRYPTO_WORKERS} (got ${options.cryptoWorkers})`);
  }
  return options;
}

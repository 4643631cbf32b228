// The axon's Prometheus metrics (GET /metrics): gauges read at scrape time from the engine, the
// connections, the policy and the crypto workers, and the counters and histograms both transports feed.
import { Counter, Gauge, Histogram, collectDefaultMetrics, type Registry } from 'prom-client';
import type { EngineInfo } from '../engine/types.ts';
import type { CryptoPoolStats } from '../wire/crypto-pool.ts';
import type { Policy } from './policy.ts';

export interface AxonMetrics {
  requests: Counter<'op' | 'outcome'>;
  tokens: Counter;
  promptTokens: Counter<'cache'>;
  ttft: Histogram;
  tokensPerS: Histogram;
}

export interface MetricSources {
  engine(): EngineInfo;
  connections(): number;
  httpConnections(): number;
  activeRequests(): number;
  policy: Policy;
  crypto(): CryptoPoolStats;
}

/** Register the axon's metrics on `registry` (and Node's process metrics when `processMetrics`). */
export function createAxonMetrics(registry: Registry, processMetrics: boolean, sources: MetricSources): AxonMetrics {
  const registers = [registry];
  if (processMetrics) collectDefaultMetrics({ register: registry });
  const gauge = (name: string, help: string, value: () => number) => {
    const g: Gauge = new Gauge({
      name,
      help,
      registers,
      collect: () => {
        try {
          g.set(value());
        } catch {
          // An engine whose info() fails leaves the gauge at its last value; /health shows the rest.
        }
      },
    });
  };
  gauge('engine_queue_depth', 'Requests waiting for the engine', () => sources.engine().queueDepth);
  gauge('engine_active_sequences', 'Sequences being generated', () => sources.engine().activeSequences);
  gauge('engine_kv_blocks_used', 'KV-cache blocks held by running sequences', () => sources.engine().kvBlocksUsed);
  gauge('engine_kv_blocks_total', 'KV-cache blocks in the pool', () => sources.engine().kvBlocksTotal);
  gauge('engine_kv_blocks_shared', 'KV-cache blocks held by two or more sequences (a shared prompt prefix)', () => sources.engine().kvBlocksShared ?? 0);
  gauge('engine_kv_blocks_cached', 'KV-cache blocks held by no sequence, keeping a cached prefix until evicted', () => sources.engine().kvBlocksCached ?? 0);
  gauge('engine_gpu_lost', '1 once the GPU device is lost (nothing runs again until the miner restarts), else 0', () => (sources.engine().gpuLost ? 1 : 0));
  gauge('axon_connections', 'Open WebSocket connections', () => sources.connections());
  gauge('axon_http_connections', 'Open sockets of the OpenAI-compatible HTTP face', () => sources.httpConnections());
  gauge('axon_active_requests', 'Generations in flight', () => sources.activeRequests());
  gauge('axon_replay_cache_entries', '(signed_by, id) pairs remembered', () => sources.policy.replay.size);
  gauge('axon_metagraph_neurons', 'Neurons in the metagraph in force', () => sources.policy.metagraph?.neurons.size ?? 0);
  gauge('axon_metagraph_block', 'Block of the metagraph in force', () => sources.policy.metagraph?.block ?? 0);
  gauge('axon_crypto_verify_queue', 'Signature checks queued or running on the crypto workers', () => sources.crypto().verifying);
  gauge('axon_crypto_sign_queue', 'Response signatures queued or running on the crypto workers', () => sources.crypto().signing);
  gauge('axon_crypto_worker_exits', 'Crypto workers that exited unexpectedly (each was replaced)', () => sources.crypto().workerExits);
  return {
    requests: new Counter({
      name: 'axon_requests_total',
      help: 'Requests by op and outcome (ok, cancelled, disconnected, or the error code)',
      labelNames: ['op', 'outcome'] as const,
      registers,
    }),
    tokens: new Counter({ name: 'axon_tokens_total', help: 'Completion tokens sent', registers }),
    promptTokens: new Counter({
      name: 'axon_prompt_tokens_total',
      help: 'Prompt tokens of finished generations: cache="hit" reused from a cached prefix, "miss" computed',
      labelNames: ['cache'] as const,
      registers,
    }),
    ttft: new Histogram({
      name: 'axon_ttft_seconds',
      help: 'Time from a generate frame to its first token frame',
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    }),
    tokensPerS: new Histogram({
      name: 'axon_tokens_per_second',
      help: 'Completion tokens per second after the first, per request',
      buckets: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000],
      registers,
    }),
  };
}

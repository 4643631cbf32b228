// Miners for the validator tests: model files written here, real axons on loopback with real keys,
// and the cheaters, each a real miner whose generator (or key) is swapped for a dishonest one.
import { mkdirSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { join } from 'node:path';
import { pino } from 'pino';
import { xoroshiro128plus } from 'pure-rand';
import { AxonServer } from '../../src/axon/server.ts';
import { parseMetagraph } from '../../src/wire/metagraph.ts';
import { signedMessage, type Signer } from '../../src/wire/signing.ts';
import type { Engine } from '../../src/engine/engine.ts';
import type { GenerateOptions, GenerateRequest, GeneratedToken, GenerationSummary, TextGenerator } from '../../src/engine/types.ts';
import { TINY_CONFIG, tinyTokenizerFiles, tinyWeights } from '../../models/tiny.ts';
import { writeHfFolder } from './tiny-models.ts';

/**
 * The LM head is scaled up so the random model's next-token distributions are as peaked as a
 * trained model's (a few likely tokens, a long tail): the published rank rules assume that shape.
 */
export const HEAD_SCALE = 8;

/** Write tiny-random-llama's architecture and tokenizer with the weights of `seed` as an HF folder. */
export function writeTinyModel(dir: string, seed: number, dtype: 'F32' | 'F16' = 'F32'): string {
  mkdirSync(dir, { recursive: true });
  const weights = tinyWeights(TINY_CONFIG, seed);
  const head = weights.get('lm_head.weight')!;
  for (let i = 0; i < head.length; i++) head[i] *= HEAD_SCALE;
  const { tokenizer, config } = tinyTokenizerFiles();
  writeHfFolder(dir, { ...TINY_CONFIG }, weights, tokenizer, dtype, { tokenizerConfig: config });
  return dir;
}

type Generate = TextGenerator['generate'];

/** A generator that serves `inner` through `generate` (the cheat), with inner's info and close. */
function wrap(inner: TextGenerator, generate: Generate): TextGenerator {
  return { info: () => inner.info(), close: async () => {}, generate };
}

/** Made-up logprobs: the real tokens, with logprobs (and the alternatives') drawn at random. */
export function madeUpLogprobs(inner: TextGenerator, seed = 7): TextGenerator {
  let rng = xoroshiro128plus(seed);
  const uniform = () => {
    const [v, n] = rng.next();
    rng = n;
    return ((v >>> 0) + 0.5) / 2 ** 32;
  };
  return wrap(inner, async function* (request: GenerateRequest, options?: GenerateOptions) {
    const it = inner.generate(request, options);
    for (;;) {
      const step = await it.next();
      if (step.done) return step.value;
      const t = step.value;
      yield { ...t, logprob: -4 * uniform(), topLogprobs: t.topLogprobs.map((a) => ({ ...a, logprob: -4 * uniform() })) };
    }
  });
}

/** Replays one completion, made once for another prompt, whatever it is asked (prompt count made to fit). */
export function replaying(inner: Engine, cachedPrompt = 'Once upon a time there was a miner'): TextGenerator {
  let cached: Promise<GeneratedToken[]> | undefined;
  const complete = async () => {
    const tokens: GeneratedToken[] = [];
    for await (const t of inner.generate({ prompt: cachedPrompt, maxTokens: 100, temperature: 0, logprobs: 20 })) tokens.push(t);
    return tokens;
  };
  return wrap(inner, async function* (request: GenerateRequest) {
    cached ??= complete();
    const out = (await cached).slice(0, request.maxTokens);
    for (const t of out) yield { ...t, topLogprobs: t.topLogprobs.slice(0, request.logprobs ?? 0) };
    const finishReason = out.length === request.maxTokens ? 'length' : 'stop';
    return { finishReason, promptTokens: inner.encodePrompt(request).length, completionTokens: out.length, ttftMs: 0, totalMs: 0, tokensPerS: 0 } satisfies GenerationSummary;
  });
}

/** Stops after `keep` tokens, claiming EOS. */
export function stoppingEarly(inner: Engine, keep = 3): TextGenerator {
  return wrap(inner, async function* (request: GenerateRequest, options?: GenerateOptions) {
    const it = inner.generate(request, options);
    let n = 0;
    for (;;) {
      const step = await it.next();
      if (step.done) return step.value;
      yield step.value;
      if (++n === keep && request.maxTokens > keep) {
        await it.return(undefined as never);
        return { finishReason: 'stop', promptTokens: inner.encodePrompt(request).length, completionTokens: n, ttftMs: 0, totalMs: 0, tokensPerS: 0 };
      }
    }
  });
}

/** Ignores max_tokens: generates half as many again, plus 4. */
export function ignoringMaxTokens(inner: TextGenerator): TextGenerator {
  return wrap(inner, (request, options) => inner.generate({ ...request, maxTokens: Math.ceil(request.maxTokens * 1.5) + 4 }, options));
}

/** Buffers the whole completion and sends it at the end. */
export function buffering(inner: TextGenerator): TextGenerator {
  return wrap(inner, async function* (request: GenerateRequest, options?: GenerateOptions) {
    const it = inner.generate(request, options);
    const tokens: GeneratedToken[] = [];
    for (;;) {
      const step = await it.next();
      if (step.done) {
        for (const t of tokens) yield t;
        return step.value;
      }
      tokens.push(step.value);
    }
  });
}

export interface TestMiner {
  uid: number;
  name: string;
  /** The hotkey the metagraph lists for it. */
  hotkey: string;
  server: { close(graceMs?: number): Promise<unknown> };
  port: number;
  /** How the validator reaches it (default ws). */
  protocol?: 'ws' | 'http';
}

/** A real axon on loopback serving `generator`, signing with `signer`, admitting `validator`. */
export async function startMiner(name: string, uid: number, generator: TextGenerator, signer: Signer, validator: Signer, listedHotkey = signer.address): Promise<TestMiner> {
  const server = new AxonServer({
    generator,
    signer,
    logger: pino({ level: 'silent' }),
    cryptoWorkers: 0,
    policy: {
      metagraph: parseMetagraph({ netuid: 1, block: 1, neurons: [{ uid: 0, hotkey: validator.address, stake: 1000, validator_permit: true }] }),
      ratePerSecond: 1000,
      rateBurst: 1000,
      maxConcurrentPerHotkey: 16,
      notBefore: 0,
    },
  });
  const { port } = await server.listen(0, '127.0.0.1');
  return { uid, name, hotkey: listedHotkey, server, port };
}

/** The metagraph the validator reads: the validator (no axon) and every miner at its loopback port. */
export function validatorMetagraph(validator: Signer, miners: TestMiner[]) {
  return {
    netuid: 1,
    block: 1,
    neurons: [
      { uid: 0, hotkey: validator.address, stake: 1000, validator_permit: true },
      ...miners.map((m) => ({ uid: m.uid, hotkey: m.hotkey, stake: 0, validator_permit: false, axon: { ip: '127.0.0.1', port: m.port, protocol: m.protocol ?? 'ws' } })),
    ],
  };
}

export const modelDir = (root: string, name: string) => join(root, name);

/**
 * What a proxy does to each SSE event of a stream: the event's JSON (or '[DONE]'), every byte the
 * proxy has sent before it, and the events to send instead (none: drop it). One per stream.
 */
export type SseRewrite = (data: unknown, sentBefore: Buffer) => unknown[];

/**
 * A real HTTP server in front of a miner's HTTP face: requests go through as they are (body and
 * Epistula headers), responses come back event by event, each passed through `rewrite` as it
 * arrives (so the stream stays a stream). Used to make a plain OpenAI server (the miner's signature
 * chunk dropped) and a miner whose stream is signed by another key.
 */
export async function startSseProxy(name: string, uid: number, targetPort: number, listedHotkey: string, makeRewrite: () => SseRewrite): Promise<TestMiner> {
  const readBody = async (req: IncomingMessage) => {
    const parts: Buffer[] = [];
    for await (const part of req) parts.push(part as Buffer);
    return Buffer.concat(parts);
  };
  const server: Server = createServer(async (req, res) => {
    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries(req.headers)) if (typeof v === 'string' && (k.startsWith('epistula-') || k === 'content-type' || k === 'accept')) headers[k] = v;
    const upstream = await fetch(`http://127.0.0.1:${targetPort}${req.url}`, { method: req.method, headers, body: req.method === 'POST' ? await readBody(req) : undefined });
    const type = upstream.headers.get('content-type') ?? '';
    res.writeHead(upstream.status, { 'Content-Type': type });
    if (!type.startsWith('text/event-stream') || !upstream.body) {
      res.end(Buffer.from(await upstream.arrayBuffer()));
      return;
    }
    res.flushHeaders();
    const rewrite = makeRewrite();
    const sent: Buffer[] = [];
    let pending = '';
    for await (const bytes of upstream.body as unknown as AsyncIterable<Uint8Array>) {
      pending += Buffer.from(bytes).toString('utf8');
      for (let end = pending.indexOf('\n\n'); end >= 0; end = pending.indexOf('\n\n')) {
        const text = pending.slice(6, end); // after 'data: '
        pending = pending.slice(end + 2);
        for (const out of rewrite(text === '[DONE]' ? text : JSON.parse(text), Buffer.concat(sent))) {
          const event = Buffer.from(`data: ${typeof out === 'string' ? out : JSON.stringify(out)}\n\n`, 'utf8');
          sent.push(event);
          res.write(event);
        }
      }
    }
    res.end();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  const close = () => new Promise<void>((resolve) => {
    server.closeAllConnections();
    server.close(() => resolve());
  });
  return { uid, name, hotkey: listedHotkey, server: { close }, port, protocol: 'http' };
}

const isSignatureChunk = (data: unknown): data is { epistula: Record<string, unknown> } => typeof data === 'object' && data !== null && 'epistula' in data;

/** A plain OpenAI server: the miner's stream without its signature chunk. */
export const dropSignature = (): SseRewrite => (data) => (isSignatureChunk(data) ? [] : [data]);

/**
 * The miner's stream shaped as vLLM's OpenAI server sends it, unsigned: a chat stream opens with a
 * role-only chunk (no token, no logprobs), and finish_reason rides on the chunk of the last token
 * instead of a chunk of its own.
 */
export const vllmShaped = (): SseRewrite => {
  let held: { choices: Array<Record<string, unknown>> } | undefined;
  let opened = false;
  return (data) => {
    if (isSignatureChunk(data)) return [];
    const chunk = data as { object?: string; choices?: Array<Record<string, unknown>> };
    const choice = chunk.choices?.[0];
    if (!choice) {
      // usage, an error, [DONE]: the last token (if still held) goes first.
      const out = held ? [held, data] : [data];
      held = undefined;
      return out;
    }
    const out: unknown[] = [];
    if (!opened && chunk.object === 'chat.completion.chunk') {
      out.push({ ...chunk, choices: [{ index: 0, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }] });
    }
    opened = true;
    if (choice.finish_reason !== null && held) {
      out.push({ ...held, choices: [{ ...held.choices[0], finish_reason: choice.finish_reason }] });
      held = undefined;
      return out;
    }
    if (held) out.push(held);
    held = choice.finish_reason === null ? (chunk as { choices: Array<Record<string, unknown>> }) : undefined;
    if (!held) out.push(data);
    return out;
  };
};

/** The stream's signature chunk signed again, over the same bytes, by `signer` (not the listed hotkey). */
export function resignWith(signer: Signer): () => SseRewrite {
  return () => (data, before) => {
    if (!isSignatureChunk(data)) return [data];
    const e = data.epistula as { uuid: string; timestamp: number; signed_for: string };
    return [{ ...data, epistula: { ...data.epistula, signed_by: signer.address, signature: signer.sign(signedMessage(before, e.uuid, e.timestamp, e.signed_for)) } }];
  };
}

// Miners for the validator tests: model files written here, real axons on loopback with real keys,
// and the cheaters, each a real miner whose generator (or key) is swapped for a dishonest one.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { xoroshiro128plus } from 'pure-rand';
import { AxonServer } from '../../src/axon/server.ts';
import { parseMetagraph } from '../../src/wire/metagraph.ts';
import type { Signer } from '../../src/wire/signing.ts';
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
  server: AxonServer;
  port: number;
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
      ...miners.map((m) => ({ uid: m.uid, hotkey: m.hotkey, stake: 0, validator_permit: false, axon: { ip: '127.0.0.1', port: m.port, protocol: 'ws' } })),
    ],
  };
}

export const modelDir = (root: string, name: string) => join(root, name);

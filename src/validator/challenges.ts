// The challenges a validator sends: prompts from a built-in generator, drawn from a seed, so that
// every miner gets the same requests in a round and a round can be replayed from (seed, round).
// A round mixes what real validators send: greedy and sampled requests (SN1 samples at temperature
// 0.7, top_p 0.95, top_k 50), short and long completions (two of six are long: the "not streamed"
// rule judges only more than 60 tokens), plain prompts and chat messages, and some requests with 10
// logprob alternatives per token (SN1 asks for exactly 10). No stop strings: a miner that ends with
// finish_reason "stop" then claims EOS, which the reference can judge.
import { xoroshiro128plus, type RandomGenerator } from 'pure-rand';
import { OptionError } from '../errors.ts';

export interface Challenge {
  /** Stable name within the round, e.g. "r0-c3". */
  name: string;
  prompt?: string;
  messages?: Array<{ role: string; content: string }>;
  maxTokens: number;
  temperature: number;
  topP?: number;
  topK?: number;
  /** Sampler seed sent to the miner (so an honest miner's sampled answer is reproducible by it). */
  seed: number;
  /** Alternatives per token asked for (0: none). */
  logprobs: number;
}

const SUBJECTS = ['the ocean', 'a lighthouse', 'graph theory', 'bread', 'the moon', 'a violin', 'glaciers', 'chess', 'a small town', 'volcanoes', 'honeybees', 'the printing press', 'rain', 'an old map', 'prime numbers', 'the desert'];
const TASKS = [
  'Write a short story about {s}.',
  'Explain {s} to a child in a few sentences.',
  'List three surprising facts about {s}.',
  'Describe {s} in the style of a weather report.',
  'Write a haiku about {s}, then explain it.',
  'What would a historian say about {s}?',
  'Compare {s} with {t} in one paragraph.',
  'Give a recipe that somehow involves {s}.',
];
const SYSTEMS = ['You are a helpful assistant.', 'You answer briefly and precisely.', 'You are a storyteller.'];

/** Shapes of a round, in order; a round of n challenges takes the first n (cycling). */
const SHAPES: Array<Pick<Challenge, 'maxTokens' | 'temperature' | 'topP' | 'topK' | 'logprobs'> & { chat: boolean }> = [
  { maxTokens: 80, temperature: 0, logprobs: 0, chat: false },
  { maxTokens: 24, temperature: 0.7, topP: 0.95, topK: 50, logprobs: 10, chat: true },
  { maxTokens: 12, temperature: 0, logprobs: 10, chat: false },
  { maxTokens: 72, temperature: 0.7, topP: 0.95, topK: 50, logprobs: 0, chat: false },
  { maxTokens: 16, temperature: 1, topP: 0.95, topK: 50, logprobs: 5, chat: true },
  { maxTokens: 32, temperature: 0, logprobs: 10, chat: true },
];

export const DEFAULT_CHALLENGES_PER_ROUND = SHAPES.length;

/** Splitmix-style mixing of (seed, round) into one 32-bit generator seed. */
function roundSeed(seed: number, round: number): number {
  let h = (Math.imul(seed | 0, 0x9e3779b1) ^ Math.imul(round + 1, 0x85ebca6b)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x7feb352d) >>> 0;
  return (h ^ (h >>> 15)) | 0;
}

/** The challenges of round `round` under `seed`: the same inputs give the same challenges. */
export function makeChallenges(seed: number, round: number, count = DEFAULT_CHALLENGES_PER_ROUND): Challenge[] {
  if (!Number.isSafeInteger(seed)) throw new OptionError(`seed must be an integer (got ${seed})`);
  if (!Number.isSafeInteger(round) || round < 0) throw new OptionError(`round must be an integer >= 0 (got ${round})`);
  if (!Number.isSafeInteger(count) || count < 1 || count > 64) throw new OptionError(`challenges per round must be an integer in [1, 64] (got ${count})`);
  let rng: RandomGenerator = xoroshiro128plus(roundSeed(seed, round));
  const next = () => {
    const [value, after] = rng.next();
    rng = after;
    return value >>> 0;
  };
  const pick = <T>(list: readonly T[]): T => list[next() % list.length];
  const challenges: Challenge[] = [];
  for (let i = 0; i < count; i++) {
    const shape = SHAPES[i % SHAPES.length];
    const subject = pick(SUBJECTS);
    const other = pick(SUBJECTS.filter((s) => s !== subject));
    const text = pick(TASKS).replace('{s}', subject).replace('{t}', other);
    const { chat, ...sampling } = shape;
    challenges.push({
      name: `r${round}-c${i}`,
      ...(chat ? { messages: [{ role: 'system', content: pick(SYSTEMS) }, { role: 'user', content: text }] } : { prompt: text }),
      ...sampling,
      seed: next() % 2 ** 31,
    });
  }
  return challenges;
}

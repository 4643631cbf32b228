// The generator the axon tests serve: the real engine on the embedded tiny-random-llama, on this
// machine's adapter (the software one in CI). 32 slots so the 32-client load test decodes all of
// its streams in one batched step.
import { Engine } from '../../src/engine/engine.ts';
import type { TextGenerator } from '../../src/engine/types.ts';
import type { Transformer } from '../../models/transformer.ts';

const ENGINE_OPTIONS = { slots: 32, capacity: 256, prefillChunk: 64 };

export async function createTestGenerator(): Promise<TextGenerator> {
  await warmTestShaders();
  return Engine.load(ENGINE_OPTIONS);
}

/**
 * A software adapter compiles each kernel at its first dispatch. With a cold shader cache on a busy
 * machine, an engine's first generation took over two minutes here, past the request timeout some
 * axon tests serve under. So once per test file a throwaway engine generates first (greedy, then
 * sampled with logprobs: every kernel a generation runs) and is closed; the compiled kernels stay in
 * the driver's shader cache, and the engines the tests get start warm (under a second for the same
 * generation). createTestGenerator does it first; a file whose first engine is made inside a test
 * calls it in a beforeAll, so that the hook's timeout, not the test's, bounds it. A generation that
 * fails here is the tests' to report: the engine they load fails the same way.
 */
export function warmTestShaders(): Promise<void> {
  return (shadersWarm ??= warmShaders());
}
let shadersWarm: Promise<void> | undefined;
async function warmShaders(): Promise<void> {
  const engine = await Engine.load(ENGINE_OPTIONS);
  try {
    for (const request of [{ prompt: 'warm', maxTokens: 2 }, { prompt: 'warm', maxTokens: 2, temperature: 0.8, seed: 1, logprobs: 3 }]) {
      for await (const _ of engine.generate(request)) { /* compiled by running */ }
    }
  } catch {
    // Left to the tests (above).
  } finally {
    await engine.close(0);
  }
}

/**
 * Holds the engine's decode steps until release(): while held, every sequence that has its first
 * token (sampled at the end of its prefill) stays active with nothing more produced, so a test can
 * act on a generation that is certainly still running, however slow the machine. restore() puts the
 * model's own decode back (and releases).
 */
export function holdDecode(generator: TextGenerator): { release: () => void; restore: () => void; held: () => number } {
  const model = (generator as Engine).model;
  const decode = model.decode;
  let release!: () => void;
  const gate = new Promise<void>((resolve) => (release = resolve));
  let held = 0;
  model.decode = async (...args: Parameters<typeof decode>) => {
    held++;
    await gate;
    return decode.apply(model, args);
  };
  return {
    release,
    held: () => held,
    restore: () => {
      release();
      delete (model as Partial<typeof model>).decode;
    },
  };
}

/**
 * Run `body` with `watch` called before each of the model's decode steps, with the step's
 * arguments; the model's own decode is put back after.
 */
export async function watchingDecode<T>(model: Transformer, watch: (...args: Parameters<Transformer['decode']>) => void, body: () => Promise<T>): Promise<T> {
  const decode = model.decode;
  model.decode = (...args) => {
    watch(...args);
    return decode.apply(model, args);
  };
  try {
    return await body();
  } finally {
    delete (model as Partial<Transformer>).decode;
  }
}

// The generator the axon tests serve: the real engine on the embedded tiny-random-llama, on this
// machine's adapter (the software one in CI). 32 slots so the 32-client load test decodes all of
// its streams in one batched step.
import { Engine } from '../../src/engine/engine.ts';
import type { TextGenerator } from '../../src/engine/types.ts';
import type { Transformer } from '../../models/transformer.ts';

export async function createTestGenerator(): Promise<TextGenerator> {
  return Engine.load({ slots: 32, capacity: 256, prefillChunk: 64 });
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

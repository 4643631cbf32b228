// The generator the axon tests serve: the real engine on the embedded tiny-random-llama, on this
// machine's adapter (the software one in CI). 32 slots so the 32-client load test decodes all of
// its streams in one batched step.
import { Engine } from '../../src/engine/engine.ts';
import type { TextGenerator } from '../../src/engine/types.ts';

export async function createTestGenerator(): Promise<TextGenerator> {
  return Engine.load({ slots: 32, capacity: 256, prefillChunk: 64 });
}

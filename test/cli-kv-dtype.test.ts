// `--kv-dtype` through the real CLI (a child process, as a user runs it): `logits` with each KV
// dtype on the embedded model (head dim 32) gives logits near the f32 cache's (the bounds of
// test/kv-dtype-parity.test.ts), the default is f16, and refusals name the flag: an unknown dtype,
// and q8_0 on a model whose head dim (16) is not a multiple of 32.
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { writeTinyLlamaGguf } from './support/tiny-models.ts';
import { compare } from './support/reference.ts';

const run = promisify(execFile);
const dir = mkdtempSync(join(tmpdir(), 'cli-kv-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const TOKENS = '1,17,42,99,3,250,7,64,128,5,33,200,11,90,150,2,77,180';

async function logits(...flags: string[]): Promise<number[][]> {
  const { stdout } = await run(
    process.execPath,
    ['--import', 'tsx', 'src/cli.ts', 'logits', '--tokens', TOKENS, '--all', '--adapter', 'software-compat', ...flags],
    { env: { ...process.env, WEBGPU_MINER_ADAPTER: '' }, maxBuffer: 64 * 2 ** 20 },
  );
  return JSON.parse(stdout).logits;
}

describe('--kv-dtype', () => {
  it('logits with an f32, f16 (default) and q8_0 cache: the rounded caches near the f32 one', async () => {
    const f32 = await logits('--kv-dtype', 'f32');
    const byDefault = await logits();
    const f16 = await logits('--kv-dtype', 'f16');
    const q8 = await logits('--kv-dtype', 'q8_0');
    expect(byDefault).toEqual(f16);
    const worst = (rows: number[][]) => Math.max(...rows.map((row, i) => compare(row, f32[i]).relL2));
    expect(worst(f16)).toBeGreaterThan(0);
    expect(worst(f16)).toBeLessThanOrEqual(2e-3);
    expect(worst(q8)).toBeGreaterThan(worst(f16));
    expect(worst(q8)).toBeLessThanOrEqual(3e-2);
  });

  it('refuses an unknown dtype, and q8_0 where the head dim is not a multiple of 32, naming the flag', async () => {
    await expect(logits('--kv-dtype', 'bf16')).rejects.toMatchObject({ stderr: expect.stringMatching(/--kv-dtype.*bf16.*f32, f16, q8_0/s) });
    const tiny = writeTinyLlamaGguf(join(dir, 'd16.gguf'), { seed: 3, hiddenSize: 64, numHeads: 4, numKvHeads: 2, numLayers: 1 });
    await expect(logits('--model', tiny.path, '--kv-dtype', 'q8_0')).rejects.toMatchObject({
      stderr: expect.stringMatching(/--kv-dtype q8_0 needs a head dim that is a multiple of 32, but this model's is 16/),
    });
  });
});

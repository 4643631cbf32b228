// `generate` through the real CLI (a child process, as a user runs it) on the embedded model: the model
// summary on stderr names what decode runs on this adapter, which the autotune times at the first load
// (its cache in a temporary directory) and reads from the cache at the next; --no-autotune names the
// static defaults.
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { describeDecodeTuning, type DecodeTuning, type MatvecTuning, type RopeKvFoldTuning } from '../kernels/autotune.ts';

const run = promisify(execFile);
const dir = mkdtempSync(join(tmpdir(), 'cli-generate-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const cachePath = join(dir, 'autotune.json');

async function generate(...flags: string[]): Promise<{ stdout: string; stderr: string }> {
  return run(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'generate', '--prompt', 'Hello', '--max-tokens', '3', '--temperature', '0', ...flags], {
    // The suite turns the autotune off by default; this test runs it as a user gets it.
    env: { ...process.env, WEBGPU_MINER_AUTOTUNE: '', WEBGPU_MINER_AUTOTUNE_CACHE: cachePath },
  });
}

/** The decode tuning the cache file holds for its one adapter: the f32 matvec and the RoPE + KV-write fold. */
function cachedTuning(): DecodeTuning {
  const file = JSON.parse(readFileSync(cachePath, 'utf8')) as { entries: Record<string, { tunings: Record<string, unknown> }> };
  const [entry] = Object.values(file.entries);
  const ids = Object.keys(entry.tunings);
  const matvec = ids.find((id) => id.startsWith('f32 '))!;
  const fold = ids.find((id) => id.startsWith('rope-kv '))!;
  expect(ids.sort()).toEqual([matvec, fold].sort());
  return { matvecs: { f32: entry.tunings[matvec] as MatvecTuning }, ropeKvFold: (entry.tunings[fold] as RopeKvFoldTuning).fold };
}

describe('generate', () => {
  it('names what decode runs: autotuned at the first load, from the cache at the next, the static defaults with --no-autotune', async () => {
    const first = await generate();
    expect(first.stderr).toContain('autotune: timing f32 matvec variants');
    expect(first.stderr).toContain('autotune: timing the RoPE + KV-write fold of decode attention');
    const line = `  decode: ${describeDecodeTuning(cachedTuning())}\n`;
    expect(first.stderr).toContain(line);
    expect(first.stdout.length).toBeGreaterThan(0);

    const second = await generate();
    expect(second.stderr).not.toContain('autotune: timing');
    expect(second.stderr).toContain(line);
    expect(second.stdout).toBe(first.stdout); // greedy, and the same kernels: the same text

    const untuned = await generate('--no-autotune');
    expect(untuned.stderr).toContain('  decode: matvecs on the static defaults; RoPE + KV write folded into attention\n');
    expect(untuned.stderr).not.toContain('autotune: timing');
  });
});

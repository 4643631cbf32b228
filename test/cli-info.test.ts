// `webgpu-miner info --json` on each software adapter, run as a user runs it (a child process through
// the real CLI): the adapter it names, the features behind each tier, and the tiers themselves.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const run = promisify(execFile);

async function infoJson(adapter: string, env: Record<string, string> = {}): Promise<Record<string, any>> {
  const { stdout } = await run(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'info', '--json', '--no-check', '--adapter', adapter], {
    env: { ...process.env, WEBGPU_MINER_ADAPTER: '', ...env },
  });
  return JSON.parse(stdout);
}

describe('info --json', () => {
  it('software-core is Vulkan on lavapipe at featureLevel core, with f16 and subgroups and the fast tiers', async () => {
    const report = await infoJson('software-core');
    expect(report.adapter).toMatchObject({ backend: 'vulkan', featureLevel: 'core', isSoftware: true });
    expect(report.features).toEqual(expect.arrayContaining(['shader-f16', 'subgroups', 'timestamp-query']));
    expect(report.limits.maxStorageBufferBindingSize).toBeGreaterThanOrEqual(128 * 2 ** 20);
    expect(report.tiers).toEqual({ matvec: 'subgroup', matvecActivations: 'f32', matmul: 'f16', attention: 'subgroup', rows: 'baseline' });
    // One size, the CPU's vector width over 32 bits: 8 with AVX2, 4 with 128-bit vectors.
    expect([4, 8, 16]).toContain(report.adapter.subgroupMinSize);
    expect(report.adapter.subgroupMaxSize).toBe(report.adapter.subgroupMinSize);
  });

  it('lavapipe\'s subgroup size follows LP_NATIVE_VECTOR_WIDTH: 4 at 128 bits (npm run test:subgroup-sizes)', async () => {
    const report = await infoJson('software-core', { LP_NATIVE_VECTOR_WIDTH: '128' });
    expect(report.adapter).toMatchObject({ subgroupMinSize: 4, subgroupMaxSize: 4 });
  });

  it('software-compat is OpenGL ES on llvmpipe, with the baseline tier everywhere', async () => {
    const report = await infoJson('software-compat');
    expect(report.adapter).toMatchObject({ backend: 'opengles', featureLevel: 'compatibility', isSoftware: true });
    expect(report.features).not.toContain('subgroups');
    expect(report.tiers).toEqual({ matvec: 'baseline', matvecActivations: 'f32', matmul: 'baseline', attention: 'baseline', rows: 'baseline' });
  });

  it('refuses an unknown adapter naming the choices', async () => {
    await expect(infoJson('cuda')).rejects.toMatchObject({ stderr: expect.stringMatching(/auto, gpu, software, software-core, software-compat/) });
  });
});

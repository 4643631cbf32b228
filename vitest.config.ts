import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { defineConfig } from 'vitest/config';

// GPU tests run in forked processes: EGL reads EGL_PLATFORM from the process's C environment,
// which an assignment inside a worker thread never reaches (see README, "Software adapter").
//
// Two projects, one per software adapter, so that both kernel tiers are proven on every run:
// - compat: every test, on OpenGL ES / llvmpipe (featureLevel compatibility, no f16, no subgroups):
//   the baseline tier, which every adapter can run;
// - core: the kernel, model and llama.cpp parity tests again, on Vulkan / lavapipe (featureLevel core,
//   shader-f16, subgroups): the tier a real GPU takes. The server and engine tests do not depend on
//   the kernel tier and run once.
// WEBGPU_MINER_ADAPTER set in the environment (say `gpu` on a machine with one) runs every test once,
// on that adapter. `npx vitest run --project compat` runs without the core adapter installed.
const KERNEL_AND_MODEL_TESTS = [
  'attention', 'device', 'elementwise', 'embed', 'linear', 'matmul', 'matvec', 'norm', 'rope', 'sample', 'selfcheck',
  'softmax', 'transformer', 'transformer-chunked', 'transformer-window', 'llamacpp-parity', 'llamacpp-parity-qwen2-gpt2',
  'matvec-fused', 'matvec-q8', 'autotune', 'rope-kv-write', 'attention-new-kv', 'transformer-paged', 'kv-dtype-parity',
  'llamacpp-parity-qwen3', 'llamacpp-parity-phi3', 'llamacpp-parity-gemma3', 'llamacpp-parity-gemma2',
].map((name) => `test/${name}.test.ts`);

const ALL_TESTS = ['test/**/*.test.ts'];
// The matvec autotune stays off (static defaults) unless a test turns it on with the option, and its
// cache never lands in the real home directory.
const AUTOTUNE_ENV = { WEBGPU_MINER_AUTOTUNE: 'off', WEBGPU_MINER_AUTOTUNE_CACHE: join(tmpdir(), `webgpu-miner-test-autotune-${process.pid}.json`) };
const chosen = process.env.WEBGPU_MINER_ADAPTER;

export default defineConfig({
  test: {
    pool: 'forks',
    // At least two test files at once even on a 2-core machine (vitest's default there is one): many
    // files spend their time waiting on child processes, sockets and shader compiles, not the CPU.
    maxWorkers: Math.max(2, availableParallelism() - 1),
    // No `include` here: a project that extends this config would get it concatenated with its own.
    testTimeout: 120_000,
    // Hooks load engines, and the first load of a file warms the shader cache (test/support/test-engine.ts):
    // with a cold cache on a busy machine that took two minutes here.
    hookTimeout: 600_000,
    projects: chosen
      ? [{ extends: true, test: { name: chosen, include: ALL_TESTS, env: AUTOTUNE_ENV } }]
      : [
          { extends: true, test: { name: 'compat', include: ALL_TESTS, env: { ...AUTOTUNE_ENV, WEBGPU_MINER_ADAPTER: 'software-compat' } } },
          { extends: true, test: { name: 'core', include: KERNEL_AND_MODEL_TESTS, env: { ...AUTOTUNE_ENV, WEBGPU_MINER_ADAPTER: 'software-core' } } },
        ],
  },
});

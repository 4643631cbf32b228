import { defineConfig } from 'vitest/config';

// GPU tests run in forked processes: EGL reads EGL_PLATFORM from the process's C environment,
// which an assignment inside a worker thread never reaches (see README, "Software adapter").
export default defineConfig({
  test: {
    pool: 'forks',
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
  },
});

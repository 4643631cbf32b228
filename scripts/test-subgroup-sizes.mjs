#!/usr/bin/env node
// The subgroup-tier kernel tests at the subgroup sizes lavapipe can take besides its usual 8: it sizes
// a subgroup by its vector width (LP_NATIVE_VECTOR_WIDTH / 32), 4 at 128 bits and 16 at 512 (emulated
// where the CPU lacks AVX-512). The subgroup kernels assume no size, and these runs hold them to it
// on the same float64 references as `npm test`. Slow, so not part of it: every shader compiles again
// for each width (about 8 minutes at 128 bits and half an hour at 512 on a 2-core machine).
// Not 1024 or 2048 bits: lavapipe then reports subgroups of 32 or 64, but its subgroup operations
// stop at 16 lanes (Mesa's LP_MAX_VECTOR_WIDTH is 512; a subgroupAdd over 32 lanes summed the first
// 16), so a kernel's failure there would be lavapipe's (README, Software adapters and the tests).
// Extra arguments replace the list of test files (e.g. one file).
import { execFileSync, spawnSync } from 'node:child_process';

const FILES = [
  'test/matvec.test.ts', 'test/matvec-fused.test.ts', 'test/matvec-q8.test.ts',
  'test/attention.test.ts', 'test/attention-new-kv.test.ts', 'test/autotune.test.ts',
];
const files = process.argv.length > 2 ? process.argv.slice(2) : FILES;

for (const bits of [128, 512]) {
  const env = { ...process.env, LP_NATIVE_VECTOR_WIDTH: String(bits), WEBGPU_MINER_ADAPTER: '' };
  // Check that the adapter took the width before spending minutes on it.
  const info = JSON.parse(execFileSync(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'info', '--json', '--no-check', '--adapter', 'software-core'], { env, encoding: 'utf8' }));
  const size = info.adapter.subgroupMinSize;
  if (size !== bits / 32 || info.adapter.subgroupMaxSize !== size) {
    console.error(`lavapipe at LP_NATIVE_VECTOR_WIDTH=${bits} reports subgroups of ${size} to ${info.adapter.subgroupMaxSize}, not ${bits / 32}: this Mesa does not take the width`);
    process.exit(1);
  }
  console.log(`\n== lavapipe at ${bits}-bit vectors: subgroups of ${size} ==`);
  const result = spawnSync('npx', ['vitest', 'run', '--project', 'core', ...files], { stdio: 'inherit', env });
  if (result.status !== 0) process.exit(result.status ?? 1);
}

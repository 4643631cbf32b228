#!/usr/bin/env node
// Installs llama.cpp (node-llama-cpp) into bench/llama-cpp/: the wrapper at the version pinned there,
// with --omit=optional so that none of the other platforms' builds are fetched, then this platform's
// CPU build and, with `--gpu vulkan` or `--gpu cuda`, that GPU build too (for `bench --peer-gpu`).
// The tests use the CPU build as their reference; the bench uses it as the peer. Safe to run again.
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const dir = fileURLToPath(new URL('../bench/llama-cpp/', import.meta.url));
const version = JSON.parse(readFileSync(`${dir}package.json`, 'utf8')).dependencies['node-llama-cpp'];

// node-llama-cpp's own names for its prebuilt packages, by Node's platform and arch.
const CPU_BUILDS = {
  'linux-x64': 'linux-x64',
  'linux-arm64': 'linux-arm64',
  'linux-arm': 'linux-armv7l',
  'linux-riscv64': 'linux-riscv64',
  'darwin-arm64': 'mac-arm64-metal',
  'darwin-x64': 'mac-x64',
  'win32-x64': 'win-x64',
  'win32-arm64': 'win-arm64',
};
const GPU_BUILDS = {
  'linux-x64': { cuda: 'linux-x64-cuda', vulkan: 'linux-x64-vulkan' },
  'win32-x64': { cuda: 'win-x64-cuda', vulkan: 'win-x64-vulkan' },
};

function fail(message) {
  console.error(`llama-cpp: ${message}`);
  process.exit(2);
}

const args = process.argv.slice(2);
const gpuAt = args.indexOf('--gpu');
const gpu = gpuAt >= 0 ? args[gpuAt + 1] : undefined;
if (args.some((a, i) => a !== '--gpu' && i !== gpuAt + 1)) fail(`usage: node scripts/llama-cpp.mjs [--gpu vulkan|cuda]`);

const platform = `${process.platform}-${process.arch}`;
const cpuBuild = CPU_BUILDS[platform];
if (!cpuBuild) fail(`node-llama-cpp has no prebuilt build for ${platform}`);
const builds = [cpuBuild];
if (gpu !== undefined) {
  const gpuBuild = GPU_BUILDS[platform]?.[gpu];
  if (!gpuBuild) fail(`no '${gpu}' build of node-llama-cpp for ${platform} (choose from: ${Object.keys(GPU_BUILDS[platform] ?? {}).join(', ') || 'none'})`);
  builds.push(gpuBuild);
}

function npm(npmArgs) {
  console.log(`$ (cd bench/llama-cpp && npm ${npmArgs.join(' ')})`);
  execFileSync(process.platform === 'win32' ? 'npm.cmd' : 'npm', npmArgs, { cwd: dir, stdio: 'inherit', shell: process.platform === 'win32' });
}

// Every build must exist at the wrapper's version: a build of another release would be a different llama.cpp
// behind the same name. (node-llama-cpp 3.22 was published for Linux only; macOS and Windows stop at 3.21.1,
// whose controlledEvaluate cannot return logits, so the parity tests need 3.22.)
for (const build of builds) {
  const found = spawnSync(process.platform === 'win32' ? 'npm.cmd' : 'npm', ['view', `@node-llama-cpp/${build}@${version}`, 'version'], { encoding: 'utf8', shell: process.platform === 'win32' });
  if (found.status !== 0 && /E404/.test(found.stderr)) fail(`@node-llama-cpp/${build} was never published at ${version}, the version bench/llama-cpp pins; llama.cpp parity tests and the bench peer cannot run on ${platform}`);
}
// One install: the wrapper and its dependencies as locked, --omit=optional so that no other platform's build
// is fetched, and the builds named explicitly (in one command, since npm prunes what a later install does
// not name). Not `npm ci`: the lock cannot list the builds that were never published, and ci refuses it.
npm(['install', '--no-save', '--omit=optional', '--no-audit', '--no-fund', ...builds.map((b) => `@node-llama-cpp/${b}@${version}`)]);
console.log(`llama.cpp: node-llama-cpp ${version} with ${builds.join(' + ')} in bench/llama-cpp/node_modules`);

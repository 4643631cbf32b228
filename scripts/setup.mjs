#!/usr/bin/env node
// One-command set-up for a fresh machine: npm packages; llama.cpp for the tests and the bench peer
// (scripts/llama-cpp.mjs; `npm run setup -- --llama-cpp-gpu vulkan|cuda` adds its GPU build); then, on
// Linux when no hardware GPU adapter is usable, the Mesa packages for the software WebGPU adapter
// (apt-get as root, else via sudo). Safe to run again.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';

const MESA_PACKAGES = ['libegl1', 'libegl-mesa0', 'libgles2', 'libgl1-mesa-dri'];
const CLI = ['--import', 'tsx', 'src/cli.ts'];

function run(cmd, args) {
  console.log(`$ ${cmd} ${args.join(' ')}`);
  execFileSync(cmd, args, { stdio: 'inherit' });
}

function missingDebianPackages() {
  const result = spawnSync('dpkg-query', ['-W', '-f=${db:Status-Abbrev}\\n', ...MESA_PACKAGES], { encoding: 'utf8' });
  if (result.error) return MESA_PACKAGES;
  const installed = result.stdout.split('\n').filter((line) => line.startsWith('ii')).length;
  return installed === MESA_PACKAGES.length ? [] : MESA_PACKAGES;
}

function hasHardwareAdapter() {
  const probe = spawnSync(process.execPath, [...CLI, 'info', '--adapter', 'gpu'], { stdio: 'ignore' });
  return probe.status === 0;
}

const args = process.argv.slice(2);
const gpuAt = args.indexOf('--llama-cpp-gpu');
if (args.length > 0 && (gpuAt !== 0 || args.length !== 2)) {
  console.error('usage: npm run setup [-- --llama-cpp-gpu vulkan|cuda]');
  process.exit(2);
}

if (!existsSync('node_modules/.package-lock.json')) run('npm', ['ci']);
run(process.execPath, ['scripts/llama-cpp.mjs', ...(gpuAt === 0 ? ['--gpu', args[1]] : [])]);

if (process.platform === 'linux' && !hasHardwareAdapter()) {
  const missing = missingDebianPackages();
  if (missing.length === 0) {
    console.log('No hardware GPU adapter; the software adapter packages (Mesa EGL/GLES) are installed.');
  } else if (!existsSync('/usr/bin/apt-get')) {
    console.log(`No hardware GPU adapter. Install these for the software adapter: ${missing.join(' ')}`);
  } else {
    console.log(`No hardware GPU adapter: installing the software adapter packages (${missing.join(' ')}).`);
    const apt = (args) => (process.getuid?.() === 0 ? run('apt-get', args) : run('sudo', ['apt-get', ...args]));
    apt(['update']);
    apt(['install', '-y', '--no-install-recommends', ...missing]);
  }
}

// Show the adapter the runtime will use and check the kernels on it.
run(process.execPath, [...CLI, 'info']);

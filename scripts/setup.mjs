#!/usr/bin/env node
// One-command set-up for a fresh machine: npm packages; llama.cpp for the tests and the bench peer
// (scripts/llama-cpp.mjs; `npm run setup -- --llama-cpp-gpu vulkan|cuda` adds its GPU build); then, on
// Linux when no hardware GPU adapter is usable, Mesa's two software WebGPU adapters (apt-get as root,
// else via sudo): OpenGL ES on llvmpipe (compatibility) and Vulkan on lavapipe (core, with f16 and
// subgroups; Mesa 25 or newer, which on Debian 12 comes from bookworm-backports). Safe to run again.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';

// Kept in step with SOFTWARE_PACKAGES and SOFTWARE_CORE_PACKAGES in src/gpu/device.ts.
const COMPAT_PACKAGES = ['libegl1', 'libegl-mesa0', 'libgles2', 'libgl1-mesa-dri'];
const CORE_PACKAGES = ['mesa-vulkan-drivers', 'libvulkan1'];
const BACKPORTS_SOURCE = '/etc/apt/sources.list.d/bookworm-backports.sources';
const CLI = ['--import', 'tsx', 'src/cli.ts'];

function run(cmd, args) {
  console.log(`$ ${cmd} ${args.join(' ')}`);
  execFileSync(cmd, args, { stdio: 'inherit' });
}

function asRoot(cmd, args) {
  if (process.getuid?.() === 0) run(cmd, args);
  else run('sudo', [cmd, ...args]);
}

/** True when `adapter` (a --adapter choice) opens; the probe runs in a child so a crash cannot stop set-up. */
function adapterWorks(adapter) {
  return spawnSync(process.execPath, [...CLI, 'info', '--no-check', '--adapter', adapter], { stdio: 'ignore' }).status === 0;
}

function debianCodename() {
  if (!existsSync('/etc/os-release')) return undefined;
  return /^VERSION_CODENAME=(.*)$/m.exec(readFileSync('/etc/os-release', 'utf8'))?.[1];
}

function installSoftwareAdapters() {
  if (!existsSync('/usr/bin/apt-get')) {
    console.log(`No hardware GPU adapter. For the software adapters install Mesa's ${COMPAT_PACKAGES.join(' ')} and ${CORE_PACKAGES.join(' ')} (Mesa 25 or newer).`);
    return;
  }
  // Debian 12's own Mesa (22.3) has a lavapipe that Dawn refuses; bookworm-backports carries Mesa 25.
  const backports = debianCodename() === 'bookworm';
  if (backports && !existsSync(BACKPORTS_SOURCE)) {
    console.log(`Adding Debian's bookworm-backports suite (${BACKPORTS_SOURCE}) for Mesa 25.`);
    const source = 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n';
    if (process.getuid?.() === 0) writeFileSync(BACKPORTS_SOURCE, source);
    else execFileSync('sudo', ['tee', BACKPORTS_SOURCE], { input: source, stdio: ['pipe', 'ignore', 'inherit'] });
  }
  console.log('No hardware GPU adapter: installing the software adapters (Mesa llvmpipe and lavapipe).');
  asRoot('apt-get', ['update']);
  // All of Mesa from one release: the EGL/GL drivers must match the Vulkan one.
  asRoot('apt-get', ['install', '-y', '--no-install-recommends', ...(backports ? ['-t', 'bookworm-backports'] : []), ...COMPAT_PACKAGES, ...CORE_PACKAGES]);
}

const args = process.argv.slice(2);
const gpuAt = args.indexOf('--llama-cpp-gpu');
if (args.length > 0 && (gpuAt !== 0 || args.length !== 2)) {
  console.error('usage: npm run setup [-- --llama-cpp-gpu vulkan|cuda]');
  process.exit(2);
}

if (!existsSync('node_modules/.package-lock.json')) run('npm', ['ci', '--no-audit', '--no-fund']);
run(process.execPath, ['scripts/llama-cpp.mjs', ...(gpuAt === 0 ? ['--gpu', args[1]] : [])]);

if (process.platform === 'linux' && !adapterWorks('gpu')) {
  if (adapterWorks('software-core') && adapterWorks('software-compat')) console.log('No hardware GPU adapter; both software adapters are installed.');
  else installSoftwareAdapters();
}

// Show the adapter the runtime will use and check the kernels on it.
run(process.execPath, [...CLI, 'info']);

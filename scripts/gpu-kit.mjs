#!/usr/bin/env node
// Builds the GPU kit: one .tar.xz (at most 60 MiB) that runs `webgpu-miner bench` on a Linux x64 machine
// with a GPU driver and nothing else (no Node, no package registry, no Vulkan loader): the runtime's
// sources, its production npm packages (Dawn's linux-x64 build only), this Node binary, Debian's
// Vulkan loader as a .deb, and bench/kit/run.sh. With --llama-cpp vulkan|cuda it also carries
// node-llama-cpp and that GPU build, so that `run.sh OUT --peer-gpu --model FILE.gguf` compares with
// llama.cpp on the same GPU; `run.sh OUT --synthetic llama-2-7b-q4_0` first writes such a file there
// (models/synthetic-gguf.ts: a 7B model is far over the kit's budget, so it is made, not carried). Unpack with `tar xJf webgpu-miner-kit.tar.xz` and run `kit/run.sh OUT`.
//
// Usage: node scripts/gpu-kit.mjs [--out DIR] [--llama-cpp vulkan|cuda]     (default DIR: .kit)
import { execFileSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, copyFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const LIMIT = 60 * 2 ** 20;
const RUNTIME = ['package.json', 'package-lock.json', 'bin', 'src', 'kernels', 'models', 'bench', 'shaders'];

function fail(message) {
  console.error(`gpu-kit: ${message}`);
  process.exit(2);
}

const args = process.argv.slice(2);
let out = join(ROOT, '.kit');
let llamaCpp;
for (let i = 0; i < args.length; i += 2) {
  if (args[i] === '--out' && args[i + 1]) out = resolve(args[i + 1]);
  else if (args[i] === '--llama-cpp' && ['vulkan', 'cuda'].includes(args[i + 1])) llamaCpp = args[i + 1];
  else fail('usage: node scripts/gpu-kit.mjs [--out DIR] [--llama-cpp vulkan|cuda]');
}
if (process.platform !== 'linux' || process.arch !== 'x64') fail(`the kit is for linux-x64 machines; build it on one (this is ${process.platform}-${process.arch})`);

function run(cmd, cmdArgs, cwd) {
  console.log(`$ ${cmd} ${cmdArgs.join(' ')}`);
  execFileSync(cmd, cmdArgs, { cwd, stdio: 'inherit' });
}

const stage = mkdtempSync(join(tmpdir(), 'webgpu-miner-kit-'));
const kit = join(stage, 'kit');
try {
  mkdirSync(kit);
  for (const entry of RUNTIME) {
    // The bench's llama.cpp folder is installed below (or not at all), never copied from this checkout.
    cpSync(join(ROOT, entry), join(kit, entry), { recursive: true, filter: (src) => !src.includes('node_modules') && !src.includes(`${join('bench', 'out')}`) });
  }
  run('npm', ['ci', '--omit=dev', '--no-audit', '--no-fund'], kit);
  // Dawn ships a build per platform (130 MB together); the kit runs on linux-x64 only.
  const dawn = join(kit, 'node_modules', 'webgpu', 'dist');
  for (const platform of readdirSync(dawn)) if (platform !== 'linux-x64' && statSync(join(dawn, platform)).isDirectory()) rmSync(join(dawn, platform), { recursive: true });
  if (llamaCpp) {
    const version = JSON.parse(execFileSync('node', ['-p', 'JSON.stringify(require("./bench/llama-cpp/package.json").dependencies)'], { cwd: ROOT, encoding: 'utf8' }))['node-llama-cpp'];
    run('npm', ['install', '--no-save', '--omit=optional', '--no-audit', '--no-fund', `@node-llama-cpp/linux-x64@${version}`, `@node-llama-cpp/linux-x64-${llamaCpp}@${version}`], join(kit, 'bench', 'llama-cpp'));
    // llama.cpp's sources as a git bundle (34 MB), for building from source: the bench loads the
    // prebuilt binaries only (build: 'never'), and with it the kit is over its budget.
    rmSync(join(kit, 'bench', 'llama-cpp', 'node_modules', 'node-llama-cpp', 'llama', 'gitRelease.bundle'));
  }

  copyFileSync(join(ROOT, 'bench', 'kit', 'run.sh'), join(kit, 'run.sh'));
  chmodSync(join(kit, 'run.sh'), 0o755);
  mkdirSync(join(kit, 'node', 'bin'), { recursive: true });
  copyFileSync(process.execPath, join(kit, 'node', 'bin', 'node'));
  chmodSync(join(kit, 'node', 'bin', 'node'), 0o755);

  // Debian's Vulkan loader (amd64), fetched with this machine's apt sources into a private state folder.
  const debs = join(kit, 'debs');
  const lists = join(stage, 'apt-lists');
  mkdirSync(join(lists, 'partial'), { recursive: true });
  mkdirSync(debs);
  const apt = ['-o', 'APT::Architecture=amd64', '-o', 'APT::Architectures=amd64', '-o', `Dir::State::Lists=${lists}`];
  run('apt-get', [...apt, 'update', '-qq'], debs);
  run('apt-get', [...apt, 'download', 'libvulkan1'], debs);

  mkdirSync(out, { recursive: true });
  const archive = join(out, 'webgpu-miner-kit.tar.xz');
  run('tar', ['-cJf', archive, '-C', stage, 'kit'], stage);
  const size = statSync(archive).size;
  console.log(`gpu-kit: ${archive} (${(size / 2 ** 20).toFixed(1)} MiB)`);
  if (size > LIMIT) fail(`the kit is ${(size / 2 ** 20).toFixed(1)} MiB, over its 60 MiB budget`);
} finally {
  rmSync(stage, { recursive: true, force: true });
}

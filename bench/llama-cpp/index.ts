// llama.cpp through node-llama-cpp: the bench's peer and the parity tests' oracle. It lives in its own
// package (this folder's package.json and lock) so that the runtime's `npm ci` stays small: node-llama-cpp
// lists every platform's build as an optional dependency, and on Linux x64 that means 320 MB of CUDA
// binaries. `node scripts/llama-cpp.mjs` (run by `npm run setup` and CI) installs the wrapper and exactly
// the builds this machine needs: the CPU build, plus `--gpu vulkan|cuda` when asked.
// Importing this module fails when that has not been run; bench/peer.ts imports it dynamically for that reason.
export * from 'node-llama-cpp';

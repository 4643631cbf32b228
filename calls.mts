import { acquireGpu } from './src/gpu/device.ts';
const gpu = await (acquireGpu as any)({ adapter: process.env.AD ?? 'software-core' });
const { device } = gpu;
const N = 200;
const med = (xs: number[]) => xs.sort((a, b) => a - b)[xs.length >> 1];
for (const nb of [2, 4, 8, 2, 4, 8]) {
  const decl = Array.from({ length: nb }, (_, k) => `@group(0) @binding(${k}) var<storage, ${k === 0 ? 'read_write' : 'read'}> b${k}: array<f32>;`).join('\n');
  const sum = Array.from({ length: nb - 1 }, (_, k) => `b${k + 1}[g.x]`).join(' + ');
  const code = `${decl}\n@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3u) { if (g.x < 4) { b0[g.x] = ${sum}; } }`;
  const pipes = Array.from({ length: 6 }, (_, p) => device.createComputePipeline({ layout: 'auto', compute: { module: device.createShaderModule({ code: code + `\n// ${p}` }), entryPoint: 'main' } }));
  const bufs = Array.from({ length: nb * N }, () => device.createBuffer({ size: 1024, usage: GPUBufferUsage.STORAGE }));
  const bgs = Array.from({ length: N }, (_, i) => device.createBindGroup({ layout: pipes[i % 6].getBindGroupLayout(0), entries: Array.from({ length: nb }, (_, k) => ({ binding: k, resource: { buffer: bufs[nb * i + k] } })) }));
  const r: number[][] = [];
  for (let rep = 0; rep < 60; rep++) {
    const t0 = performance.now();
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass();
    for (let i = 0; i < N; i++) { pass.setPipeline(pipes[i % 6]); pass.setBindGroup(0, bgs[i]); pass.dispatchWorkgroups(1); }
    pass.end();
    const cb = enc.finish();
    const t1 = performance.now();
    device.queue.submit([cb]);
    const t2 = performance.now();
    r.push([t1 - t0, t2 - t1]);
    await device.queue.onSubmittedWorkDone();
  }
  console.log('bindings', nb, 'record', med(r.map((x) => x[0])).toFixed(3), 'submit', med(r.map((x) => x[1])).toFixed(3));
}
process.exit(0);

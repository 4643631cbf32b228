import { Engine } from '/work/main/src/engine/engine.ts';
import { acquireGpu } from '/work/main/src/gpu/device.ts';
const gpu = await acquireGpu({ adapter: 'software-compat' });
async function runOn(e: Engine, request: any) {
  const out: any[] = [];
  for await (const t of e.generate(request)) out.push([t.tokenId, t.logprob]);
  return out;
}
const reqs = [1, 2, 3, 4, 5, 6].map((seed) => ({ prompt: `shared pool ${seed}`, maxTokens: 12, seed }));
for (const overlapDecode of [false, true, false, true]) {
  const e = await Engine.load({ gpu, autotune: false, overlapDecode });
  const together = await Promise.all(reqs.map((r) => runOn(e, r)));
  const alone = [];
  for (const r of reqs) alone.push(await runOn(e, r));
  console.log(overlapDecode, JSON.stringify(together).length, together.map((t, i) => t.map((x: any, j: number) => (x[1] - alone[i][j][1]).toExponential(1)).join(',')).join(' | '));
  await e.close();
}
gpu.destroy();

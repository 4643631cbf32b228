// A quick check that the kernels compute correctly on this adapter: each runs once on a small
// random problem and is compared with a float64 CPU reference. `webgpu-miner info` runs it so a
// driver bug shows up before a validator sees wrong tokens.
import type { Gpu } from '../src/gpu/device.ts';
import { createStorage, readF32 } from '../src/gpu/buffers.ts';
import { runPass } from './dispatch.ts';
import { Elementwise } from './elementwise.ts';

export interface SelfCheckResult {
  kernel: string;
  relL2: number;
  bound: number;
  ok: boolean;
}

/** Deterministic values in [-1, 1) (a linear congruential sequence: no test helpers below the CLI). */
function values(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s / 2 ** 31 - 1;
  }
  return out;
}

function relL2(got: ArrayLike<number>, want: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < want.length; i++) {
    const d = got[i] - want[i];
    num += Number.isFinite(d) ? d * d : Infinity;
    den += want[i] * want[i];
  }
  return Math.sqrt(num / Math.max(den, 1e-30));
}

type Check = (gpu: Gpu) => Promise<{ got: ArrayLike<number>; want: ArrayLike<number> }>;

const CHECKS: Array<{ kernel: string; bound: number; run: Check }> = [
  {
    kernel: 'swiglu (elementwise)',
    bound: 1e-5,
    run: async (gpu) => {
      const n = 301;
      const a = values(n, 1);
      const b = values(n, 2);
      const out = createStorage(gpu, 'selfcheck.out', n * 4);
      const op = new Elementwise(gpu, 'swiglu', { a: createStorage(gpu, 'a', a), b: createStorage(gpu, 'b', b), out });
      await runPass(gpu, (pass) => op.encode(pass, { count: n }));
      const want = Array.from(a, (x, i) => (x / (1 + Math.exp(-x))) * b[i]);
      return { got: await readF32(gpu, out, n), want };
    },
  },
];

export async function runSelfCheck(gpu: Gpu): Promise<SelfCheckResult[]> {
  const results: SelfCheckResult[] = [];
  for (const check of CHECKS) {
    const { got, want } = await check.run(gpu);
    const err = relL2(got, want);
    results.push({ kernel: check.kernel, relL2: err, bound: check.bound, ok: err <= check.bound });
  }
  return results;
}

import { describe, expect, it } from 'vitest';
import { Argmax, PickToken, ROW_SAMPLING_WORDS, TopK, TOPK_MAX_K, seenWords, writeRowSampling, type RowSampling } from '../kernels/sample.ts';
import { penalizedOrder, pickSorted } from '../src/engine/sampler.ts';
import { runPass } from '../kernels/dispatch.ts';
import { readU32 } from '../src/gpu/buffers.ts';
import { ShapeError } from '../src/errors.ts';
import { createStorage, readF32, useGpu } from './support/gpu.ts';
import { randomF32, rng } from './support/reference.ts';

const gpu = useGpu();

/** Columns of one row sorted by the kernels' order: larger value first, ties to the lower column. */
function ranked(logits: Float32Array, offset: number, row: number, cols: number): number[] {
  const base = offset + row * cols;
  return Array.from({ length: cols }, (_, c) => c).sort((a, b) => {
    const va = logits[base + a];
    const vb = logits[base + b];
    return va === vb ? a - b : vb > va ? 1 : -1;
  });
}

/** Float64 log(sum(exp(row))); -inf for a row of only -inf. */
function logSumExp(logits: Float32Array, offset: number, row: number, cols: number): number {
  const values = Array.from(logits.subarray(offset + row * cols, offset + (row + 1) * cols));
  const m = Math.max(...values);
  if (m === -Infinity) return -Infinity;
  return m + Math.log(values.reduce((s, v) => s + Math.exp(v - m), 0));
}

/** Random logits with many exact ties (values on a grid of 1/4) and some -inf entries. */
function tiedLogits(n: number, seed: number, levels = 40): Float32Array {
  const next = rng(seed);
  return Float32Array.from({ length: n }, () => {
    const u = next();
    return u < 0.05 ? -Infinity : Math.floor(next() * levels) / 4 - 5;
  });
}

const poisonedU32 = (n: number) => createStorage(gpu(), 'indices', new Uint32Array(n).fill(0xdeadbeef));

async function runArgmax(logits: Float32Array, rows: number, cols: number, logitsOffset: number, chunk?: number) {
  const indicesOffset = 3;
  const indices = poisonedU32(indicesOffset + rows + 2);
  const op = new Argmax(gpu(), { logits: createStorage(gpu(), 'logits', logits), indices }, { maxRows: rows, maxCols: cols, chunk });
  await runPass(gpu(), (pass) => op.encode(pass, { rows, cols, logitsOffset, indicesOffset }));
  const all = await readU32(gpu(), indices, indicesOffset + rows + 2);
  op.destroy();
  expect([all[0], all[indicesOffset - 1], all[indicesOffset + rows], all[indicesOffset + rows + 1]]).toEqual(Array(4).fill(0xdeadbeef));
  return Array.from(all.subarray(indicesOffset, indicesOffset + rows));
}

async function checkArgmax(logits: Float32Array, rows: number, cols: number, logitsOffset: number, chunk?: number) {
  const got = await runArgmax(logits, rows, cols, logitsOffset, chunk);
  const want = Array.from({ length: rows }, (_, r) => ranked(logits, logitsOffset, r, cols)[0]);
  expect(got).toEqual(want);
}

async function checkTopK(logits: Float32Array, rows: number, cols: number, k: number, logitsOffset: number, chunk?: number) {
  const [vOff, iOff, lOff] = [2, 5, 1];
  const values = createStorage(gpu(), 'values', new Float32Array(vOff + rows * k + 1).fill(NaN));
  const indices = poisonedU32(iOff + rows * k + 1);
  const lse = createStorage(gpu(), 'lse', new Float32Array(lOff + rows + 1).fill(NaN));
  const op = new TopK(
    gpu(),
    { logits: createStorage(gpu(), 'logits', logits), values, indices, logSumExp: lse },
    { maxRows: rows, maxCols: cols, chunk, maxK: k },
  );
  await runPass(gpu(), (pass) =>
    op.encode(pass, { rows, cols, k, logitsOffset, valuesOffset: vOff, indicesOffset: iOff, logSumExpOffset: lOff }),
  );
  const gotValues = await readF32(gpu(), values, vOff + rows * k + 1);
  const gotIndices = await readU32(gpu(), indices, iOff + rows * k + 1);
  const gotLse = await readF32(gpu(), lse, lOff + rows + 1);
  op.destroy();
  for (let r = 0; r < rows; r++) {
    const want = ranked(logits, logitsOffset, r, cols).slice(0, k);
    expect(Array.from(gotIndices.subarray(iOff + r * k, iOff + (r + 1) * k)), `row ${r} indices`).toEqual(want);
    expect(Array.from(gotValues.subarray(vOff + r * k, vOff + (r + 1) * k)), `row ${r} values`).toEqual(
      want.map((c) => logits[logitsOffset + r * cols + c]),
    );
    const wantLse = logSumExp(logits, logitsOffset, r, cols);
    const gotRowLse = gotLse[lOff + r];
    if (wantLse === -Infinity) expect(gotRowLse, `row ${r} lse`).toBe(-Infinity);
    else expect(Math.abs(gotRowLse - wantLse) / Math.max(1, Math.abs(wantLse)), `row ${r} lse ${gotRowLse} vs ${wantLse}`).toBeLessThan(2e-6);
  }
  // Nothing outside the outputs was written.
  expect([gotValues[0], gotValues[vOff - 1], gotValues[vOff + rows * k]].every(Number.isNaN)).toBe(true);
  expect([gotIndices[0], gotIndices[iOff - 1], gotIndices[iOff + rows * k]]).toEqual(Array(3).fill(0xdeadbeef));
  expect(Number.isNaN(gotLse[0]) && Number.isNaN(gotLse[lOff + rows])).toBe(true);
}

describe('argmax', () => {
  it('V = 1', async () => {
    await checkArgmax(new Float32Array([0, 0, -3]), 2, 1, 1);
  });

  it('rows of 37 with ties, -inf and a fully -inf row', async () => {
    const logits = tiedLogits(4 + 5 * 37, 1, 8);
    logits.fill(-Infinity, 4 + 2 * 37, 4 + 3 * 37); // row 2: only -inf -> 0
    logits.fill(-Infinity, 4 + 3 * 37, 4 + 4 * 37); // row 3: -inf but one -1e30 at 20
    logits[4 + 3 * 37 + 20] = -1e30;
    logits[4 + 4 * 37 + 36] = 1e30; // row 4: the winner is the last column
    await checkArgmax(logits, 5, 37, 4);
    expect((await runArgmax(logits, 5, 37, 4)).slice(2)).toEqual([0, 20, 36]);
  });

  it('V = 50257 (GPT-2), the maximum tied across chunks', async () => {
    const cols = 50257;
    const logits = randomF32(3 * cols, 2, 10);
    // Row 0: the same maximum at columns 40000, 9000 and 50256: 9000 wins.
    for (const c of [40000, 9000, 50256]) logits[c] = 20;
    // Row 1: the maximum in the last (short) chunk.
    logits[cols + 50250] = 30;
    await checkArgmax(logits, 3, cols, 0);
  });

  it('more chunks than one workgroup (chunk 64: 786 chunks per row)', async () => {
    const cols = 50257;
    const logits = tiedLogits(2 * cols + 7, 3);
    await checkArgmax(logits, 2, cols, 7, 64);
  });

  it('refuses runs beyond its scratch and bad options', () => {
    const logits = createStorage(gpu(), 'logits', 1000 * 4);
    const indices = createStorage(gpu(), 'indices', 16);
    const op = new Argmax(gpu(), { logits, indices }, { maxRows: 2, maxCols: 100 });
    const pass = {} as GPUComputePassEncoder; // never reached: validation throws first
    expect(() => op.encode(pass, { rows: 3, cols: 10 })).toThrow(/maxRows/);
    expect(() => op.encode(pass, { rows: 1, cols: 101 })).toThrow(/maxCols/);
    expect(() => op.encode(pass, { rows: 2, cols: 100, indicesOffset: 3 })).toThrow(/indices needs/);
    expect(() => new Argmax(gpu(), { logits, indices }, { maxRows: 0, maxCols: 100 })).toThrow(ShapeError);
    op.destroy();
  });
});

describe('topk', () => {
  it('V = 1, k = 1', async () => {
    await checkTopK(new Float32Array([1, -2.5]), 1, 1, 1, 1);
  });

  it('rows of 37, k = 5, 37 (the whole row) with ties and -inf', async () => {
    const logits = tiedLogits(3 + 4 * 37, 4, 12);
    logits.fill(-Infinity, 3 + 37, 3 + 2 * 37); // row 1: only -inf: lse -inf, columns 0.. in order
    await checkTopK(logits, 4, 37, 5, 3);
    await checkTopK(logits, 4, 37, 37, 3);
  });

  it('k = 64 over rows of 1031 split in short chunks (chunk 100), heavy ties', async () => {
    await checkTopK(tiedLogits(3 * 1031, 5, 20), 3, 1031, 64, 0, 100);
  });

  it('a chunk shorter than k (V = 70, chunk 64, k = 64)', async () => {
    await checkTopK(tiedLogits(2 * 70, 6), 2, 70, 64, 0, 64);
  });

  it('V = 50257 (GPT-2), k = 64 and k = 1', async () => {
    const cols = 50257;
    const logits = randomF32(2 * cols + 9, 7, 8);
    // Row 1: a block of equal top values spread over chunks.
    for (const c of [50256, 3, 2048, 30000, 2047]) logits[9 + cols + c] = 12;
    await checkTopK(logits, 2, cols, TOPK_MAX_K, 9);
    await checkTopK(logits, 2, cols, 1, 9);
  });

  it('without a logSumExp buffer, and k beyond the limits', async () => {
    const logits = createStorage(gpu(), 'logits', randomF32(300, 8));
    const values = createStorage(gpu(), 'values', 300 * 4);
    const indices = createStorage(gpu(), 'indices', 300 * 4);
    const op = new TopK(gpu(), { logits, values, indices }, { maxRows: 3, maxCols: 100 });
    await runPass(gpu(), (pass) => op.encode(pass, { rows: 3, cols: 100, k: 3 }));
    const want = Array.from({ length: 3 }, (_, r) => ranked(randomF32(300, 8), 0, r, 100).slice(0, 3)).flat();
    expect(Array.from(await readU32(gpu(), indices, 9))).toEqual(want);
    const pass = {} as GPUComputePassEncoder; // never reached: validation throws first
    expect(() => op.encode(pass, { rows: 1, cols: 100, k: 65 })).toThrow(ShapeError);
    expect(() => op.encode(pass, { rows: 1, cols: 10, k: 11 })).toThrow(/row length/);
    expect(() => op.encode(pass, { rows: 1, cols: 10, k: 2, logSumExpOffset: 1 })).toThrow(/logSumExp/);
    expect(() => new TopK(gpu(), { logits, values, indices }, { maxRows: 1, maxCols: 10, maxK: 65 })).toThrow(ShapeError);
    expect(() => new TopK(gpu(), { logits, values, indices }, { maxRows: 1, maxCols: 10, chunk: 1 << 16 })).toThrow(/workgroup memory/);
    op.destroy();
  });
});

describe('pick (the GPU sampler)', () => {
  /** The CPU sampler's choice (float64, its own code), as an index into the row's candidates. */
  function reference(values: Float32Array, ids: Uint32Array, history: ReadonlySet<number>, p: RowSampling): number {
    const { order, scores } = penalizedOrder({ ids, logits: values }, history, p.repetitionPenalty);
    return order[p.temperature > 0 ? pickSorted(scores, p, p.uniform) : 0];
  }

  /**
   * Rows of k candidates sorted as TopK leaves them (ties: lower id first), each picked under one
   * of the parameter sets validators send (and repetition penalties over a random history), on
   * the GPU and by the CPU sampler's code. Row r keeps its seen tokens in slot r.
   */
  async function checkPick(rows: number, k: number, seed: number) {
    const next = rng(seed);
    const values = new Float32Array(rows * k);
    const ids = new Uint32Array(rows * k);
    for (let r = 0; r < rows; r++) {
      // Peaked rows (a clear favourite) and flat ones (many plausible tokens), logits of both signs, a few exact ties.
      const spread = r % 2 === 0 ? 6 : 1.5;
      const row = Array.from({ length: k }, () => Math.round((next() - 0.3) * spread * 64) / 64).sort((a, b) => b - a);
      row.forEach((v, j) => {
        values[r * k + j] = v;
        ids[r * k + j] = 1000 * r + 7 * j + 3;
      });
    }
    const presets: Array<Omit<RowSampling, 'uniform' | 'repetitionPenalty'> & { repetitionPenalty?: number }> = [
      { temperature: 0, topK: 0, topP: 1, minP: 0 },
      { temperature: 0.7, topK: 50, topP: 0.95, minP: 0 },
      { temperature: 1, topK: 0, topP: 1, minP: 0 },
      { temperature: 1.3, topK: 0, topP: 1, minP: 0.05 },
      { temperature: 0.2, topK: 5, topP: 0.5, minP: 0.1 },
      { temperature: 2, topK: 1, topP: 1, minP: 0 },
      { temperature: 1, topK: 0, topP: 0.01, minP: 0 },
      { temperature: 100, topK: 0, topP: 1, minP: 0 },
      { temperature: 1, topK: 0, topP: 1, minP: 0.5 },
      { temperature: 0, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1.5 },
      { temperature: 0.8, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1.3 },
      { temperature: 0.7, topK: 20, topP: 0.95, minP: 0, repetitionPenalty: 1.1 },
      { temperature: 1, topK: 0, topP: 0.9, minP: 0.02, repetitionPenalty: 0.8 },
    ];
    // Every third draw is the largest the host makes: it takes the last candidate the filters keep.
    const sampling: RowSampling[] = Array.from({ length: rows }, (_, r) => ({
      repetitionPenalty: 1,
      ...presets[r % presets.length],
      uniform: r % 3 === 0 ? 1 - 2 ** -32 : next(),
    }));
    // Each row's history: about a third of its candidates, and tokens outside them.
    const W = seenWords(1000 * rows);
    const seen = new Uint32Array(rows * W);
    const histories = Array.from({ length: rows }, (_, r) => {
      const history = new Set<number>([1000 * r + 1]);
      for (let j = 0; j < k; j++) if (next() < 0.35) history.add(ids[r * k + j]);
      for (const t of history) seen[r * W + (t >>> 5)] |= 1 << (t & 31);
      return history;
    });
    const samplingOffset = 3;
    const words = new Uint32Array(samplingOffset + rows * ROW_SAMPLING_WORDS);
    writeRowSampling(words, samplingOffset, sampling, sampling.map((_, r) => r));
    const pickedOffset = 2;
    const picked = poisonedU32(pickedOffset + rows + 1);
    const seenBuffer = createStorage(gpu(), 'seen', seen);
    const op = new PickToken(gpu(), {
      values: createStorage(gpu(), 'values', values),
      indices: createStorage(gpu(), 'ids', ids),
      sampling: createStorage(gpu(), 'sampling', words),
      picked,
      seen: seenBuffer,
    });
    await runPass(gpu(), (pass) => op.encode(pass, { rows, k, samplingOffset, pickedOffset, seenWords: W }));
    const got = await readU32(gpu(), picked, pickedOffset + rows + 1);
    const seenAfter = await readU32(gpu(), seenBuffer, rows * W);
    expect([got[0], got[pickedOffset - 1], got[pickedOffset + rows]]).toEqual(Array(3).fill(0xdeadbeef));
    let nearBoundaries = 0;
    let penalisedChanged = 0;
    for (let r = 0; r < rows; r++) {
      const rowValues = values.subarray(r * k, (r + 1) * k);
      const rowIds = ids.subarray(r * k, (r + 1) * k);
      const p = sampling[r];
      const want = rowIds[reference(rowValues, rowIds, histories[r], p)];
      const gotId = got[pickedOffset + r];
      // A penalised row adds its pick to its seen tokens; no other row's are touched.
      const expectSeen = new Set(histories[r]);
      if (p.repetitionPenalty !== 1) expectSeen.add(gotId);
      const seenRow = [...seenAfter.subarray(r * W, (r + 1) * W)].flatMap((w, i) => Array.from({ length: 32 }, (_, b) => ((w >>> b) & 1 ? [i * 32 + b] : [])).flat());
      expect(new Set(seenRow), `row ${r} seen`).toEqual(expectSeen);
      if (p.repetitionPenalty !== 1 && want !== rowIds[reference(rowValues, rowIds, new Set(), p)]) penalisedChanged++;
      if (gotId === want) continue;
      // f32 on the GPU, f64 here: a different pick is only allowed where the draw or a filter sits
      // within rounding of a boundary, so that nudging it by 1e-5 gives the GPU's choice.
      const eps = 1e-5;
      const nudged = [{ uniform: p.uniform - eps }, { uniform: p.uniform + eps }, { topP: p.topP - eps }, { topP: p.topP + eps }, { minP: p.minP + eps }, { minP: Math.max(0, p.minP - eps) }];
      expect(nudged.map((n) => rowIds[reference(rowValues, rowIds, histories[r], { ...p, ...n })]), `row ${r} (${JSON.stringify(p)}): GPU picked ${gotId}, CPU ${want}`).toContain(gotId);
      nearBoundaries++;
    }
    expect(nearBoundaries).toBeLessThanOrEqual(Math.ceil(rows / 100));
    return penalisedChanged;
  }

  it('k = 1, 37 and 64 over many rows and every kind of parameters, repetition penalties included', async () => {
    await checkPick(5, 1, 1);
    const changed = (await checkPick(203, 37, 2)) + (await checkPick(131, TOPK_MAX_K, 3));
    // The penalty changed the pick in many rows: the check above covers it.
    expect(changed).toBeGreaterThan(10);
  });

  it('draws in proportion to the kept weights (a flat row, 4000 draws)', async () => {
    // Four candidates with weights 4 : 3 : 2 : 1 at T = 1; top_p 0.75 keeps the first three (0.4 + 0.3 + 0.2 >= 0.75).
    const rows = 4000;
    const logits = [Math.log(4), Math.log(3), Math.log(2), 0];
    const values = Float32Array.from({ length: rows * 4 }, (_, i) => logits[i % 4]);
    const ids = Uint32Array.from({ length: rows * 4 }, (_, i) => i % 4);
    const next = rng(9);
    const words = new Uint32Array(rows * ROW_SAMPLING_WORDS);
    const draws = Array.from({ length: rows }, () => ({ temperature: 1, topK: 0, topP: 0.75, minP: 0, uniform: next(), repetitionPenalty: 1 }));
    writeRowSampling(words, 0, draws, draws.map(() => 0));
    const picked = poisonedU32(rows);
    const op = new PickToken(gpu(), {
      values: createStorage(gpu(), 'values', values),
      indices: createStorage(gpu(), 'ids', ids),
      sampling: createStorage(gpu(), 'sampling', words),
      picked,
      seen: createStorage(gpu(), 'seen', new Uint32Array(1)),
    });
    await runPass(gpu(), (pass) => op.encode(pass, { rows, k: 4, seenWords: 1 }));
    const counts = [0, 0, 0, 0];
    for (const id of await readU32(gpu(), picked, rows)) counts[id]++;
    expect(counts[3]).toBe(0);
    [4 / 9, 3 / 9, 2 / 9].forEach((share, i) => expect(Math.abs(counts[i] / rows - share), `candidate ${i}: ${counts[i]}`).toBeLessThan(0.03));
    const pass = {} as GPUComputePassEncoder; // never reached: validation throws first
    expect(() => op.encode(pass, { rows, k: 4, samplingOffset: 1, seenWords: 1 })).toThrow(/sampling needs/);
    expect(() => op.encode(pass, { rows: 1, k: 65, seenWords: 1 })).toThrow(ShapeError);
  });
});

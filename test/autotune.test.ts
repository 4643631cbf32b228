// The decode matvec autotune (kernels/autotune.ts): tuning once per adapter key and reading the cache
// after, re-tuning when the key changes, a corrupt cache ignored with a warning, an unwritable cache
// costing a warning and not the result, and the tuned variants (each candidate forced) computing the
// same product as the float64 reference at their tier's bound. Every cache lives in a temporary
// directory. Tiny shapes: each candidate is a pipeline, and pipelines compile slowly on software.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  AUTOTUNE_CACHE_FORMAT,
  autotuneCachePath,
  autotuneKey,
  autotuneMatvecs,
  autotuneRopeKvFold,
  autotuneSetting,
  tunedMatvecOptions,
  tunedNormFold,
  type MatvecTuning,
} from '../kernels/autotune.ts';
import { Matvec, type MatvecOptions } from '../kernels/matvec.ts';
import { runPass } from '../kernels/dispatch.ts';
import { hasPackedDot } from '../kernels/tiers.ts';
import { packWeight } from '../kernels/weights-quantize.ts';
import { dequantize } from '../kernels/weights-reference.ts';
import { uploadWeight } from '../kernels/weights-upload.ts';
import { Transformer, type RowCandidates, type TransformerOptions } from '../models/transformer.ts';
import { openModelSource } from '../models/source.ts';
import { configFromHf } from '../models/config.ts';
import { createStorage, poisoned, readF32, useGpu } from './support/gpu.ts';
import { writeTinyLlamaGguf } from './support/tiny-models.ts';
import { decodeStepDispatches, expectRopeKvApartAsFolded } from './support/parity.ts';
import { referenceLogits } from './support/reference-model.ts';
import { expectClose, randomF32 } from './support/reference.ts';
import { projectionReference } from './support/projection.ts';

const gpu = useGpu();
const dir = mkdtempSync(join(tmpdir(), 'autotune-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const REQUEST = { dtypes: ['q8_0'] as const, shapes: [{ N: 40, K: 96 }] };
// A tuning compiles a handful of pipelines, which takes minutes on a busy software adapter.
const TUNING_TIMEOUT_MS = 900_000;

/** The candidates of a decode step of the last token after a prefill of the others, for the model at `path` loaded with `options`. */
async function lastTokenCandidates(path: string, tokens: number[], options: Partial<TransformerOptions>): Promise<RowCandidates> {
  const source = await openModelSource(path);
  const model = await Transformer.load(gpu(), source, { slots: 1, capacity: 32, prefillChunk: 8, ...options });
  try {
    await model.prefill(0, tokens.slice(0, -1), 0);
    const [candidates] = await model.decode([{ slot: 0, token: tokens.at(-1)!, position: tokens.length - 1 }]);
    return candidates;
  } finally {
    model.destroy();
    await source.close();
  }
}

/** Warnings and progress lines of one call. */
function recorder() {
  const warnings: string[] = [];
  const progress: string[] = [];
  return { warnings, progress, options: { warn: (m: string) => warnings.push(m), progress: (m: string) => progress.push(m) } };
}

function checkTuning(t: MatvecTuning): void {
  expect(['baseline', 'subgroup']).toContain(t.tier);
  expect(['f32', 'q8']).toContain(t.activations);
  expect(['strided', 'chunked']).toContain(t.layout);
  if (t.activations === 'q8') expect(t.layout).toBe('chunked');
  expect([1, 2, 3, 4]).toContain(t.rowsPerWorkgroup);
  expect(Number.isInteger(Math.log2(t.workgroupSize))).toBe(true);
  if (t.tier === 'subgroup') expect(gpu().features.has('subgroups')).toBe(true);
  if (t.activations === 'q8') expect(hasPackedDot(gpu())).toBe(true);
  expect(typeof t.normFold).toBe('boolean');
}

describe('matvec autotune', () => {
  it('tunes once, then a cache hit skips the tuning; a changed key tunes again', async () => {
    const cachePath = join(dir, 'hit', 'autotune.json'); // the directory does not exist yet
    const first = recorder();
    const tuned = await autotuneMatvecs(gpu(), { ...REQUEST, dtypes: [...REQUEST.dtypes] }, { cachePath, ...first.options });
    expect(tuned.tuned).toEqual(['q8_0']);
    expect(tuned.cached).toEqual([]);
    expect(first.progress).toEqual(['autotune: timing q8_0 matvec variants']);
    expect(first.warnings).toEqual([]);
    checkTuning(tuned.tunings.q8_0!);
    const file = JSON.parse(readFileSync(cachePath, 'utf8'));
    expect(Object.keys(file.entries)).toEqual([autotuneKey(gpu())]);
    // The key names the adapter, its backend, the Dawn build and this project's version.
    expect(JSON.parse(tuned.key)).toMatchObject({ vendor: gpu().info.vendor, description: gpu().info.description, backend: gpu().info.backend });
    expect(Object.keys(JSON.parse(tuned.key))).toEqual(['vendor', 'architecture', 'device', 'description', 'backend', 'webgpu', 'project']);

    const second = recorder();
    const hit = await autotuneMatvecs(gpu(), { ...REQUEST, dtypes: [...REQUEST.dtypes] }, { cachePath, ...second.options });
    expect(hit.cached).toEqual(['q8_0']);
    expect(hit.tuned).toEqual([]);
    expect(second.progress).toEqual([]); // nothing timed
    expect(hit.tunings).toEqual(tuned.tunings);

    // The same file under another adapter's (or driver's, or version's) key: not this adapter's tuning.
    const other = JSON.parse(tuned.key);
    other.description = `${other.description} (another driver)`;
    writeFileSync(cachePath, JSON.stringify({ format: AUTOTUNE_CACHE_FORMAT, entries: { [JSON.stringify(other)]: file.entries[tuned.key] } }));
    const third = recorder();
    const retuned = await autotuneMatvecs(gpu(), { ...REQUEST, dtypes: [...REQUEST.dtypes] }, { cachePath, ...third.options });
    expect(retuned.tuned).toEqual(['q8_0']);
    expect(third.progress).toHaveLength(1);
    // Both keys are kept: the other adapter's entry is not this one's to drop.
    expect(Object.keys(JSON.parse(readFileSync(cachePath, 'utf8')).entries).sort()).toEqual([JSON.stringify(other), tuned.key].sort());

    // A cached variant this device cannot run (an unknown tier, q8 activations strided), or one
    // without the norm's choice or the layout (an older file's), is tuned again, not trusted.
    const spoils = [
      (t: Record<string, unknown>) => (t.tier = 'warp'),
      (t: Record<string, unknown>) => Object.assign(t, { activations: 'q8', layout: 'strided' }),
      (t: Record<string, unknown>) => delete t.normFold,
      (t: Record<string, unknown>) => delete t.layout,
    ];
    for (const spoil of spoils) {
      const bad = JSON.parse(readFileSync(cachePath, 'utf8'));
      for (const id of Object.keys(bad.entries[tuned.key].tunings)) spoil(bad.entries[tuned.key].tunings[id]);
      writeFileSync(cachePath, JSON.stringify(bad));
      expect((await autotuneMatvecs(gpu(), { ...REQUEST, dtypes: [...REQUEST.dtypes] }, { cachePath, ...recorder().options })).tuned).toEqual(['q8_0']);
    }
  }, TUNING_TIMEOUT_MS);

  it('with post-norms (Gemma) also times the post-norm fold, cached under an id of its own', async () => {
    const cachePath = join(dir, 'post-norms.json');
    const plain = await autotuneMatvecs(gpu(), { ...REQUEST, dtypes: [...REQUEST.dtypes] }, { cachePath, ...recorder().options });
    expect(plain.tunings.q8_0!.postNormFold).toBeUndefined();
    const request = { ...REQUEST, dtypes: [...REQUEST.dtypes], postNorms: true };
    const first = recorder();
    const post = await autotuneMatvecs(gpu(), request, { cachePath, ...first.options });
    expect(post.tuned).toEqual(['q8_0']); // the plain tuning is not reused: it never timed the post-norm
    expect(typeof post.tunings.q8_0!.postNormFold).toBe('boolean');
    expect(first.warnings).toEqual([]);
    const ids = Object.keys(JSON.parse(readFileSync(cachePath, 'utf8')).entries[post.key].tunings);
    expect(ids.sort()).toEqual(['q8_0 40x96', 'q8_0 40x96 post-norms']);
    expect((await autotuneMatvecs(gpu(), request, { cachePath })).cached).toEqual(['q8_0']);
    // A post-norm tuning without its choice (spoiled) is tuned again.
    const file = JSON.parse(readFileSync(cachePath, 'utf8'));
    delete file.entries[post.key].tunings['q8_0 40x96 post-norms'].postNormFold;
    writeFileSync(cachePath, JSON.stringify(file));
    expect((await autotuneMatvecs(gpu(), request, { cachePath })).tuned).toEqual(['q8_0']);
  }, TUNING_TIMEOUT_MS);

  it('ignores a corrupt cache with a warning, and rewrites it', async () => {
    const cachePath = join(dir, 'corrupt.json');
    writeFileSync(cachePath, '{"format": 1, "entries": {"trunc');
    const r = recorder();
    const result = await autotuneMatvecs(gpu(), { ...REQUEST, dtypes: [...REQUEST.dtypes] }, { cachePath, ...r.options });
    expect(result.tuned).toEqual(['q8_0']);
    expect(r.warnings).toHaveLength(1);
    expect(r.warnings[0]).toMatch(/autotune: ignoring the unreadable cache .*corrupt\.json/);
    expect(JSON.parse(readFileSync(cachePath, 'utf8')).format).toBe(AUTOTUNE_CACHE_FORMAT);
    // Valid JSON of the wrong shape is ignored the same way.
    writeFileSync(cachePath, '[1, 2, 3]');
    const again = recorder();
    expect((await autotuneMatvecs(gpu(), { ...REQUEST, dtypes: [...REQUEST.dtypes] }, { cachePath, ...again.options })).tuned).toEqual(['q8_0']);
    expect(again.warnings[0]).toMatch(new RegExp(`format undefined, expected ${AUTOTUNE_CACHE_FORMAT}`));
  }, TUNING_TIMEOUT_MS);

  it('an unwritable cache directory costs a warning, not the load', async () => {
    // A regular file where the directory should be: mkdir fails even for root.
    const blocker = join(dir, 'not-a-directory');
    writeFileSync(blocker, 'x');
    const cachePath = join(blocker, 'autotune.json');
    const r = recorder();
    const result = await autotuneMatvecs(gpu(), { ...REQUEST, dtypes: [...REQUEST.dtypes] }, { cachePath, ...r.options });
    expect(result.tuned).toEqual(['q8_0']);
    checkTuning(result.tunings.q8_0!);
    expect(r.warnings).toHaveLength(1);
    expect(r.warnings[0]).toMatch(/autotune: cannot write the cache .*not-a-directory.*the tuning holds for this process only/);
  }, TUNING_TIMEOUT_MS);

  it('every candidate variant computes the same product (forced one by one, against float64)', async () => {
    const N = 37;
    const K = 160;
    const host = packWeight('q4_0', N, K, randomF32(N * K, 31, 0.5));
    const weight = uploadWeight(gpu(), 'w', host);
    const a = randomF32(K, 32);
    const input = createStorage(gpu(), 'a', a);
    const ref = projectionReference(dequantize(host), N, K, a, 1, 0, K);
    const tiers = gpu().features.has('subgroups') ? (['baseline', 'subgroup'] as const) : (['baseline'] as const);
    const forms: Array<Pick<MatvecOptions, 'activations' | 'layout'>> = [
      { activations: 'f32', layout: 'strided' },
      { activations: 'f32', layout: 'chunked' },
      ...(hasPackedDot(gpu()) ? [{ activations: 'q8' as const }] : []),
    ];
    for (const tier of tiers) {
      for (const form of forms) {
        for (const [rowsPerWorkgroup, workgroupSize] of [[1, 64], [4, 32], [2, 256]]) {
          const output = poisoned(gpu(), 'out', N);
          const kernel = new Matvec(gpu(), { weight, input, output }, { tier, ...form, rowsPerWorkgroup, workgroupSize });
          await runPass(gpu(), (pass) => kernel.encode(pass, { M: 1 }));
          // f32 activations: f32 accumulation only; q8: the activations' rounding (kernels/matvec.ts).
          const what = `${tier} ${kernel.activations} ${kernel.layout} rows=${rowsPerWorkgroup} wg=${workgroupSize}`;
          expectClose(await readF32(gpu(), output, N), ref, form.activations === 'q8' ? 1.5e-2 : 1e-5, what);
        }
      }
    }
  }, TUNING_TIMEOUT_MS);

  // Through the model: a load tunes (or reads the cache), and whatever variant runs, forced or tuned,
  // the decode step's logits match the float64 reference at the q8 tier's bound.
  it('the RoPE + KV-write fold: timed both ways once, then read from the cache beside the matvecs\' tunings; a length past the capacity is refused', async () => {
    const cachePath = join(dir, 'rope-kv', 'autotune.json');
    await autotuneMatvecs(gpu(), REQUEST, { cachePath });
    // Partial rotary dims, interleaved pairs, the head norm and a q8_0 cache: the most the fold does.
    const request = { Hq: 4, Hkv: 2, D: 32, kvDtype: 'q8_0', rotaryDims: 24, mode: 'interleaved', headNorm: true, capacity: 48, lengths: [16, 40] } as const;
    const r = recorder();
    const first = await autotuneRopeKvFold(gpu(), request, { cachePath, ...r.options });
    expect(first.cached).toBe(false);
    expect(r.progress).toEqual(['autotune: timing the RoPE + KV-write fold of decode attention']);
    expect(r.warnings).toEqual([]);
    expect(first.tuning.foldedMs).toBeGreaterThan(0);
    expect(first.tuning.apartMs).toBeGreaterThan(0);
    expect(first.tuning.fold).toBe(first.tuning.foldedMs <= first.tuning.apartMs);
    expect(await autotuneRopeKvFold(gpu(), request, { cachePath })).toEqual({ tuning: first.tuning, cached: true });
    const tunings = Object.values((JSON.parse(readFileSync(cachePath, 'utf8')) as { entries: Record<string, { tunings: Record<string, unknown> }> }).entries[autotuneKey(gpu())].tunings);
    expect(tunings).toContainEqual(first.tuning);
    expect(tunings).toHaveLength(2); // the matvec's tuning kept
    // Learned positions (no RoPE): the fold is the KV write alone, timed against the KV-write kernel.
    const noRope = await autotuneRopeKvFold(gpu(), { ...request, kvDtype: 'f32', rotaryDims: 0, mode: 'half', headNorm: false }, { cachePath });
    expect(noRope.cached).toBe(false);
    expect(noRope.tuning.fold).toBe(noRope.tuning.foldedMs <= noRope.tuning.apartMs);
    await expect(autotuneRopeKvFold(gpu(), { ...request, lengths: [49] }, { cachePath })).rejects.toThrow(/context length 49 is not in 1\.\.capacity \(48\)/);
  }, TUNING_TIMEOUT_MS);

  it('a model load tunes once, reads the cache after, and every variant decodes the same logits', async () => {
    const tiny = writeTinyLlamaGguf(join(dir, 'tiny-q4_0.gguf'), { dtype: 'q4_0', seed: 5, numLayers: 1 });
    const tokens = [5, 9, 40, 77, 12];
    const reference = referenceLogits(configFromHf(tiny.config), tiny.weights, tokens).at(-1)!;
    const cachePath = join(dir, 'model', 'autotune.json');
    const decodeWith = (options: Partial<TransformerOptions>) => lastTokenCandidates(tiny.path, tokens, options);
    const check = (what: string, candidates: RowCandidates) => {
      const want = Array.from(candidates.ids, (id) => reference[id]);
      expectClose(candidates.logits, want, 1.5e-2, what);
      let best = 0;
      for (let i = 1; i < reference.length; i++) if (reference[i] > reference[best]) best = i;
      expect(candidates.ids[0], what).toBe(best);
    };
    const progress: string[] = [];
    check('autotuned', await decodeWith({ autotune: { cachePath, progress: (m) => progress.push(m) } }));
    expect(progress).toContain('autotune: timing q4_0 matvec variants');
    expect(progress).toContain('autotune: timing the RoPE + KV-write fold of decode attention');
    const timed = progress.length;
    check('cached', await decodeWith({ autotune: { cachePath, progress: (m) => progress.push(m) } }));
    expect(progress).toHaveLength(timed); // the second load timed nothing
    check('static defaults', await decodeWith({ autotune: false }));
    // Two forced variants far from the defaults (each is a model's worth of pipelines to compile), the
    // first with the norms apart (their own kernels before the projections).
    const fast = gpu().features.has('subgroups') ? 'subgroup' : 'baseline';
    const forced: MatvecTuning[] = [
      { tier: fast, activations: 'f32', layout: 'chunked', rowsPerWorkgroup: 4, workgroupSize: 32, normFold: false },
      hasPackedDot(gpu())
        ? { tier: 'baseline', activations: 'q8', layout: 'chunked', rowsPerWorkgroup: 1, workgroupSize: 64, normFold: true }
        : { tier: 'baseline', activations: 'f32', layout: 'strided', rowsPerWorkgroup: 1, workgroupSize: 64, normFold: true },
    ];
    for (const tuning of forced) {
      check(`forced ${JSON.stringify(tuning)}`, await decodeWith({ matvecTunings: { q4_0: tuning } }));
    }
  }, TUNING_TIMEOUT_MS);

  // f16 in the chunked layout, tuned at K = hidden size (64): the q/k/v, o and gate/up projections run
  // chunked, and ffn_down, whose K (an intermediate size of 100) is not whole 8-column chunks, strided.
  it('an f16 model forced to the chunked layout decodes the reference logits, ffn_down strided', async () => {
    const tiny = writeTinyLlamaGguf(join(dir, 'tiny-f16.gguf'), { dtype: 'f16', seed: 6, numLayers: 1, intermediateSize: 100 });
    const tokens = [7, 21, 3, 60];
    const reference = referenceLogits(configFromHf(tiny.config), tiny.weights, tokens).at(-1)!;
    const fast = gpu().features.has('subgroups') ? 'subgroup' : 'baseline';
    const tuning: MatvecTuning = { tier: fast, activations: 'f32', layout: 'chunked', rowsPerWorkgroup: 2, workgroupSize: 32, normFold: true };
    // The KV cache in f32, as the reference keeps it (the f16 cache's rounding is held to its own bound elsewhere).
    const candidates = await lastTokenCandidates(tiny.path, tokens, { kvDtype: 'f32', matvecTunings: { f16: tuning } });
    expectClose(candidates.logits, Array.from(candidates.ids, (id) => reference[id]), 1e-4, 'f16 chunked');
  }, TUNING_TIMEOUT_MS);

  it('a tuning that keeps the norms apart runs them as kernels: 7 dispatches a Llama layer, not 5, the same logits', async () => {
    const variant = { tier: 'baseline', activations: 'f32', layout: 'strided', rowsPerWorkgroup: 1, workgroupSize: 64 } as const;
    const perLayer = async (normFold: boolean) => {
      const counts: number[] = [];
      for (const numLayers of [1, 2]) {
        const path = join(dir, `layers-${numLayers}.gguf`);
        writeTinyLlamaGguf(path, { dtype: 'q4_0', seed: 7, numLayers });
        counts.push(await decodeStepDispatches(gpu(), path, { matvecTunings: { q4_0: { ...variant, normFold } } }));
      }
      return counts[1] - counts[0];
    };
    expect(await perLayer(true)).toBe(5);
    expect(await perLayer(false)).toBe(7);
    // Both ways decode the same logits (the norm kernel's and the fold's sums differ in order only).
    const path = join(dir, 'layers-2.gguf');
    const tokens = [3, 14, 15, 92, 65, 35];
    const logits = (normFold: boolean) => lastTokenCandidates(path, tokens, { matvecTunings: { q4_0: { ...variant, normFold } } });
    const [folded, apart] = [await logits(true), await logits(false)];
    expect(Array.from(apart.ids)).toEqual(Array.from(folded.ids));
    expectClose(apart.logits, folded.logits, 1e-5, 'norms apart vs folded');
  }, TUNING_TIMEOUT_MS);

  it('a tuning that keeps the RoPE + KV write apart runs its kernel before decode attention: 6 dispatches a Llama layer, the same logits (f16 KV)', async () => {
    const paths = [1, 2].map((numLayers) => join(dir, `layers-${numLayers}.gguf`)) as [string, string];
    for (const [i, path] of paths.entries()) writeTinyLlamaGguf(path, { dtype: 'q4_0', seed: 7, numLayers: i + 1 });
    const tokens = Array.from({ length: 20 }, (_, i) => (i * 29 + 3) % 300);
    await expectRopeKvApartAsFolded(gpu(), paths, tokens, { kvDtype: 'f16' });
  }, TUNING_TIMEOUT_MS);

  it('options: the setting, the cache path, and glu-capped rows', () => {
    expect(autotuneSetting(false, {})).toBeUndefined();
    expect(autotuneSetting(undefined, { WEBGPU_MINER_AUTOTUNE: 'off' })).toBeUndefined();
    expect(autotuneSetting(undefined, { WEBGPU_MINER_AUTOTUNE: '0' })).toBeUndefined();
    expect(autotuneSetting(undefined, {})).toEqual({});
    expect(autotuneSetting(true, { WEBGPU_MINER_AUTOTUNE: 'off' })).toEqual({}); // asked for explicitly
    expect(autotuneSetting({ cachePath: '/x' }, { WEBGPU_MINER_AUTOTUNE: 'off' })).toEqual({ cachePath: '/x' });
    expect(autotuneCachePath({ WEBGPU_MINER_AUTOTUNE_CACHE: '/tmp/a.json', XDG_CACHE_HOME: '/c' })).toBe('/tmp/a.json');
    expect(autotuneCachePath({ XDG_CACHE_HOME: '/c' })).toBe('/c/webgpu-miner/autotune.json');
    expect(autotuneCachePath({ HOME: '/h' })).toMatch(/\.cache\/webgpu-miner\/autotune\.json$/);
    const variant = { tier: 'baseline', activations: 'q8', layout: 'chunked', rowsPerWorkgroup: 4, workgroupSize: 64 } as const;
    const f16Variant = { tier: 'baseline', activations: 'f32', layout: 'chunked', rowsPerWorkgroup: 2, workgroupSize: 32 } as const;
    const tunings = { q4_0: { ...variant, normFold: false }, f16: { ...f16Variant, normFold: true } };
    const q4 = { dtype: 'q4_0', cols: 4096 } as const;
    expect(tunedMatvecOptions(tunings, q4)).toEqual(variant);
    expect(tunedMatvecOptions(tunings, q4, { glu: true })).toEqual({ ...variant, rowsPerWorkgroup: 2 });
    expect(tunedMatvecOptions(tunings, { dtype: 'q8_0', cols: 4096 })).toBeUndefined();
    expect(tunedMatvecOptions(undefined, q4)).toBeUndefined();
    // Tuned at K = hidden size: an f16 weight whose K is not whole 8-column chunks runs strided.
    expect(tunedMatvecOptions(tunings, { dtype: 'f16', cols: 4096 })).toEqual(f16Variant);
    expect(tunedMatvecOptions(tunings, { dtype: 'f16', cols: 4100 })).toEqual({ ...f16Variant, layout: 'strided' });
    expect(tunedNormFold(tunings, 'q4_0')).toBe(false);
    expect(tunedNormFold(tunings, 'q8_0')).toBe(true); // untuned: the static default folds
    expect(tunedNormFold(undefined, 'q4_0')).toBe(true);
  });
});

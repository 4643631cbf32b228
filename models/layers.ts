// What the forward pass runs, built once at load over the uploaded weights and the activation
// buffers: the embedding, each layer's kernels (LayerOps), the final norm, the LM head and top-k.
// models/transformer.ts owns the buffers and records the steps; this module only wires kernels to
// them, one plain branch per architecture difference (see transformer.ts for the list and legend).
import type { Gpu } from '../src/gpu/device.ts';
import type { BufferArena } from '../src/gpu/buffers.ts';
import { ShapeError } from '../src/errors.ts';
import { Elementwise } from '../kernels/elementwise.ts';
import { Embed } from '../kernels/embed.ts';
import { Linear } from '../kernels/linear.ts';
import { Norm } from '../kernels/norm.ts';
import { RopeKvWrite, ropeInverseFrequencies } from '../kernels/rope.ts';
import { DecodeAttention, KvWrite, PrefillAttention } from '../kernels/attention.ts';
import { PickToken, TopK } from '../kernels/sample.ts';
import type { ChunkedWeight } from '../kernels/weights-upload.ts';
import { postNormFoldFits, type MatvecFusion } from '../kernels/matvec.ts';
import { tunedMatvecOptions, tunedNormFold, tunedPostNormFold, type MatvecTunings } from '../kernels/autotune.ts';
import { layerWindow, type ModelConfig } from './config.ts';
import type { ModelSource } from './source.ts';
import type { KvCache } from './kv-cache.ts';

/**
 * The activation buffers of one step, of up to `rows` rows (StepSizes). `inputs` holds a step's per-row
 * inputs as u32 arrays laid end to end from element 0: token ids, positions, KV-write metadata
 * (slot, position) and, for decode, attention metadata (slot, kv_len) and the GPU sampler's
 * parameters (RowSampling); `picked` the tokens the GPU sampler picked, and `seen` each slot's seen
 * tokens for its repetition penalty (PickBuffers.seen).
 */
export type StepBuffers = Record<'inputs' | 'x' | 'x2' | 'h' | 'sublayer' | 'qkv' | 'attn' | 'mlp' | 'act' | 'logits' | 'topValues' | 'topIds' | 'lse' | 'picked' | 'seen' | 'headRows', GPUBuffer>;

/** The sizes the kernels are built for. */
export interface StepSizes {
  /** Most rows in a step: max(prefillChunk, slots). */
  rows: number;
  /** Rows of logits the head computes per submit. */
  logitRows: number;
  slots: number;
  capacity: number;
  /** Pieces of a batched prefill step: one prefill attention op each, per layer. */
  maxPieces: number;
  matvecTunings?: MatvecTunings;
  /**
   * Decode attention rotates and stores the step's key and value itself (DecodeAttention's newKv), or
   * (false) decode steps run ropeKvWrite / kvWrite before it, as prefill steps do.
   */
  ropeKvFold: boolean;
}

export interface LayerOps {
  /**
   * Runs before q/k/v projections that do not fold it in: matmul-sized ones, and any the adapter's
   * tuning keeps apart (Linear.normFoldedFor). With post-norms (Gemma), past the first layer, it is the
   * previous layer's post-MLP norm and residual add with this norm after it, in one kernel:
   * x = x2 + RMSNorm(sublayer), h = attn_norm(x).
   */
  attnNorm: Norm;
  qkv: Linear[];
  /**
   * RoPE models: RoPE of q and k and the KV write in one kernel (Qwen3, Gemma 3: after the RMSNorm of
   * each query and key head, in the same kernel); learned positions: the KV write. Decode steps skip
   * them where `decode` runs them itself (its newKv, set on every layer or none: StepSizes.ropeKvFold).
   */
  ropeKvWrite?: RopeKvWrite;
  kvWrite?: KvWrite;
  /** Sliding window of this layer's attention in keys, the query's own included (0 = unlimited). */
  window: number;
  /** One causal attention op per piece of a prefill step (each is encoded at most once per submit). */
  prefill: PrefillAttention[];
  decode: DecodeAttention;
  /** x2 = x + attn · Woᵀ (+ bias): the residual add fused into the projection; with post-norms, sublayer = attn · Woᵀ. */
  attnOut: Linear;
  /**
   * Runs before MLP projections that do not fold it in, as attnNorm. With post-norms, the attention's
   * post-norm and residual add with this norm after it, in one kernel: x2 = x + RMSNorm(sublayer),
   * h = ffn_norm(x2).
   */
  mlpNorm: Norm;
  /**
   * The MLP's input projections: one [gate; up] weight with interleaved rows (SwiGLU, gate and up of
   * one dtype), up alone (GELU), or gate and up apart (SwiGLU over mixed dtypes).
   */
  gateUp?: Linear;
  gate?: Linear;
  up?: Linear;
  /** The activation, where the projection has not fused it: after matmul-sized runs, or always when `gate` is apart. */
  act: Elementwise;
  /** x = x2 + act · Wdownᵀ (+ bias): the residual add fused into the projection; with post-norms, sublayer = act · Wdownᵀ. */
  down: Linear;
  /**
   * Post-norms, the last layer only: x = x2 + RMSNorm(sublayer), the MLP output normalised before the
   * residual add (every other layer's runs in the next layer's attnNorm).
   */
  ffnPostNorm?: Norm;
}

/** Every kernel of the forward pass, in the order a step runs them. */
export interface ForwardOps {
  embed: Embed;
  /** Learned positions (GPT-2): the position rows, and their sum with the token rows. */
  posEmbed?: Embed;
  posAdd?: Elementwise;
  layers: LayerOps[];
  finalNorm: Norm;
  /** The final norm over headRows: the last rows of a batched prefill's pieces, gathered. */
  finalNormGathered: Norm;
  lmHead: Linear;
  /** Gemma 2: logits = c tanh(raw / c), from the LM head's raw logits. */
  logitSoftcap?: Elementwise;
  topK: TopK;
  /** The GPU sampler: each row's pick among topK's candidates, by its parameters in `inputs`. */
  pick: PickToken;
}

/** Build every kernel of the forward pass over `weights` (by GGUF tensor name) and the step buffers `b`. */
export function buildForwardOps(
  gpu: Gpu,
  source: ModelSource,
  weights: Map<string, ChunkedWeight | GPUBuffer>,
  arena: BufferArena,
  kv: KvCache,
  b: StepBuffers,
  sizes: StepSizes,
): ForwardOps {
  const cfg = source.config;
  const { numHeads: Hq, numKvHeads: Hkv, headDim: D, vocabSize: V } = cfg;
  const matrix = (name: string) => {
    const w = weights.get(name);
    if (!w || !('chunks' in w)) throw new ShapeError(`${source.id}: weight ${name} was not loaded`);
    return w;
  };
  const vector = (name: string) => weights.get(name) as GPUBuffer | undefined;
  // Learned positions (GPT-2): token rows go to x2, position rows to h, and x = x2 + h.
  const embed = new Embed(gpu, { table: matrix('token_embd.weight'), ids: b.inputs, output: cfg.rope ? b.x : b.x2 });
  const positions = cfg.rope
    ? {}
    : {
        posEmbed: new Embed(gpu, { table: matrix('position_embd.weight'), ids: b.inputs, output: b.h }),
        posAdd: new Elementwise(gpu, 'add', { a: b.x2, b: b.h, out: b.x }),
      };

  const kvShape = { Hq, Hkv, D, capacity: sizes.capacity, ...kv.pool };
  const blockTable = kv.blockTable;
  const decodeScratch = arena.get('decode.scratch', DecodeAttention.scratchBytes({ ...kvShape, maxRows: sizes.slots }));
  // The head norm runs inside the RoPE kernel (RopeKvWrite), so a model with one needs RoPE.
  if (cfg.qkNorm && !cfg.rope) throw new ShapeError(`${source.id}: a query/key head norm needs RoPE positions, and this model has none`);
  const invFreq = cfg.rope ? arena.upload('rope.invFreq', inverseFrequencies(cfg.rope)) : undefined;
  // Gemma 3's sliding layers rotate with their own base, unscaled.
  const localInvFreq = cfg.rope?.localTheta !== undefined
    ? arena.upload('rope.invFreq.local', inverseFrequencies({ theta: cfg.rope.localTheta, dims: cfg.rope.dims }))
    : undefined;
  // Decode attention's RoPE table with a head norm: the layer's inverse frequencies, then its
  // q_norm and k_norm weights (one binding; copied once, at load).
  const ropeTable = (l: number, frequencies: GPUBuffer): GPUBuffer => {
    const half = cfg.rope!.dims / 2;
    const table = arena.get(`rope.table.${l}`, (half + 2 * D) * 4);
    const encoder = gpu.device.createCommandEncoder({ label: 'rope.table' });
    encoder.copyBufferToBuffer(frequencies, 0, table, 0, half * 4);
    encoder.copyBufferToBuffer(vector(`blk.${l}.attn_qk_norm.weight`)!, 0, table, half * 4, 2 * D * 4);
    gpu.device.queue.submit([encoder.finish()]);
    return table;
  };
  const norm = (prefix: string, x: GPUBuffer, out: GPUBuffer) =>
    new Norm(gpu, cfg.norm, { x, weight: vector(`${prefix}.weight`)!, bias: vector(`${prefix}.bias`), out }, { eps: cfg.normEps });
  const linear = (name: string, input: GPUBuffer, output: GPUBuffer, residual?: GPUBuffer, fused?: { input: GPUBuffer; output: GPUBuffer; fusion: MatvecFusion }) =>
    new Linear(gpu, {
      weight: matrix(`${name}.weight`), bias: vector(`${name}.bias`), input, output, residual, maxRows: sizes.rows, fused,
      matvec: tunedMatvecOptions(sizes.matvecTunings, matrix(`${name}.weight`), fused?.fusion),
    });
  // Gemma's post-norms: stream = residual + RMSNorm(sublayer), sublayer holding the attention's or
  // the MLP's output; then, where another sublayer follows, its pre-norm h = norm(stream) in the same
  // kernel.
  if (cfg.postNorms && cfg.norm !== 'rms') throw new ShapeError(`${source.id}: post-norms are RMSNorms, and this model's norm is ${cfg.norm}`);
  const postNorm = (prefix: string, residual: GPUBuffer, stream: GPUBuffer, nextPrefix?: string) =>
    new Norm(gpu, 'rms', {
      x: b.sublayer, weight: vector(`${prefix}.weight`)!, out: stream, residual,
      next: nextPrefix === undefined ? undefined : { weight: vector(`${nextPrefix}.weight`)!, out: b.h },
    }, { eps: cfg.normEps });
  // The projections after one norm (its kernel: `stream` into h), each writing `output` on decode.
  // Their matvecs fold the norm in, reading the raw stream, where this adapter's tuning says that pays
  // for each of their dtypes (MatvecTuning.normFold; all of them or none, since the norm's kernel runs
  // unless all fold it); else they read h, as the matmul does. `fusion`: what else they fuse. `post`:
  // a post-norm before the norm (Gemma): folded with it where the tuning says so (postNormFold) and the
  // adapter binds its buffers, each matvec then reading the sublayer's output and the stream before it
  // (`base`), the first writing `stream`; else the kernel before them runs both norms.
  const afterNorm = (
    names: string[], normPrefix: string, stream: GPUBuffer, output: GPUBuffer, fusion: MatvecFusion = {},
    post?: { prefix: string; base: GPUBuffer },
  ): Linear[] => {
    const tuned = post ? tunedPostNormFold : tunedNormFold;
    const fold = names.every((name) => tuned(sizes.matvecTunings, matrix(`${name}.weight`).dtype)) && (!post || postNormFoldFits(gpu));
    const norm = { kind: cfg.norm, weight: vector(`${normPrefix}.weight`)!, bias: vector(`${normPrefix}.bias`), eps: cfg.normEps };
    const unfusedOutput = output === b.act ? b.mlp : output; // the matmul writes the activation's input
    return names.map((name, i) => {
      const postNorm = fold && post ? { weight: vector(`${post.prefix}.weight`)!, eps: cfg.normEps, base: post.base, stream, writeStream: i === 0 } : undefined;
      const matvecFusion = fold ? { ...fusion, norm, postNorm } : fusion;
      const fused = fold || Object.keys(fusion).length > 0 ? { input: !fold ? b.h : post ? b.sublayer : stream, output, fusion: matvecFusion } : undefined;
      return linear(name, b.h, unfusedOutput, undefined, fused);
    });
  };

  const layers: LayerOps[] = [];
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `blk.${l}`;
    const [kCache, vCache] = kv.pools[l];
    const post = cfg.postNorms;
    // Q, K and V land side by side in each row of qkv: one fused weight when the checkpoint has
    // one (GPT-2) or when the loader fused them; else three projections into column slices, each
    // after the attention norm (afterNorm). With post-norms, past the first layer, the previous
    // layer's post-MLP norm comes before it: x = x2 + RMSNorm(sublayer).
    const qkvNames = weights.has(`${p}.attn_qkv.weight`) ? [`${p}.attn_qkv`] : ['attn_q', 'attn_k', 'attn_v'].map((part) => `${p}.${part}`);
    const qkv = afterNorm(qkvNames, `${p}.attn_norm`, b.x, b.qkv, {}, post && l > 0 ? { prefix: `blk.${l - 1}.post_ffw_norm`, base: b.x2 } : undefined);
    // With post-norms the attention's comes before the MLP's norm: x2 = x + RMSNorm(sublayer).
    const mlpPost = post ? { prefix: `${p}.post_attention_norm`, base: b.x } : undefined;
    const afterMlpNorm = (names: string[], output: GPUBuffer, fusion: MatvecFusion = {}) =>
      afterNorm(names.map((name) => `${p}.${name}`), `${p}.ffn_norm`, b.x2, output, fusion, mlpPost);
    const glu = cfg.mlp === 'geglu' ? 'gelu' : 'silu';
    let mlp: Pick<LayerOps, 'gateUp' | 'gate' | 'up'>;
    if (cfg.mlp === 'gelu') mlp = { up: afterMlpNorm(['ffn_up'], b.act, { activation: 'gelu' })[0] };
    else if (weights.has(`${p}.ffn_gate_up.weight`)) mlp = { gateUp: afterMlpNorm(['ffn_gate_up'], b.act, { activation: glu, glu: true })[0] };
    else {
      // Gate and up of different dtypes: two projections (each after the norm), then SwiGLU.
      const [gate, up] = afterMlpNorm(['ffn_gate', 'ffn_up'], b.mlp);
      mlp = { gate, up };
    }
    const act = cfg.mlp === 'gelu'
      ? new Elementwise(gpu, 'gelu', { a: b.mlp, out: b.act })
      : mlp.gateUp
        ? new Elementwise(gpu, cfg.mlp === 'geglu' ? 'geglu_pairs' : 'swiglu_pairs', { a: b.mlp, out: b.act })
        : new Elementwise(gpu, 'swiglu', { a: b.mlp, b: b.mlp, out: b.act });
    const window = layerWindow(cfg, l);
    const layerInvFreq = window > 0 && localInvFreq ? localInvFreq : invFreq;
    layers.push({
      attnNorm: post && l > 0 ? postNorm(`blk.${l - 1}.post_ffw_norm`, b.x2, b.x, `${p}.attn_norm`) : norm(`${p}.attn_norm`, b.x, b.h),
      qkv,
      ropeKvWrite: invFreq
        ? new RopeKvWrite(gpu, source.ropeMode, { ...kvShape, rotaryDims: cfg.rope!.dims, headNorm: cfg.qkNorm ? { eps: cfg.normEps } : undefined }, {
            qkv: b.qkv,
            rowMeta: b.inputs,
            invFreq: layerInvFreq!,
            kCache,
            vCache,
            blockTable,
            headNormWeight: cfg.qkNorm ? vector(`${p}.attn_qk_norm.weight`) : undefined,
          })
        : undefined,
      kvWrite: invFreq ? undefined : new KvWrite(gpu, kvShape, { k: b.qkv, v: b.qkv, rowMeta: b.inputs, kCache, vCache, blockTable }),
      window,
      prefill: Array.from({ length: sizes.maxPieces }, () =>
        new PrefillAttention(gpu, kvShape, { q: b.qkv, kCache, vCache, blockTable, out: b.attn }, { softcap: cfg.attnLogitSoftcap })),
      // Decode steps normalise, rotate and store the step's keys inside attention (one dispatch fewer a
      // layer) unless this adapter's tuning found the kernel before it faster.
      decode: new DecodeAttention(gpu, {
        ...kvShape, maxRows: sizes.slots, softcap: cfg.attnLogitSoftcap,
        newKv: sizes.ropeKvFold ? { rotaryDims: cfg.rope?.dims ?? 0, mode: source.ropeMode, headNorm: cfg.qkNorm ? { eps: cfg.normEps } : undefined } : undefined,
      }, {
        q: b.qkv, kCache, vCache, blockTable, out: b.attn, rowMeta: b.inputs, scratch: decodeScratch,
        ropeTable: sizes.ropeKvFold && layerInvFreq ? (cfg.qkNorm ? ropeTable(l, layerInvFreq) : layerInvFreq) : undefined,
      }),
      // The residual stream alternates x -> x2 -> x: a projection cannot add into the buffer it writes.
      attnOut: post ? linear(`${p}.attn_output`, b.attn, b.sublayer) : linear(`${p}.attn_output`, b.attn, b.x2, b.x),
      mlpNorm: post ? postNorm(`${p}.post_attention_norm`, b.x, b.x2, `${p}.ffn_norm`) : norm(`${p}.ffn_norm`, b.x2, b.h),
      ...mlp,
      act,
      down: post ? linear(`${p}.ffn_down`, b.act, b.sublayer) : linear(`${p}.ffn_down`, b.act, b.x, b.x2),
      ffnPostNorm: post && l === cfg.numLayers - 1 ? postNorm(`${p}.post_ffw_norm`, b.x2, b.x) : undefined,
    });
  }
  const finalNorm = norm('output_norm', b.x, b.h);
  const finalNormGathered = norm('output_norm', b.headRows, b.h);
  const head = weights.has('output.weight') ? matrix('output.weight') : matrix('token_embd.weight');
  // With a final soft-cap the head writes raw logits to their own buffer and the cap writes b.logits
  // (a kernel may not read and write one buffer through two bindings).
  const rawLogits = cfg.finalLogitSoftcap !== undefined ? arena.get('logits.raw', sizes.logitRows * V * 4) : b.logits;
  const lmHead = new Linear(gpu, {
    weight: head, bias: vector('output.bias'), input: b.h, output: rawLogits, maxRows: sizes.logitRows,
    matvec: tunedMatvecOptions(sizes.matvecTunings, head),
  });
  const logitSoftcap = cfg.finalLogitSoftcap !== undefined ? new Elementwise(gpu, 'softcap', { a: rawLogits, out: b.logits }, 256, cfg.finalLogitSoftcap) : undefined;
  const topK = new TopK(gpu, { logits: b.logits, values: b.topValues, indices: b.topIds, logSumExp: b.lse }, { maxRows: sizes.logitRows, maxCols: V });
  const pick = new PickToken(gpu, { values: b.topValues, indices: b.topIds, sampling: b.inputs, picked: b.picked, seen: b.seen });
  return { embed, ...positions, layers, finalNorm, finalNormGathered, lmHead, logitSoftcap, topK, pick };
}

/** RoPE inverse frequencies, with GGUF's per-frequency divisors applied when the file has them. */
function inverseFrequencies(rope: NonNullable<ModelConfig['rope']>): Float32Array {
  const inv = ropeInverseFrequencies(rope.dims, rope.theta, rope.scaling);
  const factors = rope.frequencyFactors;
  if (factors) {
    if (factors.length !== inv.length) throw new ShapeError(`rope_freqs has ${factors.length} entries, expected ${inv.length}`);
    for (let i = 0; i < inv.length; i++) inv[i] /= factors[i];
  }
  return inv;
}

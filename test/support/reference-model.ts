// Float64 reference forward passes on Hugging Face-named weights, written for clarity, not speed.
// They are the oracle for the GPU models (llama.cpp is the second oracle, for GGUF files).
import { layerWindow, type ModelConfig, type RopeScaling } from '../../models/config.ts';

export type Weights = Map<string, ArrayLike<number>>;

function get(weights: Weights, name: string): ArrayLike<number> {
  const w = weights.get(name);
  if (!w) throw new Error(`reference: missing weight ${name}`);
  return w;
}

/** y[n] = sum_k x[k] W[n, k] (+ b[n]) with W stored [N, K] (HF linear). */
function linear(x: Float64Array, w: ArrayLike<number>, n: number, b?: ArrayLike<number>): Float64Array {
  const k = x.length;
  const y = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let s = b ? b[i] : 0;
    for (let j = 0; j < k; j++) s += x[j] * w[i * k + j];
    y[i] = s;
  }
  return y;
}

/** y[n] = sum_k x[k] W[k, n] + b[n] with W stored [K, N] (GPT-2 Conv1D). */
function conv1d(x: Float64Array, w: ArrayLike<number>, n: number, b: ArrayLike<number>): Float64Array {
  const y = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let s = b[i];
    for (let j = 0; j < x.length; j++) s += x[j] * w[j * n + i];
    y[i] = s;
  }
  return y;
}

function rmsnorm(x: Float64Array, w: ArrayLike<number>, eps: number): Float64Array {
  let ss = 0;
  for (const v of x) ss += v * v;
  const r = 1 / Math.sqrt(ss / x.length + eps);
  return x.map((v, i) => v * r * w[i]);
}

/** RMSNorm of each D-element head of x with the same weight. */
function headRmsnorm(x: Float64Array, w: ArrayLike<number>, D: number, eps: number): Float64Array {
  const out = new Float64Array(x.length);
  for (let h = 0; h < x.length / D; h++) out.set(rmsnorm(x.subarray(h * D, (h + 1) * D), w, eps), h * D);
  return out;
}

function layernorm(x: Float64Array, w: ArrayLike<number>, b: ArrayLike<number>, eps: number): Float64Array {
  const mean = x.reduce((a, v) => a + v, 0) / x.length;
  const variance = x.reduce((a, v) => a + (v - mean) ** 2, 0) / x.length;
  const r = 1 / Math.sqrt(variance + eps);
  return x.map((v, i) => (v - mean) * r * w[i] + b[i]);
}

const silu = (x: number) => x / (1 + Math.exp(-x));
const gelu = (x: number) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));

/** Inverse frequencies as transformers computes them (default, linear and llama3 scaling). */
export function referenceInverseFrequencies(dims: number, theta: number, scaling?: RopeScaling): Float64Array {
  const inv = new Float64Array(dims / 2).map((_, i) => 1 / theta ** ((2 * i) / dims));
  if (!scaling) return inv;
  if (scaling.type === 'linear') return inv.map((f) => f / scaling.factor);
  const { factor, low_freq_factor: lowFreqFactor, high_freq_factor: highFreqFactor, original_max_position_embeddings: old } = scaling;
  const lowWavelen = old / lowFreqFactor;
  const highWavelen = old / highFreqFactor;
  return inv.map((f) => {
    const wavelen = (2 * Math.PI) / f;
    if (wavelen < highWavelen) return f;
    if (wavelen > lowWavelen) return f / factor;
    const smooth = (old / wavelen - lowFreqFactor) / (highFreqFactor - lowFreqFactor);
    return (1 - smooth) * (f / factor) + smooth * f;
  });
}

/** HF rotate_half RoPE on one head vector, in place. */
function ropeHalf(v: Float64Array, offset: number, dims: number, inv: Float64Array, pos: number): void {
  const half = dims / 2;
  for (let i = 0; i < half; i++) {
    const a = pos * inv[i];
    const c = Math.cos(a);
    const s = Math.sin(a);
    const x0 = v[offset + i];
    const x1 = v[offset + i + half];
    v[offset + i] = x0 * c - x1 * s;
    v[offset + i + half] = x1 * c + x0 * s;
  }
}

export interface ReferenceOptions {
  /**
   * Applied to the input of every projection (Llama/Qwen2: Q, K, V, O, gate, up, down; GPT-2:
   * c_attn, c_proj, c_fc, mlp c_proj; the LM head) before the product, named by its HF weight:
   * e.g. the activation rounding llama.cpp's CPU matmul does (Q8_K, Q8_0).
   */
  roundInput?: (x: Float64Array, weight: string) => Float64Array;
  /** GPT-2's activation in place of the exact tanh GELU (e.g. llama.cpp's f16-table GELU). */
  gelu?: (x: number) => number;
}

/** Logits at every position for `tokens` (one sequence, from position 0). */
export function referenceLogits(config: ModelConfig, weights: Weights, tokens: number[], options: ReferenceOptions = {}): Float64Array[] {
  const round = options.roundInput ?? ((x: Float64Array) => x);
  const act = options.gelu ?? gelu;
  const geluOf = act;
  const { hiddenSize: C, numHeads: H, numKvHeads: Hkv, headDim: D, numLayers, vocabSize: V } = config;
  const gpt2 = config.architecture === 'gpt2';
  const inv = config.rope ? referenceInverseFrequencies(config.rope.dims, config.rope.theta, config.rope.scaling) : undefined;
  const prefix = gpt2 ? 'transformer.' : 'model.';
  const embed = get(weights, gpt2 ? 'transformer.wte.weight' : 'model.embed_tokens.weight');
  // Gemma: HF norm weights scale by (1 + w) (Gemma3RMSNorm); embeddings times sqrt(hidden), as an f32
  // (Gemma3TextScaledWordEmbedding); its local layers rotate with their own base.
  const gemma = config.architecture === 'gemma2' || config.architecture === 'gemma3';
  // Gemma 2: soft-capped attention scores and final logits, c tanh(x / c).
  const cap = (x: number, c: number | undefined) => (c === undefined ? x : c * Math.tanh(x / c));
  const normWeight = (w: ArrayLike<number>): ArrayLike<number> => (gemma ? Array.from(w, (v) => v + 1) : w);
  const localInv = config.rope?.localTheta !== undefined ? referenceInverseFrequencies(config.rope.dims, config.rope.localTheta) : undefined;
  const scoreScale = config.attentionScale ?? 1 / Math.sqrt(D);
  const keys: Float64Array[][] = Array.from({ length: numLayers }, () => []);
  const values: Float64Array[][] = Array.from({ length: numLayers }, () => []);
  const out: Float64Array[] = [];

  tokens.forEach((token, pos) => {
    const embedScale = gemma ? Math.fround(Math.sqrt(C)) : 1;
    let x = new Float64Array(C).map((_, i) => embed[token * C + i] * embedScale);
    if (gpt2) {
      const wpe = get(weights, 'transformer.wpe.weight');
      x = x.map((v, i) => v + wpe[pos * C + i]);
    }
    for (let l = 0; l < numLayers; l++) {
      const p = gpt2 ? `${prefix}h.${l}.` : `${prefix}layers.${l}.`;
      const w = (name: string) => get(weights, p + name);
      const wb = (name: string) => weights.get(p + name);
      let q: Float64Array;
      let k: Float64Array;
      let v: Float64Array;
      if (gpt2) {
        const h = layernorm(x, w('ln_1.weight'), w('ln_1.bias'), config.normEps);
        const qkv = conv1d(round(h, p + 'attn.c_attn.weight'), w('attn.c_attn.weight'), 3 * C, w('attn.c_attn.bias'));
        q = qkv.slice(0, C);
        k = qkv.slice(C, 2 * C);
        v = qkv.slice(2 * C);
      } else {
        const h = rmsnorm(x, normWeight(w('input_layernorm.weight')), config.normEps);
        const qkvProj = wb('self_attn.qkv_proj.weight');
        if (qkvProj) {
          // Phi-3: one qkv_proj, rows [q; k; v].
          const qkv = linear(round(h, p + 'self_attn.qkv_proj.weight'), qkvProj, (H + 2 * Hkv) * D);
          q = qkv.slice(0, H * D);
          k = qkv.slice(H * D, (H + Hkv) * D);
          v = qkv.slice((H + Hkv) * D);
        } else {
          q = linear(round(h, p + 'self_attn.q_proj.weight'), w('self_attn.q_proj.weight'), H * D, wb('self_attn.q_proj.bias'));
          k = linear(round(h, p + 'self_attn.k_proj.weight'), w('self_attn.k_proj.weight'), Hkv * D, wb('self_attn.k_proj.bias'));
          v = linear(round(h, p + 'self_attn.v_proj.weight'), w('self_attn.v_proj.weight'), Hkv * D, wb('self_attn.v_proj.bias'));
        }
        if (config.qkNorm) {
          // Qwen3, Gemma 3: RMSNorm of each head (weights of D) before RoPE.
          q = headRmsnorm(q, normWeight(w('self_attn.q_norm.weight')), D, config.normEps);
          k = headRmsnorm(k, normWeight(w('self_attn.k_norm.weight')), D, config.normEps);
        }
        const layerInv = localInv && layerWindow(config, l) > 0 ? localInv : inv!;
        for (let hh = 0; hh < H; hh++) ropeHalf(q, hh * D, config.rope!.dims, layerInv, pos);
        for (let hh = 0; hh < Hkv; hh++) ropeHalf(k, hh * D, config.rope!.dims, layerInv, pos);
      }
      keys[l].push(k);
      values[l].push(v);
      // Sliding window (transformers' masking_utils.sliding_window_overlay): the query at `pos` sees
      // key j iff j <= pos and j > pos - window.
      const window = layerWindow(config, l);
      const first = window > 0 ? Math.max(0, pos + 1 - window) : 0;
      const visibleKeys = keys[l].slice(first);
      const visibleValues = values[l].slice(first);
      const attn = new Float64Array(H * D);
      for (let hh = 0; hh < H; hh++) {
        const kv = Math.floor(hh / (H / Hkv));
        const scores = visibleKeys.map((kk) => {
          let s = 0;
          for (let d = 0; d < D; d++) s += q[hh * D + d] * kk[kv * D + d];
          return gpt2 ? s / Math.sqrt(D) : cap(s * scoreScale, config.attnLogitSoftcap);
        });
        const max = Math.max(...scores);
        const e = scores.map((s) => Math.exp(s - max));
        const sum = e.reduce((a, b) => a + b, 0);
        for (let t = 0; t < e.length; t++) {
          for (let d = 0; d < D; d++) attn[hh * D + d] += (e[t] / sum) * visibleValues[t][kv * D + d];
        }
      }
      if (gpt2) {
        const o = conv1d(round(attn, p + 'attn.c_proj.weight'), w('attn.c_proj.weight'), C, w('attn.c_proj.bias'));
        x = x.map((val, i) => val + o[i]);
        const h2 = layernorm(x, w('ln_2.weight'), w('ln_2.bias'), config.normEps);
        const fc = conv1d(round(h2, p + 'mlp.c_fc.weight'), w('mlp.c_fc.weight'), config.intermediateSize, w('mlp.c_fc.bias')).map(act);
        const proj = conv1d(round(fc, p + 'mlp.c_proj.weight'), w('mlp.c_proj.weight'), C, w('mlp.c_proj.bias'));
        x = x.map((val, i) => val + proj[i]);
      } else {
        let o = linear(round(attn, p + 'self_attn.o_proj.weight'), w('self_attn.o_proj.weight'), C);
        // Gemma: the attention output is normalised (post_attention_layernorm) before the residual add,
        // and the MLP's input norm is pre_feedforward_layernorm.
        if (gemma) o = rmsnorm(o, normWeight(w('post_attention_layernorm.weight')), config.normEps);
        x = x.map((val, i) => val + o[i]);
        const h2 = gemma
          ? rmsnorm(x, normWeight(w('pre_feedforward_layernorm.weight')), config.normEps)
          : rmsnorm(x, w('post_attention_layernorm.weight'), config.normEps);
        const F = config.intermediateSize;
        const gateUpProj = wb('mlp.gate_up_proj.weight');
        // Phi-3: one gate_up_proj, rows [gate; up].
        const gateUp = gateUpProj ? linear(round(h2, p + 'mlp.gate_up_proj.weight'), gateUpProj, 2 * F) : undefined;
        const gate = gateUp ? gateUp.slice(0, F) : linear(round(h2, p + 'mlp.gate_proj.weight'), w('mlp.gate_proj.weight'), F);
        const up = gateUp ? gateUp.slice(F) : linear(round(h2, p + 'mlp.up_proj.weight'), w('mlp.up_proj.weight'), F);
        const act = gate.map((g, i) => (gemma ? geluOf(g) : silu(g)) * up[i]);
        let down = linear(round(act, p + 'mlp.down_proj.weight'), w('mlp.down_proj.weight'), C);
        if (gemma) down = rmsnorm(down, normWeight(w('post_feedforward_layernorm.weight')), config.normEps);
        x = x.map((val, i) => val + down[i]);
      }
    }
    const final = gpt2
      ? layernorm(x, get(weights, 'transformer.ln_f.weight'), get(weights, 'transformer.ln_f.bias'), config.normEps)
      : rmsnorm(x, normWeight(get(weights, 'model.norm.weight')), config.normEps);
    const headName = config.tieWordEmbeddings ? (gpt2 ? 'transformer.wte.weight' : 'model.embed_tokens.weight') : 'lm_head.weight';
    out.push(linear(round(final, headName), get(weights, headName), V).map((l) => cap(l, config.finalLogitSoftcap)));
  });
  return out;
}

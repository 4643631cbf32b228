// What the forward pass loads, and how: every tensor a model needs under its canonical name, with
// the shapes expected, and the tensors fused at load (Q, K and V rows concatenated; gate and up rows
// interleaved, from two tensors or from the halves of Phi-3's one; q_norm and k_norm side by side).
// A missing tensor fails here, by name, before anything is uploaded.
import { ShapeError } from '../src/errors.ts';
import { ggufBytes, interleaveRowPairs, packGguf, sliceWeightRows, type HostWeight } from '../kernels/weights.ts';
import type { ModelConfig } from './config.ts';
import type { ModelSource } from './source.ts';

export interface PlanItem {
  name: string;
  kind: 'matrix' | 'vector';
  rows?: number;
  cols?: number;
  /** For a fused weight: the source tensors whose rows are concatenated (QKV), or interleaved. */
  fuse?: string[];
  /**
   * Interleave the rows of the two `fuse` tensors (gate, up) instead of concatenating them; with one
   * `fuse` tensor, interleave its two halves (Phi-3's [gate; up]).
   */
  interleave?: boolean;
}

/** Every tensor the forward pass needs, with expected shapes; a missing one fails with its name. */
export function tensorPlan(cfg: ModelConfig, source: ModelSource): PlanItem[] {
  const { hiddenSize: C, numHeads: Hq, numKvHeads: Hkv, headDim: D, intermediateSize: F, vocabSize: V } = cfg;
  const items: PlanItem[] = [];
  const need = (name: string, kind: PlanItem['kind'], rows?: number, cols?: number, fuse?: string[], interleave?: boolean) => {
    for (const n of fuse ?? [name]) {
      if (!source.has(n)) throw new ShapeError(`${source.id}: tensor "${n}" is missing (needed by ${cfg.architecture})`);
    }
    items.push({ name, kind, rows, cols, fuse, interleave });
  };
  const optional = (name: string, kind: PlanItem['kind']) => {
    if (source.has(name)) items.push({ name, kind });
  };
  need('token_embd.weight', 'matrix', V, C);
  if (!cfg.rope) need('position_embd.weight', 'matrix', cfg.maxPositions, C);
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `blk.${l}`;
    need(`${p}.attn_norm.weight`, 'vector');
    if (cfg.norm === 'layer') need(`${p}.attn_norm.bias`, 'vector');
    if (source.has(`${p}.attn_qkv.weight`)) {
      need(`${p}.attn_qkv.weight`, 'matrix', (Hq + 2 * Hkv) * D, C);
      if (source.has(`${p}.attn_q.bias`)) {
        // A fused weight with the three biases stored apart (llama.cpp accepts both forms).
        need(`${p}.attn_qkv.bias`, 'vector', undefined, undefined, ['attn_q', 'attn_k', 'attn_v'].map((part) => `${p}.${part}.bias`));
      } else optional(`${p}.attn_qkv.bias`, 'vector');
    } else {
      // Fused into one [W, C] weight when the three share a dtype (always, but for mixed-type GGUF files).
      const parts = ['attn_q', 'attn_k', 'attn_v'].map((part) => `${p}.${part}`);
      const widths = [Hq * D, Hkv * D, Hkv * D];
      if (new Set(parts.map((part) => source.dtypeOf(`${part}.weight`))).size === 1) {
        need(`${p}.attn_qkv.weight`, 'matrix', (Hq + 2 * Hkv) * D, C, parts.map((part) => `${part}.weight`));
        if (cfg.qkvBias) need(`${p}.attn_qkv.bias`, 'vector', undefined, undefined, parts.map((part) => `${part}.bias`));
      } else {
        parts.forEach((part, i) => {
          need(`${part}.weight`, 'matrix', widths[i], C);
          if (cfg.qkvBias) need(`${part}.bias`, 'vector');
        });
      }
    }
    if (cfg.qkNorm) {
      // One (2, D) vector, q_norm then k_norm: the RoPE + KV-write kernel normalises every head of a row.
      need(`${p}.attn_qk_norm.weight`, 'vector', 2 * D, undefined, [`${p}.attn_q_norm.weight`, `${p}.attn_k_norm.weight`]);
    }
    if (cfg.postNorms) {
      need(`${p}.post_attention_norm.weight`, 'vector', C);
      need(`${p}.post_ffw_norm.weight`, 'vector', C);
    }
    need(`${p}.attn_output.weight`, 'matrix', C, Hq * D);
    if (cfg.outputBias) need(`${p}.attn_output.bias`, 'vector');
    need(`${p}.ffn_norm.weight`, 'vector');
    if (cfg.norm === 'layer') need(`${p}.ffn_norm.bias`, 'vector');
    const gateUp = [`${p}.ffn_gate.weight`, `${p}.ffn_up.weight`];
    if (cfg.architecture === 'phi3') {
      // One [gate; up] weight of 2F rows (HF gate_up_proj, GGUF phi3 ffn_up): its halves interleaved.
      need(`${p}.ffn_gate_up.weight`, 'matrix', 2 * F, C, [gateUp[1]], true);
    } else if (cfg.mlp === 'geglu' || (cfg.mlp === 'swiglu' && !cfg.outputBias && source.dtypeOf(gateUp[0]) === source.dtypeOf(gateUp[1]))) {
      // GeGLU always takes this path: the activations have no GELU-gated form over gate and up apart
      // (gate and up of different dtypes are refused here, naming both).
      // One weight, gate and up rows interleaved: the decode matvec computes both rows of an output
      // and SwiGLU in one dispatch; prefill's matmul writes (gate, up) pairs.
      need(`${p}.ffn_gate_up.weight`, 'matrix', 2 * F, C, gateUp, true);
    } else {
      if (cfg.mlp === 'swiglu') need(gateUp[0], 'matrix', F, C);
      need(gateUp[1], 'matrix', F, C);
    }
    need(`${p}.ffn_down.weight`, 'matrix', C, F);
    if (cfg.outputBias) {
      need(`${p}.ffn_up.bias`, 'vector');
      need(`${p}.ffn_down.bias`, 'vector');
    }
  }
  need('output_norm.weight', 'vector');
  optional('output.bias', 'vector');
  if (cfg.norm === 'layer') need('output_norm.bias', 'vector');
  if (!cfg.tieWordEmbeddings || source.has('output.weight')) {
    if (source.has('output.weight')) need('output.weight', 'matrix', V, C);
    else if (!cfg.tieWordEmbeddings) throw new ShapeError(`${source.id}: tensor "output.weight" is missing and embeddings are not tied`);
  }
  return items;
}

/** A vector of the plan as f32: read, or concatenated from its `fuse` parts; its length checked. */
export async function planVector(source: ModelSource, item: PlanItem): Promise<Float32Array> {
  const data = item.fuse ? concat(await Promise.all(item.fuse.map((n) => source.vector(n)))) : await source.vector(item.name);
  if (item.rows !== undefined && data.length !== item.rows) {
    throw new ShapeError(`${source.id}: tensor "${item.name}" has ${data.length} elements, expected ${item.rows}`);
  }
  return data;
}

/** A matrix of the plan, packed for upload: read, or fused from its `fuse` parts; its shape checked. */
export async function planMatrix(source: ModelSource, item: PlanItem): Promise<HostWeight> {
  const host = item.fuse
    ? item.interleave
      ? interleaveRowPairs(item.name, ...(await gateAndUp(source, item.fuse)))
      : await fuseRows(source, item.fuse)
    : await source.matrix(item.name);
  checkShape(source.id, item.name, host, item.rows, item.cols);
  return host;
}

function concat(parts: Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const p of parts) {
    out.set(p, offset);
    offset += p.length;
  }
  return out;
}

/** The gate and up matrices to interleave: two tensors, or the two halves of one [gate; up] tensor. */
async function gateAndUp(source: ModelSource, names: string[]): Promise<[HostWeight, HostWeight]> {
  if (names.length === 2) return [await source.matrix(names[0]), await source.matrix(names[1])];
  const both = await source.matrix(names[0]);
  if (both.rows % 2 !== 0) throw new ShapeError(`${source.id}: tensor "${names[0]}" holds [gate; up] but has an odd number of rows (${both.rows})`);
  return [sliceWeightRows(both, 0, both.rows / 2), sliceWeightRows(both, both.rows / 2, both.rows / 2)];
}

/** Concatenate the rows of several [out, in] matrices (same dtype and width) into one. */
async function fuseRows(source: ModelSource, names: string[]): Promise<HostWeight> {
  const parts = await Promise.all(names.map((n) => source.matrix(n)));
  const { dtype, cols } = parts[0];
  for (const [i, p] of parts.entries()) {
    if (p.dtype !== dtype || p.cols !== cols) {
      throw new ShapeError(`${source.id}: ${names[i]} is ${p.dtype} [${p.rows}, ${p.cols}], unlike ${names[0]} (${dtype} [.., ${cols}])`);
    }
  }
  const bytes = parts.map(ggufBytes);
  const all = new Uint8Array(bytes.reduce((n, b) => n + b.length, 0));
  let offset = 0;
  for (const b of bytes) {
    all.set(b, offset);
    offset += b.length;
  }
  return packGguf(dtype, parts.reduce((n, p) => n + p.rows, 0), cols, all);
}

function checkShape(id: string, name: string, w: HostWeight, rows?: number, cols?: number): void {
  if ((rows !== undefined && w.rows !== rows) || (cols !== undefined && w.cols !== cols)) {
    throw new ShapeError(`${id}: tensor "${name}" has shape [${w.rows}, ${w.cols}], expected [${rows}, ${cols}]`);
  }
}

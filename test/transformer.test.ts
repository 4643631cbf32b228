// The GPU forward pass against the float64 reference (test/support/reference-model.ts) for each
// architecture: every position's logits from a multi-chunk prefill, then decode steps continuing
// the same sequence, in a second KV slot so slots cannot leak into each other.
import { describe, expect, it } from 'vitest';
import { Transformer } from '../models/transformer.ts';
import { embeddedSource, memorySource, type MemoryTensor } from '../models/source.ts';
import { TINY_CONFIG, tinyWeights } from '../models/tiny.ts';
import { referenceLogits } from './support/reference-model.ts';
import { useGpu } from './support/gpu.ts';
import { expectClose, rng } from './support/reference.ts';

const gpu = useGpu();

function normalTensors(shapes: Array<[string, number[]]>, seed: number): Map<string, MemoryTensor> {
  const next = rng(seed);
  const normal = () => Math.sqrt(-2 * Math.log(next() + 1e-12)) * Math.cos(2 * Math.PI * next());
  return new Map(
    shapes.map(([name, shape]) => {
      const size = shape.reduce((a, b) => a * b, 1);
      const isNorm = /ln_|norm/.test(name) && name.endsWith('weight');
      const std = shape.length === 1 ? 0.1 : name.includes('wte') || name.includes('wpe') || name.includes('embed') ? 1 : 1 / Math.sqrt(shape[0]);
      const data = Float32Array.from({ length: size }, () => (isNorm ? 1 : 0) + std * normal());
      return [name, { shape, data }];
    }),
  );
}

const GPT2_CONFIG = { architectures: ['GPT2LMHeadModel'], vocab_size: 97, n_embd: 48, n_head: 3, n_layer: 2, n_positions: 64, layer_norm_epsilon: 1e-5 };
function gpt2Shapes(): Array<[string, number[]]> {
  const C = 48;
  const shapes: Array<[string, number[]]> = [['transformer.wte.weight', [97, C]], ['transformer.wpe.weight', [64, C]]];
  for (let l = 0; l < 2; l++) {
    const p = `transformer.h.${l}.`;
    shapes.push(
      [`${p}ln_1.weight`, [C]], [`${p}ln_1.bias`, [C]],
      [`${p}attn.c_attn.weight`, [C, 3 * C]], [`${p}attn.c_attn.bias`, [3 * C]],
      [`${p}attn.c_proj.weight`, [C, C]], [`${p}attn.c_proj.bias`, [C]],
      [`${p}ln_2.weight`, [C]], [`${p}ln_2.bias`, [C]],
      [`${p}mlp.c_fc.weight`, [C, 4 * C]], [`${p}mlp.c_fc.bias`, [4 * C]],
      [`${p}mlp.c_proj.weight`, [4 * C, C]], [`${p}mlp.c_proj.bias`, [C]],
    );
  }
  shapes.push(['transformer.ln_f.weight', [C]], ['transformer.ln_f.bias', [C]]);
  return shapes;
}

const gpt2UntiedShapes = (): Array<[string, number[]]> => [...gpt2Shapes(), ['lm_head.weight', [97, 48]]];

const QWEN2_CONFIG = {
  architectures: ['Qwen2ForCausalLM'], vocab_size: 89, hidden_size: 64, intermediate_size: 96, num_hidden_layers: 2,
  num_attention_heads: 4, num_key_value_heads: 1, max_position_embeddings: 128, rms_norm_eps: 1e-6, rope_theta: 1000000, tie_word_embeddings: true,
};
function qwen2Shapes(): Array<[string, number[]]> {
  const C = 64;
  const D = 16;
  const shapes: Array<[string, number[]]> = [['model.embed_tokens.weight', [89, C]]];
  for (let l = 0; l < 2; l++) {
    const p = `model.layers.${l}.`;
    shapes.push(
      [`${p}input_layernorm.weight`, [C]],
      [`${p}self_attn.q_proj.weight`, [4 * D, C]], [`${p}self_attn.q_proj.bias`, [4 * D]],
      [`${p}self_attn.k_proj.weight`, [D, C]], [`${p}self_attn.k_proj.bias`, [D]],
      [`${p}self_attn.v_proj.weight`, [D, C]], [`${p}self_attn.v_proj.bias`, [D]],
      [`${p}self_attn.o_proj.weight`, [C, 4 * D]],
      [`${p}post_attention_layernorm.weight`, [C]],
      [`${p}mlp.gate_proj.weight`, [96, C]], [`${p}mlp.up_proj.weight`, [96, C]], [`${p}mlp.down_proj.weight`, [C, 96]],
    );
  }
  shapes.push(['model.norm.weight', [C]]);
  return shapes;
}

const noTokenizer = { tokenizer: {}, source: 'test' };

const CASES = [
  {
    name: 'llama (tiny-random-llama, GQA 4/2)',
    source: () => embeddedSource(),
    weights: () => tinyWeights(),
    vocab: TINY_CONFIG.vocab_size,
  },
  {
    name: 'gpt2 (LayerNorm, learned positions, Conv1D, GELU, tied)',
    source: () => memorySource('gpt2-test', GPT2_CONFIG, normalTensors(gpt2Shapes(), 2), noTokenizer),
    weights: () => new Map([...normalTensors(gpt2Shapes(), 2)].map(([k, v]) => [k, v.data])),
    vocab: 97,
  },
  {
    name: 'gpt2 untied (lm_head.weight outside the transformer. prefix)',
    source: () => memorySource('gpt2-untied', { ...GPT2_CONFIG, tie_word_embeddings: false }, normalTensors(gpt2UntiedShapes(), 4), noTokenizer),
    weights: () => new Map([...normalTensors(gpt2UntiedShapes(), 4)].map(([k, v]) => [k, v.data])),
    vocab: 97,
  },
  {
    name: 'qwen2 (qkv bias, GQA 4/1, tied)',
    source: () => memorySource('qwen2-test', QWEN2_CONFIG, normalTensors(qwen2Shapes(), 3), noTokenizer),
    weights: () => new Map([...normalTensors(qwen2Shapes(), 3)].map(([k, v]) => [k, v.data])),
    vocab: 89,
  },
];

describe('transformer forward pass vs float64 reference', () => {
  for (const c of CASES) {
    it(c.name, async () => {
      const source = c.source();
      // prefillChunk 8 makes the 19-token prompt take three prefill steps (8 + 8 + 3).
      const model = await Transformer.load(gpu(), source, { slots: 3, capacity: 48, prefillChunk: 8 });
      try {
        const next = rng(11);
        const tokens = Array.from({ length: 23 }, () => Math.floor(next() * c.vocab));
        const ref = referenceLogits(source.config, c.weights(), tokens);
        const prompt = tokens.slice(0, 19);
        const { logits, candidates } = await model.prefill(1, prompt, 0, { allLogits: true });
        for (let t = 0; t < prompt.length; t++) expectClose(logits![t], ref[t], 1e-4, `${c.name} prefill position ${t}`);
        // Candidates: the top logits of the last position, best first, with the right log-sum-exp.
        const last = ref[prompt.length - 1];
        const best = Array.from(last.keys()).sort((a, b) => last[b] - last[a]);
        expect(candidates!.ids[0]).toBe(best[0]);
        const lse = Math.log(last.reduce((s, v) => s + Math.exp(v), 0));
        expect(Math.abs(candidates!.logSumExp - lse)).toBeLessThan(1e-3);
        // Decode the remaining tokens one at a time, batched with a second sequence in slot 0.
        await model.prefill(0, [tokens[0]], 0);
        for (let t = 19; t < 23; t++) {
          const [other, mine] = await model.decode([
            { slot: 0, token: tokens[t - 19 + 1], position: t - 19 + 1 },
            { slot: 1, token: tokens[t - 1], position: t - 1 },
          ]);
          void other;
          const refRow = ref[t - 1];
          const ids = Array.from(mine.ids.slice(0, 5));
          const want = Array.from(refRow.keys()).sort((a, b) => refRow[b] - refRow[a]).slice(0, 5);
          expect(ids).toEqual(want);
          for (let i = 0; i < 5; i++) expect(Math.abs(mine.logits[i] - refRow[ids[i]])).toBeLessThan(1e-3 * Math.max(1, Math.abs(refRow[ids[i]])));
        }
      } finally {
        model.destroy();
        await source.close();
      }
    });
  }
});

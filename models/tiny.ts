// The embedded default model, "tiny-random-llama": a 4-layer Llama with random weights drawn from a
// fixed seed, with a real byte-level BPE tokenizer and a chat template (models/tiny-random-llama/).
// It lets the program start and serve on a fresh machine with no download. Its outputs are noise,
// and it is named as what it is wherever it shows up.
import { readFileSync } from 'node:fs';
import { xoroshiro128plus } from 'pure-rand';

export const TINY_MODEL_ID = 'tiny-random-llama';
const SEED = 20261122;
const DIR = new URL('./tiny-random-llama/', import.meta.url);

export const TINY_CONFIG = {
  architectures: ['LlamaForCausalLM'],
  model_type: 'llama',
  vocab_size: 512,
  hidden_size: 128,
  intermediate_size: 384,
  num_hidden_layers: 4,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  max_position_embeddings: 1024,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  tie_word_embeddings: false,
  bos_token_id: 507,
  eos_token_id: [508, 511],
};

/** HF tensor names and shapes ([out, in] for linear weights) of a Llama config. */
export function llamaTensorShapes(config: typeof TINY_CONFIG): Array<[string, number[]]> {
  const C = config.hidden_size;
  const D = C / config.num_attention_heads;
  const F = config.intermediate_size;
  const shapes: Array<[string, number[]]> = [['model.embed_tokens.weight', [config.vocab_size, C]]];
  for (let l = 0; l < config.num_hidden_layers; l++) {
    const p = `model.layers.${l}.`;
    shapes.push(
      [`${p}input_layernorm.weight`, [C]],
      [`${p}self_attn.q_proj.weight`, [config.num_attention_heads * D, C]],
      [`${p}self_attn.k_proj.weight`, [config.num_key_value_heads * D, C]],
      [`${p}self_attn.v_proj.weight`, [config.num_key_value_heads * D, C]],
      [`${p}self_attn.o_proj.weight`, [C, config.num_attention_heads * D]],
      [`${p}post_attention_layernorm.weight`, [C]],
      [`${p}mlp.gate_proj.weight`, [F, C]],
      [`${p}mlp.up_proj.weight`, [F, C]],
      [`${p}mlp.down_proj.weight`, [C, F]],
    );
  }
  shapes.push(['model.norm.weight', [C]], ['lm_head.weight', [config.vocab_size, C]]);
  return shapes;
}

/**
 * The random weights, by HF name. Norm weights are 1 + small noise; matrices are normal with
 * std 1/sqrt(fan_in) (embeddings std 1) so activations keep their scale through the layers.
 */
export function tinyWeights(config = TINY_CONFIG, seed = SEED): Map<string, Float32Array> {
  let rng = xoroshiro128plus(seed);
  const uniform = () => {
    const [value, next] = rng.next();
    rng = next;
    return ((value >>> 0) + 0.5) / 2 ** 32;
  };
  const normal = () => Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform());
  const weights = new Map<string, Float32Array>();
  for (const [name, shape] of llamaTensorShapes(config)) {
    const size = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(size);
    if (shape.length === 1) for (let i = 0; i < size; i++) data[i] = 1 + 0.1 * normal();
    else {
      const std = name.includes('embed_tokens') ? 1 : 1 / Math.sqrt(shape[1]);
      for (let i = 0; i < size; i++) data[i] = std * normal();
    }
    weights.set(name, data);
  }
  return weights;
}

export function tinyTokenizerFiles(): { tokenizer: Record<string, unknown>; config: Record<string, unknown> } {
  return {
    tokenizer: JSON.parse(readFileSync(new URL('tokenizer.json', DIR), 'utf8')),
    config: JSON.parse(readFileSync(new URL('tokenizer_config.json', DIR), 'utf8')),
  };
}

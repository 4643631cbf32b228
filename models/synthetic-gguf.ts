// Synthetic Llama GGUF files: a model of a real size (Llama-2-7B's shapes, or any other) with seeded
// random weights, written tensor by tensor (models/gguf-writer.ts), so that a machine with no network
// can make the file that this runtime and llama.cpp then run side by side. Its text is noise; its
// shapes, types and bytes per token are those of the real model, which is what a throughput
// comparison needs.
//
// The weights are random *valid blocks*, not random floats quantised: for Q4_0, Q8_0 and Q4_K every
// quant byte is uniformly random and each block's scale is drawn so the values have the wanted
// standard deviation (models/ggml.ts's reference quantisers run at ~14 M values/s here, which is
// 8 minutes for 6.7 B parameters; filling blocks runs at memory speed). F16 and F32 values come from
// a table of 65536 normal samples, indexed by random 16-bit numbers. Each tensor has its own seed
// (the file's seed and the tensor's index), so a tensor's bytes do not depend on the others.
//
// Scales keep the activations O(1) through any depth, so logits are finite and greedy decoding is
// not stuck on one token: matrices have std 1/sqrt(fan_in), the embedding std 1, norm weights 1 +
// N(0, 0.1). llama.cpp's converter permutes Q and K rows per head (HF rotates halves, ggml adjacent
// pairs); random rows need no permutation: the file is the model, and both runtimes read it as such.
import { OptionError } from '../src/errors.ts';
import { f32ToF16Bits, GgmlType } from './ggml.ts';
import { gguf, writeGgufFile, type GgufLazyTensor, type GgufStreamResult } from './gguf-writer.ts';
import { TokenType } from './gguf-tokenizer.ts';
import type { GgufMetadataEntry } from './gguf.ts';

/** A Llama's dimensions (llama.* GGUF metadata). */
export interface SyntheticShape {
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  vocabSize: number;
  contextLength: number;
  ropeTheta: number;
  rmsNormEps: number;
}

/**
 * Named shapes. llama-2-7b is meta-llama/Llama-2-7b-hf's config.json (bench/presets.ts's
 * LLAMA_7B_SHAPES is built from it); small is a ~0.1 B model with the same vocabulary, for a quick
 * end-to-end run on a GPU; tiny is for tests (widths multiples of 256, so every type fits).
 */
export const SYNTHETIC_SHAPES = {
  'llama-2-7b': { hiddenSize: 4096, intermediateSize: 11008, numLayers: 32, numHeads: 32, numKvHeads: 32, vocabSize: 32000, contextLength: 4096, ropeTheta: 10000, rmsNormEps: 1e-5 },
  small: { hiddenSize: 1024, intermediateSize: 2816, numLayers: 8, numHeads: 16, numKvHeads: 8, vocabSize: 32000, contextLength: 4096, ropeTheta: 10000, rmsNormEps: 1e-5 },
  tiny: { hiddenSize: 256, intermediateSize: 512, numLayers: 2, numHeads: 4, numKvHeads: 2, vocabSize: 512, contextLength: 512, ropeTheta: 10000, rmsNormEps: 1e-5 },
} as const satisfies Record<string, SyntheticShape>;
export type SyntheticShapeName = keyof typeof SYNTHETIC_SHAPES;
export const SYNTHETIC_SHAPE_NAMES = Object.keys(SYNTHETIC_SHAPES) as SyntheticShapeName[];

export const SYNTHETIC_DTYPES = ['f32', 'f16', 'q8_0', 'q4_0', 'q4_k'] as const;
export type SyntheticDtype = (typeof SYNTHETIC_DTYPES)[number];

const GGML_TYPE: Record<SyntheticDtype, number> = { f32: GgmlType.F32, f16: GgmlType.F16, q8_0: GgmlType.Q8_0, q4_0: GgmlType.Q4_0, q4_k: GgmlType.Q4_K };
/** general.file_type (llama_ftype): ALL_F32, MOSTLY_F16, MOSTLY_Q8_0, MOSTLY_Q4_0, MOSTLY_Q4_K_S. */
const FILE_TYPE: Record<SyntheticDtype, number> = { f32: 0, f16: 1, q8_0: 7, q4_0: 2, q4_k: 14 };
/** Values per block along a row: matrix widths must be multiples of it. */
const BLOCK: Record<SyntheticDtype, number> = { f32: 1, f16: 1, q8_0: 32, q4_0: 32, q4_k: 256 };

/** Throws an OptionError naming the first dimension that does not make a Llama of this dtype. */
export function checkSyntheticShape(shape: SyntheticShape, dtype: SyntheticDtype): void {
  for (const [key, value] of Object.entries(shape)) {
    const isInteger = key !== 'ropeTheta' && key !== 'rmsNormEps';
    if (typeof value !== 'number' || !(value > 0) || (isInteger && !Number.isSafeInteger(value))) {
      throw new OptionError(`synthetic model: ${key} must be a positive ${isInteger ? 'integer' : 'number'} (got ${value})`);
    }
  }
  const { hiddenSize: C, intermediateSize: F, numHeads: H, numKvHeads: Hkv, vocabSize: V } = shape;
  if (C % H !== 0) throw new OptionError(`synthetic model: hidden size ${C} is not a multiple of the ${H} heads`);
  if ((C / H) % 2 !== 0) throw new OptionError(`synthetic model: head dimension ${C / H} must be even (RoPE rotates pairs)`);
  if (H % Hkv !== 0) throw new OptionError(`synthetic model: ${H} heads are not a multiple of the ${Hkv} KV heads`);
  const block = BLOCK[dtype];
  for (const [what, width] of [['hidden size', C], ['FFN size', F]] as const) {
    if (width % block !== 0) throw new OptionError(`synthetic model: ${dtype} stores rows in blocks of ${block}; the ${what} ${width} is not a multiple of it`);
  }
  if (V < MIN_VOCAB) throw new OptionError(`synthetic model: the vocabulary needs at least ${MIN_VOCAB} tokens (3 special, 256 bytes, the ${PIECE_ALPHABET.length} single pieces; got ${V})`);
}

// ---- the tokenizer ------------------------------------------------------------------------------

/** Pieces are strings over "▁a..z": every single symbol first, then every pair, triple, ... */
const PIECE_ALPHABET = ['\u2581', ...'abcdefghijklmnopqrstuvwxyz'];
const MIN_VOCAB = 3 + 256 + PIECE_ALPHABET.length;

/**
 * A SentencePiece ("llama") vocabulary of `size` tokens that llama.cpp and this runtime both accept:
 * <unk>, <s>, </s>, the 256 byte tokens <0x00>..<0xFF> (any text encodes, by byte fallback), then
 * pieces over "▁a..z" by length with falling, distinct scores. Every piece of length n is a piece of
 * length n - 1 plus one symbol, so each is reachable by merges; lower-case text tokenises into
 * words' pieces, anything else into bytes.
 */
export function syntheticVocab(size: number): { tokens: string[]; scores: Float32Array; types: Int32Array } {
  const tokens = ['<unk>', '<s>', '</s>'];
  const types: number[] = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL];
  for (let b = 0; b < 256; b++) {
    tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
    types.push(TokenType.BYTE);
  }
  // Breadth first: each piece, once taken, queues itself plus each symbol, so pieces come by length.
  const pieces = [...PIECE_ALPHABET];
  for (let i = 0; tokens.length < size; i++) {
    tokens.push(pieces[i]);
    types.push(TokenType.NORMAL);
    if (pieces.length < size) for (const symbol of PIECE_ALPHABET) pieces.push(pieces[i] + symbol);
  }
  const scores = Float32Array.from(tokens, (_, i) => (types[i] === TokenType.NORMAL ? -(i - 258) : 0));
  return { tokens, scores, types: Int32Array.from(types) };
}

// ---- random blocks ------------------------------------------------------------------------------

/** mulberry32 from `seed`: a fast 32-bit generator, the same sequence on every machine. */
export function randomU32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

/** `length` uniformly random bytes (in a buffer rounded up to whole u32 words). */
function randomBytes(length: number, next: () => number): Uint8Array {
  const words = new Uint32Array(Math.ceil(length / 4));
  for (let i = 0; i < words.length; i++) words[i] = next();
  return new Uint8Array(words.buffer, 0, length);
}

/** 65536 samples of N(0, std): random 16-bit numbers index it to draw normal values fast. */
function normalTable(std: number, next: () => number): Float32Array {
  const table = new Float32Array(65536);
  for (let i = 0; i < table.length; i++) {
    const u1 = (next() + 0.5) / 2 ** 32;
    const u2 = next() / 2 ** 32;
    table[i] = std * Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
  }
  return table;
}

function setF16(bytes: Uint8Array, at: number, bits: number): void {
  bytes[at] = bits & 0xff;
  bytes[at + 1] = bits >>> 8;
}

// Standard deviation of a block's values in units of its scale d, for uniformly random quants:
// Q4_0 (nibble - 8): sqrt(var 21.25 + mean^2 0.25) = 4.64; Q8_0 (int8): 73.9; Q4_K with dmin =
// 7.5 d on average, which centres d * sc * q - dmin * m: var(sc q) + var(7.5 m) = 40865 + 19195 -> 245.
const STD_IN_D = { q4_0: 4.64, q8_0: 73.9, q4_k: 245 } as const;

/**
 * 256 f16 scales around `d` (x 0.75 .. 1.25), by a random byte; `signed` alternates their sign, so a
 * Q4_0 / Q8_0 tensor's values centre on zero (a block's own mean is -0.5 d; d of either sign is valid).
 */
function scaleTable(d: number, signed: boolean): Uint16Array {
  return Uint16Array.from({ length: 256 }, (_, j) => f32ToF16Bits((signed && j & 1 ? -1 : 1) * d * (0.75 + (0.5 * j) / 255)));
}

/** `count` values of `dtype` with standard deviation `std`, as GGUF stores them. */
function randomTensorBytes(dtype: SyntheticDtype, count: number, std: number, seed: number): Uint8Array {
  const next = randomU32(seed);
  switch (dtype) {
    case 'f32': {
      const table = normalTable(std, next);
      const out = new Float32Array(count);
      for (let i = 0; i < count; i += 2) {
        const r = next();
        out[i] = table[r & 0xffff];
        if (i + 1 < count) out[i + 1] = table[r >>> 16];
      }
      return new Uint8Array(out.buffer);
    }
    case 'f16': {
      const table = Uint16Array.from(normalTable(std, next), f32ToF16Bits);
      const out = new Uint16Array(count);
      for (let i = 0; i < count; i += 2) {
        const r = next();
        out[i] = table[r & 0xffff];
        if (i + 1 < count) out[i + 1] = table[r >>> 16];
      }
      return new Uint8Array(out.buffer);
    }
    case 'q4_0':
    case 'q8_0': {
      // Block: f16 d, then the quants (Q4_0: 16 bytes of nibbles; Q8_0: 32 int8).
      const blockBytes = dtype === 'q4_0' ? 18 : 34;
      const bytes = randomBytes((count / 32) * blockBytes, next);
      const scales = scaleTable(std / STD_IN_D[dtype], true);
      // d's own two random bytes pick its scale, then are replaced by it.
      for (let at = 0; at < bytes.length; at += blockBytes) setF16(bytes, at, scales[bytes[at]]);
      return bytes;
    }
    case 'q4_k': {
      // Block of 256: f16 d, f16 dmin, 12 bytes of 6-bit scales and mins, 128 bytes of nibbles.
      // d > 0 and dmin ~ 7.5 d (both positive, as ggml writes them).
      const bytes = randomBytes((count / 256) * 144, next);
      const scales = scaleTable(std / STD_IN_D.q4_k, false);
      const mins = Uint16Array.from({ length: 65536 }, (_, j) => {
        const d = (std / STD_IN_D.q4_k) * (0.75 + (0.5 * (j >>> 8)) / 255);
        return f32ToF16Bits(7.5 * d * (0.75 + (0.5 * (j & 0xff)) / 255));
      });
      for (let at = 0; at < bytes.length; at += 144) {
        const dIndex = bytes[at];
        const minIndex = (dIndex << 8) | bytes[at + 2];
        setF16(bytes, at, scales[dIndex]);
        setF16(bytes, at + 2, mins[minIndex]);
      }
      return bytes;
    }
  }
}

// ---- the model ------------------------------------------------------------------------------------

export interface SyntheticLlamaOptions {
  shape: SyntheticShape;
  dtype: SyntheticDtype;
  seed: number;
  /** general.name; default "synthetic-llama-<dtype>-seed<seed>". */
  name?: string;
}

/** The seed of tensor `index`: the file's seed and the index, mixed so that nearby seeds differ everywhere. */
function tensorSeed(seed: number, index: number): number {
  return randomU32(Math.imul(seed >>> 0, 0x9e3779b1) ^ Math.imul(index + 1, 0x85ebca6b))();
}

/** The model's tensors in llama.cpp's order, each made when the writer asks for it. */
export function syntheticLlamaTensors(options: SyntheticLlamaOptions): GgufLazyTensor[] {
  const { shape, dtype, seed } = options;
  checkSyntheticShape(shape, dtype);
  const { hiddenSize: C, intermediateSize: F, numLayers: L, numHeads: H, numKvHeads: Hkv, vocabSize: V } = shape;
  const D = C / H;
  const tensors: GgufLazyTensor[] = [];
  const matrix = (name: string, rows: number, cols: number, std: number) => {
    const index = tensors.length;
    tensors.push({ name, type: GGML_TYPE[dtype], ne: [cols, rows], bytes: () => randomTensorBytes(dtype, rows * cols, std, tensorSeed(seed, index)) });
  };
  const norm = (name: string) => {
    const index = tensors.length;
    tensors.push({
      name,
      type: GgmlType.F32,
      ne: [C],
      bytes: () => {
        const values = new Float32Array(randomTensorBytes('f32', C, 0.1, tensorSeed(seed, index)).buffer);
        for (let i = 0; i < C; i++) values[i] += 1;
        return new Uint8Array(values.buffer);
      },
    });
  };
  matrix('token_embd.weight', V, C, 1);
  for (let l = 0; l < L; l++) {
    const g = `blk.${l}.`;
    norm(`${g}attn_norm.weight`);
    matrix(`${g}attn_q.weight`, H * D, C, 1 / Math.sqrt(C));
    matrix(`${g}attn_k.weight`, Hkv * D, C, 1 / Math.sqrt(C));
    matrix(`${g}attn_v.weight`, Hkv * D, C, 1 / Math.sqrt(C));
    matrix(`${g}attn_output.weight`, C, H * D, 1 / Math.sqrt(H * D));
    norm(`${g}ffn_norm.weight`);
    matrix(`${g}ffn_gate.weight`, F, C, 1 / Math.sqrt(C));
    matrix(`${g}ffn_up.weight`, F, C, 1 / Math.sqrt(C));
    matrix(`${g}ffn_down.weight`, C, F, 1 / Math.sqrt(F));
  }
  norm('output_norm.weight');
  matrix('output.weight', V, C, 1 / Math.sqrt(C));
  return tensors;
}

/** The GGUF metadata of the model: llama.* dimensions, a description saying the weights are random, the tokenizer. */
export function syntheticLlamaMetadata(options: SyntheticLlamaOptions): Array<[string, GgufMetadataEntry]> {
  const { shape, dtype, seed } = options;
  const vocab = syntheticVocab(shape.vocabSize);
  return [
    ['general.architecture', gguf.string('llama')],
    ['general.name', gguf.string(options.name ?? `synthetic-llama-${dtype}-seed${seed}`)],
    ['general.description', gguf.string(`RANDOM weights (seed ${seed}) in a Llama's shapes, for benchmarks: its text is noise`)],
    ['general.alignment', gguf.u32(32)],
    ['general.file_type', gguf.u32(FILE_TYPE[dtype])],
    ['llama.vocab_size', gguf.u32(shape.vocabSize)],
    ['llama.context_length', gguf.u32(shape.contextLength)],
    ['llama.embedding_length', gguf.u32(shape.hiddenSize)],
    ['llama.block_count', gguf.u32(shape.numLayers)],
    ['llama.feed_forward_length', gguf.u32(shape.intermediateSize)],
    ['llama.attention.head_count', gguf.u32(shape.numHeads)],
    ['llama.attention.head_count_kv', gguf.u32(shape.numKvHeads)],
    ['llama.rope.dimension_count', gguf.u32(shape.hiddenSize / shape.numHeads)],
    ['llama.rope.freq_base', gguf.f32(shape.ropeTheta)],
    ['llama.attention.layer_norm_rms_epsilon', gguf.f32(shape.rmsNormEps)],
    ['tokenizer.ggml.model', gguf.string('llama')],
    ['tokenizer.ggml.tokens', gguf.strings(vocab.tokens)],
    ['tokenizer.ggml.scores', gguf.f32s(vocab.scores)],
    ['tokenizer.ggml.token_type', gguf.i32s(vocab.types)],
    ['tokenizer.ggml.bos_token_id', gguf.u32(1)],
    ['tokenizer.ggml.eos_token_id', gguf.u32(2)],
    ['tokenizer.ggml.unknown_token_id', gguf.u32(0)],
  ];
}

/** Parameters of a Llama of this shape (what `info`-style summaries print). */
export function syntheticParameters(shape: SyntheticShape): number {
  const { hiddenSize: C, intermediateSize: F, numLayers: L, numHeads: H, numKvHeads: Hkv, vocabSize: V } = shape;
  const D = C / H;
  return 2 * V * C + C + L * (2 * C + C * H * D + 2 * C * Hkv * D + H * D * C + 3 * C * F);
}

/**
 * Write the synthetic model to `path`, one tensor in memory at a time. `onTensor` sees each tensor
 * as it lands (for progress).
 */
export function writeSyntheticLlama(
  path: string,
  options: SyntheticLlamaOptions,
  onTensor?: (index: number, total: number, name: string) => void,
): Promise<GgufStreamResult> {
  const tensors = syntheticLlamaTensors(options);
  return writeGgufFile(path, { metadata: syntheticLlamaMetadata(options), onTensor: (i, t) => onTensor?.(i, tensors.length, t.name) }, tensors);
}

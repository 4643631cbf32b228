// Builds the tokenizer of the embedded "tiny-random-llama" model: a real byte-level BPE (GPT-2 byte
// alphabet and pre-tokenizer regex, as Llama 3 uses) whose merges are learned from the short corpus
// below, plus Llama-3-style special tokens and chat template. Deterministic: running it again gives
// the same files. Usage: npx tsx scripts/make-tiny-tokenizer.ts
import { writeFileSync } from 'node:fs';

const VOCAB_SIZE = 512;
const SPECIAL_TOKENS = ['<|begin_of_text|>', '<|end_of_text|>', '<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>'];

const CORPUS = `
A miner runs a language model on its graphics card and answers the questions that validators send.
Each request is signed with the validator's key, and each token that comes back is signed by the miner.
The validator checks the signatures, measures the time to the first token and the tokens per second,
and compares the returned log probabilities with those of its own copy of the model.
The runtime reads weights from Hugging Face folders or GGUF files, uploads them to the GPU once,
and runs the transformer with kernels written in WGSL: matrix multiplication for the prompt,
matrix-vector products for each new token, attention over the key and value cache, normalisation,
rotary position embeddings, and sampling. The same code runs on Vulkan, Metal, Direct3D and,
when there is no GPU at all, on a software rasteriser that is slow but exact.
This tiny model has random weights. It is here so that the program can start on a fresh machine
without downloading anything; its answers are noise, and it says so wherever it appears.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 256 1024 2048. Punctuation: , . ; : ! ? ( ) [ ] { } " ' - _ / \\ @ # % & * + = < >.
Hello, world! How are you today? I am fine, thank you. What is the capital of France? Paris.
`;

// GPT-2's reversible map from bytes to printable unicode characters.
function bytesToUnicode(): string[] {
  const printable: number[] = [];
  for (let b = 33; b <= 126; b++) printable.push(b);
  for (let b = 161; b <= 172; b++) printable.push(b);
  for (let b = 174; b <= 255; b++) printable.push(b);
  const map: string[] = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    map[b] = printable.includes(b) ? String.fromCharCode(b) : String.fromCharCode(256 + extra++);
  }
  return map;
}

const PRETOKENIZE = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

const byteChar = bytesToUnicode();
const words = new Map<string, number>();
for (const piece of CORPUS.match(PRETOKENIZE) ?? []) {
  const mapped = Array.from(new TextEncoder().encode(piece), (b) => byteChar[b]).join('\u0000');
  words.set(mapped, (words.get(mapped) ?? 0) + 1);
}

const vocab = new Map<string, number>();
byteChar.forEach((c) => vocab.set(c, vocab.size));
const merges: Array<[string, string]> = [];
let split = [...words.entries()].map(([w, count]) => ({ symbols: w.split('\u0000'), count }));

while (vocab.size < VOCAB_SIZE - SPECIAL_TOKENS.length) {
  const pairs = new Map<string, number>();
  for (const { symbols, count } of split) {
    for (let i = 0; i + 1 < symbols.length; i++) {
      const key = `${symbols[i]}\u0000${symbols[i + 1]}`;
      pairs.set(key, (pairs.get(key) ?? 0) + count);
    }
  }
  if (pairs.size === 0) break;
  // Most frequent pair; ties broken by the pair's text so the result never depends on Map order.
  const [best] = [...pairs.entries()].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))[0];
  const [left, right] = best.split('\u0000');
  merges.push([left, right]);
  vocab.set(left + right, vocab.size);
  split = split.map(({ symbols, count }) => {
    const merged: string[] = [];
    for (let i = 0; i < symbols.length; i++) {
      if (i + 1 < symbols.length && symbols[i] === left && symbols[i + 1] === right) {
        merged.push(left + right);
        i++;
      } else merged.push(symbols[i]);
    }
    return { symbols: merged, count };
  });
}

const specialIds = SPECIAL_TOKENS.map((token) => {
  vocab.set(token, vocab.size);
  return vocab.get(token)!;
});
const bos = SPECIAL_TOKENS[0];

const tokenizer = {
  version: '1.0',
  truncation: null,
  padding: null,
  added_tokens: SPECIAL_TOKENS.map((content, i) => ({
    id: specialIds[i],
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  })),
  normalizer: null,
  pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
  post_processor: {
    type: 'TemplateProcessing',
    single: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
    pair: [
      { SpecialToken: { id: bos, type_id: 0 } },
      { Sequence: { id: 'A', type_id: 0 } },
      { SpecialToken: { id: bos, type_id: 1 } },
      { Sequence: { id: 'B', type_id: 1 } },
    ],
    special_tokens: { [bos]: { id: bos, ids: [specialIds[0]], tokens: [bos] } },
  },
  decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
  model: {
    type: 'BPE',
    dropout: null,
    unk_token: null,
    continuing_subword_prefix: null,
    end_of_word_suffix: null,
    fuse_unk: false,
    byte_fallback: false,
    ignore_merges: false,
    vocab: Object.fromEntries([...vocab.entries()].filter(([t]) => !SPECIAL_TOKENS.includes(t))),
    merges,
  },
};

const CHAT_TEMPLATE =
  "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";

const config = {
  model_max_length: 1024,
  bos_token: bos,
  eos_token: '<|eot_id|>',
  clean_up_tokenization_spaces: false,
  tokenizer_class: 'PreTrainedTokenizerFast',
  chat_template: CHAT_TEMPLATE,
};

const dir = new URL('../models/tiny-random-llama/', import.meta.url);
writeFileSync(new URL('tokenizer.json', dir), JSON.stringify(tokenizer, null, 1) + '\n');
writeFileSync(new URL('tokenizer_config.json', dir), JSON.stringify(config, null, 2) + '\n');
console.log(`vocab ${vocab.size} (${merges.length} merges, ${SPECIAL_TOKENS.length} special tokens)`);

// GGUF tokenizer metadata -> tokenizer.json for @huggingface/tokenizers: round trips on ASCII and
// non-ASCII text, the same ids llama.cpp produces for the same file, and errors naming the key.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ModelFormatError, OptionError } from '../src/errors.ts';
import { cleanUpSpaces, openTokenizer, parseTokenIds, TextTokenizer } from '../src/engine/tokenizer.ts';
import { openGguf, type GgufMetadataEntry } from '../models/gguf.ts';
import { spmMerges, tokenizerFromGguf, TokenType, type GgufTokenizer } from '../models/gguf-tokenizer.ts';
import { gguf, writeGguf } from './support/gguf-writer.ts';
import { disposeLlamaOracle, llamaDetokenize, llamaIsEog, llamaTokenize, llamaVocab } from './support/llama-oracle.ts';
import { TINY_CHAT_TEMPLATE, tinyGpt2Vocab, tinySpmVocab, writeTinyLlamaGguf, type TinyLlamaOptions } from './support/tiny-models.ts';
import { writeVocabGguf } from './support/real-tokenizers.ts';

const dir = mkdtempSync(join(tmpdir(), 'tokenizer-test-'));
afterAll(async () => {
  await disposeLlamaOracle();
  rmSync(dir, { recursive: true, force: true });
});

const TEXTS = [
  'hello world',
  'Hello, the model is in the world.',
  'the miner and the token of a model',
  'café, naïve, Ωmega, 日本語, 🙂👍',
  '  two  spaces and\ttabs\nnew line\n\n',
  ' leading space',
  'x',
  "it's 2048 tokens; don't panic!",
];

/** The converted tokenizer, run directly (hf) and through the engine's TextTokenizer (tok: llama.cpp's clean-up on decode). */
async function load(path: string): Promise<{ files: GgufTokenizer; hf: Tokenizer; tok: TextTokenizer }> {
  const f = await openGguf(path);
  try {
    const files = tokenizerFromGguf(f);
    return { files, hf: new Tokenizer(files.tokenizer, files.config), tok: new TextTokenizer({ tokenizer: files.tokenizer, config: files.config, source: path }) };
  } finally {
    await f.close();
  }
}

for (const kind of ['llama', 'gpt2'] as const) {
  describe(`GGUF "${kind}" tokenizer`, () => {
    const path = join(dir, `tiny-${kind}.gguf`);
    let files: GgufTokenizer;
    let hf: Tokenizer;
    let tok: TextTokenizer;
    beforeAll(async () => {
      writeTinyLlamaGguf(path, { tokenizer: kind, seed: 2 });
      ({ files, hf, tok } = await load(path));
    });

    it('carries the special tokens and chat template', () => {
      const vocab = kind === 'llama' ? tinySpmVocab() : tinyGpt2Vocab();
      expect(files.bosTokenId).toBe(vocab.bosId);
      expect(files.eosTokenIds).toEqual([vocab.eosId]);
      expect(files.chatTemplate).toBe(TINY_CHAT_TEMPLATE);
      expect(files.config).toMatchObject({ bos_token: vocab.tokens[vocab.bosId], eos_token: vocab.tokens[vocab.eosId], chat_template: TINY_CHAT_TEMPLATE });
      expect(files.addBos).toBe(kind === 'llama');
      expect(hf.get_vocab().size).toBe(vocab.tokens.length);
    });

    it('round trips ASCII and non-ASCII text', () => {
      for (const text of TEXTS) {
        const ids = hf.encode(text, { add_special_tokens: false }).ids;
        expect(tok.decode(ids), JSON.stringify(text)).toBe(text);
      }
      const withBos = hf.encode('hello world').ids;
      expect(withBos[0] === files.bosTokenId).toBe(kind === 'llama');
    });

    it('gives the ids llama.cpp gives for the same file', async () => {
      for (const text of TEXTS) {
        const ours = hf.encode(text, { add_special_tokens: false }).ids;
        expect(ours, JSON.stringify(text)).toEqual(await llamaTokenize(path, text));
        expect(tok.decode(ours), JSON.stringify(text)).toBe(await llamaDetokenize(path, ours));
      }
      // Special tokens written in the text are parsed as such (llama.cpp's parse_special).
      const special = kind === 'llama' ? '<s>hello</s> world' : 'hello<|endoftext|> world';
      expect(hf.encode(special, { add_special_tokens: false }).ids).toEqual(await llamaTokenize(path, special, true));
    });

    it('falls back to bytes for characters the vocabulary lacks', () => {
      const { tokens } = hf.encode('日', { add_special_tokens: false });
      if (kind === 'llama') expect(tokens).toEqual(['\u2581', '<0xE6>', '<0x97>', '<0xA5>']);
      else expect(tokens).toHaveLength(3);
    });
  });
}

describe('tokenizer variants match llama.cpp', () => {
  const variants: Array<[string, TinyLlamaOptions]> = [
    ['llama without a space prefix', { metadata: [['tokenizer.ggml.add_space_prefix', gguf.bool(false)]] }],
    ['gpt2 with the GPT-2 pre-tokenizer', { tokenizer: 'gpt2' }],
    ['gpt2 with the Llama 3 pre-tokenizer', { tokenizer: 'gpt2', metadata: [['tokenizer.ggml.pre', gguf.string('llama-bpe')]] }],
    ['gpt2 with the Qwen2 pre-tokenizer', { tokenizer: 'gpt2', metadata: [['tokenizer.ggml.pre', gguf.string('qwen2')]] }],
  ];
  const texts = [...TEXTS, "DON'T STOP: 1234567 and 3.14159", "we'LL see,the end\r\n  ok"];
  const probe = new Map<string, string>();
  afterAll(() => {
    // The variants must really cut text differently, or this block proves nothing.
    expect(new Set(probe.values()).size).toBe(probe.size);
  });
  for (const [name, options] of variants) {
    it(name, async () => {
      const path = join(dir, `${name.replace(/\W+/g, '-')}.gguf`);
      writeTinyLlamaGguf(path, { seed: 5, ...options });
      const { hf, tok, files } = await load(path);
      for (const text of texts) {
        const ids = hf.encode(text, { add_special_tokens: false }).ids;
        expect(ids, JSON.stringify(text)).toEqual(await llamaTokenize(path, text));
        expect(tok.decode(ids), JSON.stringify(text)).toBe(text);
      }
      expect(files.addBos).toBe(name.includes('Llama 3') || name.startsWith('llama'));
      if (name.startsWith('gpt2')) probe.set(name, JSON.stringify(hf.encode("1234567 we'LL,the", { add_special_tokens: false }).tokens));
    });
  }
});

describe('SentencePiece merges from scores', () => {
  it('ranks every split by the merged token score', () => {
    const tokens = ['a', 'b', 'c', 'ab', 'bc', 'abc', '<0x61>'];
    const scores = [0, 0, 0, -2, -1, -3, 0];
    const types = [1, 1, 1, 1, 1, 1, TokenType.BYTE];
    expect(spmMerges(tokens, scores, types)).toEqual([
      ['b', 'c'],
      ['a', 'b'],
      ['a', 'bc'],
      ['ab', 'c'],
    ]);
  });
});

describe('the engine tokenizer runs a GGUF tokenizer', () => {
  it('renders the chat template with the file special tokens', async () => {
    const path = join(dir, 'chat.gguf');
    writeTinyLlamaGguf(path, { seed: 4 });
    const { files } = await load(path);
    const tok = new TextTokenizer({ tokenizer: files.tokenizer, config: files.config, source: path });
    const prompt = tok.applyChatTemplate([{ role: 'user', content: 'hello world' }]);
    expect(prompt).toBe('<s>[user] hello world\n[assistant] ');
    const ids = tok.encodeChat([{ role: 'user', content: 'hello world' }]);
    expect(ids[0]).toBe(1);
    expect(ids.filter((id) => id === 1)).toHaveLength(1);
    expect(tok.decode(ids)).toBe('[user] hello world\n[assistant] ');
  });
});

describe('bad tokenizer metadata', () => {
  const vocab = tinySpmVocab();
  const base = (): Array<[string, GgufMetadataEntry]> => [
    ['tokenizer.ggml.model', gguf.string('llama')],
    ['tokenizer.ggml.tokens', gguf.strings(vocab.tokens)],
    ['tokenizer.ggml.scores', gguf.f32s(vocab.scores)],
    ['tokenizer.ggml.token_type', gguf.i32s(vocab.types)],
  ];
  let n = 0;
  async function expectError(metadata: Array<[string, GgufMetadataEntry]>, pattern: RegExp): Promise<void> {
    const path = join(dir, `bad${n++}.gguf`);
    writeGguf(path, { metadata });
    const f = await openGguf(path);
    try {
      let err: unknown;
      try {
        tokenizerFromGguf(f);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(ModelFormatError);
      expect((err as Error).message).toContain(path);
      expect((err as Error).message).toMatch(pattern);
    } finally {
      await f.close();
    }
  }
  const replace = (key: string, entry: GgufMetadataEntry) => base().map(([k, v]): [string, GgufMetadataEntry] => [k, k === key ? entry : v]);

  it('names the key and the problem', async () => {
    await expectError(replace('tokenizer.ggml.model', gguf.string('bert')), /tokenizer.ggml.model = "bert" is not supported yet/);
    await expectError(base().slice(1), /"tokenizer.ggml.model" \(a string\) is missing/);
    await expectError(replace('tokenizer.ggml.token_type', gguf.i32s([1, 2])), /"tokenizer.ggml.token_type" has 2 entries for \d+ tokens/);
    await expectError(replace('tokenizer.ggml.scores', gguf.f32s([0])), /"tokenizer.ggml.scores" has 1 entries/);
    await expectError(replace('tokenizer.ggml.tokens', gguf.strings(vocab.tokens.map((t, i) => (i === 5 ? '<s>' : t)))), /token "<s>" appears twice .*ids 1 and 5/);
    await expectError([...base(), ['tokenizer.ggml.bos_token_id', gguf.u32(99999)]], /"tokenizer.ggml.bos_token_id" = 99999 is not a token id/);
    await expectError(base().filter(([k]) => k !== 'tokenizer.ggml.scores'), /"tokenizer.ggml.scores" is missing/);
    const gpt2 = tinyGpt2Vocab();
    const gpt2Base: Array<[string, GgufMetadataEntry]> = [
      ['tokenizer.ggml.model', gguf.string('gpt2')],
      ['tokenizer.ggml.tokens', gguf.strings(gpt2.tokens)],
    ];
    await expectError(gpt2Base, /"tokenizer.ggml.merges" is missing/);
    await expectError([...gpt2Base, ['tokenizer.ggml.merges', gguf.strings(gpt2.merges!)]], /tokenizer.ggml.pre = "default" is not supported yet/);
    await expectError(
      [...gpt2Base, ['tokenizer.ggml.pre', gguf.string('gpt-2')], ['tokenizer.ggml.merges', gguf.strings(['nospace'])]],
      /"tokenizer.ggml.merges" entry 0 \("nospace"\) is not two tokens/,
    );
  });
});

describe('token ids typed by a user (detokenize)', () => {
  it('reads separate, comma-separated and JSON ids', () => {
    expect(parseTokenIds('1 2  3', 10)).toEqual([1, 2, 3]);
    expect(parseTokenIds('1,2, 3', 10)).toEqual([1, 2, 3]);
    expect(parseTokenIds(' [9, 0] ', 10)).toEqual([9, 0]);
  });

  it('names what is wrong', () => {
    const fails = (text: string, pattern: RegExp) => {
      expect(() => parseTokenIds(text, 10)).toThrow(OptionError);
      expect(() => parseTokenIds(text, 10)).toThrow(pattern);
    };
    fails('10', /token id 10 is not an integer in \[0, 9\] \(this model has 10 tokens\)/);
    fails('1 x', /token id "x" is not an integer/);
    fails('1 -2', /token id "-2" is not an integer/);
    fails('[1, 2.5]', /token id 2.5 is not an integer/);
    fails('[1, "2"]', /token id "2" is not an integer/);
    fails('[1, 2', /not a JSON array of integers/);
    fails('[]', /give at least one token id/);
    fails(' ', /give at least one token id/);
  });

  it('loads a tokenizer without its model, and names a missing one', async () => {
    const tok = await openTokenizer('tiny-random-llama');
    expect(tok.vocabSize).toBe(512);
    await expect(openTokenizer(join(dir, 'missing'))).rejects.toThrow(/missing: no such file or folder/);
  });
});

describe('clean-up of decoded text', () => {
  it("llama.cpp's passes keep the space before n't, 't, 'd and 'll; transformers' drops it before n't", () => {
    const text = "I do n't , it 's ok . We 've , they 're , you 'll , he 'd ' quoted ' yes ? no !";
    expect(cleanUpSpaces(text, 'llama.cpp')).toBe("I do n't, it's ok. We've, they're, you 'll, he 'd'quoted'yes? no!");
    expect(cleanUpSpaces(text, 'hf')).toBe("I don't, it's ok. We've, they're, you 'll, he 'd'quoted'yes? no!");
    expect(cleanUpSpaces(text, 'none')).toBe(text);
  });
});

describe('end-of-generation ids and token types as llama.cpp decides them', () => {
  // The tiny byte-level vocabulary plus the tokens each rule is about (llama.cpp reads the vocabulary alone).
  const base = tinyGpt2Vocab();
  const cases: Array<{ name: string; extra: Array<[string, number]>; keys?: Array<[string, GgufMetadataEntry]>; eog: string[] }> = [
    {
      name: 'Qwen-style: <|im_end|>, FIM pad/repo/separator, a plain "</s>"; FIM prefix is retyped but does not stop',
      extra: [['<|im_end|>', TokenType.CONTROL], ['<|fim_prefix|>', TokenType.USER_DEFINED], ['<|fim_pad|>', TokenType.USER_DEFINED], ['<|repo_name|>', TokenType.USER_DEFINED], ['<|file_sep|>', TokenType.USER_DEFINED], ['</s>', TokenType.NORMAL]],
      eog: ['<|endoftext|>', '<|im_end|>', '<|fim_pad|>', '<|repo_name|>', '<|file_sep|>', '</s>'],
    },
    {
      name: 'gpt-oss-style: <|end|> leaves the set when <|return|> and <|call|> are there; <|channel|> is always printed',
      extra: [['<|return|>', TokenType.CONTROL], ['<|call|>', TokenType.CONTROL], ['<|end|>', TokenType.CONTROL], ['<|channel|>', TokenType.CONTROL]],
      eog: ['<|endoftext|>', '<|return|>', '<|call|>'],
    },
    {
      name: 'Gemma-4-style: "</s>" leaves the set when <|tool_response> is there, even as the eos id',
      extra: [['<|tool_response>', TokenType.CONTROL], ['</s>', TokenType.CONTROL], ['<turn|>', TokenType.CONTROL]],
      keys: [['tokenizer.ggml.eos_token_id', gguf.u32(base.tokens.length + 1)]],
      eog: ['<|endoftext|>', '<|tool_response>', '<turn|>'],
    },
    {
      name: 'an eot id from its key, on a token no rule knows by text',
      extra: [['<|stop_here|>', TokenType.CONTROL], ['<|eom_id|>', TokenType.NORMAL]],
      keys: [['tokenizer.ggml.eot_token_id', gguf.u32(base.tokens.length)]],
      eog: ['<|endoftext|>', '<|stop_here|>', '<|eom_id|>'],
    },
  ];
  for (const [k, c] of cases.entries()) {
    it(c.name, async () => {
      const tokens = [...base.tokens, ...c.extra.map(([t]) => t)];
      const types = [...base.types, ...c.extra.map(([, type]) => type)];
      const keys = new Map<string, GgufMetadataEntry>([
        ['tokenizer.ggml.eos_token_id', gguf.u32(base.eosId)],
        ['tokenizer.ggml.bos_token_id', gguf.u32(base.bosId)],
        ...(c.keys ?? []),
      ]);
      const path = join(dir, `eog-${k}.gguf`);
      writeVocabGguf(path, `eog-${k}`, tokens.length, [
        ['tokenizer.ggml.model', gguf.string('gpt2')],
        ['tokenizer.ggml.pre', gguf.string('gpt-2')],
        ['tokenizer.ggml.tokens', gguf.strings(tokens)],
        ['tokenizer.ggml.token_type', gguf.i32s(types)],
        ['tokenizer.ggml.merges', gguf.strings(base.merges!)],
        ...keys,
      ]);
      const { files, tok } = await load(path);
      expect(files.eosTokenIds).toEqual(c.eog.map((t) => tokens.indexOf(t)).sort((a, b) => a - b));
      const model = await llamaVocab(path);
      try {
        const theirs = tokens.flatMap((_, id) => (llamaIsEog(model, id) ? [id] : []));
        expect(files.eosTokenIds).toEqual(theirs);
        // The retyped tokens decode (special tokens skipped) and tokenize as llama.cpp's do.
        for (const [text] of c.extra) {
          const id = tokens.indexOf(text);
          expect(tok.decode([id, 40]), text).toBe(model.detokenize([id, 40] as never, false));
          expect(tok.encode(`a${text}b`, false), text).toEqual(Array.from(model.tokenize(`a${text}b`, true)));
        }
      } finally {
        await model.dispose();
      }
    });
  }
});

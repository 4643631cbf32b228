// `webgpu-miner tokenize` and `detokenize` run as a user runs them (a child process through the real
// CLI): JSON out, the engine's own encoding (prompt and chat), a round trip, the tokenizer loaded
// without the weights, and clear errors for ids the model does not have.
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TextTokenizer } from '../src/engine/tokenizer.ts';
import { openTokenizerFiles } from '../models/tokenizer-files.ts';
import { realTokenizer, writeRealVocabGguf } from './support/real-tokenizers.ts';

const run = promisify(execFile);
const cli = (...args: string[]) => run(process.execPath, ['--import', 'tsx', 'src/cli.ts', ...args], { maxBuffer: 64 * 2 ** 20 });
const json = async (...args: string[]) => JSON.parse((await cli(...args)).stdout) as Record<string, unknown>;

const dir = mkdtempSync(join(tmpdir(), 'cli-tokenize-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const TEXT = "It 's 2026: 日本語, emoji 🙂, code\tif (x) {}\n and <|eot_id|> written as text.";

describe('tokenize and detokenize on a Llama 3.1 tokenizer folder (no weights in it)', () => {
  // Only tokenizer.json and tokenizer_config.json: no config.json, no safetensors. The commands
  // never look for the weights.
  const folder = join(dir, 'llama3_1-tokenizer-only');
  let ours: TextTokenizer;
  beforeAll(async () => {
    const real = realTokenizer('llama3_1');
    mkdirSync(folder);
    writeFileSync(join(folder, 'tokenizer.json'), JSON.stringify(real.tokenizer));
    writeFileSync(join(folder, 'tokenizer_config.json'), JSON.stringify(real.config));
    ours = new TextTokenizer(await openTokenizerFiles(folder));
  });

  it('prints the ids and token strings the engine encodes a prompt to, and --chat renders the template', async () => {
    const plain = await json('tokenize', '--model', folder, TEXT);
    const ids = ours.encode(TEXT);
    expect(plain.ids).toEqual(ids);
    expect(ids[0]).toBe(128000); // <|begin_of_text|>, added as the engine adds it
    expect(ids).toContain(128009); // <|eot_id|> written in the text is the special token
    expect(plain.tokens).toEqual(ours.tokens(ids));
    expect((plain.tokens as string[])[1]).toBe('It');

    const chat = await json('tokenize', '--model', folder, '--chat', TEXT);
    expect(chat.ids).toEqual(ours.encodeChat([{ role: 'user', content: TEXT }]));
    expect(chat.tokens).toEqual(expect.arrayContaining(['<|start_header_id|>', 'user', '<|end_header_id|>', 'assistant']));
  });

  it('detokenizes ids given as arguments or as JSON, with the clean-up the tokenizer asks for', async () => {
    const ids = ours.encode(TEXT);
    const expected = ours.decode(ids);
    // Meta's clean_up_tokenization_spaces: true turns " 's" into "'s".
    expect(expected.startsWith("It's 2026")).toBe(true);
    expect(await json('detokenize', '--model', folder, ...ids.map(String))).toEqual({ text: expected });
    expect(await json('detokenize', '--model', folder, '--special', JSON.stringify(ids))).toEqual({ text: ours.decode(ids, false) });
    expect(ours.decode(ids, false).startsWith('<|begin_of_text|>')).toBe(true);
  });

  it('refuses an id outside the vocabulary, naming it (exit code 1)', async () => {
    // The other malformed inputs are parseTokenIds' tests in tokenizer.test.ts.
    await expect(cli('detokenize', '--model', folder, '12', '128256')).rejects.toMatchObject({
      code: 1,
      stderr: expect.stringContaining('error [BAD_OPTION]: token id 128256 is not an integer in [0, 128255] (this model has 128256 tokens)'),
    });
  });
});

describe('tokenize and detokenize on a GGUF file (Qwen3 vocabulary)', () => {
  const path = join(dir, 'qwen3.gguf');
  beforeAll(() => writeRealVocabGguf(path, realTokenizer('qwen3')));

  it('reads the tokenizer from the file header and round trips text', async () => {
    const ours = new TextTokenizer(await openTokenizerFiles(path));
    const out = await json('tokenize', '--model', path, TEXT);
    expect(out.ids).toEqual(ours.encode(TEXT));
    expect((out.ids as number[])[0]).not.toBe(151643); // Qwen adds no BOS
    expect(await json('detokenize', '--model', path, JSON.stringify(out.ids))).toEqual({ text: TEXT });
  });
});

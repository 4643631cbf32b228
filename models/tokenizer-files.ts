// A model's tokenizer without its weights: tokenizer.json and tokenizer_config.json from a Hugging
// Face folder, the tokenizer.ggml.* keys of a GGUF file (only its header is read), or the embedded
// model's files. For commands that only turn text into ids and back (tokenize, detokenize).
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { ModelFormatError } from '../src/errors.ts';
import { openGguf } from './gguf.ts';
import { tokenizerFromGguf } from './gguf-tokenizer.ts';
import type { TokenizerFiles } from './source.ts';
import { TINY_MODEL_ID, tinyTokenizerFiles } from './tiny.ts';

function readJson(path: string): Record<string, unknown> {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
  } catch (err) {
    throw new ModelFormatError(`${path}: not valid JSON (${(err as Error).message})`, { cause: err });
  }
}

/** The tokenizer of the model at `path` (an HF folder, a .gguf file, or the embedded model's name). */
export async function openTokenizerFiles(path: string): Promise<TokenizerFiles> {
  if (path === TINY_MODEL_ID) return { ...tinyTokenizerFiles(), source: TINY_MODEL_ID };
  if (!existsSync(path)) throw new ModelFormatError(`${path}: no such file or folder`);
  if (statSync(path).isDirectory()) {
    const tokenizerPath = join(path, 'tokenizer.json');
    if (!existsSync(tokenizerPath)) throw new ModelFormatError(`${tokenizerPath}: file is missing`);
    const configPath = join(path, 'tokenizer_config.json');
    return { tokenizer: readJson(tokenizerPath), config: existsSync(configPath) ? readJson(configPath) : {}, source: path };
  }
  if (!path.endsWith('.gguf')) throw new ModelFormatError(`${path}: expected a Hugging Face model folder or a .gguf file`);
  const file = await openGguf(path);
  try {
    const tok = tokenizerFromGguf(file);
    return { tokenizer: tok.tokenizer, config: tok.config, source: path };
  } finally {
    await file.close();
  }
}

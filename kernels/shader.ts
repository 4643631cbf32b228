// Loads WGSL from shaders/ and composes modules. A shader names the helper files it needs on lines
// of the form `//! include <file>.wgsl`; each helper is included once, before the file that asked.
// This is the one mechanism for structural variants: a kernel is composed with the module for its
// weight dtype (weights_f32.wgsl, weights_q4_0.wgsl, ...). Numeric tuning uses WGSL `override`s.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';

const SHADER_DIR = fileURLToPath(new URL('../shaders/', import.meta.url));
const sources = new Map<string, string>();

function source(file: string): string {
  let text = sources.get(file);
  if (text === undefined) {
    text = readFileSync(join(SHADER_DIR, file), 'utf8');
    sources.set(file, text);
  }
  return text;
}

const INCLUDE = /^\/\/!\s*include\s+(\S+\.wgsl)\s*$/gm;

/** Compose the given files (and their includes, depth first, each once) into one WGSL source. */
export function composeShader(...files: string[]): string {
  const seen = new Set<string>();
  const parts: string[] = [];
  const visit = (file: string) => {
    if (seen.has(file)) return;
    seen.add(file);
    const text = source(file);
    for (const match of text.matchAll(INCLUDE)) visit(match[1]);
    parts.push(`// ---- ${file} ----\n${text}`);
  };
  files.forEach(visit);
  return parts.join('\n');
}

/** Split a workgroup count over x and y so neither exceeds the per-dimension limit. */
export function dispatchGrid(count: number, maxPerDimension = 65535): [number, number] {
  if (count <= maxPerDimension) return [Math.max(1, count), 1];
  const y = Math.ceil(count / maxPerDimension);
  return [Math.ceil(count / y), y];
}

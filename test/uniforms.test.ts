// Each uniform layout is defined once in TypeScript (kernels/*.ts) and mirrored by a WGSL struct.
// This test parses every shader's structs and checks that each exported layout matches one of
// them field by field, and that the byte size follows WGSL's rules for a struct of 4-byte scalars.
import { readdirSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { UniformLayout } from '../src/gpu/uniforms.ts';

const KERNELS = new URL('../kernels/', import.meta.url);
const SHADERS = new URL('../shaders/', import.meta.url);

function structsOf(code: string): Map<string, Array<[string, string]>[]> {
  const structs = new Map<string, Array<[string, string]>[]>();
  for (const match of code.matchAll(/struct\s+(\w+)\s*\{([^}]*)\}/g)) {
    const body = match[2].replace(/\/\/[^\n]*/g, '');
    const fields = body
      .split(',')
      .map((f) => f.trim())
      .filter((f) => f.length > 0)
      .map((f) => f.split(':').map((s) => s.trim()) as [string, string]);
    const list = structs.get(match[1]) ?? [];
    list.push(fields);
    structs.set(match[1], list);
  }
  return structs;
}

const shaderFiles = readdirSync(SHADERS).filter((f) => f.endsWith('.wgsl'));
const kernelModules = readdirSync(KERNELS).filter((f) => f.endsWith('.ts'));

describe('uniform layouts match their WGSL structs', () => {
  it('finds layouts to check', async () => {
    let count = 0;
    for (const file of kernelModules) {
      const module = await import(new URL(file, KERNELS).href);
      count += Object.values(module).filter((v) => v instanceof UniformLayout).length;
    }
    expect(count).toBeGreaterThan(0);
  });

  for (const file of kernelModules) {
    it(file, async () => {
      const module = await import(new URL(file, KERNELS).href);
      const family = file.replace(/\.ts$/, '');
      const code = shaderFiles
        .filter((s) => s.startsWith(family))
        .map((s) => readFileSync(new URL(s, SHADERS), 'utf8'))
        .join('\n');
      const structs = structsOf(code);
      for (const [exportName, value] of Object.entries(module)) {
        if (!(value instanceof UniformLayout)) continue;
        const layout = value as UniformLayout<string>;
        const candidates = structs.get(layout.structName) ?? [];
        const want = layout.fields.map(([name, type]) => [name, type]);
        const match = candidates.some((fields) => JSON.stringify(fields) === JSON.stringify(want));
        expect(match, `${file} ${exportName}: no struct ${layout.structName} in shaders/${family}*.wgsl with fields ${JSON.stringify(want)}`).toBe(true);
        expect(layout.byteSize % 16).toBe(0);
        expect(layout.byteSize).toBeGreaterThanOrEqual(layout.fields.length * 4);
        expect(layout.byteSize - layout.fields.length * 4).toBeLessThan(16);
      }
    });
  }
});

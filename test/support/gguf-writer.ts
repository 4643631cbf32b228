// A GGUF v3 writer for tests: metadata of every value type, tensors of any ggml type from bytes the
// caller made (models/ggml.ts encodes F32/F16/BF16/Q8_0/Q4_0), the whole file built in memory.
// The encoding is models/gguf-writer.ts's (the streaming writer's); what tests add is a tensor at a
// chosen, possibly broken, offset. Without one, offsets are laid out the way llama.cpp's gguf writer
// does (each tensor padded to the alignment, in order).
import { writeFileSync } from 'node:fs';
import { encodeGgufHeader, ggufDataLayout, gguf, GGUF_DEFAULT_ALIGNMENT } from '../../models/gguf-writer.ts';
import type { GgufMetadataEntry } from '../../models/gguf.ts';

export { gguf };

export interface GgufWriteTensor {
  name: string;
  /** ggml_type id (GgmlType.*). */
  type: number;
  /** Dimensions, fastest-varying first. */
  ne: number[];
  data: Uint8Array;
  /** Offset within the data section; by default the next aligned position. */
  offset?: number;
}

export interface GgufWriteOptions {
  metadata: Iterable<[string, GgufMetadataEntry]>;
  tensors?: GgufWriteTensor[];
  /** Written as general.alignment when not 32; the default is 32. */
  alignment?: number;
  version?: number;
}

/** The bytes of a GGUF file. */
export function encodeGguf(options: GgufWriteOptions): Buffer {
  const alignment = options.alignment ?? GGUF_DEFAULT_ALIGNMENT;
  const tensors = options.tensors ?? [];
  // Default offsets follow each other, padded to the alignment. An explicit offset is written as
  // given and does not grow the data section: a test can point a tensor outside the file.
  const laidOut = tensors.filter((t) => t.offset === undefined);
  const layout = ggufDataLayout(laidOut.map((t) => t.data.length), alignment);
  const defaultOffset = new Map(laidOut.map((t, i) => [t, layout.offsets[i]]));
  const offsets = tensors.map((t) => t.offset ?? defaultOffset.get(t)!);
  const header = encodeGgufHeader({
    metadata: options.metadata,
    tensors: tensors.map((t, i) => ({ name: t.name, type: t.type, ne: t.ne, offset: offsets[i] })),
    alignment,
    version: options.version,
  });
  const data = Buffer.alloc(layout.dataBytes);
  tensors.forEach((t, i) => {
    if (offsets[i] + t.data.length <= data.length) data.set(t.data, offsets[i]);
  });
  return Buffer.concat([header, data]);
}

export function writeGguf(path: string, options: GgufWriteOptions): void {
  writeFileSync(path, encodeGguf(options));
}

// Uniform layouts, defined once in TypeScript and mirrored by a `struct` in the WGSL source.
// A test (test/uniforms.test.ts) parses each shader's struct and checks it against this layout.

export type ScalarType = 'u32' | 'i32' | 'f32';

export class UniformLayout<F extends string> {
  readonly structName: string;
  readonly fields: ReadonlyArray<readonly [F, ScalarType]>;
  /** Byte size rounded up to 16, as WGSL requires for a uniform struct of 4-byte scalars. */
  readonly byteSize: number;

  constructor(structName: string, fields: ReadonlyArray<readonly [F, ScalarType]>) {
    this.structName = structName;
    this.fields = fields;
    this.byteSize = Math.max(16, Math.ceil((fields.length * 4) / 16) * 16);
  }

  /** Pack values in field order; every field must be given (a missing one is a bug, not a zero). */
  pack(values: Record<F, number>): ArrayBuffer {
    const data = new ArrayBuffer(this.byteSize);
    const view = new DataView(data);
    this.fields.forEach(([name, type], i) => {
      const value = values[name];
      if (typeof value !== 'number' || Number.isNaN(value)) {
        throw new TypeError(`uniform ${this.structName}.${name} must be a number (got ${value})`);
      }
      if (type === 'f32') view.setFloat32(i * 4, value, true);
      else if (type === 'i32') view.setInt32(i * 4, value, true);
      else {
        if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) {
          throw new RangeError(`uniform ${this.structName}.${name} must be a u32 (got ${value})`);
        }
        view.setUint32(i * 4, value, true);
      }
    });
    return data;
  }
}

/** A uniform buffer with its layout; write() queues the upload for the next submit. */
export class Uniforms<F extends string> {
  readonly buffer: GPUBuffer;
  readonly layout: UniformLayout<F>;
  readonly #device: GPUDevice;

  constructor(device: GPUDevice, layout: UniformLayout<F>, label: string) {
    this.#device = device;
    this.layout = layout;
    this.buffer = device.createBuffer({
      label: `${label}.uniforms`,
      size: layout.byteSize,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
  }

  write(values: Record<F, number>): void {
    this.#device.queue.writeBuffer(this.buffer, 0, this.layout.pack(values));
  }
}

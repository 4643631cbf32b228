// Every error the runtime raises on purpose. Each class's `name` equals the class name, and each
// carries a stable `code` so callers (and, later, the wire protocol) can branch without parsing text.
// This module imports nothing, so every layer may use it.

export class MinerError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** No usable WebGPU adapter; the message names the packages or flags that fix it. */
export class NoAdapterError extends MinerError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('NO_ADAPTER', message, options);
  }
}

/** The device reported a validation, out-of-memory or internal error, or was lost. */
export class GpuError extends MinerError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('GPU_ERROR', message, options);
  }
}

/**
 * The device ran out of memory allocating a model: its weights, or its activations and KV pool
 * (`allocation`). WebGPU reports no memory size, so this error is how a GPU too small shows.
 */
export class GpuMemoryError extends MinerError {
  readonly allocation: 'weights' | 'kv';
  constructor(message: string, allocation: 'weights' | 'kv') {
    super('GPU_OUT_OF_MEMORY', message);
    this.allocation = allocation;
  }
}

/** A kernel was asked for a shape, dtype or size it does not support. */
export class ShapeError extends MinerError {
  constructor(message: string) {
    super('BAD_SHAPE', message);
  }
}

/** A model file or folder is malformed, unsupported or incomplete; the message names the tensor or key. */
export class ModelFormatError extends MinerError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('BAD_MODEL', message, options);
  }
}

/** A caller passed an option that is out of range or of the wrong type. */
export class OptionError extends MinerError {
  constructor(message: string) {
    super('BAD_OPTION', message);
  }
}

/** A generation request is malformed or out of range (wire code BAD_REQUEST). */
export class BadRequestError extends MinerError {
  constructor(message: string) {
    super('BAD_REQUEST', message);
  }
}

/** The engine cannot take more work now: queue or KV cache full (wire code OVERLOADED). */
export class OverloadedError extends MinerError {
  constructor(message: string) {
    super('OVERLOADED', message);
  }
}

/** A crypto worker thread died or failed a job (wire code INTERNAL; the pool restarts the worker). */
export class CryptoWorkerError extends MinerError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('CRYPTO_WORKER', message, options);
  }
}

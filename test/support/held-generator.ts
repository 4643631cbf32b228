// A TextGenerator the test drives, for the axon tests whose outcome must not depend on how fast a
// model runs: each generation yields its first tokens at once, then holds (produces nothing more)
// until it is aborted (it then ends as cancelled) or the test finishes it (it then ends with
// finish_reason length). So a cancel, a disconnect or a shutdown always finds it running, and work
// the test lets finish always finishes, however slow or loaded the machine is. No GPU needed.
import type { EngineInfo, GenerateOptions, GenerateRequest, GeneratedToken, GenerationSummary, TextGenerator } from '../../src/engine/types.ts';

export interface HeldCall {
  readonly request: GenerateRequest;
  readonly signal: AbortSignal | undefined;
  /** Tokens handed to the consumer so far. */
  readonly yielded: number;
  /** Whether the generation has ended (finished, aborted, or left by its consumer). */
  readonly ended: boolean;
  /** Settles when the generator is left: it returned, or its consumer called return() on it. */
  readonly done: Promise<void>;
  /** End the generation normally (finish_reason length) once its first tokens are taken. */
  finish(): void;
}

export interface HeldGenerator extends TextGenerator {
  readonly calls: HeldCall[];
  /** The n-th generation (0-based) once it has started. */
  call(n: number): Promise<HeldCall>;
}

/** `tokens`: how many tokens each generation yields before it holds (a function of the request, or a number). */
export function heldGenerator(tokens: number | ((request: GenerateRequest) => number) = 1): HeldGenerator {
  const calls: HeldCall[] = [];
  const waiters: Array<() => void> = [];
  const info = (): EngineInfo => {
    const running = calls.filter((c) => !c.ended).length;
    return { modelId: 'held', weightsDigest: '', adapter: '', backend: '', queueDepth: 0, activeSequences: running, kvBlocksUsed: running, kvBlocksTotal: 1024 };
  };
  return {
    calls,
    info,
    close: async () => {},
    call(n: number) {
      return new Promise<HeldCall>((resolve) => {
        const check = () => {
          if (calls.length > n) resolve(calls[n]);
          else waiters.push(check);
        };
        check();
      });
    },
    async *generate(request: GenerateRequest, options: GenerateOptions = {}): AsyncGenerator<GeneratedToken, GenerationSummary> {
      const { signal } = options;
      let finish!: () => void;
      const finished = new Promise<'length'>((resolve) => (finish = () => resolve('length')));
      let leave!: () => void;
      const call = { request, signal, yielded: 0, ended: false, done: new Promise<void>((resolve) => (leave = resolve)), finish };
      calls.push(call);
      for (const wake of waiters.splice(0)) wake();
      const summary = (finishReason: GenerationSummary['finishReason']): GenerationSummary => ({
        finishReason,
        promptTokens: 1,
        completionTokens: call.yielded,
        ttftMs: 0,
        totalMs: 0,
        tokensPerS: 0,
      });
      try {
        const first = typeof tokens === 'number' ? tokens : tokens(request);
        for (let index = 0; index < first; index++) {
          if (signal?.aborted) return summary('cancelled');
          call.yielded = index + 1;
          yield { index, tokenId: index, text: `t${index} `, logprob: -1, topLogprobs: [] };
        }
        const aborted = new Promise<'cancelled'>((resolve) => {
          if (signal?.aborted) resolve('cancelled');
          else signal?.addEventListener('abort', () => resolve('cancelled'), { once: true });
        });
        return summary(await Promise.race([aborted, finished]));
      } finally {
        call.ended = true;
        leave();
      }
    },
  };
}

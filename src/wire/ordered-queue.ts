// Frames of one connection, acted on strictly in the order they arrived, each once its signature's
// verdict is in, whatever order the crypto workers return the verdicts in. Both sides keep one per
// connection: the axon for request frames (a cancel pipelined after its generate acts on it), the
// validator client for response frames (a token is delivered, and the transcript hashed, only after
// every frame before it).

/** A signature's verdict: valid or not, or the Error of a check that could not be made (a worker died). */
export type Verdict = boolean | Error;

export interface OrderedQueueOptions<T> {
  /** Act on one item with its verdict, in arrival order. */
  finish(item: T, verdict: Verdict): void;
  /** When true, whatever still waits is dropped unfinished (the connection closed or failed). */
  stopped?(): boolean;
  /** After an item leaves the queue (before it is finished), with how many still wait: to resume reading. */
  afterShift?(waiting: number): void;
}

export class OrderedVerifyQueue<T> {
  #items: Array<{ item: T; verdict: Verdict | Promise<Verdict> }> = [];
  #options: OrderedQueueOptions<T>;
  #running = false;
  #pumping: Promise<void> = Promise.resolve();

  constructor(options: OrderedQueueOptions<T>) {
    this.#options = options;
  }

  /** Items received and not yet finished (waiting for their verdict, or behind one that is). */
  get length(): number {
    return this.#items.length;
  }

  /** Settles once nothing waits. */
  get drained(): Promise<void> {
    return this.#running ? this.#pumping : Promise.resolve();
  }

  /**
   * Add an item with its verdict, or a promise of it (which must not reject). Finished at once when
   * nothing waits before it and its verdict is in; otherwise in its turn.
   */
  push(item: T, verdict: Verdict | Promise<Verdict>): void {
    if (this.#items.length === 0 && !(verdict instanceof Promise) && !this.#running) {
      this.#options.finish(item, verdict);
      return;
    }
    this.#items.push({ item, verdict });
    if (!this.#running) {
      this.#running = true;
      this.#pumping = this.#pump();
    }
  }

  /** Drop whatever waits (a fatal frame: nothing after it on the connection can be trusted). */
  clear(): void {
    this.#items.length = 0;
  }

  async #pump(): Promise<void> {
    try {
      for (;;) {
        const head = this.#items[0];
        if (head === undefined) return;
        if (this.#options.stopped?.()) {
          this.#items.length = 0;
          return;
        }
        if (head.verdict instanceof Promise) {
          head.verdict = await head.verdict;
          continue; // look again: the queue may have been cleared or stopped meanwhile
        }
        this.#items.shift();
        this.#options.afterShift?.(this.#items.length);
        this.#options.finish(head.item, head.verdict);
      }
    } finally {
      this.#running = false;
    }
  }
}

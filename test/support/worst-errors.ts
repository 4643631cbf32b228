// The worst error of a test file's cases, per key, and how many cases each key measured: a file's
// closing test checks that every case it expects ran and was measured, and that the worst stays
// within the stated bound (a case that failed, was skipped or recorded nothing fails it).
import { expect } from 'vitest';

export class WorstErrors {
  private readonly worst = new Map<string, number>();
  private readonly cases = new Map<string, number>();

  /** Record one case's error under `key`; returns it. A non-finite error is a failure. */
  record(key: string, err: number): number {
    if (!Number.isFinite(err)) throw new Error(`${key}: error ${err} is not finite`);
    this.worst.set(key, Math.max(this.worst.get(key) ?? 0, err));
    this.cases.set(key, (this.cases.get(key) ?? 0) + 1);
    return err;
  }

  /** The figures, e.g. for a log line: key -> worst error and case count. */
  summary(): Record<string, { worst: number; cases: number }> {
    return Object.fromEntries([...this.worst].map(([key, worst]) => [key, { worst, cases: this.cases.get(key)! }]));
  }

  /** Every key of `expected` measured exactly that many cases (and no other key any), each worst within `bound`. */
  expectMeasured(expected: Record<string, number>, bound: number, what: string): void {
    console.log(`${what} worst error: ${Object.entries(this.summary()).map(([k, s]) => `${k} ${s.worst.toExponential(2)} (${s.cases})`).join(', ')}`);
    for (const n of Object.values(expected)) expect(n, `${what}: expected case counts`).toBeGreaterThan(0);
    expect(Object.fromEntries(this.cases), `${what}: cases measured per key`).toEqual(expected);
    for (const [key, worst] of this.worst) expect(worst, `${what}: ${key} worst error`).toBeLessThanOrEqual(bound);
  }
}

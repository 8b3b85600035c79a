import { badInput } from "../errors.js";
import type { ProgressRecord } from "./progress.model.js";

/** The shortest interval a subscriber may ask for between batches. */
export const BATCH_INTERVAL_MIN_MS = 100;

/**
 * Devices one batch holds at most. A batch keeps the latest report of each
 * device that reported within the interval, so it is bounded by the
 * product's devices when the broker admits registered devices only (the
 * embedded broker, EMQX through this server); this bounds it whatever the
 * broker lets through. A batch holds references to report objects the
 * instance shares among its subscribers: its own cost is a map entry
 * (about 80 bytes) per device.
 */
export const BATCH_DEVICES_MAX = 100_000;

/** What one batch subscriber receives per interval. */
export interface ProgressBatch {
  /** The latest report of each device that reported since the last batch, in the order of those reports. */
  reports: ProgressRecord[];
  /** Reports of this interval replaced by a newer one of the same device. */
  coalesced: number;
  /** Reports of this interval left out because the batch already held `maxDevices` other devices. */
  dropped: number;
}

/** The interval a subscriber asked for, or BAD_USER_INPUT. */
export function batchInterval(intervalMs: number): number {
  if (!Number.isInteger(intervalMs) || intervalMs < BATCH_INTERVAL_MIN_MS) {
    throw badInput("intervalMs", `must be a whole number of milliseconds, at least ${BATCH_INTERVAL_MIN_MS}`);
  }
  return intervalMs;
}

/**
 * A subscriber's reports, coalesced into one batch per interval: it reads
 * `source` (a {@link ProgressFeed} watcher, already filtered) as fast as it
 * yields and keeps the latest report of each device. A clock ticks every
 * `intervalMs` from subscribing; a tick that finds reports gathered hands
 * them out as one batch, a tick that finds none sends nothing. A consumer
 * still busy with the previous batch at a tick gets the next as soon as it
 * asks, with everything that arrived meanwhile. Never more than one batch
 * per tick, never more than `maxDevices` reports in one.
 */
export class ProgressBatches implements AsyncIterableIterator<ProgressBatch> {
  #latest = new Map<string, ProgressRecord>();
  #coalesced = 0;
  #dropped = 0;
  /** A tick found reports gathered: hand them out at the next ask. */
  #due = false;
  #ended = false;
  #failure: { err: unknown } | undefined;
  #wake: (() => void) | undefined;
  readonly #timer: NodeJS.Timeout;

  constructor(
    private readonly source: AsyncIterator<ProgressRecord>,
    intervalMs: number,
    private readonly maxDevices = BATCH_DEVICES_MAX,
  ) {
    this.#timer = setInterval(() => {
      if (this.#latest.size === 0) return;
      this.#due = true;
      this.#signal();
    }, batchInterval(intervalMs));
    // Subscriptions end with their connections (graphql-ws' dispose); a timer alone must not hold the process.
    this.#timer.unref();
    void this.#read();
  }

  /** How many devices the batch being gathered holds (tests, diagnostics). */
  get holding(): number {
    return this.#latest.size;
  }

  async next(): Promise<IteratorResult<ProgressBatch, undefined>> {
    for (;;) {
      if (this.#failure) {
        const { err } = this.#failure;
        this.#close();
        throw err;
      }
      if (this.#latest.size > 0 && (this.#due || this.#ended)) return { done: false, value: this.#take() };
      if (this.#ended) {
        this.#close();
        return { done: true, value: undefined };
      }
      await new Promise<void>((resolve) => (this.#wake = resolve));
    }
  }

  async return(): Promise<IteratorResult<ProgressBatch, undefined>> {
    this.#close();
    await this.source.return?.();
    return { done: true, value: undefined };
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  async #read(): Promise<void> {
    try {
      for (;;) {
        const step = await this.source.next();
        if (step.done) break;
        this.#add(step.value);
      }
    } catch (err) {
      this.#failure = { err };
    } finally {
      this.#ended = true;
      this.#signal();
    }
  }

  #add(record: ProgressRecord): void {
    const latest = this.#latest;
    if (latest.delete(record.deviceName)) this.#coalesced++;
    else if (latest.size >= this.maxDevices) {
      this.#dropped++;
      return;
    }
    latest.set(record.deviceName, record);
  }

  #take(): ProgressBatch {
    const batch = { reports: [...this.#latest.values()], coalesced: this.#coalesced, dropped: this.#dropped };
    this.#latest = new Map();
    this.#coalesced = 0;
    this.#dropped = 0;
    this.#due = false;
    return batch;
  }

  #signal(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }

  #close(): void {
    clearInterval(this.#timer);
    this.#ended = true;
    this.#latest = new Map();
    this.#signal();
  }
}

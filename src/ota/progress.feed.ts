import { badInput } from "../errors.js";
import { requireName } from "../devices/device.service.js";
import type { ProgressRecord } from "./progress.model.js";

/** A stream of progress events for one product, in batches (Redis pub/sub in production). */
export type ProgressEvents = (productName: string) => AsyncIterator<ProgressRecord[]>;

export type TagsOf = (productName: string, deviceName: string) => Promise<readonly string[]>;

export interface WatchArgs {
  productName: string;
  deviceName?: string | null;
  tag?: string | null;
  /** Only reports this also accepts (a rollout's devices and version). */
  accept?: (record: ProgressRecord) => Promise<boolean>;
}

export interface FeedOptions {
  /**
   * Reports waiting for one subscriber that does not read. Past it, the
   * queue keeps only the latest report of each device (a dashboard wants
   * where each device stands, not every step), and at most this many.
   */
  queueMax: number;
  /** Counts reports a slow subscriber did not get because a newer one of the same device replaced them. */
  onOverflow: (replaced: number) => void;
}

/** One subscriber: what it wants, and the reports waiting for it. */
interface Watcher {
  deviceName: string | undefined;
  tag: string | undefined;
  accept: ((record: ProgressRecord) => Promise<boolean>) | undefined;
  queue: ProgressRecord[];
  wake: (() => void) | undefined;
  closed: boolean;
}

/**
 * Shrinks a full queue in place to the latest report of each device, in the
 * order of those reports, and then, if more devices than `max` are waiting,
 * to the newest `max` of them. Returns how many reports were dropped.
 */
export function boundQueue(queue: ProgressRecord[], max: number): number {
  const latest = new Map<string, number>();
  queue.forEach((r, i) => latest.set(r.deviceName, i));
  const before = queue.length;
  let kept = 0;
  for (let i = 0; i < before; i++) {
    const r = queue[i] as ProgressRecord;
    if (latest.get(r.deviceName) === i) queue[kept++] = r;
  }
  queue.length = kept;
  if (kept > max) queue.splice(0, kept - max);
  return before - queue.length;
}

/** One product's event source, shared by all its watchers on this instance. */
interface Hub {
  watchers: Set<Watcher>;
  source: AsyncIterator<ProgressRecord[]>;
}

/**
 * Live progress for subscribers. Every instance receives every product's
 * events; one source per product is shared by all who watch it and hands
 * each watcher the reports it asked for (a device, a tag, or all). Tag
 * membership comes from `tagsOf` (the registry's cache, shared by all
 * subscribers and cleared when a device's tags change).
 */
export class ProgressFeed {
  readonly #hubs = new Map<string, Hub>();

  constructor(
    private readonly events: ProgressEvents,
    private readonly tagsOf: TagsOf,
    private readonly options: FeedOptions,
  ) {}

  /** Products watched on this instance, with how many watchers each (for tests and diagnostics). */
  get watching(): ReadonlyMap<string, number> {
    return new Map([...this.#hubs].map(([product, hub]) => [product, hub.watchers.size]));
  }

  /** The longest queue of reports waiting for one subscriber on this instance (diagnostics, tests). */
  get backlog(): number {
    let longest = 0;
    for (const hub of this.#hubs.values()) for (const w of hub.watchers) longest = Math.max(longest, w.queue.length);
    return longest;
  }

  watch(args: WatchArgs): AsyncIterableIterator<ProgressRecord> {
    const productName = requireName("productName", args.productName);
    if (args.deviceName != null && args.tag != null) throw badInput("tag", "give at most one of deviceName and tag");
    const watcher: Watcher = {
      deviceName: args.deviceName == null ? undefined : requireName("deviceName", args.deviceName),
      tag: args.tag == null ? undefined : requireName("tag", args.tag),
      accept: args.accept,
      queue: [],
      wake: undefined,
      closed: false,
    };
    this.#join(productName, watcher);
    return new WatchStream(watcher, () => this.#leave(productName, watcher), this.tagsOf);
  }

  #join(productName: string, watcher: Watcher): void {
    let hub = this.#hubs.get(productName);
    if (!hub) {
      hub = { watchers: new Set(), source: this.events(productName) };
      this.#hubs.set(productName, hub);
      void this.#pump(productName, hub);
    }
    hub.watchers.add(watcher);
  }

  #leave(productName: string, watcher: Watcher): void {
    watcher.closed = true;
    watcher.queue.length = 0;
    watcher.wake?.();
    const hub = this.#hubs.get(productName);
    if (!hub?.watchers.delete(watcher) || hub.watchers.size > 0) return;
    this.#hubs.delete(productName);
    void hub.source.return?.();
  }

  /** Deals each batch of a product's reports to its watchers, in order. */
  async #pump(productName: string, hub: Hub): Promise<void> {
    const { queueMax, onOverflow } = this.options;
    try {
      for (;;) {
        const step = await hub.source.next();
        if (step.done) return;
        for (const watcher of hub.watchers) {
          const before = watcher.queue.length;
          for (const record of step.value) {
            if (watcher.deviceName === undefined || record.deviceName === watcher.deviceName) watcher.queue.push(record);
          }
          if (watcher.queue.length > queueMax) onOverflow(boundQueue(watcher.queue, queueMax));
          if (watcher.queue.length > before && watcher.wake) {
            const wake = watcher.wake;
            watcher.wake = undefined;
            wake();
          }
        }
      }
    } catch {
      // A failed source ends its watchers' streams, below; the clients see them complete.
    } finally {
      // The source ended (unsubscribed, or Redis gone): so do its watchers.
      if (this.#hubs.get(productName) === hub) this.#hubs.delete(productName);
      for (const watcher of hub.watchers) {
        watcher.closed = true;
        watcher.wake?.();
      }
    }
  }
}

/**
 * One watcher's reports, filtered. A hand-written iterator, not an async
 * generator: return() must take effect at once, even while next() waits, or
 * an unsubscribed client would stay a watcher until the next event. A class,
 * not an object of closures: 10,000 subscribers hold one each.
 */
class WatchStream implements AsyncIterableIterator<ProgressRecord> {
  constructor(
    private readonly watcher: Watcher,
    private readonly leave: () => void,
    private readonly tagsOf: TagsOf,
  ) {}

  async next(): Promise<IteratorResult<ProgressRecord, undefined>> {
    const watcher = this.watcher;
    try {
      for (;;) {
        if (watcher.closed) return { done: true, value: undefined };
        const record = watcher.queue.shift();
        if (record === undefined) {
          await new Promise<void>((resolve) => (watcher.wake = resolve));
          continue;
        }
        if (watcher.tag !== undefined && !(await this.tagsOf(record.productName, record.deviceName)).includes(watcher.tag)) continue;
        if (watcher.accept === undefined || (await watcher.accept(record))) return { done: false, value: record };
      }
    } catch (err) {
      // A consumer whose next() failed does not call return() (for await, graphql-ws): leave now, or stay a watcher for good.
      this.leave();
      throw err;
    }
  }

  async return(): Promise<IteratorResult<ProgressRecord, undefined>> {
    this.leave();
    return { done: true, value: undefined };
  }

  [Symbol.asyncIterator](): this {
    return this;
  }
}

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
}

const TAGS_TTL_MS = 5_000;

/** One subscriber: what it wants, and the reports waiting for it. */
interface Watcher {
  deviceName: string | undefined;
  tag: string | undefined;
  queue: ProgressRecord[];
  wake: (() => void) | undefined;
  closed: boolean;
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
 * membership is looked up once per device every few seconds, shared by all
 * subscribers.
 */
export class ProgressFeed {
  readonly #tags = new Map<string, { tags: readonly string[]; until: number }>();
  readonly #hubs = new Map<string, Hub>();

  constructor(
    private readonly events: ProgressEvents,
    private readonly tagsOf: TagsOf,
  ) {}

  /** Products watched on this instance, with how many watchers each (for tests and diagnostics). */
  get watching(): ReadonlyMap<string, number> {
    return new Map([...this.#hubs].map(([product, hub]) => [product, hub.watchers.size]));
  }

  watch(args: WatchArgs): AsyncIterableIterator<ProgressRecord> {
    const productName = requireName("productName", args.productName);
    if (args.deviceName != null && args.tag != null) throw badInput("tag", "give at most one of deviceName and tag");
    const watcher: Watcher = {
      deviceName: args.deviceName == null ? undefined : requireName("deviceName", args.deviceName),
      tag: args.tag == null ? undefined : requireName("tag", args.tag),
      queue: [],
      wake: undefined,
      closed: false,
    };
    this.#join(productName, watcher);
    // A hand-written iterator, not an async generator: return() must take
    // effect at once, even while next() waits, or an unsubscribed client
    // would stay a watcher until the next event.
    const iterator: AsyncIterableIterator<ProgressRecord> = {
      next: async () => {
        for (;;) {
          if (watcher.closed) return { done: true, value: undefined };
          const record = watcher.queue.shift();
          if (record === undefined) {
            await new Promise<void>((resolve) => (watcher.wake = resolve));
            continue;
          }
          if (watcher.tag === undefined || (await this.#hasTag(record.productName, record.deviceName, watcher.tag))) {
            return { done: false, value: record };
          }
        }
      },
      return: async () => {
        this.#leave(productName, watcher);
        return { done: true, value: undefined };
      },
      [Symbol.asyncIterator]() {
        return iterator;
      },
    };
    return iterator;
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
    try {
      for (;;) {
        const step = await hub.source.next();
        if (step.done) return;
        for (const watcher of hub.watchers) {
          const before = watcher.queue.length;
          for (const record of step.value) {
            if (watcher.deviceName === undefined || record.deviceName === watcher.deviceName) watcher.queue.push(record);
          }
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

  async #hasTag(productName: string, deviceName: string, tag: string): Promise<boolean> {
    const key = `${productName}/${deviceName}`;
    const now = Date.now();
    let entry = this.#tags.get(key);
    if (!entry || entry.until < now) {
      if (this.#tags.size > 100_000) this.#tags.clear();
      entry = { tags: await this.tagsOf(productName, deviceName), until: now + TAGS_TTL_MS };
      this.#tags.set(key, entry);
    }
    return entry.tags.includes(tag);
  }
}

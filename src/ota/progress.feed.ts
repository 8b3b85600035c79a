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

/**
 * Live progress for subscribers. Every instance receives every product's
 * events and filters them here; tag membership is looked up once per device
 * every few seconds, shared by all subscribers.
 */
export class ProgressFeed {
  readonly #tags = new Map<string, { tags: readonly string[]; until: number }>();

  constructor(
    private readonly events: ProgressEvents,
    private readonly tagsOf: TagsOf,
  ) {}

  watch(args: WatchArgs): AsyncIterableIterator<ProgressRecord> {
    const productName = requireName("productName", args.productName);
    if (args.deviceName != null && args.tag != null) throw badInput("tag", "give at most one of deviceName and tag");
    const deviceName = args.deviceName == null ? undefined : requireName("deviceName", args.deviceName);
    const tag = args.tag == null ? undefined : requireName("tag", args.tag);
    const source = this.events(productName);
    const accept = async (r: ProgressRecord) =>
      (deviceName === undefined || r.deviceName === deviceName) &&
      (tag === undefined || (await this.#hasTag(r.productName, r.deviceName, tag)));
    // A hand-written iterator, not an async generator: return() must reach the
    // source at once, even while it waits, or an unsubscribed client's Redis
    // listener would linger until the next event.
    const ready: ProgressRecord[] = [];
    const iterator: AsyncIterableIterator<ProgressRecord> = {
      async next() {
        for (;;) {
          const record = ready.shift();
          if (record) {
            if (await accept(record)) return { done: false, value: record };
            continue;
          }
          const step = await source.next();
          if (step.done) return step;
          ready.push(...step.value);
        }
      },
      async return() {
        await source.return?.();
        return { done: true, value: undefined };
      },
      [Symbol.asyncIterator]() {
        return iterator;
      },
    };
    return iterator;
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

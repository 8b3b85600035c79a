import { badInput } from "../errors.js";
import { requireName } from "../devices/device.service.js";
import { checkName } from "../protocol/names.js";
import type { ProgressRecord } from "./progress.model.js";

/** A stream of progress events for one product, in batches (Redis pub/sub in production). */
export type ProgressEvents = (productName: string) => AsyncIterator<ProgressRecord[]>;

export type TagsOf = (productName: string, deviceName: string) => Promise<readonly string[]>;

export interface WatchArgs {
  productName: string;
  deviceName?: string | null;
  /** Only these devices' reports (a dashboard's rows on screen); at most {@link WATCH_DEVICES_MAX}. */
  deviceNames?: readonly string[] | null;
  tag?: string | null;
  /** Only reports this also accepts (a rollout's devices and version). */
  accept?: (record: ProgressRecord) => Promise<boolean>;
}

/** Devices one watch may name (`deviceNames`): a page of rows, not a fleet (a tag or a rollout is that). */
export const WATCH_DEVICES_MAX = 1000;

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

/**
 * A subscriber that the feed hands reports to, in the loop that deals a
 * batch to the product's watchers, rather than one that asks for each with
 * `next()`: 10,000 dashboards then cost one call each per report instead of
 * an async iterator's chain of promises each.
 */
export interface ReportSink {
  /**
   * Takes the next report (always, in the order of the product's reports) and
   * says whether it can take another now. After false (its socket is backed
   * up, or the report is still being prepared) the feed holds the reports
   * for it in its queue, bounded like any slow subscriber's (`queueMax`),
   * until the sink calls {@link PushSource.resume}.
   */
  take(record: ProgressRecord): boolean;
  /** The feed ended the watch: the source ended (no argument) or a filter failed. May come after `return()`: ignore it then. */
  end(err?: unknown): void;
}

/** A watch that can hand its reports to a {@link ReportSink} instead of being iterated. */
export interface PushSource {
  /** From now on reports go to `sink`; `next()` is not called again. `return()` still ends the watch. */
  pushTo(sink: ReportSink): void;
  /** The sink can take reports again after its `take` said it could not. */
  resume(): void;
}

/** One subscriber: what it wants, and the reports waiting for it. */
interface Watcher {
  /** Only these devices' reports (`deviceName`, or `deviceNames`). */
  devices: ReadonlySet<string> | undefined;
  tag: string | undefined;
  accept: ((record: ProgressRecord) => Promise<boolean>) | undefined;
  queue: ProgressRecord[];
  wake: (() => void) | undefined;
  closed: boolean;
  /** Where reports are pushed, when they are (see {@link ReportSink}). */
  sink: ReportSink | undefined;
  /** Pushed from the hub's loop itself: a sink, and no filter that must wait (tag, accept). */
  direct: boolean;
  /** The sink can take a report now. */
  ready: boolean;
  /** A filtered watcher's forwarding loop, waiting for its sink to be ready again. */
  resumed: (() => void) | undefined;
  /** Takes the watcher out of the feed (idempotent). */
  leave: () => void;
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
    if (args.deviceName != null && args.deviceNames != null) throw badInput("deviceNames", "give at most one of deviceName and deviceNames");
    const watcher: Watcher = {
      devices: args.deviceName != null ? new Set([requireName("deviceName", args.deviceName)]) : args.deviceNames != null ? deviceSet(args.deviceNames) : undefined,
      tag: args.tag == null ? undefined : requireName("tag", args.tag),
      accept: args.accept,
      queue: [],
      wake: undefined,
      closed: false,
      sink: undefined,
      direct: false,
      ready: false,
      resumed: undefined,
      leave: () => this.#leave(productName, watcher),
    };
    this.#join(productName, watcher);
    return new WatchStream(watcher, this.tagsOf);
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
    watcher.resumed?.();
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
            // A sink may end its own watch while taking a report (an unsubscribe, a failure): nothing more for it.
            if (watcher.closed) break;
            if (watcher.devices !== undefined && !watcher.devices.has(record.deviceName)) continue;
            // A sink that is ready and owes nothing takes the report now; otherwise it waits in the queue, in order.
            if (watcher.direct && watcher.ready && watcher.queue.length === 0) offer(watcher, record);
            else watcher.queue.push(record);
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
        watcher.resumed?.();
        if (watcher.direct) watcher.sink?.end();
      }
    }
  }
}

/** The devices a watch names, each a valid name, one to {@link WATCH_DEVICES_MAX} of them; or BAD_USER_INPUT. */
function deviceSet(names: readonly string[]): ReadonlySet<string> {
  if (names.length === 0 || names.length > WATCH_DEVICES_MAX) throw badInput("deviceNames", `give 1 to ${WATCH_DEVICES_MAX} device names (got ${names.length})`);
  return new Set(
    names.map((name, i) => {
      const r = checkName("deviceName", name);
      if (!r.ok) throw badInput("deviceNames", `[${i}]: ${r.message}`);
      return r.value;
    }),
  );
}

/** Hands a direct watcher's sink one report; a sink that throws ends its own watch, not the product's. */
function offer(watcher: Watcher, record: ProgressRecord): void {
  const sink = watcher.sink as ReportSink;
  try {
    watcher.ready = sink.take(record);
  } catch (err) {
    watcher.ready = false;
    watcher.leave();
    sink.end(err);
  }
}

/**
 * One watcher's reports, filtered. A hand-written iterator, not an async
 * generator: return() must take effect at once, even while next() waits, or
 * an unsubscribed client would stay a watcher until the next event. A class,
 * not an object of closures: 10,000 subscribers hold one each.
 */
class WatchStream implements AsyncIterableIterator<ProgressRecord>, PushSource {
  constructor(
    private readonly watcher: Watcher,
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
      watcher.leave();
      throw err;
    }
  }

  async return(): Promise<IteratorResult<ProgressRecord, undefined>> {
    this.watcher.leave();
    return { done: true, value: undefined };
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  pushTo(sink: ReportSink): void {
    const watcher = this.watcher;
    watcher.sink = sink;
    watcher.ready = true;
    // A tag or a rollout filter waits on a lookup per report: those watchers keep their own loop, below.
    if (watcher.tag !== undefined || watcher.accept !== undefined) void this.#forward(sink);
    else {
      watcher.direct = true;
      this.resume();
    }
  }

  resume(): void {
    const watcher = this.watcher;
    watcher.ready = true;
    if (!watcher.direct) {
      const resumed = watcher.resumed;
      watcher.resumed = undefined;
      resumed?.();
      return;
    }
    while (watcher.ready && !watcher.closed && watcher.queue.length > 0) offer(watcher, watcher.queue.shift() as ProgressRecord);
  }

  /** A filtered watcher's reports, pushed as its filters pass them, while its sink can take them. */
  async #forward(sink: ReportSink): Promise<void> {
    const watcher = this.watcher;
    try {
      for (;;) {
        const step = await this.next();
        if (step.done) return sink.end();
        watcher.ready = sink.take(step.value);
        while (!watcher.ready && !watcher.closed) await new Promise<void>((resolve) => (watcher.resumed = resolve));
      }
    } catch (err) {
      // A filter or the sink failed: the watch ends, as a pulled one does.
      watcher.leave();
      sink.end(err);
    }
  }
}

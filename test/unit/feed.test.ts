import { describe, expect, it } from "vitest";
import { boundQueue, ProgressFeed, type PushSource, type ReportSink, type WatchArgs } from "../../src/ota/progress.feed.js";
import type { ProgressRecord } from "../../src/ota/progress.model.js";
import { eventually } from "../helpers/wait.js";

const report = (deviceName: string, progress: number) =>
  ({ productName: "p", deviceName, version: "2", type: "firmware", progress, desc: "", messageId: `${deviceName}${progress}`, receivedAt: 0, raw: {}, state: "DOWNLOADING", failureReason: null }) as ProgressRecord;

const view = (q: ProgressRecord[]) => q.map((r) => `${r.deviceName}${r.progress}`);

describe("a full subscriber queue", () => {
  it("keeps the latest report of each device, in the order of those reports", () => {
    const q = [report("a", 1), report("b", 1), report("a", 2), report("c", 1), report("b", 2)];
    expect(boundQueue(q, 3)).toBe(2);
    expect(view(q)).toEqual(["a2", "c1", "b2"]);
  });

  it("keeps at most the bound, dropping the oldest devices' reports when more devices wait", () => {
    const q = ["a", "b", "c", "d", "e"].map((d) => report(d, 1));
    expect(boundQueue(q, 2)).toBe(3);
    expect(view(q)).toEqual(["d1", "e1"]);
  });
});

/** A product's events as the feed's port yields them: batches the test publishes, in order. */
class Events implements AsyncIterator<ProgressRecord[]> {
  readonly #batches: ProgressRecord[][] = [];
  #wake: (() => void) | undefined;
  #ended = false;

  publish(...records: ProgressRecord[]): void {
    this.#batches.push(records);
    this.#wake?.();
  }

  end(): void {
    this.#ended = true;
    this.#wake?.();
  }

  async next(): Promise<IteratorResult<ProgressRecord[], undefined>> {
    while (this.#batches.length === 0 && !this.#ended) await new Promise<void>((resolve) => (this.#wake = resolve));
    const batch = this.#batches.shift();
    return batch ? { done: false, value: batch } : { done: true, value: undefined };
  }

  async return(): Promise<IteratorResult<ProgressRecord[], undefined>> {
    this.end();
    return { done: true, value: undefined };
  }
}

/** A sink that records what it takes, ready or not as the test says, and lets the test wait for a count. */
class Sink implements ReportSink {
  readonly taken: string[] = [];
  readonly ended: unknown[] = [];
  ready = true;
  onTake: ((record: ProgressRecord) => void) | undefined;
  readonly #waiters: { n: number; resolve: () => void }[] = [];

  take(record: ProgressRecord): boolean {
    this.taken.push(`${record.deviceName}${record.progress}`);
    this.onTake?.(record);
    for (const w of this.#waiters.filter((w) => this.taken.length >= w.n)) w.resolve();
    return this.ready;
  }

  end(err?: unknown): void {
    this.ended.push(err ?? "done");
    for (const w of this.#waiters) w.resolve();
  }

  /** Resolves once `n` reports were taken in all (or the watch ended). */
  until(n: number): Promise<void> {
    if (this.taken.length >= n || this.ended.length > 0) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push({ n, resolve }));
  }
}

function feed(options: { queueMax?: number; tags?: Record<string, string[]> } = {}) {
  const events = new Events();
  const overflow: number[] = [];
  const tags = options.tags ?? {};
  const f = new ProgressFeed(
    () => events,
    async (_p, d) => tags[d] ?? [],
    { queueMax: options.queueMax ?? 100, onOverflow: (n) => overflow.push(n) },
  );
  const push = (args: Partial<WatchArgs> = {}) => {
    const sink = new Sink();
    const stream = f.watch({ productName: "p", ...args }) as AsyncIterableIterator<ProgressRecord> & PushSource & { return(): Promise<unknown> };
    stream.pushTo(sink);
    return { sink, stream };
  };
  return { feed: f, events, overflow, push };
}

describe("a feed that pushes reports to its subscribers", () => {
  it("hands each report to a ready sink in order, and holds them in order, bounded and counted, while it is not", async () => {
    const { feed: f, events, overflow, push } = feed({ queueMax: 3 });
    const { sink, stream } = push();
    events.publish(report("a", 1), report("b", 1));
    await sink.until(2);
    // The sink takes a2 and says it cannot take more: what follows waits for it.
    sink.ready = false;
    events.publish(report("a", 2), report("b", 2), report("a", 3));
    events.publish(report("c", 1), report("a", 4), report("b", 3));
    await eventually(() => expect(f.backlog).toBe(3));
    expect(sink.taken).toEqual(["a1", "b1", "a2"]);
    // Five waited, more than 3: the latest of each device kept, in the order of those reports.
    expect(overflow).toEqual([2]);
    sink.ready = true;
    stream.resume();
    expect(sink.taken).toEqual(["a1", "b1", "a2", "c1", "a4", "b3"]);
    expect(f.backlog).toBe(0);
    events.publish(report("c", 2));
    await sink.until(7);
    expect(sink.taken.at(-1)).toBe("c2");
  });

  it("gives a device's or a tag's watcher only its reports, in order", async () => {
    const { events, push } = feed({ tags: { a: ["beta"], c: ["beta"] } });
    const byTag = push({ tag: "beta" });
    const byDevice = push({ deviceName: "b" });
    events.publish(report("a", 1), report("b", 1), report("c", 1), report("a", 2));
    events.publish(report("b", 2), report("c", 2));
    await byTag.sink.until(4);
    await byDevice.sink.until(2);
    expect(byTag.sink.taken).toEqual(["a1", "c1", "a2", "c2"]);
    expect(byDevice.sink.taken).toEqual(["b1", "b2"]);
  });

  it("hands nothing more to a subscriber that leaves in the middle of a batch, its own or another's", async () => {
    const { feed: f, events, push } = feed();
    const first = push();
    const second = push();
    const third = push();
    // The first leaves while taking its first report, and takes the second subscriber with it.
    first.sink.onTake = () => {
      void first.stream.return();
      void second.stream.return();
    };
    events.publish(report("a", 1), report("a", 2), report("a", 3));
    await third.sink.until(3);
    expect(first.sink.taken).toEqual(["a1"]);
    expect(second.sink.taken).toEqual([]);
    expect(third.sink.taken).toEqual(["a1", "a2", "a3"]);
    expect(f.watching.get("p")).toBe(1);
  });

  it("ends a sink whose take throws, without ending the others", async () => {
    const { feed: f, events, push } = feed();
    const failing = push();
    const other = push();
    failing.sink.onTake = () => {
      throw new Error("socket gone");
    };
    events.publish(report("a", 1), report("a", 2));
    await other.sink.until(2);
    expect(failing.sink.taken).toEqual(["a1"]);
    expect(failing.sink.ended).toEqual([new Error("socket gone")]);
    expect(f.watching.get("p")).toBe(1);
  });

  it("ends every sink when the product's source ends", async () => {
    const { feed: f, events, push } = feed({ tags: { a: ["beta"] } });
    const all = push();
    const byTag = push({ tag: "beta" });
    events.publish(report("a", 1));
    await all.sink.until(1);
    await byTag.sink.until(1);
    events.end();
    await eventually(() => expect([all.sink.ended, byTag.sink.ended]).toEqual([["done"], ["done"]]));
    expect(f.watching.has("p")).toBe(false);
  });
});

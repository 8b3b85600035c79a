import { describe, expect, it } from "vitest";
import { batchInterval, ProgressBatches } from "../../src/ota/progress.batch.js";
import type { ProgressRecord } from "../../src/ota/progress.model.js";

const record = (deviceName: string, progress: number) =>
  ({ productName: "p", deviceName, version: "2", type: "firmware", progress, desc: "", messageId: `${deviceName}-${progress}`, receivedAt: 0, raw: {}, state: "DOWNLOADING", failureReason: null }) as ProgressRecord;

/** A source that yields what it is given, as a ProgressFeed watcher does. */
function source() {
  const queue: ProgressRecord[] = [];
  let wake: (() => void) | undefined;
  let ended = false;
  const iterator: AsyncIterator<ProgressRecord> = {
    async next() {
      for (;;) {
        const r = queue.shift();
        if (r) return { done: false, value: r };
        if (ended) return { done: true, value: undefined };
        await new Promise<void>((resolve) => (wake = resolve));
      }
    },
    async return() {
      ended = true;
      wake?.();
      return { done: true, value: undefined };
    },
  };
  return {
    iterator,
    push(...records: ProgressRecord[]) {
      queue.push(...records);
      wake?.();
    },
  };
}

describe("ProgressBatches", () => {
  it("holds at most maxDevices devices, counting the reports of others as dropped and repeats as coalesced", async () => {
    const s = source();
    const batches = new ProgressBatches(s.iterator, 100, 3);
    for (let step = 0; step < 10; step++) s.push(...["a", "b", "c", "d", "e"].map((d) => record(d, step)));
    const { value } = await batches.next();
    expect(value!.reports.map((r) => [r.deviceName, r.progress])).toEqual([
      ["a", 9],
      ["b", 9],
      ["c", 9],
    ]);
    expect(value).toMatchObject({ coalesced: 27, dropped: 20 });
    await batches.return();
  });

  it("refuses an interval under 100 ms", () => {
    expect(() => batchInterval(99)).toThrow(/intervalMs/);
    expect(() => batchInterval(100.5)).toThrow(/intervalMs/);
    expect(batchInterval(100)).toBe(100);
  });

  it("hands out what it holds when its source ends, then ends", async () => {
    const s = source();
    const batches = new ProgressBatches(s.iterator, 60_000);
    s.push(record("a", 1), record("a", 2));
    await new Promise((r) => setTimeout(r, 10));
    await s.iterator.return!();
    expect((await batches.next()).value).toMatchObject({ reports: [{ deviceName: "a", progress: 2 }], coalesced: 1, dropped: 0 });
    expect((await batches.next()).done).toBe(true);
  });
});

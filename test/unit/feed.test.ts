import { describe, expect, it } from "vitest";
import { boundQueue } from "../../src/ota/progress.feed.js";
import type { ProgressRecord } from "../../src/ota/progress.model.js";

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

import { describe, expect, it } from "vitest";
import { statusOrder } from "../../src/devices/device.model.js";
import { orderReport, rankOf, recordFromReport, succeedIfVersion, type ProgressRecord } from "../../src/ota/progress.model.js";

const T = 1_700_000_000_000;

function report(progress: number, receivedAt: number, version = "2.0", type = "firmware"): ProgressRecord {
  return recordFromReport({ productName: "p", deviceName: "d" }, { version, type, progress, desc: "", raw: {} }, `m${receivedAt}`, receivedAt);
}

describe("rank of a report within one upgrade attempt", () => {
  it("is the percentage while downloading, then DOWNLOADED < FAILED < SUCCEEDED", () => {
    expect([0, 1, 99].map((p) => rankOf(report(p, T)))).toEqual([0, 1, 99]);
    expect(rankOf(report(100, T))).toBe(100);
    for (const code of [-1, -2, -3, -4]) expect(rankOf(report(code, T))).toBe(101);
    expect(rankOf(succeedIfVersion(report(100, T), "2.0", T)!)).toBe(102);
  });
});

describe("ordering a progress report against the stored one (the server's order, never the device's clock)", () => {
  const stored = report(60, T);

  it("applies the first report of a device", () => {
    expect(orderReport(report(10, T), null, null)).toEqual({ apply: true, why: "first" });
  });

  it("applies a report that is ahead or level within the attempt", () => {
    expect(orderReport(report(70, T + 1), stored, null)).toEqual({ apply: true, why: "forward" });
    expect(orderReport(report(60, T + 1), stored, null)).toEqual({ apply: true, why: "forward" });
    expect(orderReport(report(-2, T + 1), stored, null)).toEqual({ apply: true, why: "forward" });
  });

  it("drops a report behind the stored one in the same attempt", () => {
    expect(orderReport(report(50, T + 1), stored, null)).toEqual({ apply: false, why: "behind_in_attempt" });
    expect(orderReport(report(100, T + 1), succeedIfVersion(report(100, T), "2.0", T + 5)!, null)).toEqual({
      apply: false,
      why: "behind_in_attempt",
    });
    expect(orderReport(report(0, T + 1), report(-1, T), null).apply).toBe(false);
  });

  it("applies any report once a command was sent after the stored one was received: a new attempt", () => {
    expect(orderReport(report(0, T + 10), report(-1, T), T + 5)).toEqual({ apply: true, why: "new_attempt" });
    expect(orderReport(report(0, T + 10), succeedIfVersion(report(100, T), "2.0", T)!, T + 5).apply).toBe(true);
  });

  it("does not count a command sent before the stored report as a new attempt", () => {
    expect(orderReport(report(10, T + 10), report(50, T + 6), T + 5)).toEqual({ apply: false, why: "behind_in_attempt" });
    expect(orderReport(report(10, T + 10), report(50, T + 5), T + 5).apply).toBe(false);
  });

  it("applies a report of another firmware version or type by receive order", () => {
    expect(orderReport(report(0, T + 1, "3.0"), report(100, T, "2.0"), null)).toEqual({ apply: true, why: "other_firmware" });
    expect(orderReport(report(0, T + 1, "2.0", "config"), report(100, T), null)).toEqual({ apply: true, why: "other_firmware" });
  });

  it("gets the same answer whatever the report's messageId or the device's clock says", () => {
    const early = { ...report(70, T + 1), messageId: "000000000000000000000001" };
    const late = { ...report(70, T + 1), messageId: "ffffffff0000000000000001" };
    expect(orderReport(early, stored, null)).toEqual(orderReport(late, stored, null));
  });
});

describe("the order of status reports", () => {
  it("follows receive time, then the receive sequence within a millisecond", () => {
    expect(statusOrder({ at: T, seq: 5 }) < statusOrder({ at: T + 1, seq: 0 })).toBe(true);
    expect(statusOrder({ at: T, seq: 5 }) < statusOrder({ at: T, seq: 6 })).toBe(true);
  });

  it("sorts after the ObjectId orders that older versions stored", () => {
    expect(statusOrder({ at: 0, seq: 0 }) > "ffffffffffffffffffffffff").toBe(true);
  });
});

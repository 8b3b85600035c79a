import { ObjectId } from "bson";
import { describe, expect, it } from "vitest";
import { isObjectId, newObjectId } from "../../src/protocol/object-id.js";

describe("newObjectId", () => {
  it("makes BSON ObjectIds: the time in their first 4 bytes, unique, in creation order within a second", () => {
    const at = Date.UTC(2026, 11, 1, 12, 0, 0);
    const id = newObjectId(at);
    expect(isObjectId(id)).toBe(true);
    expect(ObjectId.createFromHexString(id).getTimestamp().getTime()).toBe(at);
    const many = Array.from({ length: 10_000 }, () => newObjectId(at));
    expect(new Set(many).size).toBe(many.length);
    // Same process: one random part, and a counter that steps by one (modulo 2^24).
    expect(new Set(many.map((m) => m.slice(8, 18))).size).toBe(1);
    const counters = many.map((m) => parseInt(m.slice(18), 16));
    expect(counters.every((c, i) => i === 0 || c === (counters[i - 1]! + 1) % 0x1000000)).toBe(true);
    expect(newObjectId(at + 1000) > newObjectId(at)).toBe(true);
  });
});

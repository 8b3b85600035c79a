import { describe, expect, it } from "vitest";
import { parseOtaStatus, parseStatus, parseTagsRequest } from "../../src/protocol/payloads.js";

const buf = (v: unknown) => Buffer.from(typeof v === "string" ? v : JSON.stringify(v));

describe("update_ota_status payloads", () => {
  it("accepts a report and keeps extra fields in raw", () => {
    const r = parseOtaStatus(buf({ version: "1.1", type: "firmware", progress: 40, desc: "download", extra: 1 }), 1024);
    expect(r).toEqual({
      ok: true,
      value: { version: "1.1", type: "firmware", progress: 40, desc: "download", raw: { version: "1.1", type: "firmware", progress: 40, desc: "download", extra: 1 } },
    });
  });

  it.each([
    ["not json", "{", "not_json"],
    ["an array", "[1]", "not_object"],
    ["a number", "42", "not_object"],
    ["null", "null", "not_object"],
    ["progress missing", { version: "1" }, "bad_progress"],
    ["progress a string", { progress: "40" }, "bad_progress"],
    ["progress fractional", { progress: 40.5 }, "bad_progress"],
    ["progress above 100", { progress: 101 }, "bad_progress"],
    ["progress below -4", { progress: -5 }, "bad_progress"],
    ["version not a string", { progress: 1, version: 2 }, "bad_field"],
  ])("drops %s", (_name, payload, reason) => {
    expect(parseOtaStatus(buf(payload), 1024)).toMatchObject({ ok: false, reason });
  });

  it("drops a payload over the size limit", () => {
    expect(parseOtaStatus(buf({ progress: 1, desc: "x".repeat(200) }), 100)).toMatchObject({ ok: false, reason: "too_large" });
  });

  it("accepts every failure code", () => {
    for (const progress of [-1, -2, -3, -4]) expect(parseOtaStatus(buf({ progress }), 1024).ok).toBe(true);
  });
});

describe("update_status and $tags payloads", () => {
  it("takes any object with a string firmware_ver", () => {
    expect(parseStatus(buf({ firmware_ver: "1.1", battery: 80 }), 1024)).toMatchObject({ ok: true });
    expect(parseStatus(buf({ firmware_ver: 11 }), 1024)).toMatchObject({ ok: false, reason: "bad_field" });
  });

  it("reads what tags a device holds, empty when it holds none", () => {
    expect(parseTagsRequest(buf({ tags: ["a", "b"], tags_version: 3 }), 1024)).toEqual({
      ok: true,
      value: { tags: ["a", "b"], tagsVersion: 3 },
    });
    expect(parseTagsRequest(buf({}), 1024)).toEqual({ ok: true, value: { tags: [], tagsVersion: 0 } });
    expect(parseTagsRequest(buf({ tags_version: -1 }), 1024)).toMatchObject({ ok: false });
    expect(parseTagsRequest(buf({ tags: ["a/b"] }), 1024)).toMatchObject({ ok: false });
  });
});

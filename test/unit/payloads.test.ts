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

describe("payloads that could not be stored are refused at the door", () => {
  it("refuses bytes that are not UTF-8 rather than patching them", () => {
    const latin1 = Buffer.concat([Buffer.from('{"progress": 1, "desc": "'), Buffer.from([0xe9, 0xff]), Buffer.from('"}')]);
    expect(parseOtaStatus(latin1, 1024)).toMatchObject({ ok: false, reason: "not_utf8" });
    expect(parseStatus(Buffer.from([0xc3, 0x28]), 1024)).toMatchObject({ ok: false, reason: "not_utf8" });
  });

  it.each([
    ["a NUL in a value", '{"firmware_ver": "1.1", "note": "a\\u0000b"}'],
    ["a NUL in a key", '{"a\\u0000": 1}'],
    ["a lone high surrogate", '{"note": "\\ud800"}'],
    ["a lone low surrogate, deep inside", '{"a": [{"b": "x\\udc00"}]}'],
  ])("refuses %s, which PostgreSQL's jsonb would refuse on every redelivery", (_name, text) => {
    expect(parseStatus(Buffer.from(text), 1024)).toMatchObject({ ok: false, reason: "bad_field" });
  });

  it("keeps a well-formed surrogate pair", () => {
    expect(parseStatus(Buffer.from('{"note": "\\ud83d\\ude00"}'), 1024)).toMatchObject({ ok: true, value: { note: "😀" } });
  });

  it("refuses nesting deeper than 32, keeps 32", () => {
    const nest = (n: number) => `{"a":${"[".repeat(n - 1)}1${"]".repeat(n - 1)}}`;
    expect(parseStatus(Buffer.from(nest(32)), 1024).ok).toBe(true);
    expect(parseStatus(Buffer.from(nest(33)), 1024)).toMatchObject({ ok: false, reason: "too_deep" });
    expect(parseStatus(Buffer.from(nest(30_000)), 65_536)).toMatchObject({ ok: false, reason: "too_deep" });
  });

  it.each([
    ["progress huge", '{"progress": 1e400}'],
    ["progress the string NaN", '{"progress": "NaN"}'],
    ["progress boolean", '{"progress": true}'],
    ["progress null", '{"progress": null}'],
  ])("refuses %s", (_name, text) => {
    expect(parseOtaStatus(Buffer.from(text), 1024)).toMatchObject({ ok: false, reason: "bad_progress" });
  });
});

import { describe, expect, it } from "vitest";
import { buildCommandTopic, deviceCommandFilter, parseCommandTopic, parseDeviceTopic, sharedFilter } from "../../src/protocol/topics.js";

describe("command topics", () => {
  it("builds the device form with and without expiresAt", () => {
    const base = { command: "$ota_upgrade", encoding: "plain" as const, requestId: "5f1d7ae1c3b2a1f0e9d8c7b6" };
    expect(buildCommandTopic({ ...base, target: { productName: "p", deviceName: "d" } })).toBe(
      "cmd/p/d/$ota_upgrade/plain/5f1d7ae1c3b2a1f0e9d8c7b6",
    );
    expect(buildCommandTopic({ ...base, target: { productName: "p", deviceName: "d" }, expiresAt: 1700000000 })).toBe(
      "cmd/p/d/$ota_upgrade/plain/5f1d7ae1c3b2a1f0e9d8c7b6/1700000000",
    );
  });

  it("builds the tag form", () => {
    expect(
      buildCommandTopic({ target: { productName: "p", tag: "beta" }, command: "$ota_upgrade", encoding: "plain", requestId: "r1" }),
    ).toBe("tags/p/beta/cmd/$ota_upgrade/plain/r1");
  });

  it("parses what it builds, in both forms", () => {
    for (const c of [
      { target: { productName: "p", deviceName: "d" }, command: "$ota_upgrade", encoding: "plain" as const, requestId: "r1", expiresAt: 1700000000 },
      { target: { productName: "p", tag: "beta" }, command: "$set_tags", encoding: "base64" as const, requestId: "r2" },
    ]) {
      expect(parseCommandTopic(buildCommandTopic(c))).toEqual({ ok: true, value: c });
    }
  });

  it.each(["cmd/p/d/x/plain", "cmd/p/d/x/hex/r", "tags/p/t/x/$a/plain/r", "cmd/p/d/x/plain/r/soon", "update_status/p/d/m"])(
    "refuses the command topic %j",
    (topic) => expect(parseCommandTopic(topic).ok).toBe(false),
  );

  it("names the auto-subscription filter and the shared form", () => {
    expect(deviceCommandFilter("p", "d")).toBe("cmd/p/d/+/+/+/#");
    expect(sharedFilter("g", "update_status/+/+/+")).toBe("$share/g/update_status/+/+/+");
  });
});

describe("device topics", () => {
  it("parses progress, status and get topics", () => {
    expect(parseDeviceTopic("update_ota_status/p/d/m1")).toEqual({
      ok: true,
      value: { kind: "ota_status", productName: "p", deviceName: "d", messageId: "m1" },
    });
    expect(parseDeviceTopic("update_status/p/d/m2")).toMatchObject({ ok: true, value: { kind: "status", messageId: "m2" } });
    expect(parseDeviceTopic("get/p/d/$tags/m3")).toMatchObject({
      ok: true,
      value: { kind: "get", resource: "$tags", messageId: "m3" },
    });
  });

  it.each([
    "update_ota_status/p/d",
    "update_ota_status/p/d/m/extra",
    "update_status/$p/d/m",
    "update_status/p//m",
    "cmd/p/d/x/plain/r",
    "get/p/d/$tags",
    "other/p/d/m",
    "",
  ])("refuses %j", (topic) => {
    expect(parseDeviceTopic(topic)).toMatchObject({ ok: false, reason: "unknown_topic" });
  });
});

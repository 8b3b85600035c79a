import { describe, expect, it } from "vitest";
import {
  buildCommandTopic,
  deviceAutoSubscriptions,
  deviceCommandFilter,
  parseCommandTopic,
  parseDevicePublish,
  parseDeviceTopic,
  sharedFilter,
} from "../../src/protocol/topics.js";

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
    expect(deviceAutoSubscriptions("p", "d")).toEqual(["cmd/p/d/+/+/+/#", "rpc/p/d/+/+/+/#", "m2m/p/d/+/+"]);
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

describe("the device contract (PROTOCOL.md, \"Other device traffic\")", () => {
  it("reads data, replies and device-to-device messages, the sender as the device", () => {
    expect(parseDevicePublish("upload_data/p/d/$shadow_updated/m1")).toEqual({
      ok: true,
      value: { kind: "upload_data", productName: "p", deviceName: "d", type: "$shadow_updated", messageId: "m1" },
    });
    expect(parseDevicePublish("cmd_resp/p/d/$ota_upgrade/r1/m1")).toEqual({
      ok: true,
      value: { kind: "cmd_resp", productName: "p", deviceName: "d", command: "$ota_upgrade", requestId: "r1", messageId: "m1" },
    });
    expect(parseDevicePublish("rpc_resp/p/d/reboot/r1/m1")).toMatchObject({ ok: true, value: { kind: "rpc_resp", command: "reboot" } });
    expect(parseDevicePublish("m2m/p/target/sender/m1")).toEqual({
      ok: true,
      value: { kind: "m2m", productName: "p", deviceName: "sender", target: "target", messageId: "m1" },
    });
  });

  it.each(["upload_data/p/d/m1", "cmd_resp/p/d/c/m1", "m2m/p/t/m1", "m2m/p/t/$s/m1", "rpc_resp/p/d/c/r/m/x"])("refuses %j", (topic) => {
    expect(parseDevicePublish(topic).ok).toBe(false);
  });

  it("keeps ingest to the topics it handles: the rest of the contract is not an ingest topic", () => {
    for (const topic of ["upload_data/p/d/sample/m1", "cmd_resp/p/d/c/r/m1", "rpc_resp/p/d/c/r/m1", "m2m/p/t/d/m1"]) {
      expect(parseDevicePublish(topic).ok).toBe(true);
      expect(parseDeviceTopic(topic).ok).toBe(false);
    }
    expect(parseDeviceTopic("get/p/d/$ntp/m1")).toMatchObject({ ok: true, value: { kind: "get", resource: "$ntp" } });
  });
});

import { describe, expect, it } from "vitest";
import { canPublish, canSubscribe, clientIdMatches, filterCovered, parseUsername, topicMatches } from "../../src/protocol/acl.js";

const me = { productName: "p", deviceName: "d" };

describe("identity", () => {
  it("parses <product>/<device> usernames only", () => {
    expect(parseUsername("p/d")).toEqual({ ok: true, value: me });
    for (const bad of [undefined, "", "p", "p/d/x", "$p/d", "p/+", "p/#"]) expect(parseUsername(bad).ok).toBe(false);
  });

  it("accepts the client id with or without a suffix, nothing else", () => {
    expect(clientIdMatches("p/d", me)).toBe(true);
    expect(clientIdMatches("p/d/sdk1", me)).toBe(true);
    expect(clientIdMatches("p/d/", me)).toBe(false);
    expect(clientIdMatches("p/d/a/b", me)).toBe(false);
    expect(clientIdMatches("p/dd", me)).toBe(false);
    expect(clientIdMatches("p/e", me)).toBe(false);
    expect(clientIdMatches("random", me)).toBe(false);
  });
});

describe("topic matching", () => {
  it("follows MQTT wildcard rules", () => {
    expect(topicMatches("a/+/c", "a/b/c")).toBe(true);
    expect(topicMatches("a/+/c", "a/b/c/d")).toBe(false);
    expect(topicMatches("a/#", "a")).toBe(true);
    expect(topicMatches("a/#", "a/b/c")).toBe(true);
    expect(topicMatches("#", "$SYS/x")).toBe(false);
  });

  it("treats a subscription as covered only when it narrows the grant", () => {
    expect(filterCovered("tags/p/+/cmd/+/+/+/#", "tags/p/beta/cmd/+/+/+/#")).toBe(true);
    expect(filterCovered("tags/p/+/cmd/+/+/+/#", "tags/p/+/cmd/+/+/+")).toBe(true);
    expect(filterCovered("tags/p/+/cmd/+/+/+/#", "tags/p/#")).toBe(false);
    expect(filterCovered("cmd/p/d/+/+/+/#", "cmd/p/+/+/+/+/#")).toBe(false);
  });
});

describe("device access control (PROTOCOL.md)", () => {
  it("lets a device publish only its own reports", () => {
    expect(canPublish(me, "update_status/p/d/m1")).toBe(true);
    expect(canPublish(me, "update_ota_status/p/d/m1")).toBe(true);
    expect(canPublish(me, "get/p/d/$tags/m1")).toBe(true);
    expect(canPublish(me, "cmd_resp/p/d/c/r/m")).toBe(true);
    expect(canPublish(me, "update_status/p/other/m1")).toBe(false);
    expect(canPublish(me, "update_status/q/d/m1")).toBe(false);
    expect(canPublish(me, "cmd/p/d/$ota_upgrade/plain/r")).toBe(false);
    expect(canPublish(me, "update_status/p/d/+")).toBe(false);
  });

  it("lets a device subscribe only to its commands and its product's tags", () => {
    expect(canSubscribe(me, "cmd/p/d/+/+/+/#")).toBe(true);
    expect(canSubscribe(me, "tags/p/beta/cmd/+/+/+/#")).toBe(true);
    expect(canSubscribe(me, "cmd/p/other/+/+/+/#")).toBe(false);
    expect(canSubscribe(me, "tags/q/beta/cmd/+/+/+/#")).toBe(false);
    expect(canSubscribe(me, "#")).toBe(false);
    expect(canSubscribe(me, "$SYS/#")).toBe(false);
    expect(canSubscribe(me, "update_status/+/+/+")).toBe(false);
  });
});

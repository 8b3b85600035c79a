import { describe, expect, it } from "vitest";
import {
  canPublish,
  canSubscribe,
  clientIdentity,
  clientIdMatches,
  filterCovered,
  parseUsername,
  publishFilters,
  topicMatches,
} from "../../src/protocol/acl.js";

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

  it("names the device of an accepted client id, of no other", () => {
    expect(clientIdentity("p/d")).toEqual(me);
    expect(clientIdentity("p/d/sdk1")).toEqual(me);
    for (const bad of ["p", "p/d/", "p/d/a/b", "p/$d", "p/+", "", "p/d/x\u0000"]) expect(clientIdentity(bad)).toBeUndefined();
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
  it("lets a device publish the whole IotHub contract, as itself", () => {
    for (const topic of [
      "update_status/p/d/m1",
      "update_ota_status/p/d/m1",
      "get/p/d/$tags/m1",
      "get/p/d/$shadow/m1",
      "upload_data/p/d/sample/m1",
      "upload_data/p/d/$shadow_reported/m1",
      "cmd_resp/p/d/$ota_upgrade/5f1d7ae1c3b2a1f0e9d8c7b6/m",
      "rpc_resp/p/d/reboot/r/m",
      "m2m/p/other/d/m1",
    ]) {
      expect(canPublish(me, topic), topic).toBe(true);
      expect(publishFilters(me).some((f) => topicMatches(f, topic)), topic).toBe(true);
    }
  });

  it("refuses another device's topics, other products, commands and malformed levels", () => {
    for (const topic of [
      "update_status/p/other/m1",
      "update_status/q/d/m1",
      "m2m/p/d/other/m1",
      "m2m/q/other/d/m1",
      "upload_data/p/other/sample/m1",
      "cmd/p/d/$ota_upgrade/plain/r",
      "tags/p/beta/cmd/$ota_upgrade/plain/r",
      "rpc/p/d/x/plain/r",
      "update_status/p/d/+",
      "update_status/p/d/#",
      "update_status/p/d/m\u0000",
      "update_status/p/d/",
      "update_status/p/d/m/extra",
      "update_status//d/m",
      "$SYS/broker/x",
      "upload_data/p/d/a b/m",
    ]) {
      expect(canPublish(me, topic), topic).toBe(false);
    }
  });

  it("lets a device subscribe only to its commands and its product's tags", () => {
    expect(canSubscribe(me, "cmd/p/d/+/+/+/#")).toBe(true);
    expect(canSubscribe(me, "rpc/p/d/+/+/+/#")).toBe(true);
    expect(canSubscribe(me, "m2m/p/d/+/+")).toBe(true);
    expect(canSubscribe(me, "m2m/p/other/+/+")).toBe(false);
    expect(canSubscribe(me, "rpc/p/+/+/+/+/#")).toBe(false);
    expect(canSubscribe(me, "tags/p/beta/cmd/+/+/+/#")).toBe(true);
    expect(canSubscribe(me, "cmd/p/other/+/+/+/#")).toBe(false);
    expect(canSubscribe(me, "tags/q/beta/cmd/+/+/+/#")).toBe(false);
    expect(canSubscribe(me, "#")).toBe(false);
    expect(canSubscribe(me, "$SYS/#")).toBe(false);
    expect(canSubscribe(me, "update_status/+/+/+")).toBe(false);
  });
});

import { beforeAll, describe, expect, it } from "vitest";
import {
  DeviceDocument,
  OtaProgressChangedDocument,
  OtaProgressDocument,
  OtaProgressesDocument,
  RegisterDeviceDocument,
  SendOtaDocument,
  SetDeviceTagsDocument,
} from "../../src/client/generated/graphql.js";
import { gqlOk, startApp, subscribe, wsClient, type TestApp } from "../helpers/app.js";
import { TestDevice } from "../helpers/device.js";
import { uniq } from "../helpers/services.js";
import { eventually } from "../helpers/wait.js";
import { firmware } from "../helpers/fixtures.js";


describe("the whole OTA flow, with a device that speaks only PROTOCOL.md", () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startApp();
  });

  async function register(productName: string, tags: string[] = []) {
    const { registerDevice } = await gqlOk(t, RegisterDeviceDocument, { input: { productName, tags } });
    return registerDevice;
  }

  it("sends an upgrade to one device and follows it to SUCCEEDED", async () => {
    const productName = uniq("acme");
    const { device, secret } = await register(productName);
    const { deviceName } = device;
    const dev = await TestDevice.connect(t.mqttUrl, productName, deviceName, secret);
    const ws = wsClient(t);
    const live = await subscribe(ws, OtaProgressChangedDocument, { productName, deviceName });

    const { sendOta } = await gqlOk(t, SendOtaDocument, { input: { productName, deviceName, firmware, ttlSeconds: 600 } });
    expect(sendOta.requestId).toMatch(/^[0-9a-f]{24}$/);
    expect(sendOta.topic).toBe(`cmd/${productName}/${deviceName}/$ota_upgrade/plain/${sendOta.requestId}/${sendOta.expiresAt}`);
    const cmd = await dev.nextCommand("$ota_upgrade");
    expect(cmd.topic).toBe(sendOta.topic);
    expect(cmd.json).toEqual(firmware);
    expect(sendOta.expiresAt! * 1000).toBeGreaterThan(Date.now());

    for (const progress of [0, 20, 40, 60, 80, 100]) {
      await dev.reportProgress({ version: "1.1", type: "firmware", progress, desc: "download" });
    }
    for (const progress of [0, 20, 40, 60, 80, 100]) {
      const r = await live.results.next();
      expect(r.data?.otaProgressChanged).toMatchObject({ deviceName, progress, version: "1.1" });
    }
    const { otaProgress } = await gqlOk(t, OtaProgressDocument, { productName, deviceName });
    expect(otaProgress).toMatchObject({ progress: 100, state: "DOWNLOADED", failureReason: null, desc: "download" });

    const { otaProgresses } = await gqlOk(t, OtaProgressesDocument, { productName, deviceNames: [deviceName, "nobody"] });
    expect(otaProgresses).toHaveLength(2);
    expect(otaProgresses[0]).toMatchObject({ deviceName, progress: 100 });
    expect(otaProgresses[1]).toBeNull();

    // After the reboot into the new firmware the device reports its version.
    await dev.reportStatus({ firmware_ver: "1.1", battery: 87 });
    const succeeded = await live.results.next();
    expect(succeeded.data?.otaProgressChanged).toMatchObject({ state: "SUCCEEDED", progress: 100 });
    const { device: after } = await gqlOk(t, DeviceDocument, { productName, deviceName });
    expect(after).toMatchObject({ firmwareVersion: "1.1", status: { firmware_ver: "1.1", battery: 87 } });
    expect(after?.lastStatusAt).not.toBeNull();
    expect((await gqlOk(t, OtaProgressDocument, { productName, deviceName })).otaProgress?.state).toBe("SUCCEEDED");
  });

  it("reports a failure with its reason", async () => {
    const productName = uniq("acme");
    const { device, secret } = await register(productName);
    const dev = await TestDevice.connect(t.mqttUrl, productName, device.deviceName, secret);
    await dev.reportProgress({ version: "2.0", type: "firmware", progress: -2, desc: "md5 mismatch" });
    const p = await eventually(async () => {
      const { otaProgress } = await gqlOk(t, OtaProgressDocument, { productName, deviceName: device.deviceName });
      expect(otaProgress).not.toBeNull();
      return otaProgress!;
    });
    expect(p).toMatchObject({ state: "FAILED", failureReason: "MD5_MISMATCH", progress: -2 });
  });

  it("reaches devices by tag: $set_tags on change and on request, then a tag upgrade", async () => {
    const productName = uniq("acme");
    const { device, secret } = await register(productName);
    const { deviceName } = device;
    const dev = await TestDevice.connect(t.mqttUrl, productName, deviceName, secret);
    const tagWatcher = await subscribe(wsClient(t), OtaProgressChangedDocument, { productName, tag: "beta" });

    // On connect the device asks for its tags; it holds version 0, the server has 1.
    await dev.requestTags({ tags: [], tags_version: 0 });
    const first = await dev.nextCommand("$set_tags");
    expect(first.topic).toMatch(new RegExp(`^cmd/${productName}/${deviceName}/\\$set_tags/plain/[0-9a-f]{24}$`));
    expect(first.json).toEqual({ tags: [], tags_version: 1 });

    const { setDeviceTags } = await gqlOk(t, SetDeviceTagsDocument, { productName, deviceName, tags: ["beta", "eu"] });
    expect(setDeviceTags).toMatchObject({ tags: ["beta", "eu"], tagsVersion: 2 });
    const pushed = await dev.nextCommand("$set_tags");
    expect(pushed.json).toEqual({ tags: ["beta", "eu"], tags_version: 2 });

    // A device already up to date gets no answer.
    await dev.requestTags({ tags: ["beta", "eu"], tags_version: 2 });

    // The device applies $set_tags as firmware does: it subscribes to each tag's command topic.
    const granted = await dev.client.subscribeAsync(
      ["beta", "eu"].map((tag) => `tags/${productName}/${tag}/cmd/+/+/+/#`),
      { qos: 1 },
    );
    expect(granted.map((g) => g.qos)).toEqual([1, 1]);

    const { sendOta } = await gqlOk(t, SendOtaDocument, { input: { productName, tag: "beta", firmware } });
    expect(sendOta.topic).toBe(`tags/${productName}/beta/cmd/$ota_upgrade/plain/${sendOta.requestId}`);
    const cmd = await dev.nextCommand("$ota_upgrade");
    expect(cmd.topic).toBe(sendOta.topic);
    expect(cmd.json).toEqual(firmware);
    expect(dev.inbox.pending.filter((m) => m.topic.includes("$set_tags"))).toEqual([]);

    await dev.reportProgress({ version: "1.1", type: "firmware", progress: 10, desc: "download" });
    const r = await tagWatcher.results.next();
    expect(r.data?.otaProgressChanged).toMatchObject({ deviceName, progress: 10 });
  });
});

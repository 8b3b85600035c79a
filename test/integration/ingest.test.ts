import { beforeAll, describe, expect, it } from "vitest";
import { DeviceDocument, OtaProgressDocument, RegisterDeviceDocument } from "../../src/client/generated/graphql.js";
import { gqlOk, startApp, type TestApp } from "../helpers/app.js";
import { TestDevice } from "../helpers/device.js";
import { metric } from "../helpers/metrics.js";
import { MOSQUITTO_URL, uniq } from "../helpers/services.js";
import { onTeardown } from "../helpers/teardown.js";
import { eventually, Inbox } from "../helpers/wait.js";
import { loadConfig } from "../../src/config/config.js";
import { createLogger } from "../../src/logger.js";
import { ServerMqttClient } from "../../src/mqtt/server.client.js";

describe.each([
  ["the embedded broker", undefined],
  ["an external Mosquitto", MOSQUITTO_URL],
])("ingest through %s", (_name, externalBroker) => {
  let t: TestApp;
  let productName: string;

  beforeAll(async () => {
    t = await startApp({ externalBroker, env: { MAX_PAYLOAD_BYTES: "1024" } });
    productName = uniq("ing");
  });

  async function device(): Promise<TestDevice> {
    const { registerDevice } = await gqlOk(t, RegisterDeviceDocument, { input: { productName } });
    return TestDevice.connect(t.mqttUrl, productName, registerDevice.device.deviceName, registerDevice.secret);
  }

  const progressOf = async (dev: TestDevice) =>
    (await gqlOk(t, OtaProgressDocument, { productName, deviceName: dev.deviceName })).otaProgress;

  it("applies one device's reports in arrival order", async () => {
    const dev = await device();
    const settled = () => metric(t, "iothub_ota_ingest_messages_total", { kind: "ota_status" });
    const before = await settled();
    const sends = [];
    for (let progress = 0; progress <= 100; progress++) {
      sends.push(dev.reportProgress({ version: "3", type: "firmware", progress }));
    }
    await Promise.all(sends);
    await eventually(async () => expect(await settled()).toBe(before + 101));
    expect((await progressOf(dev))?.progress).toBe(100);
  });

  it("processes a messageId once: a repeat is dropped and counted", async () => {
    const dev = await device();
    const before = await metric(t, "iothub_ota_ingest_messages_total", { kind: "ota_status", result: "duplicate" });
    const id = await dev.reportProgress({ version: "3", type: "firmware", progress: 30 });
    await eventually(async () => expect((await progressOf(dev))?.progress).toBe(30));
    await dev.reportProgress({ version: "3", type: "firmware", progress: 99 }, id);
    await eventually(async () =>
      expect(await metric(t, "iothub_ota_ingest_messages_total", { kind: "ota_status", result: "duplicate" })).toBe(before + 1),
    );
    expect((await progressOf(dev))?.progress).toBe(30);
  });

  it("never moves progress backwards within one upgrade, whatever the messageIds' clock says", async () => {
    const dev = await device();
    const stale = await metric(t, "iothub_ota_ingest_messages_total", { kind: "ota_status", result: "stale" });
    const seconds = Math.floor(Date.now() / 1000);
    await dev.reportProgress({ version: "3", type: "firmware", progress: 80 }, `${(seconds - 10).toString(16)}0000000000000001`);
    await eventually(async () => expect((await progressOf(dev))?.progress).toBe(80));
    await dev.reportProgress({ version: "3", type: "firmware", progress: 20 }, `${(seconds + 10).toString(16)}0000000000000001`);
    await eventually(async () =>
      expect(await metric(t, "iothub_ota_ingest_messages_total", { kind: "ota_status", result: "stale" })).toBe(stale + 1),
    );
    expect((await progressOf(dev))?.progress).toBe(80);
  });

  it("keeps the update_status received last, whatever the messageIds' clock says", async () => {
    const dev = await device();
    const deviceName = dev.deviceName;
    const seconds = Math.floor(Date.now() / 1000);
    await dev.reportStatus({ firmware_ver: "2.0" }, `${(seconds + 3600).toString(16)}0000000000000001`);
    await eventually(async () =>
      expect((await gqlOk(t, DeviceDocument, { productName, deviceName })).device?.firmwareVersion).toBe("2.0"),
    );
    // The device rebooted into 1.0 with its clock reset: its next status is still the latest.
    await dev.reportStatus({ firmware_ver: "1.0" }, `${(seconds - 3600).toString(16)}0000000000000001`);
    await eventually(async () =>
      expect((await gqlOk(t, DeviceDocument, { productName, deviceName })).device?.firmwareVersion).toBe("1.0"),
    );
  });

  it.each([
    ["not_json", "{not json"],
    ["not_object", "[1,2,3]"],
    ["bad_progress", JSON.stringify({ progress: 101 })],
    ["bad_progress", JSON.stringify({ progress: "50" })],
    ["too_large", JSON.stringify({ progress: 1, desc: "x".repeat(2000) })],
  ])("drops a %s report, counts it, and goes on", async (reason, payload) => {
    const dev = await device();
    const before = await metric(t, "iothub_ota_ingest_malformed_total", { reason });
    await dev.reportProgress(payload);
    await eventually(async () => expect(await metric(t, "iothub_ota_ingest_malformed_total", { reason })).toBe(before + 1));
    expect(await progressOf(dev)).toBeNull();
    await dev.reportProgress({ version: "3", type: "firmware", progress: 7 });
    await eventually(async () => expect((await progressOf(dev))?.progress).toBe(7));
  });

  it("drops a malformed update_status and $tags request", async () => {
    const dev = await device();
    const before = await metric(t, "iothub_ota_ingest_malformed_total", { reason: "bad_field" });
    await dev.reportStatus({ firmware_ver: 12 });
    await dev.publish(`get/${productName}/${dev.deviceName}/$tags/65a000000000000000000077`, { tags_version: "x" });
    await eventually(async () =>
      expect(await metric(t, "iothub_ota_ingest_malformed_total", { reason: "bad_field" })).toBe(before + 2),
    );
  });
});

describe("ingest of topics no device may use", () => {
  it("counts an unknown topic as malformed (external broker, where anyone may publish)", async () => {
    const t = await startApp({ externalBroker: MOSQUITTO_URL });
    const productName = uniq("ing");
    const before = await metric(t, "iothub_ota_ingest_malformed_total", { reason: "unknown_topic" });
    const dev = await TestDevice.connect(MOSQUITTO_URL, productName, "anyone", "");
    await dev.publish(`update_ota_status/${productName}/bad name/65a000000000000000000001`, { progress: 1 });
    await eventually(async () =>
      expect(await metric(t, "iothub_ota_ingest_malformed_total", { reason: "unknown_topic" })).toBe(before + 1),
    );
  });
});

describe("the server's client of an external broker", () => {
  async function client(onMessage: (topic: string, payload: Buffer) => Promise<void>, clientId = uniq("srv")) {
    const link = new ServerMqttClient(
      { url: MOSQUITTO_URL, clientId, shareGroup: uniq("grp"), rejectUnauthorized: false, limits: loadConfig({}).limits },
      onMessage,
      createLogger("silent"),
    );
    await link.start();
    onTeardown(() => link.stop());
    return link;
  }

  it("handles other devices' messages while one device's message is still being stored", async () => {
    const productName = uniq("conc");
    const arrived = new Inbox<string>();
    let release: () => void = () => undefined;
    const held = new Promise<void>((r) => (release = r));
    await client(async (topic) => {
      arrived.push(topic);
      if (topic.includes("/slow/")) await held;
    });
    const slow = await TestDevice.connect(MOSQUITTO_URL, productName, "slow", "");
    const quick = await TestDevice.connect(MOSQUITTO_URL, productName, "quick", "");
    await slow.reportStatus({ firmware_ver: "1" });
    await arrived.next((t) => t.includes("/slow/"));
    await quick.reportStatus({ firmware_ver: "1" });
    // Its PUBACK waits for the slow one (acknowledgements go in order), its handling does not.
    await arrived.next((t) => t.includes("/quick/"));
    release();
  });

  it("hands a message it could not store to ingest again after a pause, keeping its connection", async () => {
    const productName = uniq("redo");
    const arrived = new Inbox<string>();
    let failures = 1;
    const link = await client(async (topic) => {
      arrived.push(topic);
      if (failures-- > 0) throw new Error("Redis is down");
    });
    const dev = await TestDevice.connect(MOSQUITTO_URL, productName, "d", "");
    await dev.reportStatus({ firmware_ver: "1" });
    const first = await arrived.next();
    // Kept unacknowledged and handed again in process: no reconnect, no redelivery of every other device's messages.
    expect(await arrived.next(() => true, 15_000)).toBe(first);
    expect(link.ready).toBe(true);
  });
});

import { Redis } from "ioredis";
import { beforeAll, describe, expect, it } from "vitest";
import type { DeviceService } from "../../src/devices/device.service.js";
import { createMetrics } from "../../src/metrics.js";
import { IngestDispatcher } from "../../src/mqtt/ingest.dispatcher.js";
import { RedisProgressStore, redisKeys } from "../../src/storage/progress.redis.js";
import {
  DeviceDocument,
  OtaProgressDocument,
  RegisterDeviceDocument,
  SendOtaDocument,
  SetDeviceTagsDocument,
} from "../../src/client/generated/graphql.js";
import { gqlOk, startApp, type TestApp } from "../helpers/app.js";
import { messageIdAt, TestDevice } from "../helpers/device.js";
import { firmware } from "../helpers/fixtures.js";
import { metric } from "../helpers/metrics.js";
import { REDIS_URL, uniq } from "../helpers/services.js";
import { onTeardown } from "../helpers/teardown.js";
import { eventually, sleep } from "../helpers/wait.js";

const HOUR = 3600;

describe("report ordering does not depend on the device's clock", () => {
  let t: TestApp;
  let productName: string;

  beforeAll(async () => {
    t = await startApp();
    productName = uniq("ord");
  });

  async function device(tags: string[] = []): Promise<TestDevice> {
    const { registerDevice } = await gqlOk(t, RegisterDeviceDocument, { input: { productName, tags } });
    return TestDevice.connect(t.mqttUrl, productName, registerDevice.device.deviceName, registerDevice.secret);
  }

  const progressOf = async (dev: TestDevice) =>
    (await gqlOk(t, OtaProgressDocument, { productName, deviceName: dev.deviceName })).otaProgress;

  /** Publishes the messages one after the other and waits until the server has settled them all. */
  async function send(
    dev: TestDevice,
    messages: ({ progress: number; version?: string; id?: string } | { firmware_ver: string; id?: string })[],
  ) {
    const settled = async () =>
      (await metric(t, "iothub_ota_ingest_messages_total", { kind: "ota_status" })) +
      (await metric(t, "iothub_ota_ingest_messages_total", { kind: "status" }));
    const before = await settled();
    for (const m of messages) {
      if ("progress" in m) await dev.reportProgress({ version: m.version ?? "1.1", type: "firmware", progress: m.progress }, m.id ?? messageIdAt(0));
      else await dev.reportStatus({ firmware_ver: m.firmware_ver }, m.id ?? messageIdAt(0));
    }
    await eventually(async () => expect(await settled()).toBe(before + messages.length));
  }

  async function upgrade(dev: TestDevice, tag?: string) {
    const target = tag === undefined ? { deviceName: dev.deviceName } : { tag };
    await gqlOk(t, SendOtaDocument, { input: { productName, ...target, firmware } });
  }

  it("lets a device whose clock is an hour behind complete an upgrade", async () => {
    const dev = await device();
    // An earlier upgrade, to 1.0, reported with a right clock.
    await send(dev, [{ progress: 100, version: "1.0", id: messageIdAt(0) }, { firmware_ver: "1.0", id: messageIdAt(0) }]);
    expect(await progressOf(dev)).toMatchObject({ version: "1.0", state: "SUCCEEDED" });
    // Rebooted into 1.0 with its clock an hour behind, it takes the upgrade to 1.1.
    await upgrade(dev);
    await send(dev, [0, 30].map((progress) => ({ progress, id: messageIdAt(-HOUR) })));
    expect(await progressOf(dev)).toMatchObject({ version: "1.1", progress: 30, state: "DOWNLOADING" });
    await send(dev, [60, 100].map((progress) => ({ progress, id: messageIdAt(-HOUR) })));
    expect(await progressOf(dev)).toMatchObject({ version: "1.1", progress: 100, state: "DOWNLOADED" });
    await send(dev, [{ firmware_ver: "1.1", id: messageIdAt(-HOUR) }]);
    expect(await progressOf(dev)).toMatchObject({ progress: 100, state: "SUCCEEDED" });
  });

  it("lets a device whose clock jumps back mid-upgrade complete it", async () => {
    const dev = await device();
    await upgrade(dev);
    await send(dev, [0, 20, 40].map((progress) => ({ progress, id: messageIdAt(0) })));
    await send(dev, [60, 80, 100].map((progress) => ({ progress, id: messageIdAt(-HOUR) })));
    expect(await progressOf(dev)).toMatchObject({ progress: 100, state: "DOWNLOADED" });
    await send(dev, [{ firmware_ver: "1.1", id: messageIdAt(-2 * HOUR) }]);
    expect(await progressOf(dev)).toMatchObject({ state: "SUCCEEDED" });
    expect((await gqlOk(t, DeviceDocument, { productName, deviceName: dev.deviceName })).device?.firmwareVersion).toBe("1.1");
  });

  it("does not let a redelivered old report win", async () => {
    const dev = await device();
    await upgrade(dev);
    const old = messageIdAt(0);
    await send(dev, [{ progress: 50, id: old }, { progress: 100 }]);
    const duplicates = await metric(t, "iothub_ota_ingest_messages_total", { kind: "ota_status", result: "duplicate" });
    await send(dev, [{ progress: 50, id: old }]);
    expect(await metric(t, "iothub_ota_ingest_messages_total", { kind: "ota_status", result: "duplicate" })).toBe(duplicates + 1);
    expect(await progressOf(dev)).toMatchObject({ progress: 100, state: "DOWNLOADED" });
  });

  it("does not let an unseen progress report older than the completing status move SUCCEEDED back", async () => {
    const dev = await device();
    await upgrade(dev);
    await send(dev, [{ progress: 90 }, { firmware_ver: "1.1" }]);
    expect(await progressOf(dev)).toMatchObject({ state: "SUCCEEDED" });
    const stale = await metric(t, "iothub_ota_ingest_messages_total", { kind: "ota_status", result: "stale" });
    // Sent before the reboot, delivered after the status (QoS 1 retry, a second instance): its id is older.
    await send(dev, [{ progress: 100, id: messageIdAt(-60) }]);
    expect(await progressOf(dev)).toMatchObject({ state: "SUCCEEDED" });
    expect(await metric(t, "iothub_ota_ingest_messages_total", { kind: "ota_status", result: "stale" })).toBe(stale + 1);
  });

  it.each([
    ["the device", undefined],
    ["one of its tags", "beta"],
  ])("shows a new attempt's progress after FAILED, once an upgrade is sent again to %s", async (_name, tag) => {
    const dev = await device(tag === undefined ? [] : [tag]);
    await upgrade(dev, tag);
    await send(dev, [{ progress: 30 }, { progress: -1 }]);
    expect(await progressOf(dev)).toMatchObject({ state: "FAILED", failureReason: "DOWNLOAD_FAILED" });
    // Without a new command, a lower report of the same firmware is behind the failure...
    await send(dev, [{ progress: 5 }]);
    expect(await progressOf(dev)).toMatchObject({ state: "FAILED" });
    // ...and with one, it starts the new attempt.
    await upgrade(dev, tag);
    await send(dev, [{ progress: 10 }]);
    expect(await progressOf(dev)).toMatchObject({ state: "DOWNLOADING", progress: 10 });
  });

  it("looks tags up afresh once they change", async () => {
    const dev = await device(["alpha"]);
    await upgrade(dev, "alpha");
    await send(dev, [{ progress: -3 }]);
    await gqlOk(t, SetDeviceTagsDocument, { productName, deviceName: dev.deviceName, tags: ["alpha", "gamma"] });
    await upgrade(dev, "gamma");
    await send(dev, [{ progress: 0 }]);
    expect(await progressOf(dev)).toMatchObject({ state: "DOWNLOADING", progress: 0 });
  });
});

describe("one device's messages take effect in the order they arrived", () => {
  let t: TestApp;
  let productName: string;

  beforeAll(async () => {
    t = await startApp();
    productName = uniq("lane");
  });

  /** A dispatcher of the app's own stores and registry, with a slow step injected: what a busy Redis or PostgreSQL does. */
  function dispatcher(slow: { ingest?: number; firstStatus?: number }) {
    const redis = new Redis(REDIS_URL);
    onTeardown(() => redis.quit());
    const store = new RedisProgressStore(redis, redisKeys(t.config.redisPrefix));
    const progress = new Proxy(store, {
      get(target, prop) {
        const value = Reflect.get(target, prop) as unknown;
        if (prop === "ingest" && slow.ingest) {
          return async (...args: Parameters<typeof store.ingest>) => {
            await sleep(slow.ingest!);
            return target.ingest(...args);
          };
        }
        return typeof value === "function" ? value.bind(target) : value;
      },
    });
    let statuses = 0;
    const devices = new Proxy(t.app.devices, {
      get(target, prop) {
        const value = Reflect.get(target, prop) as unknown;
        if (prop === "applyStatus" && slow.firstStatus) {
          return async (...args: Parameters<DeviceService["applyStatus"]>) => {
            if (statuses++ === 0) await sleep(slow.firstStatus!);
            return target.applyStatus(...args);
          };
        }
        return typeof value === "function" ? value.bind(target) : value;
      },
    });
    const metrics = createMetrics();
    const options = { maxPayloadBytes: 65_536, dedupTtlSeconds: 60, limits: t.config.limits };
    return { ingest: new IngestDispatcher(devices, progress, metrics, t.app.log, options), metrics };
  }

  async function registered(): Promise<string> {
    const { registerDevice } = await gqlOk(t, RegisterDeviceDocument, { input: { productName } });
    return registerDevice.device.deviceName;
  }

  const json = (v: unknown) => Buffer.from(JSON.stringify(v));

  it("completes the upgrade when the status follows a progress report that is slow to store", async () => {
    const deviceName = await registered();
    const { ingest } = dispatcher({ ingest: 200 });
    await Promise.all([
      ingest.handle(`update_ota_status/${productName}/${deviceName}/${messageIdAt(0)}`, json({ version: "1.1", progress: 100 })),
      ingest.handle(`update_status/${productName}/${deviceName}/${messageIdAt(0)}`, json({ firmware_ver: "1.1" })),
    ]);
    const { otaProgress } = await gqlOk(t, OtaProgressDocument, { productName, deviceName });
    expect(otaProgress).toMatchObject({ state: "SUCCEEDED", version: "1.1" });
  });

  it("applies a device's status reports one after the other: none is overtaken by the next", async () => {
    const deviceName = await registered();
    const { ingest, metrics } = dispatcher({ firstStatus: 200 });
    await Promise.all(
      ["1.0", "1.1", "1.2"].map((v) => ingest.handle(`update_status/${productName}/${deviceName}/${messageIdAt(0)}`, json({ firmware_ver: v }))),
    );
    const results = (await metrics.ingest.get()).values.filter((v) => v.labels.kind === "status");
    expect(results.map((v) => [v.labels.result, v.value])).toEqual([["accepted", 3]]);
    expect((await gqlOk(t, DeviceDocument, { productName, deviceName })).device?.firmwareVersion).toBe("1.2");
  });

  it("settles each message: handle resolves once the effect is stored", async () => {
    const deviceName = await registered();
    const { ingest } = dispatcher({});
    await ingest.handle(`update_ota_status/${productName}/${deviceName}/${messageIdAt(0)}`, json({ version: "2", progress: 42 }));
    expect((await gqlOk(t, OtaProgressDocument, { productName, deviceName })).otaProgress?.progress).toBe(42);
    await ingest.handle(`update_status/${productName}/${deviceName}/${messageIdAt(0)}`, json({ firmware_ver: "1.9" }));
    expect((await gqlOk(t, DeviceDocument, { productName, deviceName })).device?.firmwareVersion).toBe("1.9");
  });
});

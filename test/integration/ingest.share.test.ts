import { Redis } from "ioredis";
import { describe, expect, it } from "vitest";
import { createMetrics } from "../../src/metrics.js";
import { IngestDispatcher, IngestRefused } from "../../src/mqtt/ingest.dispatcher.js";
import { RedisProgressStore, redisKeys } from "../../src/storage/progress.redis.js";
import { DeviceDocument, RegisterDeviceDocument } from "../../src/client/generated/graphql.js";
import { gqlOk, startApp } from "../helpers/app.js";
import { REDIS_URL, uniq } from "../helpers/services.js";
import { onTeardown } from "../helpers/teardown.js";

const KB = 1024;

describe("ingest's global bound, once flooding devices have filled it", () => {
  it("still takes a report from a device within its share, and refuses the flooders", async () => {
    const t = await startApp();
    const productName = uniq("share");
    const names = await Promise.all(
      [0, 1, 2].map(async () => (await gqlOk(t, RegisterDeviceDocument, { input: { productName } })).registerDevice.device.deviceName),
    );
    const [a, b, innocent] = names as [string, string, string];
    const redis = new Redis(REDIS_URL);
    onTeardown(() => redis.quit());
    const metrics = createMetrics();
    // Small bounds: two devices at their own bound (4 KB each) fill the global one (8 KB).
    const ingest = new IngestDispatcher(t.app.devices, new RedisProgressStore(redis, redisKeys(t.config.redisPrefix)), metrics, t.app.log, {
      maxPayloadBytes: 65_536,
      dedupTtlSeconds: 3600,
      limits: t.config.limits,
      maxPendingBytes: 8 * KB,
      maxDevicePendingBytes: 4 * KB,
    });
    let id = 0;
    const report = (deviceName: string, version: string) => {
      const messageId = `65a0000000000000000${(id++).toString(16).padStart(5, "0")}`;
      const payload = Buffer.from(JSON.stringify({ firmware_ver: version, filler: "x".repeat(KB - 60) }));
      expect(payload.length).toBeLessThanOrEqual(KB);
      return ingest.handle(`update_status/${productName}/${deviceName}/${messageId}`, payload);
    };
    const outcomes = (ps: Promise<void>[]) => Promise.all(ps.map((p) => p.then(() => "stored", (err: unknown) => (err instanceof IngestRefused ? "refused" : String(err)))));

    // Taken at once (one device's status reports wait for each other): each flooder holds 4 KB, the global bound is full.
    const flood = [a, b].map((deviceName) => Array.from({ length: 6 }, (_, i) => report(deviceName, `${i}`)));
    const innocentReports = [report(innocent, "1.0"), report(innocent, "1.1")];

    expect(await outcomes(innocentReports)).toEqual(["stored", "stored"]);
    for (const reports of flood) expect(await outcomes(reports)).toEqual(["stored", "stored", "stored", "stored", "refused", "refused"]);
    expect((await gqlOk(t, DeviceDocument, { productName, deviceName: innocent })).device?.firmwareVersion).toBe("1.1");
    expect((await metrics.unacknowledged.get()).values[0]?.value).toBe(4);
  });
});

describe("a report larger than any bound", () => {
  it("is dropped as too large and acknowledged at once, never refused on every redelivery", async () => {
    const t = await startApp();
    const productName = uniq("huge");
    const { registerDevice } = await gqlOk(t, RegisterDeviceDocument, { input: { productName } });
    const redis = new Redis(REDIS_URL);
    onTeardown(() => redis.quit());
    const metrics = createMetrics();
    const ingest = new IngestDispatcher(t.app.devices, new RedisProgressStore(redis, redisKeys(t.config.redisPrefix)), metrics, t.app.log, {
      maxPayloadBytes: 4 * KB,
      dedupTtlSeconds: 3600,
      limits: t.config.limits,
      maxPendingBytes: 8 * KB,
      maxDevicePendingBytes: 4 * KB,
    });
    const huge = Buffer.from(JSON.stringify({ firmware_ver: "9", filler: "x".repeat(6 * KB) }));
    await ingest.handle(`update_status/${productName}/${registerDevice.device.deviceName}/65a000000000000000000001`, huge);
    expect((await metrics.malformed.get()).values.find((v) => v.labels.reason === "too_large")?.value).toBe(1);
    expect((await metrics.unacknowledged.get()).values.length).toBe(0);
  });
});

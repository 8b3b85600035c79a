import { Redis } from "ioredis";
import { describe, expect, it } from "vitest";
import type { DeviceService } from "../../src/devices/device.service.js";
import { createMetrics } from "../../src/metrics.js";
import { IngestDispatcher } from "../../src/mqtt/ingest.dispatcher.js";
import { RedisProgressStore, redisKeys } from "../../src/storage/progress.redis.js";
import { DeviceDocument, RegisterDeviceDocument } from "../../src/client/generated/graphql.js";
import { gqlOk, startApp } from "../helpers/app.js";
import { REDIS_URL, uniq } from "../helpers/services.js";
import { onTeardown } from "../helpers/teardown.js";

/** A dependency that fails while `down` says so: every call throws, as a lost connection does. */
function failing<T extends object>(target: T, down: () => boolean, only?: string): T {
  return new Proxy(target, {
    get(obj, prop) {
      const value = Reflect.get(obj, prop) as unknown;
      if (typeof value !== "function") return value;
      return (...args: unknown[]) => {
        if (down() && (only === undefined || prop === only)) return Promise.reject(new Error(`${String(prop)}: connection lost`));
        return (value as (...a: unknown[]) => unknown).apply(obj, args);
      };
    },
  });
}

describe("a messageId is remembered only once its effect is durable", () => {
  it.each([
    ["its status could not be stored, and Redis failed right after", "effect"],
    ["its status was stored, and remembering its messageId failed", "remember"],
  ])("a status report is applied on redelivery when %s", async (_name, failing_step) => {
    const t = await startApp();
    const productName = uniq("dedup");
    const { registerDevice } = await gqlOk(t, RegisterDeviceDocument, { input: { productName } });
    const { deviceName } = registerDevice.device;
    const redis = new Redis(REDIS_URL);
    onTeardown(() => redis.quit());
    let databaseDown = false;
    let redisDown = false;
    // The database fails the status, and Redis goes down at that very moment (one network outage).
    const devices = failing(t.app.devices, () => (redisDown ||= databaseDown), "applyStatus") as DeviceService;
    const store = new RedisProgressStore(redis, redisKeys(t.config.redisPrefix));
    const progress = failing(store, () => redisDown, failing_step === "remember" ? "remember" : undefined);
    const metrics = createMetrics();
    const ingest = new IngestDispatcher(
      devices,
      progress,
      metrics,
      t.app.log,
      { maxPayloadBytes: 65_536, dedupTtlSeconds: 3600, limits: t.config.limits },
      Date.now,
      async () => undefined, // no pause between tries: the outage outlasts them
    );
    const topic = `update_status/${productName}/${deviceName}/65a0000000000000000000aa`;
    const payload = Buffer.from(JSON.stringify({ firmware_ver: "7.0" }));

    if (failing_step === "effect") databaseDown = true;
    else redisDown = true;
    await expect(ingest.handle(topic, payload)).rejects.toThrow("connection lost");
    expect((await metrics.unacknowledged.get()).values[0]?.value).toBe(1);

    // Both back; the device sends it again.
    databaseDown = redisDown = false;
    await ingest.handle(topic, payload);
    expect((await metrics.ingest.get()).values.find((v) => v.labels.result === "accepted")?.value).toBe(1);
    expect((await gqlOk(t, DeviceDocument, { productName, deviceName })).device?.firmwareVersion).toBe("7.0");
    // And a third delivery is a duplicate.
    await ingest.handle(topic, payload);
    expect((await metrics.ingest.get()).values.find((v) => v.labels.result === "duplicate")?.value).toBe(1);
  });
});

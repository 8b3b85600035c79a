import { once } from "node:events";
import { connect as tcpConnect } from "node:net";
import { Aedes } from "aedes";
import persistence from "aedes-persistence-redis";
import { Redis } from "ioredis";
import { beforeAll, describe, expect, it } from "vitest";
import { EmbeddedBroker } from "../../src/broker/embedded.broker.js";
import { FRAME_START, scanFrames } from "../../src/broker/frame.guard.js";
import type { Limits } from "../../src/config/config.js";
import { ErrorCode } from "../../src/errors.js";
import { createLogger } from "../../src/logger.js";
import { createMetrics, type Metrics } from "../../src/metrics.js";
import { OtaProgressDocument, RegisterDeviceDocument, SendOtaDocument } from "../../src/client/generated/graphql.js";
import { gqlOk, startApp, type TestApp } from "../helpers/app.js";
import { TestDevice } from "../helpers/device.js";
import { firmware } from "../helpers/fixtures.js";
import { metric } from "../helpers/metrics.js";
import { OwnRedis } from "../helpers/processes.js";
import { REDIS_URL, uniq } from "../helpers/services.js";
import { onTeardown } from "../helpers/teardown.js";
import { eventually } from "../helpers/wait.js";

const REFUSED = "iothub_ota_refused_total";

async function counter(metrics: Metrics, kind: string, reason: string): Promise<number> {
  const { values } = await metrics.refused.get();
  return values.find((v) => v.labels.kind === kind && v.labels.reason === reason)?.value ?? 0;
}

/** A second embedded broker beside the app's (its devices, its Redis prefix unless told), with a fast aedes heartbeat. */
async function sideBroker(t: TestApp, opts: { redisUrl?: string; limits?: Partial<Limits>; onMessage?: (topic: string) => void } = {}) {
  const redis = new Redis(opts.redisUrl ?? REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 3 });
  redis.on("error", () => undefined); // the broker's own duplicate logs
  const metrics = createMetrics();
  const broker = new EmbeddedBroker(
    {
      host: "127.0.0.1",
      port: 0,
      tlsPort: null,
      tlsCertFile: undefined,
      tlsKeyFile: undefined,
      dataDir: "/tmp",
      redisPrefix: t.config.redisPrefix,
      limits: { ...t.config.limits, ...opts.limits },
      heartbeatIntervalMs: 50,
    },
    async (topic) => opts.onMessage?.(topic),
    t.app.devices,
    redis,
    metrics,
    createLogger("silent"),
  );
  onTeardown(() => broker.stop());
  return { broker, metrics, url: () => `mqtt://127.0.0.1:${broker.ports.mqtt}` };
}

describe("MQTT framing", () => {
  it("refuses a packet as soon as its declared length is over the limit", () => {
    expect(scanFrames(FRAME_START, Uint8Array.from([0x10, 0xff, 0xff, 0xff, 0x7f]), 131_072)).toEqual({
      ok: false,
      reason: "too_large",
      declared: 268_435_455,
    });
    expect(scanFrames(FRAME_START, Uint8Array.from([0x10, 0xff, 0xff, 0xff, 0xff, 0x01]), 131_072)).toEqual({ ok: false, reason: "malformed_length" });
  });

  it("follows packets across chunks, split anywhere", () => {
    const packets = Buffer.concat([Buffer.from([0x30, 0x80, 0x01]), Buffer.alloc(128), Buffer.from([0xc0, 0x00, 0x30, 0x02, 1, 2])]);
    for (let cut = 0; cut <= packets.length; cut++) {
      const a = scanFrames(FRAME_START, packets.subarray(0, cut), 200);
      if (!a.ok) throw new Error("refused");
      expect(scanFrames(a.state, packets.subarray(cut), 200)).toEqual({ ok: true, state: FRAME_START });
    }
    expect(scanFrames(FRAME_START, packets, 130).ok).toBe(false);
  });
});

describe("the embedded broker under faults", () => {
  let t: TestApp;
  let productName: string;

  beforeAll(async () => {
    t = await startApp({ env: { MQTT_CONNECT_TIMEOUT_MS: "500" } });
    productName = uniq("flt");
  });

  async function register(prefix: string, tags: string[] = []) {
    const { registerDevice } = await gqlOk(t, RegisterDeviceDocument, { input: { productName, deviceName: uniq(prefix), tags } });
    return { name: registerDevice.device.deviceName, secret: registerDevice.secret };
  }

  it("never publishes wills a broker stored before it died: not to the tag, not to another device, not to ingest", async () => {
    const tag = uniq("tag");
    const victim = await register("victim", [tag]);
    const prefix = t.config.redisPrefix;
    // What a broker without this fix stored: wills straight from CONNECT, then it died without publishing them.
    const conn = new Redis(REDIS_URL, { keyPrefix: prefix });
    const legacyStore = persistence({ conn });
    const legacy = await Aedes.createBroker({ persistence: legacyStore });
    const payload = Buffer.from(JSON.stringify({ ...firmware, url: "https://evil.example/x.bin", progress: 99 }));
    const wills = [
      `tags/${productName}/${tag}/cmd/$ota_upgrade/plain/65a0000000000000000000f1`,
      `cmd/${productName}/${victim.name}/$ota_upgrade/plain/65a0000000000000000000f2`,
      `update_ota_status/${productName}/${victim.name}/65a0000000000000000000f3`,
    ];
    const store = legacyStore as unknown as { putWill(c: { id: string }, p: object): Promise<void> };
    for (const [i, topic] of wills.entries()) {
      await store.putWill({ id: `${productName}/evil/${i}` }, { cmd: "publish", topic, payload, qos: 1, retain: true });
    }
    // One stored under the victim's own client id: replayed while the victim is connected, with its client.
    await store.putWill({ id: `${productName}/${victim.name}` }, { cmd: "publish", topic: wills[2] as string, payload, qos: 1, retain: false });
    await new Promise<void>((r) => legacy.close(() => r()));
    await (legacyStore as unknown as { destroy(): Promise<void> }).destroy();
    const redis = new Redis(REDIS_URL, { keyPrefix: prefix });
    onTeardown(() => redis.quit());
    expect(await redis.llen("will")).toBe(4);

    const ingested: string[] = [];
    const side = await sideBroker(t, { onMessage: (topic) => ingested.push(topic) });
    await side.broker.start();
    const dev = await TestDevice.connect(side.url(), productName, victim.name, victim.secret);
    await dev.client.subscribeAsync(`tags/${productName}/${tag}/cmd/+/+/+/#`, { qos: 1 });
    // aedes replays a silent broker's wills every 4 heartbeats and deletes each once published.
    await eventually(async () => expect(await redis.llen("will")).toBe(0));
    expect(await counter(side.metrics, "will", "stored")).toBe(4);
    await side.broker.publishCommand(`tags/${productName}/${tag}/cmd/$ota_upgrade/plain/65a0000000000000000000aa`, JSON.stringify(firmware));
    const first = await dev.inbox.next();
    expect(first.topic).toContain("65a0000000000000000000aa");
    expect(ingested).toEqual([]);
    expect(await redis.exists("retained")).toBe(0);
  });

  it("keeps serving through a Redis outage, and works again once Redis is back", async () => {
    const own = await OwnRedis.start();
    const app = await startApp({ env: { REDIS_URL: own.url, REDIS_COMMAND_TIMEOUT_MS: "500" } });
    // A second broker on that Redis replays wills every 200 ms: aedes emits that failure as an 'error' on itself.
    const side = await sideBroker(app, { redisUrl: own.url });
    await side.broker.start();
    const { registerDevice } = await gqlOk(app, RegisterDeviceDocument, { input: { productName, deviceName: uniq("out") } });
    const name = registerDevice.device.deviceName;
    const dev = await TestDevice.connect(app.mqttUrl, productName, name, registerDevice.secret);
    await dev.reportProgress({ version: "1.1", type: "firmware", progress: 10 });

    await own.stop();
    // Devices keep connecting and reporting; commands keep being sent.
    const closed = new Promise<void>((r) => dev.client.once("close", () => r()));
    void dev.reportProgress({ version: "1.1", type: "firmware", progress: 20 }).catch(() => undefined);
    await closed; // not stored, so not acknowledged: the device will send it again
    await expect(TestDevice.connect(app.mqttUrl, productName, name, registerDevice.secret, { clientId: `${productName}/${name}/x` })).rejects.toThrow();
    const sent = await fetch(`${app.httpUrl}/graphql`, { method: "POST" }).catch(() => null);
    expect(sent).not.toBeNull(); // HTTP still answers
    await eventually(async () => expect(await counter(side.metrics, "will", "stored")).toBe(0)); // nothing to replay, no crash
    await new Promise((r) => setTimeout(r, 600)); // at least two will sweeps of the side broker against the dead Redis

    await own.resume();
    await eventually(async () => expect((await fetch(`${app.httpUrl}/readyz`)).status).toBe(200), 20_000);
    const again = await eventually(() => TestDevice.connect(app.mqttUrl, productName, name, registerDevice.secret), 20_000);
    await again.reportProgress({ version: "1.1", type: "firmware", progress: 30 });
    expect((await gqlOk(app, OtaProgressDocument, { productName, deviceName: name })).otaProgress?.progress).toBe(30);
  });

  it("closes a connection declaring a 256 MB packet at once, before authentication, without buffering it", async () => {
    const before = await metric(t, REFUSED, { kind: "packet", reason: "too_large" });
    const memory = process.memoryUsage().arrayBuffers;
    const socket = tcpConnect(t.app.address.mqtt as number, "127.0.0.1");
    socket.on("error", () => undefined);
    await once(socket, "connect");
    const closed = new Promise<void>((r) => socket.once("close", () => r()));
    const started = Date.now();
    socket.write(Buffer.from([0x10, 0xff, 0xff, 0xff, 0x7f]));
    const chunk = Buffer.alloc(1 << 20, 7);
    for (let sent = 0; sent < 64 << 20 && !socket.destroyed; sent += chunk.length) {
      if (!socket.write(chunk)) await Promise.race([new Promise((r) => socket.once("drain", r)), closed]);
    }
    await closed;
    expect(Date.now() - started).toBeLessThan(2000);
    expect(process.memoryUsage().arrayBuffers - memory).toBeLessThan(16 << 20);
    expect(await metric(t, REFUSED, { kind: "packet", reason: "too_large" })).toBe(before + 1);
  });

  it("closes a device's publish over the packet limit, and a connection that never sends CONNECT", async () => {
    const d = await register("big");
    const dev = await TestDevice.connect(t.mqttUrl, productName, d.name, d.secret);
    const closed = new Promise<void>((r) => dev.client.once("close", () => r()));
    void dev.publish(`upload_data/${productName}/${d.name}/sample/65a0000000000000000000b1`, Buffer.alloc(200_000)).catch(() => undefined);
    await closed;
    const silent = tcpConnect(t.app.address.mqtt as number, "127.0.0.1");
    silent.on("error", () => undefined);
    const started = Date.now();
    await new Promise((r) => silent.once("close", r));
    expect(Date.now() - started).toBeLessThan(2000); // MQTT_CONNECT_TIMEOUT_MS=500, aedes' default 30 s
  });

  it("says BROKER_UNAVAILABLE when not running and COMMAND_UNCONFIRMED when the broker does not confirm in time", async () => {
    const side = await sideBroker(t, { limits: { publishTimeoutMs: 200 } });
    await expect(side.broker.publishCommand("cmd/p/d/x/plain/r", "{}")).rejects.toMatchObject({ code: ErrorCode.BROKER_UNAVAILABLE });
    await side.broker.start();
    const d = await register("frozen");
    const dev = await TestDevice.connect(side.url(), productName, d.name, d.secret, { clean: true });
    dev.client.stream.pause(); // a device that stops reading: aedes waits for its socket to drain
    const topic = `cmd/${productName}/${d.name}/big/plain/65a0000000000000000000cc`;
    const payload = "x".repeat(100_000);
    let outcome: unknown;
    for (let i = 0; i < 2000 && outcome === undefined; i++) {
      await side.broker.publishCommand(topic, payload).catch((err: unknown) => (outcome = err));
    }
    expect(outcome).toMatchObject({ code: ErrorCode.COMMAND_UNCONFIRMED });
    await side.broker.stop();
    await expect(side.broker.publishCommand(topic, "{}")).rejects.toMatchObject({ code: ErrorCode.BROKER_UNAVAILABLE });
  });

  it("keeps offline commands, and the session queues pointing to them, with an expiry", async () => {
    const d = await register("offline");
    const dev = await TestDevice.connect(t.mqttUrl, productName, d.name, d.secret);
    await dev.end();
    await gqlOk(t, SendOtaDocument, { input: { productName, deviceName: d.name, firmware } });
    const redis = new Redis(REDIS_URL);
    onTeardown(() => redis.quit());
    const keys: string[] = [];
    for (const kind of ["packet", "outgoing"]) {
      for await (const batch of redis.scanStream({ match: `${t.config.redisPrefix}${kind}:*`, count: 1000 })) keys.push(...(batch as string[]));
    }
    expect(keys).toContain(`${t.config.redisPrefix}outgoing:${encodeURIComponent(`${productName}/${d.name}`)}`);
    for (const key of keys) {
      const ttl = await redis.ttl(key);
      expect(ttl).toBeGreaterThan(0);
      expect(ttl).toBeLessThanOrEqual(t.config.limits.offlineCommandTtlSeconds);
    }
  });

  it("keeps two deployments on one Redis apart by REDIS_PREFIX: neither sees the other's sessions", async () => {
    const other = await startApp();
    const name = uniq("shared");
    const a = await gqlOk(t, RegisterDeviceDocument, { input: { productName, deviceName: name } });
    const b = await gqlOk(other, RegisterDeviceDocument, { input: { productName, deviceName: name } });
    const inA = await TestDevice.connect(t.mqttUrl, productName, name, a.registerDevice.secret);
    await inA.end();
    const inB = await TestDevice.connect(other.mqttUrl, productName, name, b.registerDevice.secret);
    expect(inB.sessionPresent).toBe(false);
    await inB.end();
    const redis = new Redis(REDIS_URL);
    onTeardown(() => redis.quit());
    const key = `client:${encodeURIComponent(`${productName}/${name}`)}`;
    expect(await redis.exists(`${t.config.redisPrefix}${key}`, `${other.config.redisPrefix}${key}`, key)).toBe(2);
    // A command queued in one is not delivered by the other.
    await gqlOk(t, SendOtaDocument, { input: { productName, deviceName: name, firmware } });
    const backInA = await TestDevice.connect(t.mqttUrl, productName, name, a.registerDevice.secret);
    expect(backInA.sessionPresent).toBe(true);
    await backInA.nextCommand("$ota_upgrade");
  });
});

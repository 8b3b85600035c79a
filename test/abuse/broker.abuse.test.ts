import { connect as tcpConnect } from "node:net";
import { Redis } from "ioredis";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { DeviceDocument, OtaProgressDocument, RegisterDeviceDocument, SendOtaDocument } from "../../src/client/generated/graphql.js";
import { gqlOk, startApp, type TestApp } from "../helpers/app.js";
import { connackCode, TestDevice } from "../helpers/device.js";
import { firmware } from "../helpers/fixtures.js";
import { metric } from "../helpers/metrics.js";
import { REDIS_URL, uniq } from "../helpers/services.js";
import { onTeardown } from "../helpers/teardown.js";
import { eventually } from "../helpers/wait.js";

const REFUSED = "iothub_ota_refused_total";

async function keysMatching(redis: Redis, pattern: string): Promise<string[]> {
  const keys: string[] = [];
  for await (const batch of redis.scanStream({ match: pattern, count: 1000 })) keys.push(...(batch as string[]));
  return keys;
}

describe("the embedded broker under abuse", () => {
  let t: TestApp;
  const productName = uniq("abuse");
  let attacker: { name: string; secret: string };
  let victim: { name: string; secret: string };

  async function register(prefix: string, tags: string[] = []) {
    const { registerDevice } = await gqlOk(t, RegisterDeviceDocument, { input: { productName, deviceName: uniq(prefix), tags } });
    return { name: registerDevice.device.deviceName, secret: registerDevice.secret };
  }

  beforeAll(async () => {
    t = await startApp();
    attacker = await register("mallory", ["beta"]);
    victim = await register("alice", ["beta"]);
  });

  // Whatever was tried, the server stays ready and a normal device still upgrades and reports.
  afterEach(async () => {
    expect((await fetch(`${t.httpUrl}/readyz`)).status).toBe(200);
    const dev = await TestDevice.connect(t.mqttUrl, productName, victim.name, victim.secret, { clientId: `${productName}/${victim.name}/check` });
    await gqlOk(t, SendOtaDocument, { input: { productName, deviceName: victim.name, firmware } });
    await dev.nextCommand("$ota_upgrade");
    const progress = Math.floor(Math.random() * 100);
    await dev.reportProgress({ version: firmware.version, type: "firmware", progress });
    await eventually(async () => {
      expect((await gqlOk(t, OtaProgressDocument, { productName, deviceName: victim.name })).otaProgress?.progress).toBe(progress);
    });
    await dev.end();
  });

  it("drops publishes on topics with +, #, NUL, empty or extra levels, or to $SYS, and keeps the connection", async () => {
    // A device of its own: other tests (in any order) store statuses for the shared ones.
    const fresh = await register("topics");
    const dev = await TestDevice.connect(t.mqttUrl, productName, fresh.name, fresh.secret, { clientId: `${productName}/${fresh.name}/t` });
    let closed = false;
    dev.client.on("close", () => (closed = true));
    const before = await metric(t, REFUSED, { kind: "publish" });
    const me = `${productName}/${fresh.name}`;
    const topics = [
      `update_status/${me}/m\u0000x`,
      `update_status/${me}/`,
      `update_status/${me}/m/extra`,
      `update_status/${productName}//m`,
      `get/${me}/$tags\u0000/m`,
      `$SYS/broker/clients`,
      `upload_data/${me}/a b/m`,
    ];
    for (const topic of topics) await dev.publish(topic, "{}");
    expect(await metric(t, REFUSED, { kind: "publish" })).toBe(before + topics.length);
    expect(closed).toBe(false);
    // Wildcards in a PUBLISH topic are a protocol violation (MQTT 3.1.1 §3.3.2.1): aedes closes that connection.
    const gone = new Promise<void>((r) => dev.client.once("close", () => r()));
    dev.client.publish(`update_status/${me}/+`, "{}", { qos: 1 });
    await gone;
    expect((await gqlOk(t, DeviceDocument, { productName, deviceName: fresh.name })).device?.status).toBeNull();
  });

  it("refuses client ids and usernames that do not match, and takeovers with another device's credentials", async () => {
    const a = `${productName}/${attacker.name}`;
    const v = `${productName}/${victim.name}`;
    const before = await metric(t, REFUSED, { kind: "connect" });
    expect(await connackCode(t.mqttUrl, { clientId: v, username: a, password: attacker.secret })).toBe(2);
    expect(await connackCode(t.mqttUrl, { clientId: `${v}/sdk`, username: a, password: attacker.secret })).toBe(2);
    expect(await connackCode(t.mqttUrl, { clientId: `${a}/x/y`, username: a, password: attacker.secret })).toBe(2);
    expect(await connackCode(t.mqttUrl, { clientId: v, username: v, password: attacker.secret })).toBe(4);
    expect(await connackCode(t.mqttUrl, { clientId: "#", username: "#", password: "x" })).toBe(4);
    expect(await metric(t, REFUSED, { kind: "connect" })).toBe(before + 5);
    // The victim connected meanwhile is not taken over.
    const dev = await TestDevice.connect(t.mqttUrl, productName, victim.name, victim.secret, { clientId: `${v}/own` });
    expect(await connackCode(t.mqttUrl, { clientId: `${v}/own`, username: a, password: attacker.secret })).toBe(2);
    expect(dev.client.connected).toBe(true);
    await dev.end();
  });

  it("drops foreign publishes and refuses foreign and wildcard subscriptions, without disconnecting", async () => {
    const dev = await TestDevice.connect(t.mqttUrl, productName, attacker.name, attacker.secret, { clientId: `${productName}/${attacker.name}/f` });
    let closed = false;
    dev.client.on("close", () => (closed = true));
    const v = `${productName}/${victim.name}`;
    for (const topic of [
      `update_ota_status/${v}/65a0000000000000000000a1`,
      `cmd/${v}/$ota_upgrade/plain/65a0000000000000000000a2`,
      `tags/${productName}/beta/cmd/$ota_upgrade/plain/65a0000000000000000000a3`,
      `m2m/${productName}/${attacker.name}/${victim.name}/65a0000000000000000000a4`,
      `update_status/other-product/${attacker.name}/65a0000000000000000000a5`,
    ]) {
      await dev.publish(topic, { ...firmware, url: "https://evil.example/x.bin", progress: 1 });
    }
    const granted = await dev.subscribeGranted(["#", "+/#", `cmd/${v}/+/+/+/#`, `update_ota_status/${productName}/+/+`, `tags/other/+/cmd/+/+/+/#`, `m2m/${v}/+/+`]);
    expect(granted).toEqual([128, 128, 128, 128, 128, 128]);
    expect(closed).toBe(false);
    await dev.end();
  });

  it("clears the retain flag of any device publish and keeps nothing retained", async () => {
    const dev = await TestDevice.connect(t.mqttUrl, productName, attacker.name, attacker.secret, { clientId: `${productName}/${attacker.name}/r` });
    const me = `${productName}/${attacker.name}`;
    await dev.client.publishAsync(`update_status/${me}/65a0000000000000000000b1`, JSON.stringify({ firmware_ver: "1.0" }), { qos: 1, retain: true });
    await dev.client.publishAsync(`upload_data/${me}/sample/65a0000000000000000000b2`, Buffer.alloc(120_000), { qos: 1, retain: true });
    await dev.client.publishAsync(`tags/${productName}/beta/cmd/$ota_upgrade/plain/65a0000000000000000000b3`, "{}", { qos: 1, retain: true });
    const redis = new Redis(REDIS_URL);
    onTeardown(() => redis.quit());
    expect(await redis.exists(`${t.config.redisPrefix}retained`)).toBe(0);
    await dev.end();
  });

  it("closes oversized packets, before and after authentication", async () => {
    const before = await metric(t, REFUSED, { kind: "packet" });
    const raw = tcpConnect(t.app.address.mqtt as number, "127.0.0.1");
    raw.on("error", () => undefined);
    const rawClosed = new Promise<void>((r) => raw.once("close", () => r()));
    raw.write(Buffer.from([0x10, 0xff, 0xff, 0xff, 0x7f, 0x00, 0x04]));
    await rawClosed;
    const dev = await TestDevice.connect(t.mqttUrl, productName, attacker.name, attacker.secret, { clientId: `${productName}/${attacker.name}/o` });
    const closed = new Promise<void>((r) => dev.client.once("close", () => r()));
    void dev.publish(`upload_data/${productName}/${attacker.name}/sample/65a0000000000000000000c1`, Buffer.alloc(t.config.limits.mqttMaxPacketBytes)).catch(() => undefined);
    await closed;
    expect(await metric(t, REFUSED, { kind: "packet" })).toBe(before + 2);
  });

  it("lets a device keep publishing refused topics: no reconnect, every one counted, the server healthy", async () => {
    const dev = await TestDevice.connect(t.mqttUrl, productName, attacker.name, attacker.secret, { clientId: `${productName}/${attacker.name}/flood` });
    let closes = 0;
    dev.client.on("close", () => closes++);
    const before = await metric(t, REFUSED, { kind: "publish", reason: "not_allowed" });
    const n = 2000;
    await Promise.all(
      Array.from({ length: n }, (_, i) => dev.publish(`update_status/${productName}/${victim.name}/${i.toString(16).padStart(24, "0")}`, { firmware_ver: "6.6.6" })),
    );
    expect(await metric(t, REFUSED, { kind: "publish", reason: "not_allowed" })).toBe(before + n);
    expect(closes).toBe(0);
    expect((await gqlOk(t, DeviceDocument, { productName, deviceName: victim.name })).device?.firmwareVersion).not.toBe("6.6.6");
    await dev.end();
  });

  it("grants a session at most 64 filters, however many tags it asks for, across SUBSCRIBEs and reconnects", async () => {
    const first = await TestDevice.connect(t.mqttUrl, productName, attacker.name, attacker.secret, { clientId: `${productName}/${attacker.name}/subs` });
    const tagFilters = (from: number, n: number) => Array.from({ length: n }, (_, i) => `tags/${productName}/t${from + i}/cmd/+/+/+/#`);
    // One SUBSCRIBE of 100 filters: the auto-subscriptions (3) and 61 more fit.
    const granted = await first.subscribeGranted(tagFilters(0, 100));
    expect(granted.filter((g) => g !== 0x80)).toHaveLength(61);
    await first.end();
    // The persistent session comes back with what it held: still no room.
    const again = await TestDevice.connect(t.mqttUrl, productName, attacker.name, attacker.secret, { clientId: `${productName}/${attacker.name}/subs` });
    expect(await again.subscribeGranted(tagFilters(100, 5))).toEqual([0x80, 0x80, 0x80, 0x80, 0x80]);
    // A filter it already holds is granted again, and room made by UNSUBSCRIBE can be used.
    expect(await again.subscribeGranted(tagFilters(0, 1))).toEqual([1]);
    await again.client.unsubscribeAsync(tagFilters(0, 2));
    expect((await again.subscribeGranted(tagFilters(200, 3))).filter((g) => g !== 0x80)).toHaveLength(2);
    expect(await metric(t, REFUSED, { kind: "subscribe", reason: "too_many" })).toBeGreaterThanOrEqual(45);
    await again.end();
  });

  it("stores nothing in Redis for QoS 2 publishes a device never releases, however often it reconnects", async () => {
    const redis = new Redis(REDIS_URL);
    onTeardown(() => redis.quit());
    const clientId = `${productName}/${attacker.name}/q2`;
    const before = await metric(t, REFUSED, { kind: "publish", reason: "not_allowed" });
    const body = Buffer.alloc(50_000, 7);
    for (let round = 0; round < 3; round++) {
      const dev = await TestDevice.connect(t.mqttUrl, productName, attacker.name, attacker.secret, { clientId });
      // Foreign topics (refused) and its own upload_data (accepted), each PUBREC'd and never PUBREL'd.
      await Promise.all(
        Array.from({ length: 40 }, (_, i) => {
          const topic = i % 2 === 0
            ? `update_status/${productName}/${victim.name}/${(round * 100 + i).toString(16).padStart(24, "0")}`
            : `upload_data/${productName}/${attacker.name}/sample/${(round * 100 + i).toString(16).padStart(24, "0")}`;
          return dev.publishQos2Unreleased(topic, body, i + 1);
        }),
      );
      dev.client.stream.destroy();
    }
    expect(await metric(t, REFUSED, { kind: "publish", reason: "not_allowed" })).toBe(before + 60);
    expect(await keysMatching(redis, `${t.config.redisPrefix}incoming:*`)).toEqual([]);
    // A complete QoS 2 handshake still works, once per message id, and its report is taken.
    const dev = await TestDevice.connect(t.mqttUrl, productName, attacker.name, attacker.secret, { clientId });
    const me = `${productName}/${attacker.name}`;
    await dev.client.publishAsync(`update_status/${me}/65a0000000000000000000d1`, JSON.stringify({ firmware_ver: "2.2" }), { qos: 2 });
    expect((await gqlOk(t, DeviceDocument, { productName, deviceName: attacker.name })).device?.firmwareVersion).toBe("2.2");
    expect(await keysMatching(redis, `${t.config.redisPrefix}incoming:*`)).toEqual([]);
    await dev.end();
  });

  it("keeps at most MQTT_MAX_SESSIONS_PER_DEVICE persistent sessions of a device: the least recently connected go, closed if online", async () => {
    const d = await register("suffixes");
    const prefix = t.config.redisPrefix;
    const ids = Array.from({ length: t.config.limits.mqttMaxSessionsPerDevice + 4 }, (_, i) => `${productName}/${d.name}/s${i}`);
    const before = await metric(t, REFUSED, { kind: "session", reason: "too_many" });
    const oldest = await TestDevice.connect(t.mqttUrl, productName, d.name, d.secret, { clientId: ids[0] });
    const oldestClosed = new Promise<void>((r) => oldest.client.once("close", () => r()));
    for (const clientId of ids.slice(1)) await (await TestDevice.connect(t.mqttUrl, productName, d.name, d.secret, { clientId })).end();
    expect(await metric(t, REFUSED, { kind: "session", reason: "too_many" })).toBe(before + 4);
    const redis = new Redis(REDIS_URL);
    onTeardown(() => redis.quit());
    const kept = ids.slice(4);
    const stored = (await redis.smembers(`${prefix}clients`)).filter((id) => id.startsWith(`${productName}/${d.name}/`));
    expect(stored.sort()).toEqual([...kept].sort());
    expect(await redis.exists(...ids.slice(0, 4).map((id) => `${prefix}client:${encodeURIComponent(id)}`))).toBe(0);
    await oldestClosed; // it was online, but its session is gone: nothing may run on it
    // A command is queued once per kept session, for no dropped one.
    await gqlOk(t, SendOtaDocument, { input: { productName, deviceName: d.name, firmware } });
    for (const id of ids) expect(await redis.llen(`${prefix}outgoing:${encodeURIComponent(id)}`)).toBe(kept.includes(id) ? 1 : 0);
    const back = await TestDevice.connect(t.mqttUrl, productName, d.name, d.secret, { clientId: ids.at(-1) });
    expect(back.sessionPresent).toBe(true);
    await back.nextCommand("$ota_upgrade");
    await back.end();
    const dropped = await TestDevice.connect(t.mqttUrl, productName, d.name, d.secret, { clientId: ids[1] });
    expect(dropped.sessionPresent).toBe(false);
    await dropped.end();
  });
});

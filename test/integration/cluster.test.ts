import { randomBytes } from "node:crypto";
import { ObjectId } from "bson";
import { Redis } from "ioredis";
import mqtt, { type MqttClient } from "mqtt";
import { beforeAll, describe, expect, it } from "vitest";
import {
  DeleteDeviceDocument,
  DeviceDetailDocument,
  OtaProgressDocument,
  RegisterDeviceDocument,
  SendOtaDocument,
  SuspendDeviceDocument,
} from "../../src/client/generated/graphql.js";
import { EmbeddedBroker } from "../../src/broker/embedded.broker.js";
import { deviceLiveKey } from "../../src/broker/sessions.js";
import { createLogger } from "../../src/logger.js";
import { createMetrics } from "../../src/metrics.js";
import { newObjectId } from "../../src/protocol/object-id.js";
import { RedisPresence } from "../../src/storage/presence.redis.js";
import { redisKeys } from "../../src/storage/progress.redis.js";
import { gqlOk, startApp, type TestApp } from "../helpers/app.js";
import { connackCode, TestDevice, type Received } from "../helpers/device.js";
import { firmware } from "../helpers/fixtures.js";
import { metric } from "../helpers/metrics.js";
import { freePort, ServerProcess } from "../helpers/processes.js";
import { DATABASE_URL, freshDatabase, REDIS_URL, uniq } from "../helpers/services.js";
import { onTeardown, tempDir } from "../helpers/teardown.js";
import { eventually } from "../helpers/wait.js";

const INGESTED = "iothub_ota_ingest_messages_total";

/** A device's one persistent session queue (aedes-persistence-redis' key). */
const queueKey = (prefix: string, clientId: string) => `${prefix}outgoing:${encodeURIComponent(clientId)}`;

/** Resolves when the device's connection closes. */
const closed = (dev: TestDevice) => new Promise<void>((r) => dev.client.once("close", () => r()));

/** Takes the next command carrying this requestId, then proves no second copy of it came: a later command arrives with none before it. */
async function exactlyOnce(dev: TestDevice, requestId: string, sendAnother: () => Promise<string>): Promise<void> {
  await dev.inbox.next((m) => m.topic.includes(requestId));
  const marker = await sendAnother();
  await dev.inbox.next((m) => m.topic.includes(marker));
  expect(dev.inbox.pending.filter((m: Received) => m.topic.includes(requestId))).toEqual([]);
}

describe.skipIf(!DATABASE_URL)("three instances, each with its embedded broker, sharing Redis and PostgreSQL", () => {
  let a: TestApp;
  let b: TestApp;
  let c: TestApp;
  let productName: string;
  let redis: Redis;

  beforeAll(async () => {
    const database = await freshDatabase("postgres");
    const redisPrefix = `${uniq("t")}:`;
    a = await startApp({ database, redisPrefix }); // migrates the database first
    [b, c] = await Promise.all([startApp({ database, redisPrefix }), startApp({ database, redisPrefix })]);
    productName = uniq("clu");
    redis = new Redis(REDIS_URL);
    onTeardown(() => redis.quit());
  });

  async function register(tags: string[] = []) {
    const { registerDevice } = await gqlOk(a, RegisterDeviceDocument, { input: { productName, tags } });
    return { name: registerDevice.device.deviceName, secret: registerDevice.secret };
  }
  const send = async (via: TestApp, target: { deviceName: string } | { tag: string }) =>
    (await gqlOk(via, SendOtaDocument, { input: { productName, ...target, firmware } })).sendOta.requestId;
  const online = async (via: TestApp, deviceName: string) =>
    (await gqlOk(via, DeviceDetailDocument, { productName, deviceName })).device?.online;

  it("delivers a command sent through one instance to a device connected to another, by device and by tag, once", async () => {
    const tag = uniq("tag");
    const [x, y] = [await register([tag]), await register([tag])];
    const onB = await TestDevice.connect(b.mqttUrl, productName, x.name, x.secret);
    const onC = await TestDevice.connect(c.mqttUrl, productName, y.name, y.secret);
    // What a device does on $set_tags (PROTOCOL.md).
    for (const dev of [onB, onC]) await dev.client.subscribeAsync(`tags/${productName}/${tag}/cmd/+/+/+/#`, { qos: 1 });

    await exactlyOnce(onB, await send(a, { deviceName: x.name }), () => send(c, { deviceName: x.name }));
    const byTag = await send(a, { tag });
    await onB.inbox.next((m) => m.topic.includes(byTag));
    await exactlyOnce(onC, byTag, () => send(b, { deviceName: y.name }));
  });

  it("grants a SUBSCRIBE of several tags at once, its subscriptions known to every instance", async () => {
    const tags = [uniq("tag"), uniq("tag"), uniq("tag")];
    const d = await register(tags);
    const dev = await TestDevice.connect(b.mqttUrl, productName, d.name, d.secret);
    // One SUBSCRIBE, as an SDK may send on $set_tags: aedes stores it once per filter, each waiting for its notice on the bus.
    expect(await dev.subscribeGranted(tags.map((tag) => `tags/${productName}/${tag}/cmd/+/+/+/#`))).toEqual([1, 1, 1]);
    await dev.end();
    // Offline: queued by the instance that sends, from what it was told of the subscriptions.
    const requestId = await send(c, { tag: tags[2] as string });
    const back = await TestDevice.connect(a.mqttUrl, productName, d.name, d.secret);
    await back.inbox.next((m) => m.topic.includes(requestId));
  });

  it("keeps a command for an offline device once in its session, and delivers it once when it connects to yet another instance", async () => {
    const d = await register();
    const clientId = `${productName}/${d.name}`;
    await (await TestDevice.connect(a.mqttUrl, productName, d.name, d.secret)).end();
    const requestId = await send(b, { deviceName: d.name });
    expect(await redis.llen(queueKey(a.config.redisPrefix, clientId))).toBe(1);

    const back = await TestDevice.connect(c.mqttUrl, productName, d.name, d.secret);
    expect(back.sessionPresent).toBe(true);
    await exactlyOnce(back, requestId, () => send(a, { deviceName: d.name }));
    // Acknowledged: gone from the session, so a connection to the first instance gets nothing again.
    await eventually(async () => expect(await redis.llen(queueKey(a.config.redisPrefix, clientId))).toBe(0));
    await back.end();
    const again = await TestDevice.connect(a.mqttUrl, productName, d.name, d.secret);
    const marker = await send(b, { deviceName: d.name });
    await again.inbox.next((m) => m.topic.includes(marker));
    expect(again.inbox.pending).toEqual([]);
  });

  it("closes the old connection when its client id connects to another instance, and the device stays online", async () => {
    const d = await register();
    const old = await TestDevice.connect(a.mqttUrl, productName, d.name, d.secret);
    await eventually(async () => expect(await online(c, d.name)).toBe(true));
    const oldClosed = closed(old);
    const taken = await TestDevice.connect(b.mqttUrl, productName, d.name, d.secret);
    await oldClosed;
    // The first instance let go of its entry (and of its session's live mark); the second's holds.
    const holders = redisKeys(a.config.redisPrefix).presenceHolders(productName, d.name);
    await eventually(async () => expect(await redis.hlen(holders)).toBe(1));
    const live = `${a.config.redisPrefix}${deviceLiveKey({ productName, deviceName: d.name })}`;
    await eventually(async () => expect(await redis.hget(live, `${productName}/${d.name}`)).toMatch(/ /));
    expect(await online(c, d.name)).toBe(true);
    expect(await online(a, d.name)).toBe(true);
    await exactlyOnce(taken, await send(c, { deviceName: d.name }), () => send(a, { deviceName: d.name }));

    await taken.end();
    await eventually(async () => expect(await online(a, d.name)).toBe(false));
    expect(await redis.exists(holders)).toBe(0);
  });

  it("tells through any instance when a device last connected and disconnected, and forgets it with the device", async () => {
    const d = await register();
    const seen = async (via: TestApp) => {
      const { device } = await gqlOk(via, DeviceDetailDocument, { productName, deviceName: d.name });
      return { online: device?.online, connectedAt: device?.lastConnectedAt ?? null, disconnectedAt: device?.lastDisconnectedAt ?? null };
    };
    expect(await seen(c)).toEqual({ online: false, connectedAt: null, disconnectedAt: null });
    const before = Date.now();
    const dev = await TestDevice.connect(a.mqttUrl, productName, d.name, d.secret);
    const on = await eventually(async () => {
      const s = await seen(c);
      expect(s.online).toBe(true);
      expect(Date.parse(s.connectedAt as string)).toBeGreaterThanOrEqual(before - 5);
      return s;
    });
    expect(on.disconnectedAt).toBeNull();
    await dev.end();
    const off = await eventually(async () => {
      const s = await seen(b);
      expect(s.online).toBe(false);
      expect(s.disconnectedAt).not.toBeNull();
      return s;
    });
    expect(Date.parse(off.disconnectedAt as string)).toBeGreaterThanOrEqual(Date.parse(on.connectedAt as string));
    expect(off.connectedAt).toBe(on.connectedAt);

    await gqlOk(b, DeleteDeviceDocument, { productName, deviceName: d.name });
    const times = redisKeys(a.config.redisPrefix).presenceSeen(productName, "connected");
    expect(await redis.hexists(times, d.name)).toBe(0);
  });

  it("disconnects a device held by another instance when it is suspended or deleted", async () => {
    const [s, del] = [await register(), await register()];
    const suspended = await TestDevice.connect(b.mqttUrl, productName, s.name, s.secret);
    const deleted = await TestDevice.connect(c.mqttUrl, productName, del.name, del.secret);
    const [suspendedClosed, deletedClosed] = [closed(suspended), closed(deleted)];
    await gqlOk(a, SuspendDeviceDocument, { productName, deviceName: s.name });
    await suspendedClosed;
    await gqlOk(a, DeleteDeviceDocument, { productName, deviceName: del.name });
    await deletedClosed;
    const id = (n: string) => ({ clientId: `${productName}/${n}`, username: `${productName}/${n}` });
    expect(await connackCode(b.mqttUrl, { ...id(s.name), password: s.secret })).toBe(5);
    expect(await connackCode(c.mqttUrl, { ...id(del.name), password: del.secret })).toBe(4);
    await eventually(async () => expect(await online(a, s.name)).toBe(false));
  });

  /** Two brokers as src/app.ts builds them (the apps keep theirs private), in a keyspace of their own; the first on `conn`'s duplicates. */
  async function twoBrokers(conn = redis) {
    const prefix = `${uniq("two")}:`;
    const make = (r: Redis) => {
      const broker = new EmbeddedBroker(
        { host: "127.0.0.1", port: 0, tlsPort: null, tlsCertFile: undefined, tlsKeyFile: undefined, dataDir: tempDir("two"), redisPrefix: prefix, limits: a.config.limits, bus: "redis" },
        () => undefined,
        a.app.devices,
        r,
        createMetrics(),
        createLogger("silent"),
      );
      onTeardown(() => broker.stop());
      return broker;
    };
    const [x, y] = [make(conn), make(redis)];
    await Promise.all([x.start(), y.start()]);
    return { x, y, prefix, url: (broker: EmbeddedBroker) => `mqtt://127.0.0.1:${broker.ports.mqtt}` };
  }

  it("queues a command for a session that subscribed while an instance's bus connection was down, once it is back", async () => {
    const name = uniq("bus");
    const conn = new Redis(REDIS_URL, { connectionName: name });
    onTeardown(() => conn.quit());
    const { x, y, prefix, url } = await twoBrokers(conn);
    const d = await register();
    const clientId = `${productName}/${d.name}/sdk`;
    // Its secret verified once: the CONNECT below is quick.
    await (await TestDevice.connect(url(y), productName, d.name, d.secret)).end();

    // The first broker's bus subscriber is cut (again and again, so that it is surely away) while a new session subscribes on the second.
    const subscriberIds = async () =>
      ((await redis.client("LIST")) as string)
        .split("\n")
        .filter((line) => line.includes(` name=${name} `) && / sub=[1-9]/.test(line))
        .map((line) => /^id=(\d+)/.exec(line)?.[1] as string);
    expect(await subscriberIds()).toHaveLength(1);
    let cutting = true;
    const cutter = (async () => {
      while (cutting) {
        for (const id of await subscriberIds()) await redis.client("KILL", "ID", id);
        await new Promise((r) => setTimeout(r, 2));
      }
    })();
    const fresh = await TestDevice.connect(url(y), productName, d.name, d.secret, { clientId });
    await new Promise((r) => setTimeout(r, 100));
    cutting = false;
    await cutter;
    await fresh.end();
    await eventually(async () => expect(await subscriberIds()).toHaveLength(1));

    // Sent through the instance that missed the subscription: queued in that session too, once it has read them again.
    await eventually(async () => {
      const requestId = newObjectId();
      await x.publishCommand(`cmd/${productName}/${d.name}/$ota_upgrade/plain/${requestId}`, JSON.stringify(firmware));
      expect(await redis.lrange(queueKey(prefix, clientId), 0, -1)).not.toEqual([]);
    }, 5_000);
  });

  it("withdraws a queued command only from a session no instance has connected", async () => {
    const { x, y, prefix, url } = await twoBrokers();
    const d = await register();
    const queue = () => redis.lrange(queueKey(prefix, `${productName}/${d.name}`), 0, -1);
    const command = async () => {
      const requestId = newObjectId();
      await x.publishCommand(`cmd/${productName}/${d.name}/$ota_upgrade/plain/${requestId}`, JSON.stringify(firmware));
      return requestId;
    };

    const dev = await TestDevice.connect(url(y), productName, d.name, d.secret);
    const held: (() => void)[] = [];
    // mqtt.js' backpressure hook: the command is out, its PUBACK waits: the second broker is delivering the queue.
    dev.client.handleMessage = (_packet, callback) => void held.push(() => callback());
    const delivering = await command();
    await eventually(() => expect(held).toHaveLength(1));
    expect(await x.withdraw(productName, d.name, [delivering])).toEqual([]);
    expect(await queue()).toHaveLength(1);
    held.splice(0).forEach((ack) => ack());
    await eventually(async () => expect(await queue()).toEqual([]));

    await dev.end();
    const live = `${prefix}${deviceLiveKey({ productName, deviceName: d.name })}`;
    await eventually(async () => expect(await redis.hexists(live, `${productName}/${d.name}`)).toBe(0));
    const offline = await command();
    expect(await x.withdraw(productName, d.name, [offline])).toEqual([offline]);
    expect(await queue()).toEqual([]);
  });

  it("ingests each report once, on the instance the device is connected to: reports never travel the bus", async () => {
    const tap = new Redis(REDIS_URL);
    onTeardown(() => tap.disconnect());
    const heard: Buffer[] = [];
    tap.on("messageBuffer", (_channel: Buffer, message: Buffer) => heard.push(message));
    await tap.subscribe(`${a.config.redisPrefix}mqtt-bus`);
    const before = await Promise.all([a, b, c].map((t) => metric(t, INGESTED, { kind: "ota_status" })));

    const d = await register();
    const dev = await TestDevice.connect(b.mqttUrl, productName, d.name, d.secret);
    for (let p = 1; p <= 20; p++) await dev.reportProgress({ version: "1.1", type: "firmware", progress: p });
    const requestId = await send(a, { deviceName: d.name });
    await dev.inbox.next((m) => m.topic.includes(requestId));

    const after = await Promise.all([a, b, c].map((t) => metric(t, INGESTED, { kind: "ota_status" })));
    expect(after.map((n, i) => n - (before[i] ?? 0))).toEqual([0, 20, 0]);
    expect((await gqlOk(c, OtaProgressDocument, { productName, deviceName: d.name })).otaProgress?.progress).toBe(20);
    // The command went over the bus (what the tap hears is the bus), the reports did not.
    await eventually(() => expect(heard.some((m) => m.includes(requestId))).toBe(true));
    expect(heard.filter((m) => m.includes("update_ota_status/"))).toEqual([]);
  });
});

describe.skipIf(!DATABASE_URL)("an instance killed with SIGKILL while its devices report", () => {
  it("loses nothing it acknowledged; its devices reconnect to another instance, and those that do not go offline", async () => {
    const token = `test-admin-${randomBytes(16).toString("hex")}`;
    const database = await freshDatabase("postgres");
    const redisPrefix = `${uniq("t")}:`;
    const ttl = "3000";
    // The observer: an instance of the same deployment, in process.
    const observer = await startApp({ database, redisPrefix, env: { PRESENCE_TTL_MS: ttl } });
    const env = async () => ({
      PATH: process.env.PATH,
      REDIS_URL,
      REDIS_PREFIX: redisPrefix,
      DATABASE_URL: (database as { url: string }).url,
      ADMIN_TOKEN: token,
      LOG_LEVEL: "warn",
      DATA_DIR: tempDir("clu"),
      PORT: String(await freePort()),
      MQTT_PORT: String(await freePort()),
      MQTTS_PORT: "0",
      PRESENCE_TTL_MS: ttl,
    });
    const [firstEnv, secondEnv] = [await env(), await env()];
    const [first, second] = await Promise.all([ServerProcess.start(firstEnv), ServerProcess.start(secondEnv)]);
    onTeardown(() => first.process.kill("SIGKILL"));
    onTeardown(() => second.stop());
    const url = (e: { MQTT_PORT: string }) => `mqtt://127.0.0.1:${e.MQTT_PORT}`;

    const productName = uniq("kill");
    const WINDOW = 10;
    const devices = await Promise.all(
      Array.from({ length: 6 }, async () => {
        const { registerDevice } = await gqlOk(observer, RegisterDeviceDocument, { input: { productName } });
        // Progress 1..100, each report with its messageId, sent again under it until acknowledged.
        const reports = Array.from({ length: 100 }, (_, i) => ({ id: new ObjectId().toHexString(), progress: i + 1 }));
        return { name: registerDevice.device.deviceName, secret: registerDevice.secret, reports, acked: new Set<string>() };
      }),
    );
    type Device = (typeof devices)[number];
    const connect = async (to: string, d: Device) => {
      const client = await mqtt.connectAsync(to, {
        clientId: `${productName}/${d.name}`,
        username: `${productName}/${d.name}`,
        password: d.secret,
        clean: false,
        reconnectPeriod: 0,
      });
      onTeardown(() => client.endAsync(true));
      return client;
    };
    /** Sends the device's unacknowledged reports, WINDOW in flight at a time, until done or the connection drops. */
    const stream = async (d: Device, client: MqttClient) => {
      // mqtt.js keeps a persistent session's unacknowledged publish for a reconnection that never comes here.
      const gone = new Promise<false>((r) => client.once("close", () => r(false)));
      const todo = d.reports.filter((r) => !d.acked.has(r.id));
      const worker = async () => {
        for (let r = todo.shift(); r; r = todo.shift()) {
          const topic = `update_ota_status/${productName}/${d.name}/${r.id}`;
          const body = JSON.stringify({ version: "2.0", type: "firmware", progress: r.progress });
          if (!(await Promise.race([client.publishAsync(topic, body, { qos: 1 }).then(() => true, () => false), gone]))) return;
          d.acked.add(r.id);
        }
      };
      await Promise.all(Array.from({ length: WINDOW }, worker));
    };
    /** The acknowledged reports whose effect is not in Redis (the messageId is remembered in the same atomic step as the report). */
    const lost = async (d: Device) => {
      const acked = [...d.acked];
      const remembered = await redis.mget(acked.map((id) => redisKeys(redisPrefix).dedup(productName, d.name, id)));
      return acked.filter((_, i) => remembered[i] === null);
    };
    const redis = new Redis(REDIS_URL);
    onTeardown(() => redis.quit());

    const clients = await Promise.all(devices.map((d) => connect(url(firstEnv), d)));
    const lingerer = devices[0] as Device;
    const online = async (d: Device) => (await gqlOk(observer, DeviceDetailDocument, { productName, deviceName: d.name })).device?.online;
    await eventually(async () => expect(await online(lingerer)).toBe(true));

    const streaming = devices.map((d, i) => stream(d, clients[i] as MqttClient));
    await eventually(() => expect(devices.every((d) => d.acked.size >= 20)).toBe(true));
    const killedAt = Date.now();
    first.process.kill("SIGKILL");
    await Promise.all(streaming);
    expect(devices.some((d) => d.acked.size < d.reports.length)).toBe(true); // the kill was mid-stream
    expect(await online(lingerer)).toBe(true); // until its entry expires
    for (const d of devices) expect(await lost(d)).toEqual([]);

    // The others reconnect to the second instance and send the rest; the lingerer stays away and goes offline.
    const movers = devices.slice(1);
    await Promise.all(
      movers.map(async (d) => {
        const client = await connect(url(secondEnv), d);
        await stream(d, client);
        expect(d.acked.size).toBe(d.reports.length);
        await client.publishAsync(`update_status/${productName}/${d.name}/${new ObjectId().toHexString()}`, JSON.stringify({ firmware_ver: "2.0" }), { qos: 1 });
      }),
    );
    for (const d of movers) {
      expect(await lost(d)).toEqual([]);
      const detail = (await gqlOk(observer, DeviceDetailDocument, { productName, deviceName: d.name })).device;
      expect(detail?.firmwareVersion).toBe("2.0");
      expect(detail?.otaProgress?.progress).toBe(100);
      expect(detail?.online).toBe(true);
    }
    await eventually(async () => expect(await online(lingerer)).toBe(false), 10_000);
    // Within the TTL of the dead instance's last refresh (made a third of it before the kill at most).
    expect(Date.now() - killedAt).toBeLessThan(Number(ttl) + 2_000);
  }, 45_000);
});

describe("presence of a device held by two instances at once", () => {
  it("stays online when the instance it left refreshed its entry after the other took it, then let go", async () => {
    const redis = new Redis(REDIS_URL);
    onTeardown(() => redis.quit());
    const keys = redisKeys(`${uniq("pres")}:`);
    const device = { productName: "prod", deviceName: "dev" };
    const [left, took] = [new RedisPresence(redis, keys), new RedisPresence(redis, keys)];
    await left.connected(device);
    await took.connected(device);
    // The instance it left writes a later expiry than the one that took it (its refresh came after).
    await new Promise((r) => setTimeout(r, 5));
    await left.refresh();
    await left.disconnected(device);
    expect(await took.online("prod", ["dev"])).toEqual([true]);
    expect(await took.countOnline("prod")).toBe(1);
    await took.disconnected(device);
    expect(await took.online("prod", ["dev"])).toEqual([false]);
    expect(await redis.exists(keys.presenceHolders("prod", "dev"))).toBe(0);
  });
});

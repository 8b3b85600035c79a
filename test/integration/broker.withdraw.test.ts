import type { IClientOptions } from "mqtt";
import { Redis } from "ioredis";
import { beforeAll, describe, expect, it } from "vitest";
import { EmbeddedBroker } from "../../src/broker/embedded.broker.js";
import { createLogger } from "../../src/logger.js";
import { createMetrics } from "../../src/metrics.js";
import { OtaService } from "../../src/ota/ota.service.js";
import { newObjectId } from "../../src/protocol/object-id.js";
import { RedisIdempotencyStore } from "../../src/storage/idempotency.redis.js";
import { RedisProgressStore, redisKeys } from "../../src/storage/progress.redis.js";
import { RegisterDeviceDocument } from "../../src/client/generated/graphql.js";
import { gqlOk, startApp, type TestApp } from "../helpers/app.js";
import { TestDevice } from "../helpers/device.js";
import { firmware } from "../helpers/fixtures.js";
import { REDIS_URL, uniq } from "../helpers/services.js";
import { onTeardown, tempDir } from "../helpers/teardown.js";
import { eventually } from "../helpers/wait.js";

/**
 * The app keeps its broker private, so the broker under test is one built as
 * src/app.ts builds it, beside the app (whose registry authenticates its
 * devices), in a Redis keyspace of its own, with an OtaService that sends
 * through it.
 */
describe("withdrawing queued commands from a device's sessions", () => {
  let t: TestApp;
  let broker: EmbeddedBroker;
  let ota: OtaService;
  let redis: Redis;
  let prefix: string;
  let url: string;
  const productName = uniq("wd");

  beforeAll(async () => {
    t = await startApp();
    prefix = `${uniq("wd")}:`;
    redis = new Redis(REDIS_URL);
    onTeardown(() => redis.quit());
    const log = createLogger("silent");
    broker = new EmbeddedBroker(
      { host: "127.0.0.1", port: 0, tlsPort: null, tlsCertFile: undefined, tlsKeyFile: undefined, dataDir: tempDir("wd"), redisPrefix: prefix, limits: t.config.limits },
      () => undefined,
      t.app.devices,
      redis,
      createMetrics(),
      log,
    );
    onTeardown(() => broker.stop());
    await broker.start();
    url = `mqtt://127.0.0.1:${broker.ports.mqtt}`;
    ota = new OtaService(t.app.devices, broker, new RedisProgressStore(redis, redisKeys(prefix)), {
      artifacts: t.app.artifacts,
      offlineCommandTtlSeconds: t.config.limits.offlineCommandTtlSeconds,
      idempotency: new RedisIdempotencyStore(redis, prefix),
      inFlightMs: 1_000,
      idempotencyTtlSeconds: 60,
      log,
    });
  });

  async function register(deviceName = uniq("dev")) {
    const { registerDevice } = await gqlOk(t, RegisterDeviceDocument, { input: { productName, deviceName } });
    return { name: registerDevice.device.deviceName, secret: registerDevice.secret };
  }

  const connect = (d: { name: string; secret: string }, options: IClientOptions = {}) => TestDevice.connect(url, productName, d.name, d.secret, options);

  /** Leaves a persistent session behind under this client id. */
  async function session(d: { name: string; secret: string }, clientId = `${productName}/${d.name}`) {
    await (await connect(d, { clientId })).end();
  }

  const send = async (deviceName: string, ttlSeconds?: number) => (await ota.send({ productName, deviceName, firmware, ttlSeconds })).requestId;
  /** The session's queue: names of the packet keys it points to, oldest first. */
  const queue = (clientId: string) => redis.lrange(`${prefix}outgoing:${encodeURIComponent(clientId)}`, 0, -1);
  const stored = (packetKey: string) => redis.exists(`${prefix}${packetKey}`, `${prefix}${packetKey}:offlineCount`);
  const sessionsLeft = (packetKey: string) => redis.get(`${prefix}${packetKey}:offlineCount`);

  it("takes a command out of an offline session's queue: on reconnecting the device gets the other and never it", async () => {
    const d = await register();
    const clientId = `${productName}/${d.name}`;
    await session(d);
    const withdrawn = await send(d.name, 3600); // the topic's `/<expiresAt>` form
    const kept = await send(d.name);
    const [withdrawnKey, keptKey] = (await queue(clientId)) as [string, string];

    expect(await broker.withdraw(productName, d.name, [withdrawn])).toEqual([withdrawn]);
    // Nothing left behind: not the queue entry, not the packet, not its count of sessions.
    expect(await queue(clientId)).toEqual([keptKey]);
    expect(await stored(withdrawnKey)).toBe(0);
    expect(await sessionsLeft(keptKey)).toBe("1");
    expect(await broker.withdraw(productName, d.name, [withdrawn])).toEqual([]);

    const back = await connect(d);
    expect(back.sessionPresent).toBe(true);
    // The queue comes first, in order: the withdrawn command would have been the first thing to arrive.
    expect((await back.inbox.next()).topic).toContain(`/${kept}`);
    const marker = await send(d.name);
    expect((await back.inbox.next()).topic).toContain(`/${marker}`);
    expect(back.inbox.pending).toEqual([]);
  });

  it("withdraws nothing for an unknown requestId, another device's command, or what is not a requestId", async () => {
    const d = await register();
    // Its name starts like the other's: `forget`-style lookups by prefix must not reach across.
    const other = await register(`${d.name}-b`);
    await session(d);
    await session(other);
    const mine = await send(d.name);
    const theirs = await send(other.name);

    expect(await broker.withdraw(productName, d.name, [newObjectId(), theirs, "not-a-request-id", `${mine}/1`, mine.toUpperCase(), ""])).toEqual([]);
    expect(await broker.withdraw(productName, other.name, [mine])).toEqual([]);
    expect(await broker.withdraw(productName, d.name, [])).toEqual([]);
    expect(await queue(`${productName}/${d.name}`)).toHaveLength(1);
    expect(await queue(`${productName}/${other.name}`)).toHaveLength(1);
    expect((await (await connect(other)).inbox.next()).topic).toContain(`/${theirs}`);
    expect((await (await connect(d)).inbox.next()).topic).toContain(`/${mine}`);
  });

  it("withdraws a command from every offline session of the device, reporting it once", async () => {
    const d = await register();
    const ids = [`${productName}/${d.name}`, `${productName}/${d.name}/sdk2`];
    for (const id of ids) await session(d, id);
    const withdrawn = await send(d.name);
    const [packetKey] = (await queue(ids[0] as string)) as [string];
    expect(await queue(ids[1] as string)).toEqual([packetKey]);
    expect(await sessionsLeft(packetKey)).toBe("2");

    expect(await broker.withdraw(productName, d.name, [withdrawn, withdrawn])).toEqual([withdrawn]);
    for (const id of ids) expect(await queue(id)).toEqual([]);
    expect(await stored(packetKey)).toBe(0);

    const devices = await Promise.all(ids.map((clientId) => connect(d, { clientId })));
    const marker = await send(d.name);
    for (const dev of devices) expect((await dev.inbox.next()).topic).toContain(`/${marker}`);
  });

  it("finds commands anywhere in a queue longer than one chunk of the scan", async () => {
    const d = await register();
    const clientId = `${productName}/${d.name}`;
    await session(d);
    const sent: string[] = [];
    for (let i = 0; i < 450; i++) sent.push(await send(d.name));
    const picked = [sent[3], sent[199], sent[200], sent[201], sent[449]] as string[];

    expect((await broker.withdraw(productName, d.name, picked)).sort()).toEqual([...picked].sort());
    expect(await queue(clientId)).toHaveLength(445);
    const back = await connect(d);
    const kept = sent.filter((id) => !picked.includes(id));
    for (const id of kept) expect((await back.inbox.next()).topic).toContain(`/${id}`);
  });

  /** A device (a fresh session) holding back its PUBACKs: aedes keeps each command it delivers in the session's queue until then. */
  async function holdingAcks(d: { name: string; secret: string }) {
    const dev = await connect(d);
    const held: { topic: string; ack: () => void }[] = [];
    // mqtt.js' backpressure hook: the message is out, its PUBACK waits for the callback.
    dev.client.handleMessage = (packet, callback) => void held.push({ topic: packet.topic, ack: () => callback() });
    return { dev, held, release: () => held.splice(0).forEach((h) => h.ack()) };
  }

  it("leaves the queue of a connected session alone: the device gets the command", async () => {
    const d = await register();
    const clientId = `${productName}/${d.name}`;
    const online = await holdingAcks(d);
    const requestId = await send(d.name);
    await eventually(() => expect(online.held.map((h) => h.topic)).toEqual([expect.stringContaining(`/${requestId}`)]));
    const [packetKey] = (await queue(clientId)) as [string];
    expect(packetKey).toBeDefined();

    expect(await broker.withdraw(productName, d.name, [requestId])).toEqual([]);
    expect(await queue(clientId)).toEqual([packetKey]);
    expect((await online.dev.inbox.next()).topic).toContain(`/${requestId}`);
    online.release();
    // Acknowledged, the command leaves the queue the usual way, packet and all.
    await eventually(async () => expect(await stored(packetKey)).toBe(0));
    expect(await queue(clientId)).toEqual([]);
  });

  it("withdraws from the offline session of a device whose other session is connected, and not from that one", async () => {
    const d = await register();
    const offline = `${productName}/${d.name}/sdk2`;
    await session(d, offline);
    const online = await holdingAcks(d);
    const requestId = await send(d.name);
    await eventually(() => expect(online.held).toHaveLength(1));
    const [packetKey] = (await queue(offline)) as [string];

    expect(await broker.withdraw(productName, d.name, [requestId])).toEqual([requestId]);
    expect(await queue(offline)).toEqual([]);
    // Still the connected session's to deliver.
    expect(await queue(`${productName}/${d.name}`)).toEqual([packetKey]);
    expect(await sessionsLeft(packetKey)).toBe("1");
    expect((await online.dev.inbox.next()).topic).toContain(`/${requestId}`);
    online.release();
    await eventually(async () => expect(await stored(packetKey)).toBe(0));

    const back = await connect(d, { clientId: offline });
    const marker = await send(d.name);
    expect((await back.inbox.next()).topic).toContain(`/${marker}`);
  });
});

import { connect as netConnect } from "node:net";
import { Redis } from "ioredis";
import mqttPacket from "mqtt-packet";
import { beforeAll, describe, expect, it } from "vitest";
import {
  CreateApiTokenDocument,
  DeviceListDocument,
  type DeviceListQuery,
  FleetDocument,
  ProductsDocument,
  SuspendDeviceDocument,
  type DeviceState,
} from "../../src/client/generated/graphql.js";
import { sql } from "drizzle-orm";
import { redisKeys } from "../../src/storage/progress.redis.js";
import { PRESENCE_TTL_MS, RedisPresence } from "../../src/storage/presence.redis.js";
import { gql, gqlOk, startApp, type TestApp } from "../helpers/app.js";
import { TestDevice } from "../helpers/device.js";
import { MOSQUITTO_URL, REDIS_URL, uniq } from "../helpers/services.js";
import { onTeardown } from "../helpers/teardown.js";
import { eventually, sleep } from "../helpers/wait.js";

/** Registers devices and connects those asked; each reports its firmware version when given one. */
async function fleetOf(t: TestApp, productName: string, spec: { name: string; version?: string; connect?: boolean; tags?: string[] }[]) {
  const connected = new Map<string, TestDevice>();
  for (const d of spec) {
    const { secret } = await t.app.devices.register({ productName, deviceName: d.name, tags: d.tags ?? [] });
    if (!d.connect && d.version === undefined) continue;
    const device = await TestDevice.connect(t.mqttUrl, productName, d.name, secret);
    if (d.version !== undefined) await device.reportStatus({ firmware_ver: d.version });
    if (d.connect) connected.set(d.name, device);
    else await device.end();
  }
  return connected;
}

describe("the fleet at a glance", () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startApp();
  });

  const list = async (productName: string, vars: { state?: DeviceState; firmwareVersion?: string; tag?: string } = {}) =>
    (await gqlOk(t, DeviceListDocument, { productName, ...vars })).devices.nodes.map((n) => n.deviceName);

  it("counts devices by firmware version, suspended and online ones, and filters the device list the same way", async () => {
    const productName = uniq("fleet");
    const connected = await fleetOf(t, productName, [
      { name: "a", version: "1.0", connect: true, tags: ["eu"] },
      { name: "b", version: "1.0" },
      { name: "c", version: "2.0", connect: true },
      { name: "d" },
    ]);
    await gqlOk(t, SuspendDeviceDocument, { productName, deviceName: "b" });
    const fleet = await eventually(async () => {
      const f = (await gqlOk(t, FleetDocument, { productName })).fleet;
      expect(f.online).toBe(2);
      return f;
    });
    expect(fleet).toMatchObject({ productName, devices: 4, suspended: 1 });
    expect(fleet.versions).toEqual([
      { firmwareVersion: "1.0", devices: 2 },
      { firmwareVersion: "2.0", devices: 1 },
      { firmwareVersion: null, devices: 1 },
    ]);
    expect(await list(productName, { state: "ONLINE" })).toEqual(["a", "c"]);
    expect(await list(productName, { state: "OFFLINE" })).toEqual(["d"]);
    expect(await list(productName, { state: "SUSPENDED" })).toEqual(["b"]);
    expect(await list(productName, { firmwareVersion: "1.0" })).toEqual(["a", "b"]);
    expect(await list(productName, { firmwareVersion: "1.0", state: "ONLINE", tag: "eu" })).toEqual(["a"]);
    const nodes = (await gqlOk(t, DeviceListDocument, { productName })).devices.nodes;
    expect(nodes.map((n) => [n.deviceName, n.online])).toEqual([
      ["a", true],
      ["b", false],
      ["c", true],
      ["d", false],
    ]);

    // A disconnect is seen at once; the device list follows.
    await connected.get("c")!.end();
    await eventually(async () => expect((await gqlOk(t, FleetDocument, { productName })).fleet.online).toBe(1));
    expect(await list(productName, { state: "OFFLINE" })).toEqual(["c", "d"]);
  });

  it("lists online and offline devices page by page across the registry's batches, without loading the product's presence", async () => {
    const productName = uniq("many");
    await t.app.database.db.execute(sql`insert into devices (product_name, device_name, secret_hash)
      select ${productName}, 'd' || lpad(i::text, 4, '0'), 'x' from generate_series(1, 1300) i`);
    const redis = new Redis(REDIS_URL);
    onTeardown(async () => void redis.disconnect());
    const presence = new RedisPresence(redis, redisKeys(t.config.redisPrefix));
    const all = Array.from({ length: 1300 }, (_, i) => `d${String(i + 1).padStart(4, "0")}`);
    const online = all.filter((_, i) => i % 7 === 3);
    for (const deviceName of online) await presence.connected({ productName, deviceName });
    const walk = async (state: DeviceState) => {
      const seen: string[] = [];
      let after: string | null = null;
      for (let pages = 0; pages < 100; pages++) {
        const page: DeviceListQuery["devices"] = (await gqlOk(t, DeviceListDocument, { productName, state, first: 60, after })).devices;
        seen.push(...page.nodes.map((n) => n.deviceName));
        if (!page.pageInfo.hasNextPage) return seen;
        after = page.pageInfo.endCursor;
      }
      throw new Error("did not end");
    };
    expect(await walk("ONLINE")).toEqual(online);
    expect(await walk("OFFLINE")).toEqual(all.filter((n) => !online.includes(n)));
  });

  it("keeps presence right when a second connection of a device's client id drops in the middle of its CONNECT", async () => {
    const productName = uniq("race");
    const redis = new Redis(REDIS_URL);
    onTeardown(async () => void redis.disconnect());
    const keys = redisKeys(t.config.redisPrefix);
    const port = Number(new URL(t.mqttUrl).port);
    const dropAfter = (clientId: string, secret: string, ms: number) =>
      new Promise<void>((resolve) => {
        const s = netConnect(port, "127.0.0.1", () => {
          const packet = { cmd: "connect", protocolId: "MQTT", protocolVersion: 4, clean: false, clientId, keepalive: 30, username: clientId, password: Buffer.from(secret) };
          s.write(mqttPacket.generate(packet as never));
          setTimeout(() => (s.destroy(), resolve()), ms);
        });
        s.on("error", () => undefined);
      });
    for (let i = 0; i < 30; i++) {
      const deviceName = `d${i}`;
      const { secret } = await t.app.devices.register({ productName, deviceName });
      const a = await TestDevice.connect(t.mqttUrl, productName, deviceName, secret);
      await dropAfter(`${productName}/${deviceName}`, secret, i % 6);
      await sleep(150);
      // Whatever became of A (taken over, or kept), presence says the same.
      expect(await redis.zscore(keys.presenceOf(productName, deviceName), deviceName) !== null, `trial ${i}: presence while A is ${a.client.connected ? "connected" : "gone"}`).toBe(a.client.connected);
      await a.end();
      await eventually(async () => expect(await redis.zscore(keys.presenceOf(productName, deviceName), deviceName), `trial ${i}: presence after every connection closed`).toBeNull(), 3000);
    }
  }, 60_000);

  it("refuses a filter it cannot apply, naming the argument", async () => {
    const r = await gql(t, DeviceListDocument, { productName: uniq("fleet"), firmwareVersion: "" });
    expect(r.errors?.[0]?.extensions).toMatchObject({ code: "BAD_USER_INPUT", field: "firmwareVersion" });
  });

  it("lists the products a token may read", async () => {
    const mine = uniq("prodA");
    const other = uniq("prodB");
    await t.app.devices.register({ productName: mine, deviceName: "x" });
    await t.app.devices.register({ productName: other, deviceName: "y" });
    const all = (await gqlOk(t, ProductsDocument, {})).products;
    expect(all).toEqual(expect.arrayContaining([mine, other]));
    expect([...all].sort()).toEqual(all);
    const { token } = (await gqlOk(t, CreateApiTokenDocument, { input: { name: uniq("tok"), access: "READ", products: [mine] } })).createApiToken;
    expect((await gqlOk({ httpUrl: t.httpUrl, token }, ProductsDocument, {})).products).toEqual([mine]);
    // Past the 1,000 names a list holds, a limited token still sees its own (they are looked up, not filtered out of the first 1,000).
    await t.app.database.db.execute(sql`insert into devices (product_name, device_name, secret_hash)
      select 'aaa-' || lpad(i::text, 4, '0'), 'd', 'x' from generate_series(1, 1001) i`);
    expect((await gqlOk(t, ProductsDocument, {})).products).toHaveLength(1000);
    expect((await gqlOk({ httpUrl: t.httpUrl, token }, ProductsDocument, {})).products).toEqual([mine]);
  });
});

describe("the fleet with an external broker", () => {
  it("says presence is unknown rather than guessing", async () => {
    const t = await startApp({ externalBroker: MOSQUITTO_URL });
    const productName = uniq("ext");
    await t.app.devices.register({ productName, deviceName: "a" });
    expect((await gqlOk(t, FleetDocument, { productName })).fleet).toMatchObject({ devices: 1, online: null });
    expect((await gqlOk(t, DeviceListDocument, { productName })).devices.nodes[0]?.online).toBeNull();
    const r = await gql(t, DeviceListDocument, { productName, state: "ONLINE" });
    expect(r.errors?.[0]?.extensions).toMatchObject({ code: "BAD_USER_INPUT", field: "state" });
    expect((await gqlOk(t, DeviceListDocument, { productName, state: "SUSPENDED" })).devices.nodes).toEqual([]);
  });
});

describe("presence in Redis", () => {
  const redis = new Redis(REDIS_URL);
  onTeardown(async () => void (await redis.quit()));
  const keys = redisKeys(`${uniq("pres")}:`);

  it("does not count an entry its instance stopped refreshing (a dead instance's devices go offline)", async () => {
    const p = new RedisPresence(redis, keys);
    await redis.zadd(keys.presenceOf("prod", "gone"), Date.now() - 1, "gone");
    await p.connected({ productName: "prod", deviceName: "here" });
    expect(await p.countOnline("prod")).toBe(1);
    expect(await p.online("prod", ["gone", "here", "never"])).toEqual([false, true, false]);
    await p.refresh();
    expect(await redis.zscore(keys.presenceOf("prod", "gone"), "gone")).toBeNull();
    expect(Number(await redis.zscore(keys.presenceOf("prod", "here"), "here"))).toBeGreaterThan(Date.now() + PRESENCE_TTL_MS / 2);
  });

  it("keeps a device online that has connected to another instance since (takeover across instances)", async () => {
    const first = new RedisPresence(redis, keys);
    const second = new RedisPresence(redis, keys);
    await first.connected({ productName: "prod2", deviceName: "dev" });
    await new Promise((r) => setTimeout(r, 5));
    await second.connected({ productName: "prod2", deviceName: "dev" });
    await first.disconnected({ productName: "prod2", deviceName: "dev" });
    expect(await second.online("prod2", ["dev"])).toEqual([true]);
    await second.disconnected({ productName: "prod2", deviceName: "dev" });
    expect(await second.online("prod2", ["dev"])).toEqual([false]);
  });
});

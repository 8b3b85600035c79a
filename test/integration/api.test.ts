import { beforeAll, describe, expect, it } from "vitest";
import { createClient } from "graphql-ws";
import WebSocket from "ws";
import { print } from "graphql";
import {
  DeviceDocument,
  OtaProgressChangedDocument,
  RegisterDeviceDocument,
  SendOtaDocument,
  SetDeviceTagsDocument,
} from "../../src/client/generated/graphql.js";
import { createServer, connect, type AddressInfo, type Socket } from "node:net";
import mqtt from "mqtt";
import { gql, gqlOk, startApp, type TestApp } from "../helpers/app.js";
import { TestDevice } from "../helpers/device.js";
import { MOSQUITTO_URL, uniq } from "../helpers/services.js";
import { onTeardown } from "../helpers/teardown.js";
import { eventually, Inbox } from "../helpers/wait.js";
import { firmware } from "../helpers/fixtures.js";

/**
 * A TCP relay to a real broker that can hold back what the broker sends
 * (its PUBACKs among them) while still passing on what the server sends: a
 * broker that takes a command and does not confirm it.
 */
async function holdingRelay(target: URL) {
  let holding = false;
  let cut = false;
  const held: (() => void)[] = [];
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    if (cut) return void client.destroy();
    const upstream = connect(Number(target.port), target.hostname);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("error", () => undefined);
      s.on("close", () => (client.destroy(), upstream.destroy()));
    }
    client.on("data", (d) => upstream.write(d));
    upstream.on("data", (d) => (holding ? held.push(() => client.write(d)) : client.write(d)));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  onTeardown(() => {
    for (const s of sockets) s.destroy();
    return new Promise((r) => server.close(r));
  });
  return {
    url: `mqtt://127.0.0.1:${(server.address() as AddressInfo).port}`,
    hold: () => void (holding = true),
    release: () => {
      holding = false;
      for (const send of held.splice(0)) send();
    },
    /** Drops every connection and refuses new ones until {@link restore}. */
    cut: () => {
      cut = true;
      for (const s of sockets) s.destroy();
    },
    restore: () => void (cut = false),
  };
}


describe("the API", () => {
  let t: TestApp;
  let productName: string;
  let deviceName: string;
  let secret: string;

  beforeAll(async () => {
    t = await startApp({ env: { CORS_ORIGINS: "https://dash.example" } });
    productName = uniq("api");
    const r = await gqlOk(t, RegisterDeviceDocument, { input: { productName, deviceName: "d1", tags: ["a"] } });
    deviceName = r.registerDevice.device.deviceName;
    secret = r.registerDevice.secret;
  });

  describe("authentication", () => {
    it.each([
      ["no token", null],
      ["a wrong token", "Bearer not-a-token"],
      ["a malformed header", "Basic abc"],
    ])("refuses GraphQL over HTTP with %s", async (_name, authorization) => {
      const r = await gql(t, DeviceDocument, { productName, deviceName }, authorization);
      expect(r.status).toBe(401);
      expect(r.errors?.[0]?.extensions?.code).toBe("UNAUTHENTICATED");
      expect(r.data ?? null).toBeNull();
    });

    it("refuses REST calls without a valid token", async () => {
      for (const headers of [{}, { authorization: "Bearer wrong" }] as Record<string, string>[]) {
        const res = await fetch(`${t.httpUrl}/ota/${productName}/${deviceName}`, { headers });
        expect(res.status).toBe(401);
      }
    });

    it("closes a graphql-ws connection that has no valid token", async () => {
      for (const connectionParams of [{}, { authorization: "Bearer wrong" }]) {
        const client = createClient({ url: t.wsUrl, webSocketImpl: WebSocket, connectionParams, retryAttempts: 0 });
        const closed = await new Promise<{ code: number }>((resolve) => {
          client.on("closed", (e) => resolve(e as { code: number }));
          client.subscribe({ query: print(OtaProgressChangedDocument), variables: { productName } }, {
            next: () => undefined,
            error: () => undefined,
            complete: () => undefined,
          });
        });
        expect(closed.code).toBe(4401);
        await client.dispose();
      }
    });

    it("accepts tokens made with the token service, and counts them", async () => {
      const { token } = await t.app.tokens.create({ name: "test", access: "read" });
      const r = await gql({ httpUrl: t.httpUrl, token }, DeviceDocument, { productName, deviceName });
      expect(r.data?.device?.deviceName).toBe(deviceName);
      expect(await t.app.tokens.count()).toBeGreaterThanOrEqual(1);
    });
  });

  it("answers CORS preflights for the configured dashboard origin only", async () => {
    const preflight = (origin: string) =>
      fetch(`${t.httpUrl}/graphql`, {
        method: "OPTIONS",
        headers: { origin, "access-control-request-method": "POST", "access-control-request-headers": "authorization,content-type" },
      });
    const allowed = await preflight("https://dash.example");
    expect(allowed.headers.get("access-control-allow-origin")).toBe("https://dash.example");
    expect(allowed.headers.get("access-control-allow-headers")).toContain("authorization");
    expect((await preflight("https://evil.example")).headers.get("access-control-allow-origin")).toBeNull();
  });

  describe("sendOta validation", () => {
    const cases: [string, Record<string, unknown>, string][] = [
      ["a non-http url", { firmware: { ...firmware, url: "ftp://x/y.bin" } }, "firmware.url"],
      ["a zero size", { firmware: { ...firmware, size: 0 } }, "firmware.size"],
      ["a negative size", { firmware: { ...firmware, size: -5 } }, "firmware.size"],
      ["a short md5", { firmware: { ...firmware, md5: "abc" } }, "firmware.md5"],
      ["an empty version", { firmware: { ...firmware, version: "" } }, "firmware.version"],
      ["an over-long type", { firmware: { ...firmware, type: "t".repeat(100) } }, "firmware.type"],
      ["both device and tag", { tag: "a" }, "deviceName"],
      ["a zero ttl", { ttlSeconds: 0 }, "ttlSeconds"],
      ["a bad product name", { productName: "a/b" }, "productName"],
      ["a wildcard device name", { deviceName: "+" }, "deviceName"],
    ];
    it.each(cases)("refuses %s with BAD_USER_INPUT naming the field", async (_name, patch, field) => {
      const r = await gql(t, SendOtaDocument, { input: { productName, deviceName, firmware, ...patch } as never });
      expect(r.errors?.[0]?.extensions).toMatchObject({ code: "BAD_USER_INPUT", field });
      expect(r.errors?.[0]?.message).toContain(field);
    });

    it("sends the URL as understood, not as typed", async () => {
      const name = uniq("u");
      const { registerDevice } = await gqlOk(t, RegisterDeviceDocument, { input: { productName, deviceName: name } });
      const dev = await TestDevice.connect(t.mqttUrl, productName, name, registerDevice.secret);
      await gqlOk(t, SendOtaDocument, { input: { productName, deviceName: name, firmware: { ...firmware, url: "  HTTPS://FW.Example:443/a b.bin" } } });
      expect((await dev.nextCommand("$ota_upgrade")).json.url).toBe("https://fw.example/a%20b.bin");
      await dev.end();
    });

    it("refuses neither device nor tag, and a bad tag", async () => {
      const none = await gql(t, SendOtaDocument, { input: { productName, firmware } });
      expect(none.errors?.[0]?.extensions?.code).toBe("BAD_USER_INPUT");
      const badTag = await gql(t, SendOtaDocument, { input: { productName, tag: "#", firmware } });
      expect(badTag.errors?.[0]?.extensions).toMatchObject({ code: "BAD_USER_INPUT", field: "tag" });
    });

    it("answers DEVICE_NOT_FOUND and DEVICE_SUSPENDED", async () => {
      const missing = await gql(t, SendOtaDocument, { input: { productName, deviceName: "ghost", firmware } });
      expect(missing.errors?.[0]?.extensions?.code).toBe("DEVICE_NOT_FOUND");
      const name = uniq("s");
      await gqlOk(t, RegisterDeviceDocument, { input: { productName, deviceName: name } });
      await t.app.devices.setSuspended(productName, name, true);
      const suspended = await gql(t, SendOtaDocument, { input: { productName, deviceName: name, firmware } });
      expect(suspended.errors?.[0]?.extensions?.code).toBe("DEVICE_SUSPENDED");
    });

    it("refuses a GraphQL-level type error as BAD_USER_INPUT without internals", async () => {
      const r = await gql(t, SendOtaDocument, { input: { productName, deviceName, firmware: { ...firmware, size: "big" } } as never });
      expect(r.errors?.[0]?.extensions?.code).toBe("BAD_USER_INPUT");
      expect(JSON.stringify(r.errors)).not.toMatch(/stacktrace|at .*\.ts/);
    });
  });

  describe("registry input", () => {
    it("refuses bad names and tags, and a taken name", async () => {
      const bad = await gql(t, RegisterDeviceDocument, { input: { productName: "$sys" } });
      expect(bad.errors?.[0]?.extensions).toMatchObject({ code: "BAD_USER_INPUT", field: "productName" });
      const badTags = await gql(t, SetDeviceTagsDocument, { productName, deviceName, tags: ["ok", "not ok"] });
      expect(badTags.errors?.[0]?.extensions).toMatchObject({ code: "BAD_USER_INPUT", field: "tags" });
      const taken = await gql(t, RegisterDeviceDocument, { input: { productName, deviceName } });
      expect(taken.errors?.[0]?.extensions?.code).toBe("DEVICE_EXISTS");
      const missing = await gql(t, SetDeviceTagsDocument, { productName, deviceName: "ghost", tags: [] });
      expect(missing.errors?.[0]?.extensions?.code).toBe("DEVICE_NOT_FOUND");
    });
  });

  describe("idempotency keys", () => {
    const connectDevice = async () => {
      const name = uniq("idem");
      const { registerDevice } = await gqlOk(t, RegisterDeviceDocument, { input: { productName, deviceName: name } });
      return TestDevice.connect(t.mqttUrl, productName, name, registerDevice.secret);
    };
    /** The device's next $ota_upgrade is this marker, sent last without a key: nothing was sent twice in between. */
    const expectNothingMore = async (dev: TestDevice) => {
      await gqlOk(t, SendOtaDocument, { input: { productName, deviceName: dev.deviceName, firmware: { ...firmware, version: "marker" } } });
      expect((await dev.nextCommand("$ota_upgrade")).json.version).toBe("marker");
    };

    it("make a retried sendOta answer the first result without sending again", async () => {
      const dev = await connectDevice();
      const input = { productName, deviceName: dev.deviceName, firmware, idempotencyKey: uniq("key") };
      const first = (await gqlOk(t, SendOtaDocument, { input })).sendOta;
      expect((await dev.nextCommand("$ota_upgrade")).topic).toBe(first.topic);
      expect((await gqlOk(t, SendOtaDocument, { input })).sendOta).toEqual(first);
      await expectNothingMore(dev);
      const reused = await gql(t, SendOtaDocument, { input: { ...input, firmware: { ...firmware, version: "2.0" } } });
      expect(reused.errors?.[0]?.extensions).toMatchObject({ code: "BAD_USER_INPUT", field: "idempotencyKey" });
      const bad = await gql(t, SendOtaDocument, { input: { ...input, idempotencyKey: "has space" } });
      expect(bad.errors?.[0]?.extensions).toMatchObject({ code: "BAD_USER_INPUT", field: "idempotencyKey" });
      await dev.end();
    });

    it("send once for concurrent requests with one key: the others are told it is in progress or get its result", async () => {
      const dev = await connectDevice();
      const input = { productName, deviceName: dev.deviceName, firmware, idempotencyKey: uniq("key") };
      const answers = await Promise.all(Array.from({ length: 5 }, () => gql(t, SendOtaDocument, { input })));
      const sent = answers.filter((a) => a.data?.sendOta).map((a) => a.data!.sendOta.requestId);
      expect(sent.length).toBeGreaterThanOrEqual(1);
      expect(new Set(sent).size).toBe(1);
      for (const a of answers.filter((x) => x.errors)) expect(a.errors?.[0]?.extensions?.code).toBe("REQUEST_IN_PROGRESS");
      await dev.nextCommand("$ota_upgrade");
      await expectNothingMore(dev);
      await dev.end();
    });

    it("take the Idempotency-Key header on POST /ota", async () => {
      const dev = await connectDevice();
      const post = () =>
        fetch(`${t.httpUrl}/ota/${productName}/${dev.deviceName}`, {
          method: "POST",
          headers: { authorization: `Bearer ${t.token}`, "content-type": "application/json", "idempotency-key": "rest-key-1" },
          body: JSON.stringify(firmware),
        });
      for (let i = 0; i < 2; i++) expect(await (await post()).text()).toBe("ok");
      await dev.nextCommand("$ota_upgrade");
      await expectNothingMore(dev);
      await dev.end();
    });
  });

  describe("the IotHub REST API (PROTOCOL.md)", () => {
    const rest = (path: string, init: RequestInit = {}) =>
      fetch(`${t.httpUrl}${path}`, { ...init, headers: { authorization: `Bearer ${t.token}`, ...(init.headers ?? {}) } });

    it("POST /ota sends $ota_upgrade from form fields, as the seed server did", async () => {
      const dev = await TestDevice.connect(t.mqttUrl, productName, deviceName, secret);
      const form = new URLSearchParams({ ...firmware, size: String(firmware.size) });
      const res = await rest(`/ota/${productName}/${deviceName}`, { method: "POST", body: form });
      expect(res.status).toBe(200);
      expect(await res.text()).toBe("ok");
      const cmd = await dev.nextCommand("$ota_upgrade");
      expect(cmd.json).toEqual(firmware);
      await dev.end();
    });

    it("POST /ota takes JSON, and answers 400 device not found", async () => {
      const ok = await rest(`/ota/${productName}/${deviceName}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(firmware),
      });
      expect(ok.status).toBe(200);
      const missing = await rest(`/ota/${productName}/ghost`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(firmware),
      });
      expect(missing.status).toBe(400);
      expect(await missing.text()).toBe("device not found");
      const bad = await rest(`/ota/${productName}/${deviceName}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ ...firmware, md5: "nope" }),
      });
      expect(bad.status).toBe(400);
      expect(await bad.text()).toContain("md5");
      const broken = await rest(`/ota/${productName}/${deviceName}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: "{",
      });
      expect(broken.status).toBe(400);
    });

    it("GET /ota answers {} before any report, then the report with ts", async () => {
      const name = uniq("r");
      const { registerDevice } = await gqlOk(t, RegisterDeviceDocument, { input: { productName, deviceName: name } });
      expect(await (await rest(`/ota/${productName}/${name}`)).json()).toEqual({});
      const dev = await TestDevice.connect(t.mqttUrl, productName, name, registerDevice.secret);
      await dev.reportProgress({ version: "1.2", type: "firmware", progress: 55, desc: "download", vendor: "x" });
      const body = await eventually(async () => {
        const b = (await (await rest(`/ota/${productName}/${name}`)).json()) as Record<string, unknown>;
        expect(b.progress).toBe(55);
        return b;
      });
      expect(body).toMatchObject({ version: "1.2", type: "firmware", desc: "download", vendor: "x" });
      expect(Math.abs((body.ts as number) - Date.now() / 1000)).toBeLessThan(60);
    });

    it("POST /devices registers, and GET /devices shows status and tags", async () => {
      const res = await rest("/devices", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ product_name: productName }),
      });
      expect(res.status).toBe(200);
      const created = (await res.json()) as { product_name: string; device_name: string; secret: string };
      expect(created.product_name).toBe(productName);
      expect(created.device_name).toMatch(/^[0-9a-f]{24}$/);
      expect(created.secret.length).toBeGreaterThanOrEqual(16);
      const dev = await TestDevice.connect(t.mqttUrl, productName, created.device_name, created.secret);
      await dev.reportStatus({ firmware_ver: "0.9", uptime: 3 });
      const shown = await eventually(async () => {
        const b = (await (await rest(`/devices/${productName}/${created.device_name}`)).json()) as Record<string, unknown>;
        expect(b.device_status).toEqual({ firmware_ver: "0.9", uptime: 3 });
        return b;
      });
      expect(shown).toMatchObject({ product_name: productName, device_name: created.device_name, tags: [] });
      expect((await rest(`/devices/${productName}/ghost`)).status).toBe(404);
      const bad = await rest("/devices", { method: "POST", body: new URLSearchParams({ product_name: "a b" }) });
      expect(bad.status).toBe(400);
    });
  });

  describe("idempotency keys when the broker does not confirm", () => {
    it("never send a second time after COMMAND_UNCONFIRMED; after BROKER_UNAVAILABLE the key is free", async () => {
      const relay = await holdingRelay(new URL(MOSQUITTO_URL));
      const u = await startApp({ externalBroker: relay.url, env: { PUBLISH_TIMEOUT_MS: "500" } });
      const product = uniq("unconf");
      await gqlOk(u, RegisterDeviceDocument, { input: { productName: product, deviceName: "d" } });
      // With an external broker, the device's command subscription is the broker's business: a watcher stands in.
      const watcher = await mqtt.connectAsync(MOSQUITTO_URL, { reconnectPeriod: 0 });
      onTeardown(() => watcher.endAsync(true));
      const commands = new Inbox<Record<string, unknown>>();
      watcher.on("message", (_topic, payload) => commands.push(JSON.parse(payload.toString()) as Record<string, unknown>));
      await watcher.subscribeAsync(`cmd/${product}/d/#`, { qos: 1 });
      const input = { productName: product, deviceName: "d", firmware, idempotencyKey: uniq("key") };

      relay.hold();
      const first = await gql(u, SendOtaDocument, { input });
      expect(first.errors?.[0]?.extensions?.code).toBe("COMMAND_UNCONFIRMED");
      expect((await commands.next()).version).toBe(firmware.version); // it did reach the broker
      const retry = await gql(u, SendOtaDocument, { input });
      expect(retry.errors?.[0]?.extensions?.code).toBe("COMMAND_UNCONFIRMED");
      expect(retry.errors?.[0]?.message).toContain("nothing was sent again");
      relay.release();
      await gqlOk(u, SendOtaDocument, { input: { ...input, idempotencyKey: null, firmware: { ...firmware, version: "marker" } } });
      expect((await commands.next()).version).toBe("marker");

      relay.cut();
      await eventually(async () => expect((await fetch(`${u.httpUrl}/readyz`)).status).toBe(503));
      const again = { ...input, idempotencyKey: uniq("key"), firmware: { ...firmware, version: "3.0" } };
      expect((await gql(u, SendOtaDocument, { input: again })).errors?.[0]?.extensions?.code).toBe("BROKER_UNAVAILABLE");
      relay.restore();
      await eventually(async () => expect((await fetch(`${u.httpUrl}/readyz`)).status).toBe(200));
      expect((await gqlOk(u, SendOtaDocument, { input: again })).sendOta.requestId).toMatch(/^[0-9a-f]{24}$/);
      expect((await commands.next()).version).toBe("3.0");
    });
  });
});

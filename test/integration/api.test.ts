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
} from "../generated/graphql.js";
import { gql, gqlOk, startApp, type TestApp } from "../helpers/app.js";
import { TestDevice } from "../helpers/device.js";
import { uniq } from "../helpers/services.js";
import { eventually } from "../helpers/wait.js";
import { firmware } from "../helpers/fixtures.js";


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
});

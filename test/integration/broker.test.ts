import mqtt from "mqtt";
import { beforeAll, describe, expect, it } from "vitest";
import {
  DeleteDeviceDocument,
  OtaProgressDocument,
  RegisterDeviceDocument,
  ResumeDeviceDocument,
  SuspendDeviceDocument,
} from "../generated/graphql.js";
import { gqlOk, startApp, type TestApp } from "../helpers/app.js";
import { TestDevice } from "../helpers/device.js";
import { Redis } from "ioredis";
import { REDIS_URL, uniq } from "../helpers/services.js";
import { onTeardown } from "../helpers/teardown.js";
import { eventually, sleep } from "../helpers/wait.js";

/** Connects as raw MQTT and returns the CONNACK failure code, or 0 on success. */
async function connackCode(url: string, opts: mqtt.IClientOptions): Promise<number> {
  try {
    const c = await mqtt.connectAsync(url, { reconnectPeriod: 0, connectTimeout: 5000, ...opts });
    await c.endAsync(true);
    return 0;
  } catch (err) {
    return (err as { code?: number }).code ?? -1;
  }
}

describe("the embedded broker", () => {
  let t: TestApp;
  let productName: string;
  let deviceName: string;
  let secret: string;

  beforeAll(async () => {
    t = await startApp({ tls: true });
    productName = uniq("brk");
    const { registerDevice } = await gqlOk(t, RegisterDeviceDocument, { input: { productName, deviceName: "dev-1" } });
    deviceName = registerDevice.device.deviceName;
    secret = registerDevice.secret;
  });

  it("accepts the device with its secret, with or without a client id suffix, over TLS too", async () => {
    const id = `${productName}/${deviceName}`;
    expect(await connackCode(t.mqttUrl, { clientId: id, username: id, password: secret })).toBe(0);
    expect(await connackCode(t.mqttUrl, { clientId: `${id}/sdk`, username: id, password: secret })).toBe(0);
    const tlsUrl = `mqtts://127.0.0.1:${t.app.address.mqtts}`;
    expect(await connackCode(tlsUrl, { clientId: id, username: id, password: secret, rejectUnauthorized: false })).toBe(0);
  });

  it("refuses a wrong secret, an unknown device, anonymous clients and foreign client ids", async () => {
    const id = `${productName}/${deviceName}`;
    expect(await connackCode(t.mqttUrl, { clientId: id, username: id, password: "wrong" })).toBe(4);
    expect(await connackCode(t.mqttUrl, { clientId: `${productName}/ghost`, username: `${productName}/ghost`, password: secret })).toBe(4);
    expect(await connackCode(t.mqttUrl, { clientId: id })).toBe(4);
    expect(await connackCode(t.mqttUrl, { clientId: "someone-else", username: id, password: secret })).toBe(2);
    expect(await connackCode(t.mqttUrl, { clientId: "$iothub-ota-x", username: "$iothub-ota", password: "guess" })).toBe(4);
  });

  it("refuses foreign and wildcard subscriptions with a failure return code", async () => {
    const dev = await TestDevice.connect(t.mqttUrl, productName, deviceName, secret, { clientId: `${productName}/${deviceName}/subs` });
    // mqtt.js turns a 0x80 return code into an error: read the SUBACK itself.
    const suback = new Promise<{ granted: number[] }>((resolve) =>
      dev.client.on("packetreceive", (p) => p.cmd === "suback" && resolve(p as unknown as { granted: number[] })),
    );
    dev.client.subscribe(["#", `cmd/${productName}/other/+/+/+/#`, "$SYS/#", `tags/${productName}/beta/cmd/+/+/+/#`], { qos: 1 }, () => undefined);
    expect((await suback).granted).toEqual([128, 128, 128, 1]);
    await dev.end();
  });

  it("never keeps a refused subscription in the device's persistent session", async () => {
    const clientId = `${productName}/${deviceName}/spy`;
    const spy = await TestDevice.connect(t.mqttUrl, productName, deviceName, secret, { clientId });
    spy.client.subscribe(["#", `tags/${productName}/beta/cmd/+/+/+/#`], { qos: 1 }, () => undefined);
    await sleep(200);
    await spy.end();
    // While the spy is away, another device reports and a command goes to a third.
    const other = await gqlOk(t, RegisterDeviceDocument, { input: { productName, deviceName: uniq("other") } });
    const dev = await TestDevice.connect(t.mqttUrl, productName, other.registerDevice.device.deviceName, other.registerDevice.secret);
    await dev.reportProgress({ version: "1", type: "firmware", progress: 1 });
    await sleep(200);
    const back = await TestDevice.connect(t.mqttUrl, productName, deviceName, secret, { clientId });
    await sleep(500);
    expect(back.inbox.pending.map((m) => m.topic)).toEqual([]);
    const redis = new Redis(REDIS_URL);
    onTeardown(() => redis.quit());
    expect(await redis.hkeys(`client:${encodeURIComponent(clientId)}`)).toEqual([
      `cmd/${productName}/${deviceName}/+/+/+/#`,
      `tags/${productName}/beta/cmd/+/+/+/#`,
    ]);
  });

  it("refuses a publish to another device's topic: it is not ingested", async () => {
    const other = uniq("other");
    const { registerDevice } = await gqlOk(t, RegisterDeviceDocument, { input: { productName, deviceName: other } });
    const dev = await TestDevice.connect(t.mqttUrl, productName, deviceName, secret, { clientId: `${productName}/${deviceName}/pub` });
    const closed = new Promise<void>((r) => dev.client.once("close", () => r()));
    dev.client.publish(`update_ota_status/${productName}/${other}/65a0000000000000000000aa`, JSON.stringify({ progress: 5 }), { qos: 1 });
    await closed; // MQTT 3.1.1: an unauthorised publish ends the connection
    await sleep(200);
    const { otaProgress } = await gqlOk(t, OtaProgressDocument, { productName, deviceName: registerDevice.device.deviceName });
    expect(otaProgress).toBeNull();
  });

  it("disconnects a suspended device, refuses it until resumed, and forgets a deleted one", async () => {
    const name = uniq("susp");
    const { registerDevice } = await gqlOk(t, RegisterDeviceDocument, { input: { productName, deviceName: name } });
    const dev = await TestDevice.connect(t.mqttUrl, productName, name, registerDevice.secret);
    const closed = new Promise<void>((r) => dev.client.once("close", () => r()));
    await gqlOk(t, SuspendDeviceDocument, { productName, deviceName: name });
    await closed;
    const id = `${productName}/${name}`;
    expect(await connackCode(t.mqttUrl, { clientId: id, username: id, password: registerDevice.secret })).toBe(5);
    await gqlOk(t, ResumeDeviceDocument, { productName, deviceName: name });
    expect(await connackCode(t.mqttUrl, { clientId: id, username: id, password: registerDevice.secret })).toBe(0);

    const again = await TestDevice.connect(t.mqttUrl, productName, name, registerDevice.secret);
    await again.reportProgress({ version: "1", type: "firmware", progress: 3 });
    await eventually(async () => {
      expect((await gqlOk(t, OtaProgressDocument, { productName, deviceName: name })).otaProgress).not.toBeNull();
    });
    const gone = new Promise<void>((r) => again.client.once("close", () => r()));
    expect((await gqlOk(t, DeleteDeviceDocument, { productName, deviceName: name })).deleteDevice).toBe(true);
    await gone;
    expect((await gqlOk(t, OtaProgressDocument, { productName, deviceName: name })).otaProgress).toBeNull();
    expect(await connackCode(t.mqttUrl, { clientId: id, username: id, password: registerDevice.secret })).toBe(4);
    expect((await gqlOk(t, DeleteDeviceDocument, { productName, deviceName: name })).deleteDevice).toBe(false);
    // Its persistent session went with it: a device registered again under the name starts afresh.
    const redis = new Redis(REDIS_URL);
    onTeardown(() => redis.quit());
    expect(await redis.exists(`client:${encodeURIComponent(id)}`)).toBe(0);
  });

  it("counts connected devices in /metrics", async () => {
    const dev = await TestDevice.connect(t.mqttUrl, productName, deviceName, secret, { clientId: `${productName}/${deviceName}/m` });
    const text = await (await fetch(`${t.httpUrl}/metrics`)).text();
    const m = /^iothub_ota_connected_devices (\d+)/m.exec(text);
    expect(Number(m?.[1])).toBeGreaterThanOrEqual(1);
    await dev.end();
  });
});

import { beforeAll, describe, expect, it } from "vitest";
import {
  DeleteDeviceDocument,
  DeviceDocument,
  OtaProgressDocument,
  RegisterDeviceDocument,
  ResumeDeviceDocument,
  SendOtaDocument,
  SetDeviceTagsDocument,
  SuspendDeviceDocument,
} from "../../src/client/generated/graphql.js";
import { firmware } from "../helpers/fixtures.js";
import { metric } from "../helpers/metrics.js";
import { gqlOk, startApp, type TestApp } from "../helpers/app.js";
import { connackCode, TestDevice } from "../helpers/device.js";
import { Redis } from "ioredis";
import { REDIS_URL, uniq } from "../helpers/services.js";
import { onTeardown } from "../helpers/teardown.js";
import { eventually } from "../helpers/wait.js";

const REFUSED = "iothub_ota_refused_total";

/** A hook on timing: code under test signals `enter()` and waits for `opened`; the test waits for `entered`, then `open()`s. */
function gate() {
  let open!: () => void;
  let enter!: () => void;
  const opened = new Promise<void>((r) => (open = r));
  const entered = new Promise<void>((r) => (enter = r));
  return { open, opened, enter, entered };
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
    const granted = await dev.subscribeGranted(["#", `cmd/${productName}/other/+/+/+/#`, "$SYS/#", `tags/${productName}/beta/cmd/+/+/+/#`]);
    expect(granted).toEqual([128, 128, 128, 1]);
    await dev.end();
  });

  it("never keeps a refused subscription in the device's persistent session", async () => {
    const clientId = `${productName}/${deviceName}/spy`;
    const spy = await TestDevice.connect(t.mqttUrl, productName, deviceName, secret, { clientId });
    // aedes stores a SUBSCRIBE before it writes the SUBACK.
    expect(await spy.subscribeGranted(["#", `tags/${productName}/beta/cmd/+/+/+/#`])).toEqual([128, 1]);
    await spy.end();
    // While the spy is away, another device reports (acknowledged once handled) and a command goes to a third.
    const other = await gqlOk(t, RegisterDeviceDocument, { input: { productName, deviceName: uniq("other") } });
    const otherName = other.registerDevice.device.deviceName;
    const dev = await TestDevice.connect(t.mqttUrl, productName, otherName, other.registerDevice.secret);
    await dev.reportProgress({ version: "1", type: "firmware", progress: 1 });
    await gqlOk(t, SendOtaDocument, { input: { productName, deviceName: otherName, firmware } });
    await dev.nextCommand("$ota_upgrade");
    // A command to the spy after all that: whatever its session had queued would come first.
    const back = await TestDevice.connect(t.mqttUrl, productName, deviceName, secret, { clientId });
    await gqlOk(t, SendOtaDocument, { input: { productName, deviceName, firmware } });
    await back.inbox.next((m) => m.topic.startsWith(`cmd/${productName}/${deviceName}/$ota_upgrade/`));
    expect(back.inbox.pending.map((m) => m.topic)).toEqual([]);
    const redis = new Redis(REDIS_URL);
    onTeardown(() => redis.quit());
    expect((await redis.hkeys(`${t.config.redisPrefix}client:${encodeURIComponent(clientId)}`)).sort()).toEqual([
      `cmd/${productName}/${deviceName}/+/+/+/#`,
      `m2m/${productName}/${deviceName}/+/+`,
      `rpc/${productName}/${deviceName}/+/+/+/#`,
      `tags/${productName}/beta/cmd/+/+/+/#`,
    ]);
    await Promise.all([back.end(), dev.end()]);
  });

  it("acknowledges and drops a publish to another device's topic: not ingested, the connection kept", async () => {
    const other = uniq("other");
    const { registerDevice } = await gqlOk(t, RegisterDeviceDocument, { input: { productName, deviceName: other } });
    const dev = await TestDevice.connect(t.mqttUrl, productName, deviceName, secret, { clientId: `${productName}/${deviceName}/pub` });
    let closed = false;
    dev.client.on("close", () => (closed = true));
    const before = await metric(t, REFUSED, { kind: "publish", reason: "not_allowed" });
    await dev.publish(`update_ota_status/${productName}/${other}/65a0000000000000000000aa`, { progress: 5 });
    await dev.publish(`update_status/${productName}/${other}/65a0000000000000000000ab`, { firmware_ver: "6.6" });
    expect(await metric(t, REFUSED, { kind: "publish", reason: "not_allowed" })).toBe(before + 2);
    // The same connection still reports for itself: nothing was closed, nothing reconnects.
    await dev.reportProgress({ version: "1", type: "firmware", progress: 7 });
    expect(closed).toBe(false);
    expect((await gqlOk(t, OtaProgressDocument, { productName, deviceName })).otaProgress?.progress).toBe(7);
    expect((await gqlOk(t, OtaProgressDocument, { productName, deviceName: registerDevice.device.deviceName })).otaProgress).toBeNull();
    expect((await gqlOk(t, DeviceDocument, { productName, deviceName: other })).device?.status).toBeNull();
    await dev.end();
  });

  it("accepts the rest of the IotHub contract without acting on it or disconnecting", async () => {
    const dev = await TestDevice.connect(t.mqttUrl, productName, deviceName, secret, { clientId: `${productName}/${deviceName}/sdk` });
    let closed = false;
    dev.client.on("close", () => (closed = true));
    const ignoredBefore = await metric(t, "iothub_ota_ingest_messages_total", { result: "ignored" });
    const malformedBefore = await metric(t, "iothub_ota_ingest_malformed_total");
    const refusedBefore = await metric(t, REFUSED);
    const id = `${productName}/${deviceName}`;
    await dev.publish(`upload_data/${id}/sample/65a0000000000000000000b1`, { temperature: 20 });
    await dev.publish(`upload_data/${id}/$shadow_reported/65a0000000000000000000b2`, { state: {} });
    await dev.publish(`cmd_resp/${id}/$ota_upgrade/65a0000000000000000000c1/65a0000000000000000000b3`, "ok");
    await dev.publish(`rpc_resp/${id}/reboot/65a0000000000000000000c2/65a0000000000000000000b4`, "done");
    await dev.publish(`get/${id}/$shadow/65a0000000000000000000b5`, {});
    await dev.publish(`get/${id}/$ntp/65a0000000000000000000b6`, { device_time: 1 });
    expect(await metric(t, "iothub_ota_ingest_messages_total", { result: "ignored" })).toBe(ignoredBefore + 6);
    expect(await metric(t, "iothub_ota_ingest_malformed_total")).toBe(malformedBefore);
    expect(await metric(t, REFUSED)).toBe(refusedBefore);
    expect(closed).toBe(false);
    await dev.end();
  });

  it("says sessionPresent only for a session older than the CONNECT", async () => {
    const clientId = `${productName}/${deviceName}/${uniq("s")}`;
    const first = await TestDevice.connect(t.mqttUrl, productName, deviceName, secret, { clientId });
    expect(first.sessionPresent).toBe(false);
    await first.end();
    const second = await TestDevice.connect(t.mqttUrl, productName, deviceName, secret, { clientId });
    expect(second.sessionPresent).toBe(true);
    await second.end();
    const clean = await TestDevice.connect(t.mqttUrl, productName, deviceName, secret, { clientId, clean: true });
    expect(clean.sessionPresent).toBe(false);
    await clean.end();
  });

  it("delivers m2m messages between devices of a product, online and to a persistent session offline", async () => {
    const a = await gqlOk(t, RegisterDeviceDocument, { input: { productName, deviceName: uniq("m2m-a") } });
    const b = await gqlOk(t, RegisterDeviceDocument, { input: { productName, deviceName: uniq("m2m-b") } });
    const nameA = a.registerDevice.device.deviceName;
    const nameB = b.registerDevice.device.deviceName;
    const devA = await TestDevice.connect(t.mqttUrl, productName, nameA, a.registerDevice.secret);
    const devB = await TestDevice.connect(t.mqttUrl, productName, nameB, b.registerDevice.secret);
    await devA.publish(`m2m/${productName}/${nameB}/${nameA}/65a0000000000000000000d1`, "hello");
    const got = await devB.inbox.next((m) => m.topic.startsWith("m2m/"));
    expect(got.topic).toBe(`m2m/${productName}/${nameB}/${nameA}/65a0000000000000000000d1`);
    expect(got.payload.toString()).toBe("hello");
    // Clean sessions are auto-subscribed too.
    const cleanA = await TestDevice.connect(t.mqttUrl, productName, nameA, a.registerDevice.secret, { clientId: `${productName}/${nameA}/c`, clean: true });
    await devB.publish(`m2m/${productName}/${nameA}/${nameB}/65a0000000000000000000d2`, "to a");
    expect((await cleanA.inbox.next((m) => m.topic.startsWith("m2m/"))).payload.toString()).toBe("to a");
    await devB.end();
    await devA.publish(`m2m/${productName}/${nameB}/${nameA}/65a0000000000000000000d3`, "later");
    const back = await TestDevice.connect(t.mqttUrl, productName, nameB, b.registerDevice.secret);
    expect((await back.inbox.next((m) => m.topic.startsWith("m2m/"))).payload.toString()).toBe("later");
  });

  it("clears the retain flag of device publishes and keeps nothing retained in Redis", async () => {
    const tag = uniq("tag");
    const dev = await TestDevice.connect(t.mqttUrl, productName, deviceName, secret, { clientId: `${productName}/${deviceName}/ret` });
    const before = await metric(t, REFUSED, { kind: "retain" });
    const id = `${productName}/${deviceName}`;
    await dev.client.publishAsync(`upload_data/${id}/sample/65a0000000000000000000e1`, Buffer.alloc(100_000, 1), { qos: 1, retain: true });
    await dev.client.publishAsync(`m2m/${productName}/${deviceName}/${deviceName}/65a0000000000000000000e2`, "m", { qos: 1, retain: true });
    await dev.client.publishAsync(`tags/${productName}/${tag}/cmd/$ota_upgrade/plain/65a0000000000000000000e3`, JSON.stringify(firmware), { qos: 1, retain: true });
    expect(await metric(t, REFUSED, { kind: "retain" })).toBe(before + 3);
    const redis = new Redis(REDIS_URL);
    onTeardown(() => redis.quit());
    expect(await redis.exists(`${t.config.redisPrefix}retained`, "retained")).toBe(0);
    // A device joining the tag later receives nothing retained.
    const joiner = await TestDevice.connect(t.mqttUrl, productName, deviceName, secret, { clientId: `${productName}/${deviceName}/join` });
    await joiner.client.subscribeAsync(`tags/${productName}/${tag}/cmd/+/+/+/#`, { qos: 1 });
    await gqlOk(t, SendOtaDocument, { input: { productName, tag, firmware } });
    const first = await joiner.inbox.next((m) => m.topic.startsWith("tags/"));
    expect(first.json).toMatchObject({ url: firmware.url });
    expect(first.topic).not.toContain("65a0000000000000000000e3");
    await Promise.all([dev.end(), joiner.end()]);
  });

  it("drops wills outside the device's rules at CONNECT: an abrupt end publishes none of them", async () => {
    const tag = uniq("tag");
    const victim = await gqlOk(t, RegisterDeviceDocument, { input: { productName, deviceName: uniq("victim"), tags: [tag] } });
    const victimName = victim.registerDevice.device.deviceName;
    const watcher = await TestDevice.connect(t.mqttUrl, productName, victimName, victim.registerDevice.secret);
    await watcher.client.subscribeAsync(`tags/${productName}/${tag}/cmd/+/+/+/#`, { qos: 1 });
    const wills = [
      { topic: `tags/${productName}/${tag}/cmd/$ota_upgrade/plain/65a0000000000000000000f1`, retain: true },
      { topic: `cmd/${productName}/${victimName}/$ota_upgrade/plain/65a0000000000000000000f2`, retain: false },
      { topic: `update_ota_status/${productName}/${victimName}/65a0000000000000000000f3`, retain: false },
    ];
    const before = await metric(t, REFUSED, { kind: "will", reason: "not_allowed" });
    const connected = await metric(t, "iothub_ota_connected_devices");
    for (const [i, w] of wills.entries()) {
      const evil = await TestDevice.connect(t.mqttUrl, productName, deviceName, secret, {
        clientId: `${productName}/${deviceName}/will${i}`,
        will: { topic: w.topic, payload: Buffer.from(JSON.stringify({ ...firmware, url: "https://evil.example/x.bin", progress: 99 })), qos: 1, retain: w.retain },
      });
      const gone = new Promise<void>((r) => evil.client.once("close", () => r()));
      evil.client.stream.destroy(); // no DISCONNECT: the broker would publish a will it kept
      await gone;
    }
    expect(await metric(t, REFUSED, { kind: "will", reason: "not_allowed" })).toBe(before + 3);
    // A real command after them arrives first: nothing came before it on either subscription.
    await eventually(async () => expect(await metric(t, "iothub_ota_connected_devices")).toBe(connected));
    await gqlOk(t, SendOtaDocument, { input: { productName, tag, firmware } });
    await gqlOk(t, SendOtaDocument, { input: { productName, deviceName: victimName, firmware } });
    const tagged = await watcher.inbox.next((m) => m.topic.startsWith("tags/"));
    const direct = await watcher.inbox.next((m) => m.topic.startsWith("cmd/"));
    for (const m of [tagged, direct]) expect(m.json.url).toBe(firmware.url);
    expect((await gqlOk(t, OtaProgressDocument, { productName, deviceName: victimName })).otaProgress).toBeNull();
  });

  it("acknowledges a report only once it is stored, and not at all when it cannot be: the device sends it again", async () => {
    const name = uniq("ack");
    const { registerDevice } = await gqlOk(t, RegisterDeviceDocument, { input: { productName, deviceName: name } });
    const dev = await TestDevice.connect(t.mqttUrl, productName, name, registerDevice.secret);
    const devices = t.app.devices;
    const applyStatus = devices.applyStatus.bind(devices);
    onTeardown(() => (devices.applyStatus = applyStatus));
    const hold = gate();
    devices.applyStatus = async (...args) => {
      hold.enter();
      await hold.opened;
      return applyStatus(...args);
    };
    let acked = false;
    const puback = dev.reportStatus({ firmware_ver: "2.0" }).then(() => (acked = true));
    await hold.entered;
    // Before, aedes wrote the PUBACK before ingest even started. Such a PUBACK would be on its way
    // already: a CONNACK the broker writes after it, on another connection, arrives after it.
    const id = `${productName}/${name}`;
    expect(await connackCode(t.mqttUrl, { clientId: `${id}/probe`, username: id, password: registerDevice.secret })).toBe(0);
    expect(acked).toBe(false);
    hold.open();
    await puback;
    expect((await gqlOk(t, DeviceDocument, { productName, deviceName: name })).device?.firmwareVersion).toBe("2.0");

    // A report whose effect cannot be stored is left unacknowledged: the connection closes.
    devices.applyStatus = async () => {
      throw new Error("database down");
    };
    const closed = new Promise<void>((r) => dev.client.once("close", () => r()));
    let unacked = true;
    void dev.reportStatus({ firmware_ver: "3.0" }).then(() => (unacked = false), () => undefined);
    await closed;
    expect(unacked).toBe(true);
    devices.applyStatus = applyStatus;
    // mqtt.js sends what its store holds unacknowledged again on reconnect (MQTT 3.1.1 §4.4).
    dev.client.reconnect({ incomingStore: dev.client.incomingStore, outgoingStore: dev.client.outgoingStore });
    await eventually(async () => {
      expect((await gqlOk(t, DeviceDocument, { productName, deviceName: name })).device?.firmwareVersion).toBe("3.0");
    });
  });

  it("closes a device suspended while its login is being checked, and takes nothing from it", async () => {
    const name = uniq("race");
    const { registerDevice } = await gqlOk(t, RegisterDeviceDocument, { input: { productName, deviceName: name } });
    const devices = t.app.devices;
    const authenticate = devices.authenticate.bind(devices);
    onTeardown(() => (devices.authenticate = authenticate));
    const hold = gate();
    devices.authenticate = async (...args) => {
      const result = await authenticate(...args); // read before the suspension: "ok"
      hold.enter();
      await hold.opened;
      return result;
    };
    const id = `${productName}/${name}`;
    const connecting = connackCode(t.mqttUrl, { clientId: id, username: id, password: registerDevice.secret });
    await hold.entered;
    await gqlOk(t, SuspendDeviceDocument, { productName, deviceName: name });
    hold.open();
    expect(await connecting).not.toBe(0);
    devices.authenticate = authenticate;
    expect(await connackCode(t.mqttUrl, { clientId: id, username: id, password: registerDevice.secret })).toBe(5);
  });

  it("takes no will of a suspended device: its connection is cut off before the will is published", async () => {
    const name = uniq("susw");
    const { registerDevice } = await gqlOk(t, RegisterDeviceDocument, { input: { productName, deviceName: name } });
    const dev = await TestDevice.connect(t.mqttUrl, productName, name, registerDevice.secret, {
      will: { topic: `update_status/${productName}/${name}/65a0000000000000000000a9`, payload: Buffer.from('{"firmware_ver":"9.9"}'), qos: 1, retain: false },
    });
    const before = await metric(t, REFUSED, { kind: "publish", reason: "suspended" });
    const closed = new Promise<void>((r) => dev.client.once("close", () => r()));
    await gqlOk(t, SuspendDeviceDocument, { productName, deviceName: name });
    await closed;
    await eventually(async () => expect(await metric(t, REFUSED, { kind: "publish", reason: "suspended" })).toBe(before + 1));
    expect((await gqlOk(t, DeviceDocument, { productName, deviceName: name })).device?.firmwareVersion).toBeNull();
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

    const sdk = await TestDevice.connect(t.mqttUrl, productName, name, registerDevice.secret, { clientId: `${productName}/${name}/sdk` });
    await sdk.end(); // a persistent session left offline under a suffixed client id
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
    const prefix = t.config.redisPrefix;
    expect(await redis.exists(`${prefix}client:${encodeURIComponent(id)}`, `${prefix}client:${encodeURIComponent(`${id}/sdk`)}`)).toBe(0);
    expect(await redis.sismember(`${prefix}clients`, `${id}/sdk`)).toBe(0);
  });

  it("counts connected devices in /metrics", async () => {
    const dev = await TestDevice.connect(t.mqttUrl, productName, deviceName, secret, { clientId: `${productName}/${deviceName}/m` });
    const text = await (await fetch(`${t.httpUrl}/metrics`)).text();
    const m = /^iothub_ota_connected_devices (\d+)/m.exec(text);
    expect(Number(m?.[1])).toBeGreaterThanOrEqual(1);
    await dev.end();
  });
});

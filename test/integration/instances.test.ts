import { randomBytes } from "node:crypto";
import { ObjectId } from "bson";
import { describe, expect, it } from "vitest";
import { OtaProgressChangedDocument, RegisterDeviceDocument, SendOtaDocument } from "../generated/graphql.js";
import { gqlOk, startApp, subscribe, wsClient } from "../helpers/app.js";
import { TestDevice } from "../helpers/device.js";
import { metric } from "../helpers/metrics.js";
import { DATABASE_URL, DEFAULT_DATABASE, freshDatabase, MOSQUITTO_URL, uniq } from "../helpers/services.js";
import { eventually } from "../helpers/wait.js";
import { firmware } from "../helpers/fixtures.js";


describe.skipIf(!DATABASE_URL)("two instances sharing Redis, PostgreSQL and one external broker", () => {
  it("split the ingest, process each report once, and feed every subscriber", async () => {
    const database = await freshDatabase("postgres");
    const shareGroup = uniq("grp");
    const a = await startApp({ database, externalBroker: MOSQUITTO_URL, shareGroup });
    const b = await startApp({ database, externalBroker: MOSQUITTO_URL, shareGroup });
    const productName = uniq("multi");
    const { registerDevice } = await gqlOk(a, RegisterDeviceDocument, { input: { productName } });
    const deviceName = registerDevice.device.deviceName;
    const onA = await subscribe(wsClient(a), OtaProgressChangedDocument, { productName });

    const dev = await TestDevice.connect(MOSQUITTO_URL, productName, deviceName, "");
    const ids = Array.from({ length: 40 }, () => new ObjectId().toHexString());
    for (const [i, id] of ids.entries()) await dev.reportProgress({ version: "9.9", type: "firmware", progress: i }, id);
    for (const id of ids.slice(0, 10)) await dev.reportProgress({ version: "9.9", type: "firmware", progress: 99 }, id);

    const received = new Set<number>();
    for (let i = 0; i < 40; i++) received.add((await onA.results.next()).data!.otaProgressChanged.progress);
    expect([...received].sort((x, y) => x - y)).toEqual(ids.map((_, i) => i));

    const count = async (result: string) =>
      (await metric(a, "iothub_ota_ingest_messages_total", { kind: "ota_status", result })) +
      (await metric(b, "iothub_ota_ingest_messages_total", { kind: "ota_status", result }));
    await eventually(async () => expect(await count("duplicate")).toBe(10));
    expect(await count("accepted")).toBe(40);
    expect(await metric(a, "iothub_ota_ingest_messages_total", { kind: "ota_status", result: "accepted" })).toBeGreaterThan(0);
    expect(await metric(b, "iothub_ota_ingest_messages_total", { kind: "ota_status", result: "accepted" })).toBeGreaterThan(0);
    expect(onA.results.pending).toEqual([]);
  });
});

describe("a server restart", () => {
  it("delivers a command sent while the device was offline once it reconnects", async () => {
    const database =
      DEFAULT_DATABASE === "postgres"
        ? await freshDatabase("postgres")
        : { kind: "pglite" as const, dataDir: `/tmp/iothub-ota-restart-${randomBytes(4).toString("hex")}` };
    const first = await startApp({ database });
    const productName = uniq("restart");
    const { registerDevice } = await gqlOk(first, RegisterDeviceDocument, { input: { productName } });
    const { deviceName } = registerDevice.device;

    // Connecting once creates the persistent session with its auto-subscription.
    const online = await TestDevice.connect(first.mqttUrl, productName, deviceName, registerDevice.secret);
    await online.end();
    const { sendOta } = await gqlOk(first, SendOtaDocument, { input: { productName, deviceName, firmware } });
    await first.stop();

    const second = await startApp({ database });
    const back = await TestDevice.connect(second.mqttUrl, productName, deviceName, registerDevice.secret);
    const cmd = await back.nextCommand("$ota_upgrade");
    expect(cmd.topic).toBe(sendOta.topic);
    expect(cmd.json).toEqual(firmware);
  });
});

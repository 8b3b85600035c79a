import { ObjectId } from "bson";
import { describe, expect, it } from "vitest";
import { OtaProgressChangedDocument, OtaProgressDocument, RegisterDeviceDocument, SendOtaDocument } from "../../src/client/generated/graphql.js";
import { gqlOk, startApp, subscribe, wsClient } from "../helpers/app.js";
import { TestDevice } from "../helpers/device.js";
import { metric } from "../helpers/metrics.js";
import { DATABASE_URL, DEFAULT_DATABASE, freshDatabase, MOSQUITTO_URL, uniq } from "../helpers/services.js";
import { tempDir } from "../helpers/teardown.js";
import { eventually } from "../helpers/wait.js";
import { firmware } from "../helpers/fixtures.js";


describe.skipIf(!DATABASE_URL)("two instances sharing Redis, PostgreSQL and one external broker", () => {
  it("split the ingest, process each report once, and feed every subscriber", async () => {
    const database = await freshDatabase("postgres");
    const shareGroup = uniq("grp");
    const redisPrefix = `${uniq("t")}:`;
    const a = await startApp({ database, externalBroker: MOSQUITTO_URL, shareGroup, redisPrefix });
    const b = await startApp({ database, externalBroker: MOSQUITTO_URL, shareGroup, redisPrefix });
    const productName = uniq("multi");
    const { registerDevice } = await gqlOk(a, RegisterDeviceDocument, { input: { productName } });
    const deviceName = registerDevice.device.deviceName;
    const onA = await subscribe(wsClient(a), OtaProgressChangedDocument, { productName });

    const dev = await TestDevice.connect(MOSQUITTO_URL, productName, deviceName, "");
    // The device's clock runs backwards (ids made a minute earlier each time): order is the server's, not the ids'.
    const now = Math.floor(Date.now() / 1000);
    const ids = Array.from({ length: 40 }, (_, i) => new ObjectId(ObjectId.generate(now - 60 * i)).toHexString());
    const count = async (result: string) =>
      (await metric(a, "iothub_ota_ingest_messages_total", { kind: "ota_status", result })) +
      (await metric(b, "iothub_ota_ingest_messages_total", { kind: "ota_status", result }));
    for (const [i, id] of ids.entries()) await dev.reportProgress({ version: "9.9", type: "firmware", progress: i }, id);
    // Each report is processed once, by one instance; one that arrives after a higher report of the same
    // upgrade was stored (the other instance overtook it) is stale.
    await eventually(async () => expect((await count("accepted")) + (await count("stale"))).toBe(40));
    // Sent again (a device that missed its PUBACKs), to either instance: each is known, whoever took the first.
    // Mosquitto acknowledges before either instance has it, so these wait for the first ones to be taken: sent at
    // once, one could overtake its first copy on the other instance and be taken for it.
    for (const id of ids.slice(0, 10)) await dev.reportProgress({ version: "9.9", type: "firmware", progress: 99 }, id);
    await eventually(async () => expect(await count("duplicate")).toBe(10));
    expect(await metric(a, "iothub_ota_ingest_messages_total", { kind: "ota_status" })).toBeGreaterThan(0);
    expect(await metric(b, "iothub_ota_ingest_messages_total", { kind: "ota_status" })).toBeGreaterThan(0);

    // The subscriber on A saw every applied report, whichever instance took it, and the newest is stored.
    const accepted = await count("accepted");
    const received: number[] = [];
    for (let i = 0; i < accepted; i++) received.push((await onA.results.next()).data!.otaProgressChanged.progress);
    expect(received).toContain(39);
    expect(new Set(received).size).toBe(accepted);
    expect((await gqlOk(b, OtaProgressDocument, { productName, deviceName })).otaProgress?.progress).toBe(39);
    expect(onA.results.pending).toEqual([]);
  });
});

describe("a server restart", () => {
  it("delivers a command sent while the device was offline once it reconnects", async () => {
    const database =
      DEFAULT_DATABASE === "postgres"
        ? await freshDatabase("postgres")
        : { kind: "pglite" as const, dataDir: tempDir("restart") };
    const redisPrefix = `${uniq("t")}:`;
    const first = await startApp({ database, redisPrefix });
    const productName = uniq("restart");
    const { registerDevice } = await gqlOk(first, RegisterDeviceDocument, { input: { productName } });
    const { deviceName } = registerDevice.device;

    // Connecting once creates the persistent session with its auto-subscription.
    const online = await TestDevice.connect(first.mqttUrl, productName, deviceName, registerDevice.secret);
    await online.end();
    const { sendOta } = await gqlOk(first, SendOtaDocument, { input: { productName, deviceName, firmware } });
    await first.stop();

    const second = await startApp({ database, redisPrefix });
    const back = await TestDevice.connect(second.mqttUrl, productName, deviceName, registerDevice.secret);
    const cmd = await back.nextCommand("$ota_upgrade");
    expect(cmd.topic).toBe(sendOta.topic);
    expect(cmd.json).toEqual(firmware);
  });
});

import { beforeAll, describe, expect, it } from "vitest";
import { OtaProgressesDocument, SendOtaDocument } from "../../src/client/generated/graphql.js";
import { gqlOk, startApp, type TestApp } from "../helpers/app.js";
import { metric } from "../helpers/metrics.js";
import { uniq } from "../helpers/services.js";
import { onTeardown } from "../helpers/teardown.js";
import { eventually, sleep } from "../helpers/wait.js";
import { NO_FAULTS, seededRandom, type FaultRates } from "../../src/sim/faults.js";
import { FirmwareServer } from "../../src/sim/firmware.server.js";
import { Fleet, registerDevices } from "../../src/sim/sim.fleet.js";

describe("the fleet simulator against the server", () => {
  let t: TestApp;
  let fw: FirmwareServer;

  beforeAll(async () => {
    t = await startApp();
    fw = new FirmwareServer(64 * 1024);
    await fw.start();
    onTeardown(() => fw.stop());
  });

  async function fleetOf(count: number, faults: Partial<FaultRates> = {}, tags = ["beta"]) {
    const productName = uniq("sim");
    const credentials = await registerDevices(`${t.httpUrl}/graphql`, t.token, productName, count, tags);
    const fleet = new Fleet(credentials, {
      mqttUrl: t.mqttUrl,
      initialVersion: "1.0",
      connectConcurrency: 10,
      behaviour: {
        step: 25,
        paceMs: 0,
        installMs: 50,
        offlineMs: 100,
        faults: { ...NO_FAULTS, ...faults },
        random: seededRandom(7),
        rejectUnauthorized: true,
      },
    });
    onTeardown(() => fleet.stop());
    await fleet.connectAll();
    // Each device asked for its tags on connect and subscribed to them.
    await eventually(() => expect(fleet.devices.every((d) => d.tagsVersion === 1 && d.tags.join() === tags.join())).toBe(true));
    return { productName, fleet };
  }

  const upgrade = (productName: string, ttlSeconds?: number) =>
    gqlOk(t, SendOtaDocument, { input: { productName, tag: "beta", firmware: { ...fw.file, version: "2.0", type: "firmware" }, ttlSeconds } });

  async function serverStates(productName: string, fleet: Fleet) {
    const names = fleet.devices.map((d) => d.credentials.deviceName);
    const { otaProgresses } = await gqlOk(t, OtaProgressesDocument, { productName, deviceNames: names });
    return otaProgresses.map((p) => `${p?.state}${p?.failureReason ? `/${p.failureReason}` : ""}`);
  }

  it("downloads, checks, installs, reboots and reports the new version", async () => {
    const { productName, fleet } = await fleetOf(5);
    await upgrade(productName);
    await eventually(() => expect(fleet.summary().states.succeeded).toBe(5), 20_000);
    expect(fleet.devices.every((d) => d.firmwareVersion === "2.0")).toBe(true);
    await eventually(async () => expect(await serverStates(productName, fleet)).toEqual(Array(5).fill("SUCCEEDED")));
    const s = fleet.summary();
    expect(s.reconnects).toBe(5);
    expect(s.reportsSent).toBe(5 * 6); // 0, 25, 50, 75, 100 and firmware_ver
    expect(s.errors).toBe(0);
  });

  it("injects md5 failures, install failures and silent rollbacks", async () => {
    const md5 = await fleetOf(2, { md5Mismatch: 100 });
    const install = await fleetOf(2, { installError: 100 });
    const rollback = await fleetOf(2, { rollback: 100 });
    await Promise.all([upgrade(md5.productName), upgrade(install.productName), upgrade(rollback.productName)]);
    await eventually(async () => {
      expect(await serverStates(md5.productName, md5.fleet)).toEqual(["FAILED/MD5_MISMATCH", "FAILED/MD5_MISMATCH"]);
      expect(await serverStates(install.productName, install.fleet)).toEqual(["FAILED/INSTALL_FAILED", "FAILED/INSTALL_FAILED"]);
      expect(rollback.fleet.summary().states.rolled_back).toBe(2);
    }, 20_000);
    // A rolled-back device never confirms the version: the server does not call it a success.
    expect(await serverStates(rollback.productName, rollback.fleet)).toEqual(["DOWNLOADED", "DOWNLOADED"]);
    expect(rollback.fleet.devices.every((d) => d.firmwareVersion === "1.0")).toBe(true);
  });

  it("survives going offline mid-download and duplicate reports", async () => {
    const { productName, fleet } = await fleetOf(3, { offline: 100, duplicate: 100 });
    const duplicatesBefore = await metric(t, "iothub_ota_ingest_messages_total", { result: "duplicate" });
    await upgrade(productName);
    await eventually(async () => expect(await serverStates(productName, fleet)).toEqual(Array(3).fill("SUCCEEDED")), 20_000);
    const s = fleet.summary();
    expect(s.reconnects).toBe(6); // the outage and the reboot
    expect(s.duplicatesSent).toBeGreaterThan(0);
    await eventually(async () =>
      expect(await metric(t, "iothub_ota_ingest_messages_total", { result: "duplicate" })).toBe(duplicatesBefore + s.duplicatesSent),
    );
  });

  it("ignores a command that expired while it was offline", async () => {
    const { productName, fleet } = await fleetOf(1);
    const [device] = fleet.devices;
    await device!.stop();
    await upgrade(productName, 1);
    await sleep(2100);
    await device!.connect();
    await eventually(() => expect(fleet.summary().expiredIgnored).toBe(1));
    expect(device!.state).toBe("idle");
  });
});

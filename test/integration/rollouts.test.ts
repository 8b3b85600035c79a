import { beforeAll, describe, expect, it } from "vitest";
import {
  CancelRolloutDocument,
  CreateApiTokenDocument,
  CreateRolloutDocument,
  DevicesWithExecutionsDocument,
  PauseRolloutDocument,
  PreviewRolloutDocument,
  RegisterDeviceDocument,
  ResumeRolloutDocument,
  RetryRolloutDocument,
  RolloutChangedDocument,
  RolloutDocument,
  RolloutProgressDocument,
  RolloutsDocument,
  SetDeviceTagsDocument,
} from "../../src/client/generated/graphql.js";
import { gql, gqlOk, startApp, subscribe, wsClient, type TestApp } from "../helpers/app.js";
import { TestDevice } from "../helpers/device.js";
import { createRollout, executionsOf, firmwareFile, rolloutIn, rolloutInput, rolloutOf, simFleet } from "../helpers/rollout.js";
import { metric } from "../helpers/metrics.js";
import { uniq } from "../helpers/services.js";
import { tempDir } from "../helpers/teardown.js";
import { eventually } from "../helpers/wait.js";
import type { FirmwareServer } from "../../src/sim/firmware.server.js";

/** The most attempts running at one moment: what maxInProgress bounds. */
function mostAtOnce(attempts: { notifiedAt: string; endedAt?: string | null }[]): number {
  const edges = attempts.flatMap((a) => [
    { at: Date.parse(a.notifiedAt), d: 1 },
    { at: a.endedAt ? Date.parse(a.endedAt) : Infinity, d: -1 },
  ]);
  edges.sort((x, y) => x.at - y.at || x.d - y.d);
  let now = 0;
  let most = 0;
  for (const e of edges) most = Math.max(most, (now += e.d));
  return most;
}



describe("rollouts driven by the server against simulated IotHub devices", () => {
  let t: TestApp;
  let fw: FirmwareServer;

  beforeAll(async () => {
    t = await startApp({ env: { ROLLOUT_TICK_MS: "100" } });
    fw = await firmwareFile();
  });

  it("runs a 200-device rollout in waves within its pacing to COMPLETED, every execution SUCCEEDED, as previewed and as subscribed", async () => {
    const { productName, fleet } = await simFleet(t, { count: 200 });
    const input = rolloutInput(productName, fw, {
      name: "canary then all",
      policy: {
        maxInProgress: 40,
        waves: [{ percent: 5 }, { percent: 50, soakSeconds: 1 }, { percent: 100 }],
      },
    });
    const { previewRollout: preview } = await gqlOk(t, PreviewRolloutDocument, { input });
    expect(preview).toMatchObject({ targeted: 200, eligible: 200, skipped: 0 });
    expect(preview.waves.map((w) => w.size)).toEqual([10, 90, 100]);

    const rollout = await createRollout(t, input);
    const live = await subscribe(wsClient(t), RolloutChangedDocument, { id: rollout.id });
    const done = await rolloutIn(t, rollout.id, ["COMPLETED"], 90_000);
    expect(done.counts).toMatchObject({ total: 200, succeeded: 200, failed: 0, inProgress: 0, queued: 0 });
    // Each wave's exact progress, as previewed.
    expect(done.counts.byWave.map((w) => [w.wave, w.devices, w.succeeded])).toEqual(preview.waves.map((w, i) => [i, w.size, w.size]));
    expect(fleet.summary().states.succeeded).toBe(200);
    const executions = await executionsOf(t, rollout.id);
    expect(mostAtOnce(executions.flatMap((e) => e.attempts))).toBeLessThanOrEqual(40);
    expect(executions.map((e) => e.wave).filter((w) => w === 0)).toHaveLength(preview.waves[0]!.size);
    expect(executions.every((e) => e.state === "SUCCEEDED" && e.attempts.length === 1 && e.fromVersion === "1.0")).toBe(true);
    // The subscription ends on the true final counts, and completes; coalesced, whatever the report rate.
    await eventually(() => {
      const last = live.results.pending.at(-1)?.data?.rolloutChanged;
      expect(last?.state).toBe("COMPLETED");
      expect(last?.counts).toEqual(done.counts);
    });
    const seconds = (Date.parse(done.finishedAt!) - Date.parse(done.createdAt)) / 1000;
    expect(live.results.pending.length).toBeLessThanOrEqual(Math.ceil(seconds * 4) + 3);
    expect(fleet.summary().reportsSent).toBeGreaterThan(live.results.pending.length * 2);
  }, 120_000);

  it("aborts when more than the rule's share of md5 failures is reached, with no device of the next wave notified", async () => {
    const { productName, behaviour } = await simFleet(t, { count: 50, faults: { md5Mismatch: 20 }, seed: 3 });
    const rollout = await createRollout(
      t,
      rolloutInput(productName, fw, {
        policy: {
          maxInProgress: 5,
          waves: [{ count: 25, successRatio: 0.9 }, { percent: 100 }],
          abortRules: [{ failureClass: "MD5_MISMATCH", thresholdPercent: 10, minFinished: 10 }],
        },
      }),
    );
    const aborted = await rolloutIn(t, rollout.id, ["ABORTED"]);
    expect(aborted.abortedBy).toMatchObject({ kind: "ABORT_RULE", rule: { failureClass: "MD5_MISMATCH", thresholdPercent: 10, minFinished: 10 } });
    expect(aborted.abortedBy!.failed! * 100).toBeGreaterThan(10 * aborted.abortedBy!.finished!);
    expect(aborted.abortedBy!.message).toContain("MD5_MISMATCH");
    const executions = await executionsOf(t, rollout.id);
    const later = executions.filter((e) => e.wave === 1);
    expect(later).toHaveLength(25);
    expect(later.every((e) => e.attempts.length === 0 && e.state === "CANCELED")).toBe(true);
    expect(executions.filter((e) => e.failureClass === "MD5_MISMATCH").length).toBeGreaterThan(0);

    // The image fixed, a retry takes up the failed devices and the waves the abort never opened.
    behaviour.faults.md5Mismatch = 0;
    await gqlOk(t, RetryRolloutDocument, { id: rollout.id, failureClasses: ["MD5_MISMATCH"] });
    const done = await rolloutIn(t, rollout.id, ["COMPLETED"]);
    expect(done.counts).toMatchObject({ total: 50, succeeded: 50 });
    expect(done.abortedBy).toBeNull();
  }, 120_000);

  it("never has one device upgrading in two rollouts at once, when two are started together on the same devices", async () => {
    const { productName, fleet } = await simFleet(t, { count: 30, installMs: 100 });
    const [first, second] = await Promise.all([
      createRollout(t, rolloutInput(productName, fw, { version: "2.0" })),
      createRollout(t, rolloutInput(productName, fw, { version: "3.0" })),
    ]);
    const ends = await Promise.all([rolloutIn(t, first!.id, ["COMPLETED"]), rolloutIn(t, second!.id, ["COMPLETED"])]);
    for (const end of ends) expect(end.counts.timedOut + end.counts.failed).toBe(0);
    const attempts = new Map<string, { notifiedAt: string; endedAt?: string | null }[]>();
    for (const e of [...(await executionsOf(t, first!.id)), ...(await executionsOf(t, second!.id))]) {
      attempts.set(e.deviceName, [...(attempts.get(e.deviceName) ?? []), ...e.attempts]);
    }
    for (const [deviceName, list] of attempts) expect(mostAtOnce(list), deviceName).toBeLessThanOrEqual(1);
    // Whichever came second for a device either upgraded it further or found it newer: nobody is left on 1.0.
    expect(fleet.devices.every((d) => d.firmwareVersion !== "1.0")).toBe(true);
  }, 120_000);

  it("cures download failures with retries, each attempt recorded with its requestId", async () => {
    const { productName } = await simFleet(t, { count: 20, faults: { downloadError: 40 }, seed: 5 });
    const rollout = await createRollout(
      t,
      rolloutInput(productName, fw, { policy: { retries: [{ failureClass: "DOWNLOAD_FAILED", maxAttempts: 8, backoffSeconds: 1, maxBackoffSeconds: 2 }] } }),
    );
    const done = await rolloutIn(t, rollout.id, ["COMPLETED"]);
    expect(done.counts).toMatchObject({ total: 20, succeeded: 20, failed: 0 });
    const executions = await executionsOf(t, rollout.id);
    const retried = executions.filter((e) => e.attempts.length > 1);
    expect(retried.length).toBeGreaterThan(0);
    for (const e of retried) {
      expect(e.attempts.slice(0, -1).every((a) => a.outcome === "DOWNLOAD_FAILED")).toBe(true);
      expect(e.attempts.at(-1)?.outcome).toBe("SUCCEEDED");
      expect(new Set(e.attempts.map((a) => a.requestId)).size).toBe(e.attempts.length);
    }
  }, 90_000);

  it("records silent rollbacks as ROLLED_BACK and a failure class left to retryRollout", async () => {
    const { productName, fleet, behaviour } = await simFleet(t, { count: 6, faults: { rollback: 100 } });
    const rollout = await createRollout(t, rolloutInput(productName, fw));
    const done = await rolloutIn(t, rollout.id, ["COMPLETED"]);
    expect(done.counts).toMatchObject({ total: 6, failed: 6, byFailureClass: [{ failureClass: "ROLLED_BACK", count: 6 }] });
    expect(fleet.devices.every((d) => d.firmwareVersion === "1.0")).toBe(true);
    // The operator fixes the image and retries: the same devices run a second attempt.
    behaviour.faults.rollback = 0;
    const { retryRollout } = await gqlOk(t, RetryRolloutDocument, { id: rollout.id, failureClasses: ["ROLLED_BACK"] });
    expect(retryRollout.state).toBe("RUNNING");
    const again = await rolloutIn(t, rollout.id, ["COMPLETED"]);
    expect(again.counts).toMatchObject({ succeeded: 6, failed: 0 });
    expect((await executionsOf(t, rollout.id)).every((e) => e.attempts.length === 2)).toBe(true);
  }, 90_000);

  it("notifies devices that are offline, and they finish when they come back", async () => {
    const { productName, fleet } = await simFleet(t, { count: 6 });
    const away = fleet.devices.slice(0, 3);
    await Promise.all(away.map((d) => d.stop()));
    const rollout = await createRollout(t, rolloutInput(productName, fw));
    await eventually(async () => expect((await rolloutOf(t, rollout.id)).counts).toMatchObject({ succeeded: 3, notified: 3 }), 30_000);
    for (const d of away) await d.connect();
    const done = await rolloutIn(t, rollout.id, ["COMPLETED"]);
    expect(done.counts).toMatchObject({ succeeded: 6 });
  }, 90_000);

  it("times out a device that never reports, within the policy's timeout", async () => {
    const productName = uniq("ro");
    const { registerDevice } = await gqlOk(t, RegisterDeviceDocument, { input: { productName, tags: ["beta"] } });
    const device = await TestDevice.connect(t.mqttUrl, productName, registerDevice.device.deviceName, registerDevice.secret);
    const rollout = await createRollout(t, rolloutInput(productName, fw, { policy: { inProgressTimeoutSeconds: 10 } }));
    const command = await device.nextCommand("$ota_upgrade");
    const expiresAt = Number(command.topic.split("/").at(-1));
    expect(command.json).toMatchObject({ version: "2.0", sha256: expect.stringMatching(/^[0-9a-f]{64}$/) });
    expect(expiresAt).toBeGreaterThan(Date.now() / 1000 + 5);
    await device.reportProgress({ version: "2.0", type: "firmware", progress: 10, desc: "download" });
    await eventually(async () => expect((await rolloutOf(t, rollout.id)).counts.downloading).toBe(1));
    const done = await rolloutIn(t, rollout.id, ["COMPLETED"], 30_000);
    expect(done.counts).toMatchObject({ timedOut: 1, byFailureClass: [{ failureClass: "TIMED_OUT", count: 1 }] });
  }, 60_000);

  it("pauses (nobody new notified, those notified finish) and resumes to completion", async () => {
    const { productName } = await simFleet(t, { count: 12, installMs: 300 });
    const rollout = await createRollout(t, rolloutInput(productName, fw, { policy: { maxInProgress: 2 } }));
    await eventually(async () => expect((await rolloutOf(t, rollout.id)).counts.inProgress).toBeGreaterThan(0));
    const { pauseRollout } = await gqlOk(t, PauseRolloutDocument, { id: rollout.id });
    expect(pauseRollout.state).toBe("PAUSED");
    // Those notified before the pause finish; then nothing moves.
    await eventually(async () => expect((await rolloutOf(t, rollout.id)).counts.inProgress).toBe(0), 20_000);
    const paused = await rolloutOf(t, rollout.id);
    const notified = (await executionsOf(t, rollout.id)).filter((e) => e.attempts.length > 0).length;
    expect(notified).toBeLessThanOrEqual(4);
    expect(paused.counts.queued).toBe(12 - notified);
    const again = await gql(t, PauseRolloutDocument, { id: rollout.id });
    expect(again.errors?.[0]?.extensions?.code).toBe("BAD_USER_INPUT");
    await gqlOk(t, ResumeRolloutDocument, { id: rollout.id });
    const done = await rolloutIn(t, rollout.id, ["COMPLETED"]);
    expect(done.counts.succeeded).toBe(12);
  }, 90_000);

  it("cancels: queued executions CANCELED, commands queued for offline devices withdrawn and never delivered", async () => {
    const { productName, fleet } = await simFleet(t, { count: 4 });
    const [online, ...offline] = fleet.devices as [(typeof fleet.devices)[number], ...typeof fleet.devices];
    await Promise.all(offline.map((d) => d.stop()));
    const rollout = await createRollout(t, rolloutInput(productName, fw));
    await eventually(async () => expect((await rolloutOf(t, rollout.id)).counts).toMatchObject({ succeeded: 1, notified: 3 }), 30_000);
    const { cancelRollout } = await gqlOk(t, CancelRolloutDocument, { id: rollout.id });
    expect(cancelRollout.state).toBe("CANCELED");
    await eventually(async () => expect((await rolloutOf(t, rollout.id)).counts).toMatchObject({ succeeded: 1, canceled: 3, notified: 0 }));
    // Back online, each gets a later command (its tags) and never the withdrawn upgrade.
    for (const d of offline) {
      await d.connect();
      await gqlOk(t, SetDeviceTagsDocument, { productName, deviceName: d.credentials.deviceName, tags: ["beta", "after-cancel"] });
    }
    await eventually(() => expect(offline.every((d) => d.tags.includes("after-cancel"))).toBe(true), 20_000);
    expect(offline.every((d) => d.state === "idle" && d.firmwareVersion === "1.0")).toBe(true);
    expect(online.firmwareVersion).toBe("2.0");
  }, 90_000);

  it("still drives a canceled rollout's device that was downloading: it times out, and a later rollout can take it", async () => {
    const productName = uniq("ro");
    const { registerDevice } = await gqlOk(t, RegisterDeviceDocument, { input: { productName, tags: ["beta"] } });
    const device = await TestDevice.connect(t.mqttUrl, productName, registerDevice.device.deviceName, registerDevice.secret);
    const rollout = await createRollout(t, rolloutInput(productName, fw, { policy: { inProgressTimeoutSeconds: 10 } }));
    await device.nextCommand("$ota_upgrade");
    await device.reportProgress({ version: "2.0", type: "firmware", progress: 10, desc: "download" });
    await eventually(async () => expect((await rolloutOf(t, rollout.id)).counts.downloading).toBe(1));
    await gqlOk(t, CancelRolloutDocument, { id: rollout.id });
    // Delivered already: it runs on after the cancel, reports once more, then falls silent.
    await device.reportProgress({ version: "2.0", type: "firmware", progress: 20, desc: "download" });
    const ended = await eventually(async () => {
      const r = await rolloutOf(t, rollout.id);
      expect(r.counts).toMatchObject({ timedOut: 1, downloading: 0 });
      return r;
    }, 30_000);
    expect(ended.state).toBe("CANCELED");
    const next = await createRollout(t, rolloutInput(productName, fw, { version: "3.0" }));
    expect((await device.nextCommand("$ota_upgrade")).json).toMatchObject({ version: "3.0" });
    await eventually(async () => expect((await rolloutOf(t, next.id)).counts.notified).toBe(1));
  }, 60_000);

  it("takes in devices that gain the tag or are registered with it during a CONTINUOUS rollout", async () => {
    const { productName, fleet } = await simFleet(t, { count: 3 });
    const { credentials: late } = await simFleet(t, { count: 1, tags: ["other"], productName });
    const rollout = await createRollout(t, rolloutInput(productName, fw, { membership: "CONTINUOUS" }));
    await eventually(async () => expect((await rolloutOf(t, rollout.id)).counts).toMatchObject({ total: 3, succeeded: 3 }), 30_000);
    await gqlOk(t, SetDeviceTagsDocument, { productName, deviceName: late[0]!.deviceName, tags: ["beta"] });
    await simFleet(t, { count: 1, productName });
    await eventually(async () => expect((await rolloutOf(t, rollout.id)).counts).toMatchObject({ total: 5, succeeded: 5 }), 30_000);
    expect((await rolloutOf(t, rollout.id)).state).toBe("RUNNING");
    expect(fleet.devices.every((d) => d.firmwareVersion === "2.0")).toBe(true);
  }, 90_000);

  it("skips devices by version guards as previewed: on the target, newer (no downgrade), not an allowed from-version", async () => {
    const productName = uniq("ro");
    await simFleet(t, { count: 3, productName, initialVersion: "1.0" });
    await simFleet(t, { count: 2, productName, initialVersion: "1.4.2" });
    await simFleet(t, { count: 2, productName, initialVersion: "2.0" });
    await simFleet(t, { count: 2, productName, initialVersion: "3.1" });
    const preview = async (policy: NonNullable<Parameters<typeof rolloutInput>[2]>["policy"]) =>
      (await gqlOk(t, PreviewRolloutDocument, { input: rolloutInput(productName, fw, { policy }) })).previewRollout;
    expect(await preview({})).toMatchObject({
      targeted: 9,
      eligible: 5,
      skippedByReason: [
        { reason: "ALREADY_ON_TARGET", count: 2 },
        { reason: "WOULD_DOWNGRADE", count: 2 },
      ],
    });
    expect(await preview({ allowDowngrade: true })).toMatchObject({ eligible: 7, skippedByReason: [{ reason: "ALREADY_ON_TARGET", count: 2 }] });
    // The allowed from-versions are checked before the downgrade guard.
    const input = rolloutInput(productName, fw, { policy: { allowedFromVersions: [">=1.2 <2"] } });
    const { previewRollout } = await gqlOk(t, PreviewRolloutDocument, { input });
    expect(previewRollout).toMatchObject({ targeted: 9, eligible: 2, skipped: 7 });
    expect(previewRollout.skippedByReason).toEqual([
      { reason: "ALREADY_ON_TARGET", count: 2 },
      { reason: "NOT_ALLOWED_FROM_VERSION", count: 5 },
    ]);
    const rollout = await createRollout(t, input);
    const done = await rolloutIn(t, rollout.id, ["COMPLETED"]);
    expect(done.counts).toMatchObject({ total: 9, succeeded: 2, skipped: 7 });
    expect(done.counts.bySkipReason).toEqual(previewRollout.skippedByReason);
    const executions = await executionsOf(t, rollout.id);
    expect(executions.filter((e) => e.state === "SUCCEEDED").map((e) => e.fromVersion)).toEqual(["1.4.2", "1.4.2"]);
  }, 90_000);

  it("shows each device's executions and progress in one page, and lists rollouts newest first", async () => {
    const { productName } = await simFleet(t, { count: 3 });
    const first = await createRollout(t, rolloutInput(productName, fw));
    await rolloutIn(t, first.id, ["COMPLETED"]);
    const second = await createRollout(t, rolloutInput(productName, fw, { version: "3.0" }));
    await rolloutIn(t, second.id, ["COMPLETED"]);
    const { devices } = await gqlOk(t, DevicesWithExecutionsDocument, { productName, first: 10 });
    for (const d of devices.nodes) {
      expect(d.firmwareVersion).toBe("3.0");
      expect(d.otaProgress).toMatchObject({ version: "3.0", state: "SUCCEEDED" });
      expect(d.executions.map((e) => [e.rolloutId, e.state])).toEqual([
        [second.id, "SUCCEEDED"],
        [first.id, "SUCCEEDED"],
      ]);
    }
    const { rollouts } = await gqlOk(t, RolloutsDocument, { productName, first: 1 });
    expect(rollouts.nodes.map((r) => r.id)).toEqual([second.id]);
    const next = await gqlOk(t, RolloutsDocument, { productName, first: 1, after: rollouts.pageInfo.endCursor });
    expect(next.rollouts.nodes.map((r) => r.id)).toEqual([first.id]);
    expect(next.rollouts.pageInfo.hasNextPage).toBe(false);
  }, 90_000);

  it("refuses bad input with the field at fault, and another product's token", async () => {
    const productName = uniq("ro");
    const bad = async (input: Parameters<typeof rolloutInput>[2], field: string) => {
      const r = await gql(t, CreateRolloutDocument, { input: rolloutInput(productName, fw, input) });
      expect(r.errors?.[0]?.extensions).toMatchObject({ code: "BAD_USER_INPUT", field });
    };
    await bad({ policy: { waves: [{ percent: 50 }, { percent: 20 }] } }, "policy.waves.1.percent");
    await bad({ policy: { maxInProgress: 0 } }, "policy.maxInProgress");
    await bad({ policy: { maintenanceWindow: { start: "25:00", end: "01:00" } } }, "policy.maintenanceWindow.start");
    await bad({ target: { tag: "beta", wholeProduct: true } }, "target");
    const wrongSha = rolloutInput(productName, fw);
    wrongSha.firmware.sha256 = "abc";
    expect((await gql(t, CreateRolloutDocument, { input: wrongSha })).errors?.[0]?.extensions).toMatchObject({ field: "firmware.sha256" });

    const { productName: other } = await simFleet(t, { count: 1 });
    const rollout = await createRollout(t, rolloutInput(other, fw));
    const { createApiToken } = await gqlOk(t, CreateApiTokenDocument, { input: { name: "limited", access: "WRITE", products: [productName] } });
    const limited = { httpUrl: t.httpUrl, token: createApiToken.token };
    expect((await gql(limited, RolloutDocument, { id: rollout.id })).errors?.[0]?.extensions?.code).toBe("FORBIDDEN");
    expect((await gql(limited, CancelRolloutDocument, { id: rollout.id })).errors?.[0]?.extensions?.code).toBe("FORBIDDEN");
    expect((await gql(t, RolloutDocument, { id: "not-a-uuid" })).data?.rollout).toBeNull();
  }, 60_000);

  it("streams only the reports of a rollout's devices about its version when otaProgressChanged is given the rollout", async () => {
    const { productName } = await simFleet(t, { count: 2 });
    const { registerDevice } = await gqlOk(t, RegisterDeviceDocument, { input: { productName, tags: ["outsider"] } });
    const outsider = await TestDevice.connect(t.mqttUrl, productName, registerDevice.device.deviceName, registerDevice.secret);
    const rollout = await createRollout(t, rolloutInput(productName, fw, { policy: { startAt: new Date(Date.now() + 3_000).toISOString() } }));
    expect(rollout.state).toBe("SCHEDULED");
    const live = await subscribe(wsClient(t), RolloutProgressDocument, { productName, rolloutId: rollout.id });
    await outsider.reportProgress({ version: "2.0", type: "firmware", progress: 50, desc: "not in the rollout" });
    const done = await rolloutIn(t, rollout.id, ["COMPLETED"]);
    expect(Date.parse(done.startedAt!)).toBeGreaterThanOrEqual(Date.parse(rollout.createdAt) + 2_900);
    await eventually(() => expect(live.results.pending.filter((r) => r.data?.otaProgressChanged.state === "SUCCEEDED")).toHaveLength(2));
    const names = new Set(live.results.pending.map((r) => r.data?.otaProgressChanged.deviceName));
    expect(names.has(registerDevice.device.deviceName)).toBe(false);
    expect(names.size).toBe(2);
  }, 60_000);
});

describe("a rollout when PostgreSQL is away while devices report", () => {
  it("acknowledges a stored progress report it cannot apply, counts it, and applies it from the stored progress once the database is back", async () => {
    const t = await startApp({ database: { kind: "pglite", dataDir: tempDir("pglite") }, env: { ROLLOUT_TICK_MS: "100" } });
    const fw = await firmwareFile();
    const productName = uniq("ro");
    const { registerDevice } = await gqlOk(t, RegisterDeviceDocument, { input: { productName, tags: ["beta"] } });
    const device = await TestDevice.connect(t.mqttUrl, productName, registerDevice.device.deviceName, registerDevice.secret);
    // A 10 s timeout: the scheduler looks at what a device stored after a tenth of it.
    const rollout = await createRollout(t, rolloutInput(productName, fw, { policy: { inProgressTimeoutSeconds: 10 } }));
    await device.nextCommand("$ota_upgrade");
    await eventually(async () => expect((await rolloutOf(t, rollout.id)).counts.notified).toBe(1));

    await t.app.database.stop();
    // Acknowledged (publish resolves on the PUBACK) though its execution cannot be written now.
    await device.reportProgress({ version: "2.0", type: "firmware", progress: 100, desc: "download" });
    await eventually(async () => expect(await metric(t, "iothub_ota_rollout_reports_deferred_total")).toBe(1));
    await t.app.database.start();
    await eventually(async () => expect((await rolloutOf(t, rollout.id)).counts).toMatchObject({ downloaded: 1, notified: 0 }), 8_000);
  }, 60_000);
});

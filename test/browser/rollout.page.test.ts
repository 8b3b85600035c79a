import type { Browser } from "playwright-core";
import { beforeAll, describe, expect, it } from "vitest";
import { OtaProgressChangedDocument, PauseRolloutDocument, ResumeRolloutDocument } from "../../src/client/generated/graphql.js";
import type { FirmwareServer } from "../../src/sim/firmware.server.js";
import { gqlOk, subscribe, wsClient, type TestApp } from "../helpers/app.js";
import { createRollout, executionsOf, rolloutIn, rolloutInput, rolloutOf, simFleet } from "../helpers/rollout.js";
import { eventually } from "../helpers/wait.js";
import { dashboardServer, expectCounts, newPage, runningRolloutPage, screenshot, signIn } from "./browser.js";
import { recordWebSockets } from "./chromium.js";

interface Batch {
  reports: { deviceName: string; state: string }[];
}

describe("a rollout's page, live from the server's coalesced subscriptions, with its cancel and retry buttons", () => {
  let t: TestApp;
  let fw: FirmwareServer;
  let browser: Browser;

  beforeAll(async () => {
    ({ t, fw, browser } = await dashboardServer());
  });

  it("shows a rollout of a few hundred devices live from otaProgressBatches and ends with the API's counts", async () => {
    // Installing takes a while: rows stay in progress long enough to show their live report.
    const { productName } = await simFleet(t, { count: 300, installMs: 2_000 });
    const rollout = await createRollout(t, rolloutInput(productName, fw, { name: "three hundred" }));
    // Held until the page is watching (a few devices may have been notified already): the product's feed made live
    // first (the helper waits for its Redis subscription), then the page's subscription taken by the server.
    await gqlOk(t, PauseRolloutDocument, { id: rollout.id });
    await subscribe(wsClient(t), OtaProgressChangedDocument, { productName });
    const { page, done } = await newPage(browser);
    const ws = recordWebSockets(page);
    await signIn(page, t.httpUrl, t.token, `/rollouts/${rollout.id}`);
    await eventually(() => expect(t.app.progressFeed.watching.get(productName)).toBe(2));
    expect(ws.subscriptions("otaProgressBatches").map((m) => m.payload?.variables)).toEqual([expect.objectContaining({ productName, rolloutId: rollout.id })]);
    await gqlOk(t, ResumeRolloutDocument, { id: rollout.id });

    // A row in progress shows its device's latest report (the table's page alone says only its state).
    await page.getByTestId("executions").locator(".progress-cell").first().waitFor({ timeout: 60_000 });
    await page.locator("h1 .badge", { hasText: "completed" }).waitFor({ timeout: 60_000 });
    const final = await rolloutIn(t, rollout.id, ["COMPLETED"]);
    expect(final.counts.succeeded).toBe(300);
    await expectCounts(page, final.counts);

    // The rows' reports came by the coalesced subscription, never one message per report (otaProgressChanged): batches of
    // the rollout's devices, fewer than the reports they carried; the counts by rolloutChanged. (Not every device need be
    // in them: the page stops listening when the rollout has ended, and its last batch may come after that.)
    const received = ws.results<Batch>("otaProgressBatches");
    const reports = received.flatMap((b) => b.reports);
    expect(received.length).toBeGreaterThan(0);
    expect(received.length).toBeLessThan(reports.length);
    const devices = new Set((await executionsOf(t, rollout.id)).map((e) => e.deviceName));
    expect(reports.filter((r) => !devices.has(r.deviceName))).toEqual([]);
    // Only the rows on screen: the page names them (deviceNames), and the server sends no other device's reports.
    const named = new Set(ws.subscriptions("otaProgressBatches").flatMap((m) => (m.payload?.variables as { deviceNames?: string[] }).deviceNames ?? []));
    expect(named.size).toBeGreaterThan(0);
    expect(named.size).toBeLessThan(300);
    expect(reports.filter((r) => !named.has(r.deviceName))).toEqual([]);
    expect(ws.subscriptions("otaProgressChanged")).toEqual([]);
    expect(ws.subscriptions("rolloutChanged").length).toBeGreaterThan(0);

    // The devices page's live column comes the same way, filtered as the list is.
    await page.goto(`${t.httpUrl}/products/${productName}/devices?tag=beta`);
    await page.getByTestId("devices").waitFor();
    await expect.poll(() => ws.subscriptions("otaProgressBatches").map((m) => m.payload?.variables)).toContainEqual(
      expect.objectContaining({ productName, tag: "beta", deviceNames: expect.arrayContaining([expect.any(String)]) }),
    );
    expect(ws.subscriptions("otaProgressChanged")).toEqual([]);
    done();
  }, 120_000);

  it("cancels a running rollout from its page once confirmed, and shows it CANCELED with the API's counts", async () => {
    const { rollout, page, done } = await runningRolloutPage(t, fw, browser, "to cancel");

    await page.getByRole("button", { name: "Cancel…" }).click();
    // Nothing happens before the confirmation.
    await page.getByText("Cancel this rollout?").waitFor();
    expect((await rolloutOf(t, rollout.id)).state).toBe("RUNNING");
    await page.getByRole("button", { name: "Yes, cancel it" }).click();

    await page.locator("h1 .badge", { hasText: "canceled" }).waitFor();
    const canceled = await rolloutIn(t, rollout.id, ["CANCELED"]);
    expect(canceled.counts.canceled).toBeGreaterThan(0);
    // The executions still in progress when it was canceled end too; the page follows them to the API's final counts.
    await expect.poll(() => rolloutOf(t, rollout.id).then((r) => r.counts.inProgress), { timeout: 30_000 }).toBe(0);
    await expectCounts(page, (await rolloutOf(t, rollout.id)).counts);
    expect(await page.getByRole("button", { name: "Cancel…" }).count()).toBe(0);
    await screenshot(page, "rollout-canceled");
    done();
  }, 90_000);

  it("retries a rollout's failed executions from its page: they run again and the page follows them to the end", async () => {
    const { productName, behaviour } = await simFleet(t, { count: 20, faults: { installError: 40 }, seed: 5 });
    const rollout = await createRollout(t, rolloutInput(productName, fw, { name: "to retry" }));
    const { page, done } = await newPage(browser);
    await signIn(page, t.httpUrl, t.token, `/rollouts/${rollout.id}`);
    await page.locator("h1 .badge", { hasText: "completed" }).waitFor({ timeout: 60_000 });
    const first = await rolloutIn(t, rollout.id, ["COMPLETED"]);
    expect(first.counts.failed).toBeGreaterThan(0);
    await expectCounts(page, first.counts);
    const failed = (await executionsOf(t, rollout.id)).filter((e) => e.state === "FAILED").map((e) => e.deviceName);

    // The devices install fine now: a retry of all failure classes brings every device to the version.
    behaviour.faults.installError = 0;
    await page.getByRole("button", { name: "Retry" }).click();
    await expect.poll(() => rolloutOf(t, rollout.id).then((r) => r.counts.succeeded), { timeout: 60_000 }).toBe(20);
    const second = await rolloutIn(t, rollout.id, ["COMPLETED"]);
    expect(second.counts.failed).toBe(0);
    await expectCounts(page, second.counts);
    await page.locator("h1 .badge", { hasText: "completed" }).waitFor();
    // Each failed execution ran again: a second attempt, succeeded; the others were left alone.
    const after = new Map((await executionsOf(t, rollout.id)).map((e) => [e.deviceName, e]));
    for (const name of failed) expect(after.get(name)).toMatchObject({ state: "SUCCEEDED", attempts: [{}, {}] });
    expect([...after.values()].filter((e) => e.attempts.length > 1).map((e) => e.deviceName).sort()).toEqual([...failed].sort());
    expect(await page.getByRole("button", { name: "Retry" }).count()).toBe(0);
    done();
  }, 120_000);
});

import { copyFile } from "node:fs/promises";
import type { Browser } from "playwright-core";
import { beforeAll, describe, expect, it } from "vitest";
import { DeviceDetailDocument } from "../../src/client/generated/graphql.js";
import type { FirmwareServer } from "../../src/sim/firmware.server.js";
import { gqlOk, type TestApp } from "../helpers/app.js";
import { createRollout, rolloutIn, rolloutInput, rolloutOf, sha256Of, simFleet } from "../helpers/rollout.js";
import { dashboardServer, expectCounts, newPage, runningRolloutPage, screenshot, signIn, tile } from "./browser.js";

describe("the web dashboard, in Chromium against a real server and simulated devices", () => {
  let t: TestApp;
  let fw: FirmwareServer;
  let browser: Browser;

  beforeAll(async () => {
    ({ t, fw, browser } = await dashboardServer());
  });

  it("refuses a wrong token on the sign-in page with the API's code and message", async () => {
    const { page, done } = await newPage(browser);
    await page.goto(`${t.httpUrl}/`);
    await page.getByLabel("API token").fill("not-a-token");
    await page.getByRole("button", { name: "Sign in" }).click();
    const alert = page.getByRole("alert");
    await expect.poll(() => alert.innerText()).toContain("UNAUTHENTICATED");
    expect(await alert.innerText()).toContain("missing or invalid API token");
    expect(await page.getByRole("button", { name: "Sign out" }).count()).toBe(0);
    await screenshot(page, "sign-in-refused");
    done();
  });

  it("creates a rollout from the form after its preview, and shows it finish with the API's final counts", async () => {
    const { productName } = await simFleet(t, { count: 40, faults: { installError: 10 }, seed: 7 });
    const { page, done } = await newPage(browser);
    await signIn(page, t.httpUrl, t.token, `/products/${productName}/rollouts/new`);

    await page.getByLabel("Name").fill("2.0 to beta");
    await page.getByLabel("Tag", { exact: true }).fill("beta");
    await page.getByLabel("Firmware version").fill("2.0");
    await page.getByLabel("Firmware URL").fill(fw.file.url);
    await page.getByLabel("Size (bytes)").fill(String(fw.file.size));
    await page.getByLabel("MD5").fill(fw.file.md5);
    await page.getByLabel("SHA-256").fill(sha256Of(fw.file.url));
    await page.getByRole("button", { name: "Add wave" }).click();
    await page.getByLabel("wave 1 percent").fill("25");
    await page.getByLabel("wave 1 success ratio").fill("0.5");
    await page.getByRole("button", { name: "Add wave" }).click();
    await page.getByLabel("wave 2 percent").fill("100");
    await page.getByLabel("Max in progress").fill("10");
    // Nothing starts before a preview.
    expect(await page.getByRole("button", { name: /Start rollout/ }).count()).toBe(0);
    await page.getByRole("button", { name: "Preview" }).click();

    await page.getByTestId("preview").waitFor();
    expect(await tile(page, "preview-targeted")).toBe(40);
    expect(await tile(page, "preview-eligible")).toBe(40);
    expect(await tile(page, "preview-skipped")).toBe(0);
    await screenshot(page, "new-rollout-preview");
    await page.getByRole("button", { name: "Start rollout to 40 devices" }).click();

    await page.waitForURL((url) => /^\/rollouts\/[^/]+$/.test(url.pathname));
    const id = decodeURIComponent(new URL(page.url()).pathname.split("/").pop()!);
    await page.locator("h1 .badge", { hasText: "completed" }).waitFor({ timeout: 60_000 });
    const final = await rolloutIn(t, id, ["COMPLETED"]);
    expect(final.counts.failed).toBeGreaterThan(0);
    // The page's counts are the API's final ones (pushed by rolloutChanged: no reload).
    await expectCounts(page, final.counts);
    // The table follows: no row is left queued or in progress.
    const table = page.getByTestId("executions");
    await expect.poll(() => table.innerText(), { timeout: 10_000 }).not.toMatch(/queued|notified|downloading|downloaded/);
    const failures = page.getByTestId("failures");
    expect(await failures.innerText()).toContain("install failed");
    // Each wave's row says the API's exact count of devices and of finished ones.
    const waveRows = await page.getByTestId("waves").locator("tbody tr").allInnerTexts();
    expect(waveRows).toHaveLength(final.counts.byWave.length);
    final.counts.byWave.forEach((w, i) => {
      const done = w.succeeded + w.failed + w.timedOut + w.canceled;
      expect(waveRows[i]).toContain(`${done} / ${w.devices}`);
    });
    await screenshot(page, "rollout");
    // The README's picture: what a screen shows, not the whole table (committed: refreshed only when asked, UPDATE_DOCS_SCREENSHOT=1).
    const screen = await screenshot(page, "rollout-screen", false);
    if (process.env.UPDATE_DOCS_SCREENSHOT === "1") await copyFile(screen, "docs/dashboard-rollout.png");

    // The other pages, with this product's data.
    await page.getByRole("link", { name: "Fleet" }).click();
    await page.getByTestId("versions-chart").waitFor();
    expect(await tile(page, "fleet-devices")).toBe(40);
    expect(await tile(page, "fleet-online")).toBe(40);
    await screenshot(page, "fleet");

    await page.getByRole("link", { name: "Rollouts", exact: true }).first().click();
    await page.getByTestId("rollouts").getByText("2.0 to beta").waitFor();
    await screenshot(page, "rollouts");

    await page.goto(`${t.httpUrl}/products/${productName}/devices?version=2.0`);
    const rows = page.getByTestId("devices").locator("tbody tr");
    await expect.poll(() => rows.count()).toBe(final.counts.succeeded);
    await screenshot(page, "devices");

    const deviceName = (await rows.first().locator("td").first().innerText()).trim();
    await rows.first().getByRole("link").click();
    await page.getByTestId("device-version").getByText("2.0").waitFor();
    expect(await page.getByTestId("executions").innerText()).toContain("succeeded");
    await screenshot(page, "device");
    expect(deviceName).not.toBe("");
    done();
  }, 90_000);

  it("pauses and resumes a rollout from its page, the API following each click", async () => {
    const { rollout, page, done } = await runningRolloutPage(t, fw, browser, "slow one");

    await page.getByRole("button", { name: "Pause" }).click();
    await page.locator("h1 .badge", { hasText: "paused" }).waitFor();
    expect((await rolloutOf(t, rollout.id)).state).toBe("PAUSED");

    await page.getByRole("button", { name: "Resume" }).click();
    await page.locator("h1 .badge", { hasText: "running" }).waitFor();
    expect((await rolloutOf(t, rollout.id)).state).toBe("RUNNING");
    await page.locator("h1 .badge", { hasText: "completed" }).waitFor({ timeout: 60_000 });
    expect(await tile(page, "count-succeeded")).toBe(12);
    done();
  }, 90_000);

  it("says which abort rule stopped a rollout, as the API says it", async () => {
    const { productName } = await simFleet(t, { count: 30, faults: { md5Mismatch: 30 }, seed: 3 });
    const rollout = await createRollout(
      t,
      rolloutInput(productName, fw, {
        name: "bad image",
        policy: { maxInProgress: 5, abortRules: [{ failureClass: "MD5_MISMATCH", thresholdPercent: 10, minFinished: 5 }] },
      }),
    );
    const { page, done } = await newPage(browser);
    await signIn(page, t.httpUrl, t.token, `/rollouts/${rollout.id}`);
    const banner = page.getByTestId("abort");
    await banner.waitFor({ timeout: 60_000 });
    const aborted = await rolloutIn(t, rollout.id, ["ABORTED"]);
    expect(await page.locator("h1 .badge").innerText()).toBe("aborted");
    const text = await banner.innerText();
    expect(text).toContain(aborted.abortedBy!.message);
    expect(text).toContain("more than 10 % md5 mismatch of at least 5 finished");
    await expect.poll(() => page.getByTestId("executions").innerText(), { timeout: 10_000 }).toContain("canceled");
    await screenshot(page, "rollout-aborted");
    done();
  }, 90_000);

  it("edits a device's tags and suspends and resumes it from its page", async () => {
    const { productName, credentials } = await simFleet(t, { count: 2 });
    const deviceName = credentials[0]!.deviceName;
    const { page, done } = await newPage(browser);
    await signIn(page, t.httpUrl, t.token, `/products/${productName}/devices/${deviceName}`);
    await page.getByRole("button", { name: "Edit tags" }).click();
    await page.getByLabel(/^Tags/).fill("beta, lab");
    await page.getByRole("button", { name: "Save tags" }).click();
    await page.getByRole("button", { name: "Edit tags" }).waitFor();
    const vars = { productName, deviceName };
    expect((await gqlOk(t, DeviceDetailDocument, vars)).device?.tags).toEqual(["beta", "lab"]);

    await page.getByRole("button", { name: "Suspend device" }).click();
    await page.getByRole("button", { name: "Resume device" }).waitFor();
    expect((await gqlOk(t, DeviceDetailDocument, vars)).device?.suspended).toBe(true);
    await page.getByRole("button", { name: "Resume device" }).click();
    await page.getByRole("button", { name: "Suspend device" }).waitFor();
    expect((await gqlOk(t, DeviceDetailDocument, vars)).device?.suspended).toBe(false);
    done();
  });
});

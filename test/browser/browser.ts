import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import type { Browser, Page } from "playwright-core";
import { expect } from "vitest";
import type { RolloutFieldsFragment } from "../../src/client/generated/graphql.js";
import type { FirmwareServer } from "../../src/sim/firmware.server.js";
import { startApp, type TestApp } from "../helpers/app.js";
import { createRollout, firmwareFile, rolloutInput, simFleet } from "../helpers/rollout.js";
import { onTeardown } from "../helpers/teardown.js";
import { eventually } from "../helpers/wait.js";
import { countsShown, launchChromium, shownCounts, signIn } from "./chromium.js";

export { signIn, tile } from "./chromium.js";

export const SCREENSHOTS = join(process.cwd(), "test-output", "screenshots");

/** One browser for the file's tests, closed after them; fails at once when the dashboard or Chromium is missing. */
export async function launchBrowser(): Promise<Browser> {
  const browser = await launchChromium();
  onTeardown(() => browser.close());
  await mkdir(SCREENSHOTS, { recursive: true });
  return browser;
}

/** What a file of rollout pages needs: an app whose scheduler passes every 100 ms, a firmware file, Chromium. */
export async function dashboardServer(): Promise<{ t: TestApp; fw: FirmwareServer; browser: Browser }> {
  const [t, fw, browser] = await Promise.all([startApp({ env: { ROLLOUT_TICK_MS: "100" } }), firmwareFile(), launchBrowser()]);
  return { t, fw, browser };
}

/**
 * A fresh tab (its own sessionStorage, so signed out) whose script errors fail
 * the test: `done()` checks that none happened.
 */
export async function newPage(browser: Browser) {
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 }, deviceScaleFactor: 1 });
  onTeardown(() => context.close());
  const page = await context.newPage();
  const errors: string[] = [];
  page.on("pageerror", (err) => errors.push(err.message));
  // What the error boundary caught is logged to the console: a test fails on it too.
  page.on("console", (msg) => {
    if (msg.type() === "error" && msg.text().startsWith("dashboard render error")) errors.push(msg.text());
    // DEBUG_BROWSER=1: the page's console on the test's stdout.
    if (process.env.DEBUG_BROWSER) console.log("browser", msg.type(), msg.text());
  });
  page.setDefaultTimeout(15_000);
  return { page, done: () => expect(errors).toEqual([]) };
}

export async function screenshot(page: Page, name: string, fullPage = true): Promise<string> {
  // Let the last coalesced updates and bar transitions land; from the top, so the sticky bar is where it belongs.
  await page.waitForTimeout(400);
  await page.mouse.wheel(0, -1_000_000);
  const path = join(SCREENSHOTS, `${name}.png`);
  await page.screenshot({ path, fullPage });
  return path;
}


/** Waits until the rollout page's count tiles are the API's `counts` (pushed by rolloutChanged: no reload). */
export async function expectCounts(page: Page, counts: RolloutFieldsFragment["counts"]): Promise<void> {
  await eventually(async () => expect(await shownCounts(page)).toEqual(countsShown(counts)));
}

/** A rollout slow enough to click on (12 fresh devices, one at a time), open on its page once it runs. */
export async function runningRolloutPage(t: TestApp, fw: FirmwareServer, browser: Browser, name: string) {
  const { productName } = await simFleet(t, { count: 12, installMs: 300 });
  const rollout = await createRollout(t, rolloutInput(productName, fw, { name, policy: { maxInProgress: 1 } }));
  const { page, done } = await newPage(browser);
  await signIn(page, t.httpUrl, t.token, `/rollouts/${rollout.id}`);
  await page.locator("h1 .badge", { hasText: "running" }).waitFor();
  return { rollout, page, done };
}

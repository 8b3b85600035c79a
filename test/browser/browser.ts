import { existsSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { chromium, type Browser, type Page } from "playwright-core";
import { expect } from "vitest";
import { DASHBOARD_DIST } from "../../src/http/dashboard.js";
import { onTeardown } from "../helpers/teardown.js";

/** Debian's chromium (`apt-get install chromium`): playwright's own download cannot work on these machines. */
const CHROMIUM = "/usr/bin/chromium";
/** Offline machines: without these, Chromium keeps trying its own services and floods refused connections. */
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

export const SCREENSHOTS = join(process.cwd(), "test-output", "screenshots");

/** One browser for the file's tests, closed after them; fails at once when the dashboard or Chromium is missing. */
export async function launchBrowser(): Promise<Browser> {
  if (!existsSync(join(DASHBOARD_DIST, "index.html"))) throw new Error(`no dashboard build in ${DASHBOARD_DIST}: run npm run build:web`);
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get install -y chromium (npm test does it)`);
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
  onTeardown(() => browser.close());
  await mkdir(SCREENSHOTS, { recursive: true });
  return browser;
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

export async function signIn(page: Page, httpUrl: string, token: string, path = "/"): Promise<void> {
  await page.goto(`${httpUrl}${path}`);
  await page.getByLabel("API token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("button", { name: "Sign out" }).waitFor();
}

export async function screenshot(page: Page, name: string, fullPage = true): Promise<string> {
  // Let the last coalesced updates and bar transitions land; from the top, so the sticky bar is where it belongs.
  await page.waitForTimeout(400);
  await page.mouse.wheel(0, -1_000_000);
  const path = join(SCREENSHOTS, `${name}.png`);
  await page.screenshot({ path, fullPage });
  return path;
}

/** The number a stat tile shows (thousands separators dropped). */
export async function tile(page: Page, testId: string): Promise<number> {
  const text = await page.getByTestId(testId).innerText();
  return Number(text.replaceAll(",", ""));
}

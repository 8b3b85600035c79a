import { existsSync } from "node:fs";
import { join } from "node:path";
import { chromium, type Browser, type Page } from "playwright-core";
import { DASHBOARD_DIST } from "../../src/http/dashboard.js";

/**
 * Debian's Chromium for the browser tests and the dashboard bench: no vitest
 * here, so that a bench can drive it too.
 */

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

/** Chromium, once the dashboard is built; fails at once, saying what to do, when the build or Chromium is missing. */
export async function launchChromium(extraArgs: string[] = []): Promise<Browser> {
  if (!existsSync(join(DASHBOARD_DIST, "index.html"))) throw new Error(`no dashboard build in ${DASHBOARD_DIST}: run npm run build:web`);
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get install -y chromium (npm test does it)`);
  return chromium.launch({ executablePath: CHROMIUM, args: [...CHROMIUM_ARGS, ...extraArgs] });
}

/** Signs in with the page's form at `path` (the page then shows it). */
export async function signIn(page: Page, httpUrl: string, token: string, path = "/"): Promise<void> {
  await page.goto(`${httpUrl}${path}`);
  await page.getByLabel("API token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("button", { name: "Sign out" }).waitFor();
}

/** The number a stat tile shows (thousands separators dropped). */
export async function tile(page: Page, testId: string): Promise<number> {
  const text = await page.getByTestId(testId).innerText();
  return Number(text.replaceAll(",", ""));
}

/** The count tiles of the rollout page, by the name of the API's count each shows. */
export const COUNT_KEYS = ["total", "succeeded", "failed", "timedOut", "inProgress", "queued", "skipped", "canceled"] as const;
export type ShownCounts = Record<(typeof COUNT_KEYS)[number], number>;

/** What the rollout page's count tiles show now. */
export async function shownCounts(page: Page): Promise<ShownCounts> {
  const out = {} as ShownCounts;
  for (const key of COUNT_KEYS) out[key] = await tile(page, `count-${key}`);
  return out;
}

/** The counts of `counts` that the rollout page shows, to compare with {@link shownCounts}. */
export const countsShown = (counts: ShownCounts): ShownCounts => Object.fromEntries(COUNT_KEYS.map((k) => [k, counts[k]])) as ShownCounts;

/** A graphql-ws message as the page sent or received it (text frames; anything else is not graphql-ws). */
export interface WsMessage {
  id?: string;
  type: string;
  payload?: { query?: string; variables?: Record<string, unknown>; data?: Record<string, unknown> };
}

/**
 * The page's WebSockets from now on: every graphql-ws message it sent, and
 * what it received, counted (frames, bytes, `next` messages per field),
 * handed to `onNext` by field and, with `keep`, kept: what the page
 * subscribed to and what reached it.
 */
export function recordWebSockets(page: Page, { keep = true, onNext }: { keep?: boolean; onNext?: (field: string, value: unknown) => void } = {}) {
  const sent: WsMessage[] = [];
  const received: WsMessage[] = [];
  const totals = { frames: 0, bytes: 0 };
  /** `next` messages received per top-level field of their data, and their bytes. */
  const byField = new Map<string, { messages: number; bytes: number }>();
  const parse = (payload: string | Buffer): WsMessage | null => {
    try {
      return JSON.parse(payload.toString()) as WsMessage;
    } catch {
      return null;
    }
  };
  page.on("websocket", (ws) => {
    ws.on("framesent", ({ payload }) => {
      const m = parse(payload);
      if (m) sent.push(m);
    });
    ws.on("framereceived", ({ payload }) => {
      const bytes = typeof payload === "string" ? Buffer.byteLength(payload) : payload.length;
      totals.frames++;
      totals.bytes += bytes;
      const m = parse(payload);
      if (!m) return;
      if (keep) received.push(m);
      for (const [field, value] of m.type === "next" ? Object.entries(m.payload?.data ?? {}) : []) {
        const seen = byField.get(field) ?? { messages: 0, bytes: 0 };
        seen.messages++;
        seen.bytes += bytes;
        byField.set(field, seen);
        onNext?.(field, value);
      }
    });
  });
  /** The subscriptions the page started whose query selects `field`. */
  const subscriptions = (field: string) => sent.filter((m) => m.type === "subscribe" && new RegExp(`\\b${field}\\b`).test(m.payload?.query ?? ""));
  /** The `next` messages kept that carry `field`: its values, in order. */
  const results = <T>(field: string): T[] => received.flatMap((m) => (m.type === "next" && m.payload?.data?.[field] ? [m.payload.data[field] as T] : []));
  return { sent, received, totals, byField, subscriptions, results };
}

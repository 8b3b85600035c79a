import { spawn, type ChildProcess } from "node:child_process";
import { createHash, randomBytes, scryptSync } from "node:crypto";
import { readFileSync } from "node:fs";
import { rm, writeFile } from "node:fs/promises";
import pg from "pg";
import type { Browser, CDPSession, Page } from "playwright-core";
import { FirmwareServer } from "../src/sim/firmware.server.js";
import { COUNT_KEYS, countsShown, launchChromium, recordWebSockets, shownCounts, signIn, type ShownCounts } from "../test/browser/chromium.js";
import { BIN, OwnRedis } from "../test/helpers/processes.js";
import { benchDatabase, gql, metric, percentile, round, sleep, startServer, TOKEN, uniq, type BenchServer } from "./lib.js";

export interface DashboardBenchOptions {
  devices: number;
  /** policy.maxInProgress; 0: none, every device notified at once (the most a page is sent at a time). */
  maxInProgress: number;
  /** The simulated devices report progress every this many percent. */
  step: number;
  installMs: number;
  tickMs: number;
}

export interface DashboardBenchResult {
  rows: Record<string, unknown>[];
  summary: Record<string, unknown>;
  /** What did not hold (the page's counts not the API's, the rollout not COMPLETED): the command fails after printing. */
  problems: string[];
}

const SECRET = "bench-secret-0000";

const CREATE = `mutation($input: CreateRolloutInput!) { createRollout(input: $input) { id } }`;
const PAUSE = `mutation($id: ID!) { pauseRollout(id: $id) { id } }`;
const RESUME = `mutation($id: ID!) { resumeRollout(id: $id) { id } }`;
const ROLLOUT = `query($id: ID!) { rollout(id: $id) { state startedAt finishedAt counts { ${COUNT_KEYS.join(" ")} } } }`;

const log = (line: string) => process.stderr.write(`[dashboard bench ${new Date().toISOString().slice(11, 19)}] ${line}\n`);

/**
 * What a page measures of itself from its first script on: long tasks (the
 * main thread busy 50 ms or more: input waits that long) and the gaps
 * between animation frames; `reset()` starts the window measured.
 */
const PAGE_PROBE = `(() => {
  const probe = { longTasks: [], gaps: [], since: performance.now(), last: performance.now() };
  probe.reset = () => { probe.longTasks = []; probe.gaps = []; probe.since = probe.last = performance.now(); };
  new PerformanceObserver((list) => { for (const e of list.getEntries()) probe.longTasks.push(e.duration); }).observe({ type: "longtask" });
  const frame = (now) => { probe.gaps.push(now - probe.last); probe.last = now; requestAnimationFrame(frame); };
  requestAnimationFrame(frame);
  window.__dashboardProbe = probe;
})();`;

interface Probe {
  longTasks: number[];
  gaps: number[];
  seconds: number;
}

/** One dashboard page in a tab of its own: its probe, its WebSocket traffic and its heap (Chrome's, through CDP). */
class MeasuredPage {
  readonly ws: ReturnType<typeof recordWebSockets>;
  peakHeap = 0;
  /** Reports the page's progress batches carried. */
  reports = 0;

  private constructor(
    readonly name: string,
    readonly page: Page,
    private readonly cdp: CDPSession,
  ) {
    const onNext = (field: string, value: unknown) => {
      if (field === "otaProgressBatches") this.reports += (value as { reports: unknown[] }).reports.length;
    };
    this.ws = recordWebSockets(page, { keep: false, onNext });
  }

  static async open(browser: Browser, name: string): Promise<MeasuredPage> {
    const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
    const page = await context.newPage();
    await page.addInitScript(PAGE_PROBE);
    const cdp = await context.newCDPSession(page);
    await cdp.send("Performance.enable");
    page.setDefaultTimeout(60_000);
    return new MeasuredPage(name, page, cdp);
  }

  async heap(): Promise<number> {
    const { metrics } = await this.cdp.send("Performance.getMetrics");
    const used = metrics.find((m) => m.name === "JSHeapUsedSize")?.value ?? 0;
    this.peakHeap = Math.max(this.peakHeap, used);
    return used;
  }

  async heapAfterGc(): Promise<number> {
    await this.cdp.send("HeapProfiler.collectGarbage");
    return this.heap();
  }

  /** Starts the window measured: probe and WebSocket counts from zero. */
  async reset(): Promise<void> {
    await this.page.evaluate("window.__dashboardProbe.reset()");
    this.ws.totals.frames = 0;
    this.ws.totals.bytes = 0;
    this.ws.byField.clear();
    this.peakHeap = 0;
    this.reports = 0;
  }

  async probe(): Promise<Probe> {
    // A string: this side has no DOM types.
    return this.page.evaluate<Probe>(
      "(({ longTasks, gaps, since }) => ({ longTasks, gaps, seconds: (performance.now() - since) / 1000 }))(window.__dashboardProbe)",
    );
  }

  async row(extra: Record<string, unknown>): Promise<Record<string, unknown>> {
    const p = await this.probe();
    const gaps = [...p.gaps].sort((a, b) => a - b);
    const batches = this.ws.byField.get("otaProgressBatches");
    return {
      page: this.name,
      "seconds measured": round(p.seconds),
      "long tasks": p.longTasks.length,
      "long total ms": Math.round(p.longTasks.reduce((a, d) => a + d, 0)),
      "longest ms": Math.round(Math.max(0, ...p.longTasks)),
      "frames/s": round(p.gaps.length / p.seconds),
      "frame gap p99 ms": round(percentile(gaps, 99)),
      "frame gap max ms": round(gaps.at(-1) ?? Number.NaN),
      "ws messages": this.ws.totals.frames,
      "ws MB": round(this.ws.totals.bytes / 1e6, 2),
      "progress batches": batches?.messages ?? 0,
      "reports in them": this.reports,
      "rolloutChanged msgs": this.ws.byField.get("rolloutChanged")?.messages ?? 0,
      "heap peak MB": round(this.peakHeap / 1e6),
      "heap end MB (after GC)": round((await this.heapAfterGc()) / 1e6),
      ...extra,
    };
  }
}

// ---- the fleet: seeded in PostgreSQL, simulated in a process of its own ------------------------

/** The server's secret hash format at a tiny cost (N = 16): 10,000 devices connect in seconds, not minutes of scrypt. */
function cheapSecretHash(secret: string): string {
  const salt = randomBytes(16);
  return `scrypt$16$1$1$${salt.toString("base64")}$${scryptSync(secret, salt, 32, { N: 16, r: 1, p: 1 }).toString("base64")}`;
}

const deviceName = (i: number) => `dev-${String(i).padStart(6, "0")}`;

async function seedFleet(db: pg.Client, productName: string, devices: number, credentialsFile: string): Promise<void> {
  await db.query(
    `insert into devices (product_name, device_name, secret_hash, tags)
     select $1, 'dev-' || lpad(g::text, 6, '0'), $2, '{}'::text[] from generate_series(0, $3::int - 1) g`,
    [productName, cheapSecretHash(SECRET), devices],
  );
  const credentials = Array.from({ length: devices }, (_, i) => ({ productName, deviceName: deviceName(i), secret: SECRET }));
  await writeFile(credentialsFile, JSON.stringify(credentials), { mode: 0o600 });
}

/** `iothub-ota simulate` over the credentials; resolves once it says its devices are connected. */
async function simulate(args: string[]): Promise<ChildProcess> {
  const child = spawn(process.execPath, [BIN, "simulate", ...args], { stdio: ["ignore", "ignore", "pipe"] });
  let err = "";
  child.stderr?.on("data", (d) => (err += d));
  while (!/^connected \d+\/\d+ devices/m.test(err)) {
    if (child.exitCode !== null) throw new Error(`the simulator exited with ${child.exitCode}:\n${err.slice(-2000)}`);
    await sleep(200);
  }
  return child;
}

async function stopChild(child: ChildProcess | undefined): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once("exit", r));
  child.kill("SIGTERM");
  await Promise.race([exited, sleep(30_000)]);
  if (child.exitCode === null) child.kill("SIGKILL");
}

async function waitUntil(what: string, done: () => Promise<boolean>, timeoutMs: number, everyMs = 500): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await done())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

// ---- the benchmark ------------------------------------------------------------------------------

/**
 * The dashboard under a large rollout: a server of its own (embedded broker,
 * a PostgreSQL database and a Redis of its own), `devices` simulated devices
 * in a process of their own, and Chromium showing the rollout page and the
 * devices page while the rollout runs. Per page: long tasks, frame rate and
 * gaps, WebSocket messages and bytes received, JS heap; and whether the
 * rollout page ends with the API's counts.
 */
export async function dashboardBench(o: DashboardBenchOptions): Promise<DashboardBenchResult> {
  const problems: string[] = [];
  const database = await benchDatabase();
  const redis = await OwnRedis.start();
  const fw = new FirmwareServer(4096);
  await fw.start();
  const credentialsFile = `/tmp/iothub-ota-dashboard-bench-${randomBytes(4).toString("hex")}.json`;
  const productName = uniq("dash");
  let b: BenchServer | undefined;
  let db: pg.Client | undefined;
  let sim: ChildProcess | undefined;
  let browser: Browser | undefined;
  const started = performance.now();
  try {
    browser = await launchChromium();
    b = await startServer(undefined, { DATABASE_URL: database.url, REDIS_URL: redis.url, ROLLOUT_TICK_MS: String(o.tickMs) });
    const server = b;
    db = new pg.Client({ connectionString: database.url });
    await db.connect();
    const conn = db;
    await seedFleet(conn, productName, o.devices, credentialsFile);
    log(`connecting ${o.devices} simulated devices (not measured)`);
    sim = await simulate([
      "--credentials", credentialsFile, "-n", String(o.devices), "--mqtt", server.mqttUrl, "--initial-version", "1.0",
      "--step", String(o.step), "--pace-ms", "0", "--install-ms", String(o.installMs), "--offline-ms", "100", "--concurrency", "200",
    ]);
    const onVersion = async (version: string) =>
      (await conn.query<{ n: number }>(`select count(*)::int n from devices where product_name = $1 and status->>'firmware_ver' = $2`, [productName, version]))
        .rows[0]?.n ?? 0;
    await waitUntil(`${o.devices} devices on 1.0`, async () => (await onVersion("1.0")) >= o.devices, 60_000 + o.devices * 10);

    // Created and held at once (a few devices may be notified before the pause), resumed once both pages watch it.
    const firmware = { ...fw.file, version: "2.0", type: "firmware", sha256: createHash("sha256").update(fw.file.url).digest("hex") };
    const policy = { maxInProgress: o.maxInProgress === 0 ? null : o.maxInProgress, inProgressTimeoutSeconds: 600 };
    const input = { productName, name: "dashboard bench", target: { wholeProduct: true }, firmware, policy };
    const { createRollout } = await gql<{ createRollout: { id: string } }>(server.graphqlUrl, CREATE, { input });
    const id = createRollout.id;
    await gql(server.graphqlUrl, PAUSE, { id });

    const rolloutPage = await MeasuredPage.open(browser, "rollout");
    const devicesPage = await MeasuredPage.open(browser, "devices");
    const pages = [rolloutPage, devicesPage];
    await signIn(rolloutPage.page, server.server.httpUrl, TOKEN, `/rollouts/${encodeURIComponent(id)}`);
    await signIn(devicesPage.page, server.server.httpUrl, TOKEN, `/products/${productName}/devices`);
    await rolloutPage.page.getByTestId("executions").waitFor();
    await devicesPage.page.getByTestId("devices").waitFor();
    await waitUntil("both pages subscribed to progress batches", async () => pages.every((p) => p.ws.subscriptions("otaProgressBatches").length > 0), 30_000, 100);

    for (const p of pages) await p.reset();
    const accepted = () => metric(server.server.httpUrl, "iothub_ota_ingest_messages_total", { kind: "ota_status", result: "accepted" });
    const overflow = () => metric(server.server.httpUrl, "iothub_ota_subscriber_overflow_total");
    const acceptedBefore = await accepted();
    const overflowBefore = await overflow();
    const t0 = performance.now();
    await gql(server.graphqlUrl, RESUME, { id });
    log(`rollout ${id} resumed with both pages open`);

    // Until the API says it has ended; the pages' heaps sampled meanwhile.
    let api: { state: string; startedAt: string | null; finishedAt: string | null; counts: ShownCounts } | undefined;
    let loggedAt = 0;
    for (;;) {
      await sleep(1000);
      for (const p of pages) await p.heap();
      api = (await gql<{ rollout: NonNullable<typeof api> }>(server.graphqlUrl, ROLLOUT, { id })).rollout;
      if (Date.now() - loggedAt > 10_000) {
        loggedAt = Date.now();
        log(`${api.state} after ${round((performance.now() - t0) / 1000)} s: ${api.counts.succeeded} succeeded, ${api.counts.inProgress} in progress, ${api.counts.queued} queued`);
      }
      if (["COMPLETED", "ABORTED", "CANCELED"].includes(api.state) && api.counts.inProgress === 0) break;
      if (performance.now() - t0 > 600_000) throw new Error(`the rollout did not end within 600 s: ${JSON.stringify(api)}`);
    }
    const rolloutSeconds = (performance.now() - t0) / 1000;
    const endedAt = performance.now();
    // The page's counts once they stop moving: equal to the API's, and how long after the API's end.
    const want = JSON.stringify(countsShown(api.counts));
    let shown = await shownCounts(rolloutPage.page);
    while (JSON.stringify(shown) !== want && performance.now() - endedAt < 30_000) {
      await sleep(250);
      shown = await shownCounts(rolloutPage.page);
    }
    const equal = JSON.stringify(shown) === want;
    const lagSeconds = round((performance.now() - endedAt) / 1000, 2);
    if (!equal) problems.push(`the rollout page shows ${JSON.stringify(shown)}, the API ${want}`);
    if (api.state !== "COMPLETED") problems.push(`the rollout ended ${api.state}`);
    const reports = (await accepted()) - acceptedBefore;
    const overflowed = (await overflow()) - overflowBefore;

    const rows = [
      await rolloutPage.row({ "counts = API's": equal ? `yes (${lagSeconds} s after its end)` : "no" }),
      await devicesPage.row({ "counts = API's": "-" }),
    ];
    const load = readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
    const summary = {
      devices: o.devices,
      "max in progress": o.maxInProgress === 0 ? "none" : o.maxInProgress,
      state: api.state,
      "rollout s": round(rolloutSeconds),
      "progress reports accepted": reports,
      // Reports a subscriber too slow for them lost to a newer one of the same device (the feed's bounded queue).
      "subscriber overflow": overflowed,
      succeeded: api.counts.succeeded,
      loadavg: load,
      "total s": round((performance.now() - started) / 1000),
    };
    return { rows, summary, problems };
  } finally {
    await browser?.close().catch((err: unknown) => log(`closing chromium: ${String(err)}`));
    await stopChild(sim);
    await db?.end().catch((err: unknown) => log(`closing the database connection: ${String(err)}`));
    await b?.stop();
    await fw.stop();
    await redis.stop();
    await rm(credentialsFile, { force: true });
    await database.drop();
  }
}

// What an idle server holds in memory (issue 10 §8): the compiled server
// (dist/, `npm run build`) in a process of its own, as an operator runs it,
// with one simulated device in another process; resident memory sampled each
// second over a window, the heap and external memory from its /metrics.
// PostgreSQL (a fresh database each run) and PGlite (a first start on an
// empty DATA_DIR, then a restart on it). The breakdown runs the same app in
// a measuring child (--expose-gc) that imports the dependency groups one at
// a time, then starts, then takes the device.
//
//   npm run build && npm run bench -- memory [--setups postgres,pglite] [--runs 3] [--seconds 90] [--breakdown]
//
// DATABASE_URL names the PostgreSQL server the fresh databases are made on
// (bench/lib.ts); --root measures another checkout's build; --env K=V,...
// adds settings (GLIBC_TUNABLES, say) to the server's environment.
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { rm } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { Redis } from "ioredis";
import { benchDatabase, freePort, metric, REDIS_URL, round, sleep, TOKEN, uniq } from "./lib.js";

export type MemorySetup = "postgres" | "pglite";

export interface MemoryOptions {
  /** Runs per setup. */
  runs: number;
  /** Seconds each server is sampled, from its spawn. */
  seconds: number;
  setups: MemorySetup[];
  /** Also run the measuring child once per setup. */
  breakdown: boolean;
  /** The checkout whose dist/ is measured (default: this one). */
  root?: string;
  /** More settings for the server (and the measuring child), to compare. */
  env?: Record<string, string>;
}

export interface MemoryResult {
  runs: Record<string, unknown>[];
  summary: Record<string, unknown>[];
  breakdown: Record<string, unknown>[];
}

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const MB = 1024 * 1024;
const mb = (bytes: number) => round(bytes / MB);
/** Resident-memory checkpoints reported per run, seconds after the spawn (the audit's 20 s and 45 s among them). */
const CHECKPOINTS = [10, 20, 30, 45, 60, 75, 90, 120];

interface Status {
  rss: number;
  anon: number;
  file: number;
  hwm: number;
}

/** VmRSS, RssAnon, RssFile and VmHWM of a process, bytes. */
function status(pid: number): Status | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/status`, "utf8");
  } catch {
    return undefined;
  }
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(text)?.[1] ?? Number.NaN) * 1024;
  return { rss: field("VmRSS"), anon: field("RssAnon"), file: field("RssFile"), hwm: field("VmHWM") };
}

const median = (values: number[]) => {
  const s = [...values].sort((a, b) => a - b);
  return s.length === 0 ? Number.NaN : (s[Math.floor((s.length - 1) / 2)] as number);
};

interface Env {
  env: NodeJS.ProcessEnv;
  httpUrl: string;
  mqttUrl: string;
}

/** The environment of an audit's server: loopback, its own free ports, TLS on, warnings only. */
async function serverEnv(dataDir: string, redisPrefix: string, databaseUrl: string | undefined, extra: Record<string, string> = {}): Promise<Env> {
  const [port, mqttPort, mqttsPort] = [await freePort(), await freePort(), await freePort()];
  // Only what a user's shell would hold plus the settings: no NODE_OPTIONS or test settings inherited.
  const { PATH, HOME, LANG } = process.env;
  const env: NodeJS.ProcessEnv = {
    PATH,
    HOME,
    LANG,
    PORT: String(port),
    MQTT_PORT: String(mqttPort),
    MQTTS_PORT: String(mqttsPort),
    HOST: "127.0.0.1",
    MQTT_HOST: "127.0.0.1",
    ADMIN_TOKEN: TOKEN,
    LOG_LEVEL: "warn",
    REDIS_URL,
    REDIS_PREFIX: redisPrefix,
    DATA_DIR: dataDir,
    ...(databaseUrl ? { DATABASE_URL: databaseUrl } : {}),
    ...extra,
  };
  return { env, httpUrl: `http://127.0.0.1:${port}`, mqttUrl: `mqtt://127.0.0.1:${mqttPort}` };
}

/** A child whose output is kept (to show when it fails) and whose exit can be awaited. */
function child(root: string, args: string[], env: NodeJS.ProcessEnv, nodeArgs: string[] = []): { process: ChildProcess; output: () => string } {
  const p = spawn(process.execPath, [...nodeArgs, ...args], { cwd: root, env, stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  p.stdout?.on("data", (d: Buffer) => (output += d.toString()));
  p.stderr?.on("data", (d: Buffer) => (output += d.toString()));
  return { process: p, output: () => output };
}

async function stopChild(p: ChildProcess, signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return;
  const exited = new Promise((r) => p.once("exit", r));
  p.kill(signal);
  const timer = setTimeout(() => p.kill("SIGKILL"), 15_000);
  await exited;
  clearTimeout(timer);
}

async function waitFor(what: string, check: () => Promise<boolean> | boolean, ms = 30_000, failed?: () => string | undefined): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    const why = failed?.();
    if (why) throw new Error(`${what}: ${why}`);
    if (await Promise.resolve(check()).catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await sleep(100);
  }
}

const ready = (httpUrl: string) => async () => (await fetch(`${httpUrl}/readyz`)).status === 200;
const connected = (httpUrl: string) => async () => (await metric(httpUrl, "iothub_ota_connected_devices")) >= 1;

/** One simulated device (`simulate -n 1 --cleanup`) in a process of its own; SIGINT ends it and deletes the device. */
function simulator(root: string, e: Env): { process: ChildProcess; output: () => string } {
  const args = ["simulate", "-n", "1", "--cleanup", "--product", uniq("memory"), "--api", `${e.httpUrl}/graphql`, "--mqtt", e.mqttUrl, "--token", TOKEN];
  return child(root, ["dist/main.js", ...args], e.env);
}

interface Sampled {
  startMs: number;
  at: Map<number, Status>;
  /** Resident memory each second from the device's connection on: [seconds since the spawn, bytes]. */
  samples: [number, number][];
  hwm: number;
  heapUsed: number;
  heapTotal: number;
  external: number;
  exitCode: number | null;
  log: string;
}

/**
 * Starts `dist/main.js serve` (what bin/iothub-ota.js imports once built),
 * connects one simulated device, samples for `seconds`, stops both (the
 * device first: its --cleanup deletes it through the API).
 */
async function sampleServer(root: string, e: Env, seconds: number): Promise<Sampled> {
  const spawned = Date.now();
  const server = child(root, ["dist/main.js", "serve"], e.env);
  const exited = () => (server.process.exitCode !== null ? `server exited ${server.process.exitCode}:\n${server.output()}` : undefined);
  let device: ReturnType<typeof simulator> | undefined;
  try {
    await waitFor("server ready", ready(e.httpUrl), 60_000, exited);
    const startMs = Date.now() - spawned;
    device = simulator(root, e);
    const d = device;
    await waitFor("device connected", connected(e.httpUrl), 30_000, () =>
      exited() ?? (d.process.exitCode !== null ? `simulator exited ${d.process.exitCode}:\n${d.output()}` : undefined),
    );
    const at = new Map<number, Status>();
    const samples: [number, number][] = [];
    const pid = server.process.pid as number;
    let last: Status | undefined;
    for (let t = Math.ceil((Date.now() - spawned) / 1000); t <= seconds; t++) {
      await sleep(Math.max(0, spawned + t * 1000 - Date.now()));
      const s = status(pid);
      if (!s) throw new Error(exited() ?? "server gone");
      last = s;
      if (CHECKPOINTS.includes(t)) at.set(t, s);
      samples.push([t, s.rss]);
    }
    const prefix = "iothub_ota_nodejs_";
    const [heapUsed, heapTotal, external] = await Promise.all(
      ["heap_size_used_bytes", "heap_size_total_bytes", "external_memory_bytes"].map((m) => metric(e.httpUrl, `${prefix}${m}`)),
    );
    await stopChild(d.process, "SIGINT");
    device = undefined;
    await stopChild(server.process);
    return {
      startMs,
      at,
      samples,
      hwm: last?.hwm ?? Number.NaN,
      heapUsed: heapUsed as number,
      heapTotal: heapTotal as number,
      external: external as number,
      exitCode: server.process.exitCode,
      log: server.output(),
    };
  } finally {
    if (device) await stopChild(device.process, "SIGKILL");
    await stopChild(server.process, "SIGKILL");
  }
}

function row(setup: string, run: number, s: Sampled, seconds: number): Record<string, unknown> {
  const cells: Record<string, unknown> = { setup, run, readyMs: s.startMs };
  for (const t of CHECKPOINTS) if (t <= seconds) cells[`rss${t}s`] = s.at.has(t) ? mb(s.at.get(t)!.rss) : "-";
  const end = [...s.at.values()].at(-1);
  // Settled: the median of the window's last third; settled by: the first second from which it stays within 2 MB of that.
  const settled = median(s.samples.filter(([t]) => t > (seconds * 2) / 3).map(([, rss]) => rss));
  const by = s.samples.find(([t]) => s.samples.every(([u, rss]) => u < t || rss <= settled + 2 * MB))?.[0];
  return {
    ...cells,
    settled: mb(settled),
    settledBy: by === undefined ? "-" : `${by}s`,
    peak: mb(s.hwm),
    anon: end ? mb(end.anon) : "-",
    file: end ? mb(end.file) : "-",
    heapUsed: mb(s.heapUsed),
    heapTotal: mb(s.heapTotal),
    external: mb(s.external),
    // A clean stop exits 0 with nothing at WARN or above in the log (LOG_LEVEL=warn).
    stop: s.exitCode === 0 && s.log.trim() === "" ? "clean" : `exit ${s.exitCode}: ${s.log.trim().split("\n")[0]?.slice(0, 120)}`,
  };
}

async function dropKeys(prefix: string): Promise<void> {
  const redis = new Redis(REDIS_URL);
  try {
    for await (const keys of redis.scanStream({ match: `${prefix}*`, count: 1000 }) as AsyncIterable<string[]>) {
      if (keys.length > 0) await redis.unlink(...keys);
    }
  } finally {
    await redis.quit();
  }
}

/** One setup's servers: PostgreSQL on a fresh database; PGlite on an empty DATA_DIR, then restarted on it. */
async function runSetup(root: string, setup: MemorySetup, run: number, seconds: number, extra?: Record<string, string>): Promise<Record<string, unknown>[]> {
  const dataDir = `/tmp/iothub-ota-memory-${randomBytes(4).toString("hex")}`;
  const prefix = `memory-${randomBytes(4).toString("hex")}:`;
  const database = setup === "postgres" ? await benchDatabase() : undefined;
  try {
    const e = await serverEnv(dataDir, prefix, database?.url, extra);
    if (setup === "postgres") return [row("postgres", run, await sampleServer(root, e, seconds), seconds)];
    const first = row("pglite first start", run, await sampleServer(root, e, seconds), seconds);
    const again = row("pglite restart", run, await sampleServer(root, await serverEnv(dataDir, prefix, undefined, extra), seconds), seconds);
    return [first, again];
  } finally {
    await database?.drop();
    await rm(dataDir, { recursive: true, force: true });
    await dropKeys(prefix);
  }
}

/**
 * The measuring child: plain JavaScript run by node from the checkout (so
 * that bare imports resolve as the server's do), with --expose-gc. Each step
 * collects garbage before it reads its memory, so its figures are below the
 * plain server's; the differences between steps are what each part costs.
 * Dependencies are imported in groups, in an order where each group's shared
 * packages come with the first that needs them; "ours" is the rest of what
 * dist/app.js imports.
 */
const CHILD = String.raw`
import { readFileSync } from "node:fs";
const kb = (name) => Number(new RegExp("^" + name + ":\\s+(\\d+) kB", "m").exec(readFileSync("/proc/self/status", "utf8"))[1]) * 1024;
const say = (m) => process.stdout.write(JSON.stringify(m) + "\n");
async function step(name, run) {
  await run();
  for (let i = 0; i < 4; i++) { globalThis.gc(); await new Promise((r) => setTimeout(r, 50)); }
  const m = process.memoryUsage();
  say({ step: name, rss: kb("VmRSS"), anon: kb("RssAnon"), file: kb("RssFile"), heapUsed: m.heapUsed, heapTotal: m.heapTotal, external: m.external });
}
const all = (...names) => () => Promise.all(names.map((n) => import(n)));
const dist = (p) => new URL("dist/" + p, "file://" + process.cwd() + "/").href;
const GROUPS = JSON.parse(process.env.MEMORY_GROUPS);
await step("node alone", async () => undefined);
for (const [name, modules] of GROUPS) await step(name, all(...modules));
await step("the command line (dist/cli: commander, every command, the client's documents)", all(dist("cli/index.js")));
await step("ours (dist/app.js and what it imports)", all(dist("app.js")));
const { buildGraphqlSchema } = await import(dist("http/schema.js"));
const none = { publish() {}, subscribe() {} };
let schema;
await step("GraphQL schema built (type-graphql)", async () => { schema = await buildGraphqlSchema(none); });
await step("... and dropped (what stays: its code, type-graphql's metadata)", async () => { schema = undefined; });
const { App } = await import(dist("app.js"));
const { loadConfig } = await import(dist("config/config.js"));
const app = new App(loadConfig());
await step("started (database migrated, Redis, broker and HTTP up)", () => app.start());
say({ waiting: "device" });
const gauge = async () => (await app.metrics.connectedDevices.get()).values[0]?.value ?? 0;
while ((await gauge()) < 1) await new Promise((r) => setTimeout(r, 100));
await step("one device connected", () => new Promise((r) => setTimeout(r, 2000)));
await step("idle 30 s later", () => new Promise((r) => setTimeout(r, 30000)));
say({ waiting: "stop" });
await new Promise((r) => process.once("SIGTERM", r));
await app.stop();
say({ stopped: true });
`;

/** Dependency groups, in import order: [label, bare specifiers]. */
const GROUPS: [string, string[]][] = [
  ["reflect-metadata, logging, metrics, config (pino, prom-client, zod)", ["reflect-metadata", "pino", "prom-client", "zod"]],
  ["express 5 (+ cors)", ["express", "cors"]],
  [
    "GraphQL: graphql, Apollo Server, type-graphql, graphql-ws + ws, scalars, armor, dataloader",
    [
      "graphql",
      "@apollo/server",
      "@as-integrations/express5",
      "type-graphql",
      "graphql-scalars",
      "graphql-ws/use/ws",
      "ws",
      "graphql-redis-subscriptions",
      "@escape.tech/graphql-armor-cost-limit",
      "@escape.tech/graphql-armor-max-aliases",
      "@escape.tech/graphql-armor-max-depth",
      "@escape.tech/graphql-armor-max-directives",
      "@escape.tech/graphql-armor-max-tokens",
      "dataloader",
    ],
  ],
  ["ioredis", ["ioredis"]],
  ["aedes + aedes-persistence-redis", ["aedes", "aedes-persistence-redis"]],
  ["pg + drizzle-orm (node-postgres)", ["pg", "drizzle-orm", "drizzle-orm/node-postgres", "drizzle-orm/node-postgres/migrator"]],
  ["lru-cache, semver", ["lru-cache", "semver"]],
];

async function breakdown(root: string, setup: MemorySetup, extra?: Record<string, string>): Promise<Record<string, unknown>[]> {
  const dataDir = `/tmp/iothub-ota-memory-${randomBytes(4).toString("hex")}`;
  const prefix = `memory-${randomBytes(4).toString("hex")}:`;
  const database = setup === "postgres" ? await benchDatabase() : undefined;
  const e = await serverEnv(dataDir, prefix, database?.url, extra);
  const measuring = spawn(process.execPath, ["--expose-gc", "--input-type=module", "-e", CHILD], {
    cwd: root,
    env: { ...e.env, MEMORY_GROUPS: JSON.stringify(GROUPS) },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  measuring.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
  const rows: Record<string, unknown>[] = [];
  let device: ReturnType<typeof simulator> | undefined;
  let previous: { rss: number; heapUsed: number } | undefined;
  const waiting: string[] = [];
  let buffered = "";
  measuring.stdout?.on("data", (d: Buffer) => {
    buffered += d.toString();
    for (let nl = buffered.indexOf("\n"); nl >= 0; nl = buffered.indexOf("\n")) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      const m = JSON.parse(line) as { step?: string; waiting?: string; rss: number; anon: number; file: number; heapUsed: number; heapTotal: number; external: number };
      if (m.waiting) waiting.push(m.waiting);
      if (!m.step) continue;
      rows.push({
        setup,
        step: m.step,
        rss: mb(m.rss),
        added: previous === undefined ? "-" : mb(m.rss - previous.rss),
        anon: mb(m.anon),
        file: mb(m.file),
        heapUsed: mb(m.heapUsed),
        heapAdded: previous === undefined ? "-" : mb(m.heapUsed - previous.heapUsed),
        heapTotal: mb(m.heapTotal),
        external: mb(m.external),
      });
      previous = m;
    }
  });
  const gone = () => (measuring.exitCode !== null ? `measuring child exited ${measuring.exitCode}:\n${stderr}` : undefined);
  try {
    await waitFor("measuring child started", () => waiting.includes("device"), 120_000, gone);
    device = simulator(root, e);
    await waitFor("measuring child idle", () => waiting.includes("stop"), 120_000, gone);
    await stopChild(device.process, "SIGINT");
    device = undefined;
    await stopChild(measuring);
  } finally {
    if (device) await stopChild(device.process, "SIGKILL");
    await stopChild(measuring, "SIGKILL");
    await database?.drop();
    await rm(dataDir, { recursive: true, force: true });
    await dropKeys(prefix);
  }
  return rows;
}

export async function memoryBench(o: MemoryOptions): Promise<MemoryResult> {
  const root = o.root ?? ROOT;
  if (!existsSync(`${root}/dist/main.js`)) throw new Error(`${root}/dist/main.js is missing: run \`npm run build\` there`);
  const runs: Record<string, unknown>[] = [];
  const breakdowns: Record<string, unknown>[] = [];
  for (const setup of o.setups) {
    if (o.breakdown) breakdowns.push(...(await breakdown(root, setup, o.env)));
    for (let run = 1; run <= o.runs; run++) runs.push(...(await runSetup(root, setup, run, o.seconds, o.env)));
  }
  const summary = [...new Set(runs.map((r) => r.setup as string))].map((setup) => {
    const mine = runs.filter((r) => r.setup === setup);
    const spread = (key: string) => {
      const v = mine.map((r) => r[key]).filter((x): x is number => typeof x === "number");
      return v.length === 0 ? "-" : `${Math.min(...v)}-${Math.max(...v)}`;
    };
    const by = mine.map((r) => Number.parseInt(String(r.settledBy), 10)).filter((n) => !Number.isNaN(n));
    return {
      setup,
      runs: mine.length,
      settled: spread("settled"),
      settledBy: by.length === 0 ? "-" : `${Math.min(...by)}-${Math.max(...by)}s`,
      rss20s: spread("rss20s"),
      peak: spread("peak"),
      heapUsed: spread("heapUsed"),
      external: spread("external"),
      readyMs: spread("readyMs"),
    };
  });
  return { runs, summary, breakdown: breakdowns };
}

import { redisKeys } from "../src/storage/progress.redis.js";
import { spawn, type ChildProcess } from "node:child_process";
import { createHash, randomBytes, scryptSync } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { rm, writeFile } from "node:fs/promises";
import { ObjectId } from "bson";
import { Redis } from "ioredis";
import type { MqttClient } from "mqtt";
import pg from "pg";
import type { FleetSummary } from "../src/sim/sim.fleet.js";
import { FirmwareServer } from "../src/sim/firmware.server.js";
import { BIN } from "../test/helpers/processes.js";
import { connectDevices, type LoadDevice } from "./load.js";
import { benchDatabase, cpuSeconds, gql, metric, REDIS_URL, round, sleep, startServer, uniq, type BenchServer } from "./lib.js";

export interface RolloutBenchOptions {
  devices: number;
  failPercent: number;
  /** policy.maxInProgress; 0: no bound. */
  maxInProgress: number;
  maxAttempts: number;
  backoffSeconds: number;
  installMs: number;
  firmwareBytes: number;
  tickMs: number;
  ingestDevices: number;
  ingestReports: number;
  ingestRate: number;
  phases: ("rollout" | "ingest" | "failures")[];
}

export interface RolloutBenchResult {
  rollouts: Record<string, unknown>[];
  ingest: Record<string, unknown>[];
  summary: Record<string, unknown>;
  /** What did not hold (executions left in progress, lost reports): the command fails after printing. */
  problems: string[];
  /** What looked wrong without breaking an assertion (messages the server left unacknowledged, counts that disagree). */
  warnings: string[];
}

const SECRET = "bench-secret-0000";
const FINAL = ["SUCCEEDED", "FAILED", "TIMED_OUT", "SKIPPED", "CANCELED"];
/** Give up on a rollout when no execution moved for this long. */
const STALL_MS = 90_000;

const log = (line: string) => process.stderr.write(`[rollout bench ${new Date().toISOString().slice(11, 19)}] ${line}\n`);

/**
 * The seeded devices' secret hash, in the server's own format with a tiny
 * cost (N = 16): verifying it takes microseconds. The real cost (N = 16384,
 * tens of ms of CPU per first connection, ~30 connections/s) would make
 * connecting 10,000 devices take minutes; the broker remembers a verified
 * secret, so the reconnections during an upgrade (the reboot) never pay it
 * either way, and what is measured here is the same.
 */
function cheapHash(secret: string): string {
  const salt = randomBytes(16);
  const key = scryptSync(secret, salt, 32, { N: 16, r: 1, p: 1 });
  return `scrypt$16$1$1$${salt.toString("base64")}$${key.toString("base64")}`;
}

// ---- CPU accounting ------------------------------------------------------------------------------

/** Busy and total jiffies of the whole machine, from /proc/stat. */
function machineJiffies(): { busy: number; total: number } {
  const [, ...fields] = (readFileSync("/proc/stat", "utf8").split("\n")[0] ?? "").trim().split(/\s+/);
  const n = fields.map(Number);
  const total = n.slice(0, 8).reduce((a, b) => a + b, 0);
  const idle = (n[3] ?? 0) + (n[4] ?? 0);
  return { busy: total - idle, total };
}

function procCpu(pid: number): number | null {
  try {
    return cpuSeconds(pid);
  } catch {
    return null; // exited
  }
}

/** PostgreSQL processes working for `database` (their process title names it), but `exclude`: its backends and autovacuum workers. */
function backendPids(database: string, exclude: number[]): { pid: number; autovacuum: boolean }[] {
  const pids: { pid: number; autovacuum: boolean }[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    if (exclude.includes(pid)) continue;
    try {
      const title = readFileSync(`/proc/${entry}/cmdline`, "utf8");
      if (title.startsWith("postgres: ") && title.includes(` ${database}`)) pids.push({ pid, autovacuum: title.includes("autovacuum") });
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

interface CpuReport {
  seconds: number;
  server: number;
  /** The backends serving the server's queries. */
  db: number;
  /** Autovacuum workers cleaning up after its updates. */
  autovacuum: number;
  simulator: number;
  bench: number;
  /** Cores busy on the whole machine, on average. */
  machineCores: number;
  /** Cores busy with everything else: other people's tests, Redis, the broker-less rest. */
  othersCores: number;
  loadavg: string;
}

/**
 * CPU seconds of the server, of the PostgreSQL backends serving its database
 * (sampled every 250 ms: the pool closes idle ones), of the simulator and of
 * this process over a window, with the machine's load for context.
 */
class CpuMeter {
  readonly #startAt = performance.now();
  readonly #server: number;
  readonly #sim: number;
  readonly #bench = process.cpuUsage();
  readonly #machine = machineJiffies();
  readonly #loadStart = readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
  /** Per backend: CPU at the window's start (0 if it started later) and the latest reading. */
  readonly #backends = new Map<number, { from: number; last: number; autovacuum: boolean }>();
  readonly #timer: NodeJS.Timeout;

  constructor(
    private readonly serverPid: number,
    private readonly database: string,
    private readonly excludePids: number[],
    private readonly simPid?: number,
  ) {
    this.#server = cpuSeconds(serverPid);
    this.#sim = simPid === undefined ? 0 : (procCpu(simPid) ?? 0);
    this.#sample(true);
    this.#timer = setInterval(() => this.#sample(false), 250);
  }

  #sample(first: boolean): void {
    for (const { pid, autovacuum } of backendPids(this.database, this.excludePids)) {
      const cpu = procCpu(pid);
      if (cpu === null) continue;
      const known = this.#backends.get(pid);
      if (known) known.last = cpu;
      else this.#backends.set(pid, { from: first ? cpu : 0, last: cpu, autovacuum });
    }
  }

  stop(): CpuReport {
    this.#sample(false);
    clearInterval(this.#timer);
    const seconds = (performance.now() - this.#startAt) / 1000;
    const server = cpuSeconds(this.serverPid) - this.#server;
    const sum = (autovacuum: boolean) => [...this.#backends.values()].filter((b) => b.autovacuum === autovacuum).reduce((n, b) => n + (b.last - b.from), 0);
    const db = sum(false);
    const autovacuum = sum(true);
    const simulator = this.simPid === undefined ? 0 : (procCpu(this.simPid) ?? this.#sim) - this.#sim;
    const used = process.cpuUsage(this.#bench);
    const bench = (used.user + used.system) / 1e6;
    const m = machineJiffies();
    const machine = (m.busy - this.#machine.busy) / 100;
    const loadEnd = readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
    return {
      seconds,
      server,
      db,
      autovacuum,
      simulator,
      bench,
      machineCores: machine / seconds,
      othersCores: Math.max(0, machine - server - db - autovacuum - simulator - bench) / seconds,
      loadavg: `${this.#loadStart} -> ${loadEnd}`,
    };
  }
}

// ---- the simulator, in a process of its own -----------------------------------------------------

/** `iothub-ota simulate` over a credentials file, as an operator runs it; resolves once its devices are connected. */
class SimulatorProcess {
  #out = "";
  #err = "";

  private constructor(readonly child: ChildProcess) {
    child.stdout?.on("data", (d) => (this.#out += d));
    child.stderr?.on("data", (d) => (this.#err += d));
  }

  get pid(): number {
    return this.child.pid as number;
  }

  static async start(args: string[], timeoutMs: number): Promise<{ sim: SimulatorProcess; connectSeconds: number }> {
    const child = spawn(process.execPath, [BIN, "simulate", ...args], { stdio: ["ignore", "pipe", "pipe"] });
    const sim = new SimulatorProcess(child);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = /connected (\d+)\/\d+ devices to \S+ in ([\d.]+) s/.exec(sim.#err);
      if (m) return { sim, connectSeconds: Number(m[2]) };
      if (child.exitCode !== null) throw new Error(`the simulator exited with ${child.exitCode}:\n${sim.#err.slice(-2000)}`);
      if (Date.now() > deadline) {
        child.kill("SIGKILL");
        throw new Error(`the simulator did not connect its devices within ${timeoutMs} ms:\n${sim.#err.slice(-2000)}`);
      }
      await sleep(200);
    }
  }

  /** SIGTERM: it disconnects its devices and prints its summary. */
  async stop(): Promise<FleetSummary | null> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      const exited = new Promise((r) => this.child.once("exit", r));
      this.child.kill("SIGTERM");
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([exited, new Promise((r) => (timer = setTimeout(r, 60_000)))]);
      clearTimeout(timer);
      if (this.child.exitCode === null) this.child.kill("SIGKILL");
    }
    const last = this.#out.trim().split("\n").at(-1);
    try {
      return last ? (JSON.parse(last) as FleetSummary) : null;
    } catch {
      return null;
    }
  }
}

// ---- GraphQL ------------------------------------------------------------------------------------

const CREATE = `mutation($input: CreateRolloutInput!) { createRollout(input: $input) { id state createdAt } }`;
const COUNTS = `total queued notified downloading downloaded succeeded failed timedOut skipped canceled inProgress byFailureClass { failureClass count }`;
const ROLLOUT = `query($id: ID!) { rollout(id: $id) { id state createdAt startedAt finishedAt counts { ${COUNTS} } } }`;
const EXECUTIONS = `query($id: ID!, $first: Int, $after: String) {
  rolloutExecutions(id: $id, first: $first, after: $after) {
    nodes { deviceName state failureClass attempts { notifiedAt outcome endedAt } }
    pageInfo { hasNextPage endCursor }
  }
}`;
const CANCEL = `mutation($id: ID!) { cancelRollout(id: $id) { id state } }`;

interface Counts {
  total: number;
  queued: number;
  notified: number;
  downloading: number;
  downloaded: number;
  succeeded: number;
  failed: number;
  timedOut: number;
  skipped: number;
  canceled: number;
  inProgress: number;
  byFailureClass: { failureClass: string; count: number }[];
}
interface RolloutView {
  id: string;
  state: string;
  createdAt: string;
  startedAt: string | null;
  finishedAt: string | null;
  counts: Counts;
}
interface ExecutionView {
  deviceName: string;
  state: string;
  failureClass: string | null;
  attempts: { notifiedAt: string; outcome: string | null; endedAt: string | null }[];
}

async function rolloutOf(b: BenchServer, id: string): Promise<RolloutView> {
  return (await gql<{ rollout: RolloutView }>(b.graphqlUrl, ROLLOUT, { id })).rollout;
}

async function executionsOf(b: BenchServer, id: string): Promise<ExecutionView[]> {
  const all: ExecutionView[] = [];
  let after: string | null = null;
  for (;;) {
    const page: { rolloutExecutions: { nodes: ExecutionView[]; pageInfo: { hasNextPage: boolean; endCursor: string | null } } } = await gql(
      b.graphqlUrl,
      EXECUTIONS,
      { id, first: 1000, after },
    );
    all.push(...page.rolloutExecutions.nodes);
    if (!page.rolloutExecutions.pageInfo.hasNextPage) return all;
    after = page.rolloutExecutions.pageInfo.endCursor;
  }
}

// ---- the benchmark ------------------------------------------------------------------------------

interface Context {
  o: RolloutBenchOptions;
  b: BenchServer;
  db: pg.Client;
  dbName: string;
  monitorPid: number;
  fw: FirmwareServer;
  sha256: string;
  credentialsFile: string;
  productName: string;
  redis: Redis;
  redisPrefix: string;
  problems: string[];
  warnings: string[];
  /** Queries this benchmark ran in the database (its monitor connection): left out of the server's count. */
  ownQueries: number;
}

/** A query of the benchmark's own (polling, diagnostics), counted so that the server's share of the database's transactions is known. */
async function own<R extends pg.QueryResultRow>(c: Pick<Context, "db" | "ownQueries">, text: string, values: unknown[] = []) {
  c.ownQueries++;
  return c.db.query<R>(text, values);
}

/** For a rollout that did not end as it should: a few of its unfinished executions beside what the server stored of their devices. */
async function diagnose(c: Context, id: string, silentForSeconds = 0): Promise<number> {
  const rows = (
    await own<Record<string, unknown>>(
      c,
      `select e.device_name, e.state, e.seq, e.dispatch_request_id, e.dispatched_at, e.last_event_at, e.attempts, d.status
       from rollout_executions e join devices d on d.product_name = e.product_name and d.device_name = e.device_name
       where e.rollout_id = $1 and e.state not in ('SUCCEEDED', 'FAILED', 'TIMED_OUT', 'SKIPPED', 'CANCELED')
         and (e.state <> 'QUEUED' and e.last_event_at < now() - make_interval(secs => $2)
           or e.state = 'QUEUED' and $2 = 0
           or e.dispatch_request_id is not null and e.dispatched_at < now() - make_interval(secs => $2))
       order by e.state, e.device_name limit 6`,
      [id, silentForSeconds],
    )
  ).rows;
  for (const r of rows) {
    const d = r.device_name as string;
    const progress = await c.redis.get(redisKeys(c.redisPrefix).progress(c.productName, d));
    const attempt = await c.redis.get(redisKeys(c.redisPrefix).deviceAttempt(c.productName, d));
    log(`  unfinished: ${JSON.stringify({ ...r, redisProgress: progress && JSON.parse(progress), redisAttemptAt: attempt })}`);
  }
  return rows.length;
}

/** Device messages the server took, by kind and result: what a rollout's reports came to. */
async function ingestResults(b: BenchServer): Promise<Map<string, number>> {
  const text = await (await fetch(`${b.server.httpUrl}/metrics`)).text();
  const out = new Map<string, number>();
  for (const m of text.matchAll(/^iothub_ota_ingest_messages_total\{kind="([^"]+)",result="([^"]+)"\} (\d+)/gm)) out.set(`${m[1]} ${m[2]}`, Number(m[3]));
  return out;
}

/** The last lines of the server's log (LOG_LEVEL warn: warnings and errors). */
function serverLog(b: BenchServer, lines = 30): string {
  return b.server.logs.trim().split("\n").slice(-lines).join("\n");
}

async function waitFor(what: string, done: () => Promise<boolean>, timeoutMs: number, everyMs = 250): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await done())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

/** Devices of the product whose `firmware_ver` the server has stored as `version`. */
async function onVersion(c: Context, version: string): Promise<number> {
  const r = await own<{ n: number }>(c, `select count(*)::int n from devices where product_name = $1 and status->>'firmware_ver' = $2`, [c.productName, version]);
  return r.rows[0]?.n ?? 0;
}

/**
 * Starts the simulator with the devices on `fromVersion` (excluded from any
 * timing: connecting, `$tags`, `firmware_ver` stored for every device).
 */
async function connectFleet(c: Context, fromVersion: string, faults: string[], seed: number) {
  const { o } = c;
  const started = performance.now();
  const { sim, connectSeconds } = await SimulatorProcess.start(
    [
      "--credentials", c.credentialsFile, "-n", String(o.devices), "--mqtt", c.b.mqttUrl,
      "--initial-version", fromVersion, "--step", "50", "--pace-ms", "0",
      "--install-ms", String(o.installMs), "--offline-ms", "100", "--concurrency", "200", "--seed", String(seed),
      ...faults,
    ],
    60_000 + o.devices * 50,
  );
  try {
    await waitFor(`${o.devices} devices to report firmware_ver ${fromVersion}`, async () => (await onVersion(c, fromVersion)) >= o.devices, 60_000 + o.devices * 10, 500);
  } catch (err) {
    await sim.stop();
    throw err;
  }
  return { sim, connectSeconds, readySeconds: (performance.now() - started) / 1000 };
}

/** One rollout of the whole product to `version`, from createRollout to its end, with what it cost. */
async function runRollout(c: Context, run: string, fromVersion: string, version: string, failPercent: number) {
  log(`${run}: connecting ${c.o.devices} simulated devices on ${fromVersion} (not timed)`);
  const faults = failPercent > 0 ? ["--fail-download", String(failPercent)] : [];
  const fleet = await connectFleet(c, fromVersion, faults, run === "rollout" ? 1 : 2);
  log(`${run}: connected in ${fleet.connectSeconds} s (all versions stored after ${round(fleet.readySeconds)} s); creating the rollout to ${version}`);
  try {
    return await measureRollout(c, run, fleet.sim, fleet.connectSeconds, version, failPercent);
  } finally {
    await fleet.sim.stop(); // already stopped unless something failed
  }
}

async function measureRollout(c: Context, run: string, sim: SimulatorProcess, connectSeconds: number, version: string, failPercent: number) {
  const { o, b } = c;

  const policy: Record<string, unknown> = {
    maxInProgress: o.maxInProgress === 0 ? null : o.maxInProgress,
    inProgressTimeoutSeconds: 600,
    ...(failPercent > 0 && {
      retries: [{ failureClass: "DOWNLOAD_FAILED", maxAttempts: o.maxAttempts, backoffSeconds: o.backoffSeconds, maxBackoffSeconds: o.backoffSeconds * 2 }],
    }),
  };
  const input = {
    productName: c.productName,
    name: `bench ${run}`,
    target: { wholeProduct: true },
    firmware: { ...c.fw.file, version, type: "firmware", sha256: c.sha256 },
    policy,
  };

  const xactBefore = await transactions(c);
  const readsBefore = await tableReads(c);
  const resultsBefore = await ingestResults(b);
  const deferredBefore = await metric(b.server.httpUrl, "iothub_ota_rollout_reports_deferred_total");
  const commandsBefore = await metric(b.server.httpUrl, "iothub_ota_commands_sent_total", { command: "$ota_upgrade" });
  const cpu = new CpuMeter(b.server.process.pid as number, c.dbName, [c.monitorPid], sim.pid);
  const t0 = performance.now();
  const { createRollout } = await gql<{ createRollout: { id: string } }>(b.graphqlUrl, CREATE, { input });
  const id = createRollout.id;

  // Commands sent, once a second (the peak rate); the rollout's state, read straight from PostgreSQL so that polling costs the server nothing.
  const commandSamples: { at: number; sent: number }[] = [{ at: t0, sent: commandsBefore }];
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      await sleep(1000);
      commandSamples.push({ at: performance.now(), sent: await metric(b.server.httpUrl, "iothub_ota_commands_sent_total", { command: "$ota_upgrade" }) });
    }
  })();
  let lastCounts = "";
  let movedAt = Date.now();
  let loggedAt = 0;
  let state = "RUNNING";
  let diagnosed = false;
  while (!["COMPLETED", "ABORTED", "CANCELED"].includes(state)) {
    await sleep(200);
    state = (await own<{ state: string }>(c, `select state from rollouts where id = $1`, [id])).rows[0]?.state ?? "?";
    if (Date.now() - loggedAt >= 5000 || Date.now() - movedAt > STALL_MS) {
      loggedAt = Date.now();
      const rows = (await own<{ state: string; n: number }>(c, `select state, count(*)::int n from rollout_executions where rollout_id = $1 group by state order by state`, [id])).rows;
      const text = rows.map((r) => `${r.state} ${r.n}`).join(", ");
      if (text !== lastCounts) {
        lastCounts = text;
        movedAt = Date.now();
      }
      log(`${run}: ${state} after ${round((performance.now() - t0) / 1000)} s: ${text}`);
      if (!diagnosed && (await diagnose(c, id, 15)) > 0) {
        diagnosed = true;
        log(`${run}: (above: executions in progress with no event for 15 s, or claimed 15 s ago and not yet notified)`);
      }
      if (Date.now() - movedAt > STALL_MS) {
        c.problems.push(`${run}: no execution moved for ${STALL_MS / 1000} s (${text}); canceled`);
        await gql(b.graphqlUrl, CANCEL, { id }).catch(() => undefined);
        break;
      }
    }
  }
  const observedSeconds = (performance.now() - t0) / 1000;
  const used = cpu.stop();
  sampling = false;
  await sampler;
  const commandsAfter = await metric(b.server.httpUrl, "iothub_ota_commands_sent_total", { command: "$ota_upgrade" });

  // A moment later: a late report must not move anything after the end; PostgreSQL has published the backends' counts (within 10 s).
  await sleep(11_000);
  const xacts = (await transactions(c)) - xactBefore;
  const reads = [...(await tableReads(c))].map(([table, r]) => ({
    table,
    seq: r.seq - (readsBefore.get(table)?.seq ?? 0),
    idx: r.idx - (readsBefore.get(table)?.idx ?? 0),
  }));
  const executionRows = reads.filter((r) => r.table === "rollout_executions").reduce((n, r) => n + r.seq + r.idx, 0);
  log(
    `${run}: rows read per execution, by table (sequential scans / index fetches): ` +
      reads.filter((r) => r.seq + r.idx > 0).map((r) => `${r.table} ${round(r.seq / o.devices)} / ${round(r.idx / o.devices)}`).join(", "),
  );
  const done = await rolloutOf(b, id);
  const executions = await executionsOf(b, id);
  const simSummary = await sim.stop();
  // The scheduler's passes, from each execution's (last) claim: how many it claims at once, how often, and how long its sends take.
  const passes = (
    await own<{ at: Date; n: number; last: string }>(
      c,
      `select dispatched_at at, count(*)::int n, max((attempts->-1->>'notifiedAt')::bigint) last
       from rollout_executions where rollout_id = $1 and dispatched_at is not null group by dispatched_at order by dispatched_at`,
      [id],
    )
  ).rows;
  const passGaps = passes.slice(1).map((p, i) => p.at.getTime() - passes[i]!.at.getTime());
  const sendSpans = passes.map((p) => Number(p.last) - p.at.getTime()).filter(Number.isFinite);
  const resultsAfter = await ingestResults(b);
  const results = [...resultsAfter]
    .map(([k, v]) => [k, v - (resultsBefore.get(k) ?? 0)] as const)
    .filter(([, v]) => v > 0)
    .map(([k, v]) => `${k} ${v}`)
    .join(", ");
  log(`${run}: device messages taken: ${results}; simulator: ${JSON.stringify(simSummary)}`);
  const unacknowledged = [...resultsAfter].filter(([k]) => k.endsWith(" unacknowledged")).reduce((n, [k, v]) => n + v - (resultsBefore.get(k) ?? 0), 0);
  if (unacknowledged > 0) c.warnings.push(`${run}: the server left ${unacknowledged} device messages unacknowledged (${results})`);
  const deferred = (await metric(b.server.httpUrl, "iothub_ota_rollout_reports_deferred_total")) - deferredBefore;
  if (deferred > 0) c.warnings.push(`${run}: ${deferred} stored progress reports could not be applied to their execution at once (iothub_ota_rollout_reports_deferred_total)`);

  const firsts = executions.flatMap((e) => (e.attempts[0] ? [Date.parse(e.attempts[0].notifiedAt)] : [])).sort((x, y) => x - y);
  const allNotified = executions.flatMap((e) => e.attempts.map((a) => Date.parse(a.notifiedAt))).sort((x, y) => x - y);
  const createdAt = Date.parse(done.createdAt);
  const span = (firsts.at(-1)! - firsts[0]!) / 1000;
  const q = (p: number) => firsts[Math.min(firsts.length - 1, Math.floor(p * firsts.length))]!;
  let peak = 0;
  for (let i = 1; i < commandSamples.length; i++) {
    const a = commandSamples[i - 1]!;
    const z = commandSamples[i]!;
    peak = Math.max(peak, ((z.sent - a.sent) * 1000) / (z.at - a.at));
  }
  const left = executions.filter((e) => !FINAL.includes(e.state));
  // When each execution reached its final state: its last attempt's end.
  const ends = executions.flatMap((e) => (e.attempts.at(-1)?.endedAt ? [Date.parse(e.attempts.at(-1)!.endedAt!)] : [])).sort((x, y) => x - y);
  const endAt = (p: number) => ends[Math.min(ends.length - 1, Math.ceil(p * ends.length) - 1)]!;
  const byState: Record<string, number> = {};
  for (const e of executions) byState[e.state] = (byState[e.state] ?? 0) + 1;
  const attempts = allNotified.length;
  const retried = executions.filter((e) => e.attempts.length > 1).length;
  const onTarget = await onVersion(c, version);

  if (done.state !== "COMPLETED") c.problems.push(`${run}: the rollout ended ${done.state}, not COMPLETED`);
  if (left.length > 0) await diagnose(c, id);
  if (left.length > 0) {
    const states = [...new Set(left.map((e) => e.state))].join(", ");
    c.problems.push(`${run}: ${left.length} executions not in a final state after the rollout ended (${states})`);
  }
  if (done.counts.inProgress + done.counts.queued > 0) c.problems.push(`${run}: counts show ${done.counts.inProgress} in progress, ${done.counts.queued} queued after the end`);
  if (executions.length !== o.devices) c.problems.push(`${run}: ${executions.length} executions for ${o.devices} devices`);
  if (byState.SUCCEEDED !== onTarget) c.problems.push(`${run}: ${byState.SUCCEEDED ?? 0} executions SUCCEEDED but ${onTarget} devices report ${version}`);
  if (simSummary && simSummary.states.succeeded !== (byState.SUCCEEDED ?? 0)) {
    c.warnings.push(`${run}: the simulator counts ${simSummary.states.succeeded} devices upgraded, the rollout ${byState.SUCCEEDED ?? 0} SUCCEEDED`);
  }
  const finalCheck = left.length === 0 && done.counts.inProgress + done.counts.queued === 0 ? "all final" : `${left.length} left`;
  log(`${run}: ${done.state} in ${round(observedSeconds)} s; ${JSON.stringify(byState)}; ${finalCheck}`);

  return {
    run,
    devices: o.devices,
    "fail %": failPercent,
    "max in progress": o.maxInProgress === 0 ? "none" : o.maxInProgress,
    "connect s": connectSeconds,
    "rollout s": done.finishedAt ? round((Date.parse(done.finishedAt) - createdAt) / 1000) : "-",
    "observed s": round(observedSeconds),
    "50 % final s": ends.length ? round((endAt(0.5) - createdAt) / 1000, 1) : "-",
    "99 % final s": ends.length ? round((endAt(0.99) - createdAt) / 1000, 1) : "-",
    "1st notify s": firsts.length ? round((firsts[0]! - createdAt) / 1000, 2) : "-",
    "notifications/s": firsts.length > 1 ? Math.round((firsts.length - 1) / span) : "-",
    "p10-p90 /s": firsts.length > 10 ? Math.round((0.8 * firsts.length) / ((q(0.9) - q(0.1)) / 1000)) : "-",
    "peak 1s /s": Math.round(peak),
    "commands sent": commandsAfter - commandsBefore,
    passes: passes.length,
    "claims/pass": passes.length ? Math.round(passes.reduce((n, p) => n + p.n, 0) / passes.length) : "-",
    "pass every s": passGaps.length ? round(passGaps.reduce((a, g) => a + g, 0) / passGaps.length / 1000, 2) : "-",
    "sending s/pass": sendSpans.length ? round(sendSpans.reduce((a, g) => a + g, 0) / sendSpans.length / 1000, 2) : "-",
    attempts,
    retried,
    "server cpu s": round(used.server, 2),
    "server ms/exec": round((used.server * 1000) / o.devices, 2),
    "db ms/exec": round((used.db * 1000) / o.devices, 2),
    "autovacuum cpu s": round(used.autovacuum, 1),
    "db queries/exec": round(xacts / o.devices, 1),
    // One execution's own rows are a handful; more means statements that read the whole rollout (plans, see the log line).
    "execution rows read/exec": Math.round(executionRows / o.devices),
    "sim cpu s": round(used.simulator, 1),
    "machine cores": round(used.machineCores, 2),
    "others cores": round(used.othersCores, 2),
    loadavg: used.loadavg,
    state: done.state,
    succeeded: byState.SUCCEEDED ?? 0,
    failed: (byState.FAILED ?? 0) + (byState.TIMED_OUT ?? 0),
    final: finalCheck,
    failureClasses: done.counts.byFailureClass.map((f) => `${f.failureClass} ${f.count}`).join(", ") || "-",
    "sim failed downloads": simSummary ? simSummary.states.failed_download : "-",
  };
}

// ---- ingest with and without an active rollout --------------------------------------------------

/**
 * `perDevice` DOWNLOADING reports of `version` from each client, `rate` per
 * second in all, progress rising 0..99 so that none is behind the stored one.
 */
async function publishReports(clients: MqttClient[], devices: LoadDevice[], version: string, perDevice: number, rate: number): Promise<number> {
  const total = clients.length * perDevice;
  const pending: Promise<unknown>[] = [];
  const start = performance.now();
  let next = 0;
  while (next < total) {
    const due = Math.min(total, Math.floor(((performance.now() - start) / 1000) * rate));
    for (; next < due; next++) {
      const i = next % clients.length;
      const n = Math.floor(next / clients.length);
      const d = devices[i]!;
      const payload = JSON.stringify({ version, type: "firmware", progress: Math.min(99, Math.floor((n * 100) / perDevice)), desc: "download" });
      pending.push(clients[i]!.publishAsync(`update_ota_status/${d.productName}/${d.deviceName}/${new ObjectId().toHexString()}`, payload, { qos: 1 }));
    }
    await sleep(5);
  }
  await Promise.all(pending);
  return total;
}

/** Rows read by sequential scans and index fetches so far, per table of the benchmark's database. */
async function tableReads(c: Context): Promise<Map<string, { seq: number; idx: number }>> {
  const r = await own<{ relname: string; seq: string | null; idx: string | null }>(c, `select relname, seq_tup_read seq, idx_tup_fetch idx from pg_stat_user_tables`);
  return new Map(r.rows.map((row) => [row.relname, { seq: Number(row.seq ?? 0), idx: Number(row.idx ?? 0) }]));
}

/** Transactions committed in the benchmark's database (each query outside a transaction is one). */
async function transactions(c: Context): Promise<number> {
  const r = await own<{ n: string }>(c, `select xact_commit n from pg_stat_database where datname = $1`, [c.dbName]);
  return Number(r.rows[0]?.n ?? 0) - c.ownQueries;
}

async function ingestRun(c: Context, clients: MqttClient[], devices: LoadDevice[], run: string, version: string, rollout: string) {
  const { o, b } = c;
  const accepted = () => metric(b.server.httpUrl, "iothub_ota_ingest_messages_total", { kind: "ota_status", result: "accepted" });
  const all = () => metric(b.server.httpUrl, "iothub_ota_ingest_messages_total", { kind: "ota_status" });
  const acceptedBefore = await accepted();
  const allBefore = await all();
  const resultsBefore: Record<string, number> = {};
  for (const result of ["duplicate", "stale", "ignored", "failed"]) {
    resultsBefore[result] = await metric(b.server.httpUrl, "iothub_ota_ingest_messages_total", { kind: "ota_status", result });
  }
  const xactBefore = await transactions(c);
  const cpu = new CpuMeter(b.server.process.pid as number, c.dbName, [c.monitorPid]);
  const t0 = performance.now();
  const total = await publishReports(clients, devices, version, o.ingestReports, o.ingestRate);
  await waitFor(`${total} reports handled`, async () => (await all()) - allBefore >= total, 120_000, 50);
  const used = cpu.stop();
  const seconds = (performance.now() - t0) / 1000;
  // PostgreSQL publishes an idle backend's counts within 10 s (PGSTAT_IDLE_INTERVAL): read them after that.
  await sleep(11_000);
  const xacts = (await transactions(c)) - xactBefore;
  const stored = (await accepted()) - acceptedBefore;
  const others: string[] = [];
  for (const result of ["duplicate", "stale", "ignored", "failed"]) {
    const n = (await metric(b.server.httpUrl, "iothub_ota_ingest_messages_total", { kind: "ota_status", result })) - (resultsBefore[result] ?? 0);
    if (n > 0) others.push(`${result} ${n}`);
  }
  if (stored !== total) c.problems.push(`ingest ${run}: ${stored} of ${total} reports accepted (${others.join(", ")})`);
  return {
    run,
    version,
    rollout,
    reports: total,
    accepted: stored,
    "not accepted": others.join(", ") || "-",
    "reports/s": Math.round(total / seconds),
    "server cpu us/report": round((used.server * 1e6) / total),
    "db cpu us/report": round((used.db * 1e6) / total),
    "server+db us/report": round(((used.server + used.db) * 1e6) / total),
    "db queries/report": round(xacts / total, 2),
    "machine cores": round(used.machineCores, 2),
    "others cores": round(used.othersCores, 2),
    loadavg: used.loadavg,
  };
}

/**
 * Server CPU per progress report, for a version no rollout targets and for
 * the version of a rollout whose executions are in progress (the clients
 * never finish: they ignore the command and keep reporting), alternated so
 * that the machine's drift shows.
 */
async function runIngest(c: Context, productName: string) {
  const { o, b } = c;
  const devices: LoadDevice[] = Array.from({ length: o.ingestDevices }, (_, i) => ({ productName, deviceName: `dev-${String(i).padStart(6, "0")}`, secret: SECRET }));
  log(`ingest: connecting ${devices.length} MQTT clients (not timed)`);
  const clients = await connectDevices(b.mqttUrl, devices);
  const rows: Record<string, unknown>[] = [];
  const target = "4.0";
  const other = "9.0";
  try {
    log(`ingest: ${o.ingestDevices} x ${o.ingestReports} reports at ${o.ingestRate}/s, no rollout in the product`);
    rows.push(await ingestRun(c, clients, devices, "a0", other, "none"));
    const input = {
      productName,
      name: "bench ingest",
      target: { wholeProduct: true },
      firmware: { ...c.fw.file, version: target, type: "firmware", sha256: c.sha256 },
      policy: { inProgressTimeoutSeconds: 3600 },
    };
    const { createRollout } = await gql<{ createRollout: { id: string } }>(b.graphqlUrl, CREATE, { input });
    const id = createRollout.id;
    await waitFor(`every ingest device NOTIFIED`, async () => (await rolloutOf(b, id)).counts.notified >= o.ingestDevices, 60_000, 250);
    log(`ingest: rollout of ${target} RUNNING, ${o.ingestDevices} executions NOTIFIED`);
    for (const [run, version, rollout] of [
      ["b1", target, "active, this version"],
      ["a1", other, "active, another version"],
      ["b2", target, "active, this version"],
      ["a2", other, "active, another version"],
    ] as const) {
      rows.push(await ingestRun(c, clients, devices, run, version, rollout));
      log(`ingest: ${run} done`);
    }
    const r = await rolloutOf(b, id);
    if (r.state !== "RUNNING" || r.counts.downloading !== o.ingestDevices) {
      c.problems.push(`ingest: the rollout is ${r.state} with ${r.counts.downloading} of ${o.ingestDevices} executions DOWNLOADING`);
    }
    await gql(b.graphqlUrl, CANCEL, { id });
  } finally {
    await Promise.all(clients.map((cl) => cl.endAsync(true)));
  }
  return rows;
}

// ---- setup --------------------------------------------------------------------------------------

async function seed(db: pg.Client, productName: string, count: number): Promise<void> {
  await db.query(
    `insert into devices (product_name, device_name, secret_hash, tags)
     select $1, 'dev-' || lpad(g::text, 6, '0'), $2, '{}'::text[] from generate_series(0, $3::int - 1) g`,
    [productName, cheapHash(SECRET), count],
  );
}

async function dropRedisPrefix(prefix: string): Promise<number> {
  const redis = new Redis(REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 1 });
  await redis.connect();
  let removed = 0;
  try {
    let cursor = "0";
    do {
      const [next, keys] = await redis.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 2000);
      cursor = next;
      if (keys.length > 0) removed += await redis.unlink(...keys);
    } while (cursor !== "0");
  } finally {
    redis.disconnect();
  }
  return removed;
}

/**
 * Rollouts driven by a server of its own (embedded broker, a PostgreSQL
 * database of its own, its own Redis prefix) against simulated devices in a
 * process of their own: time to COMPLETED, notifications per second and CPU
 * per execution; ingest cost per report with and without an active rollout;
 * and the same rollout with injected download failures cured by retries,
 * checking that every execution ends in a final state.
 */
export async function rolloutBench(o: RolloutBenchOptions): Promise<RolloutBenchResult> {
  const redisPrefix = `${uniq("bench-rollout")}:`;
  const database = await benchDatabase();
  const dbName = database.name;
  const url = new URL(database.url);
  const problems: string[] = [];
  const warnings: string[] = [];
  const rollouts: Record<string, unknown>[] = [];
  let ingest: Record<string, unknown>[] = [];
  const fw = new FirmwareServer(o.firmwareBytes);
  await fw.start();
  const credentialsFile = `/tmp/iothub-ota-rollout-bench-${randomBytes(4).toString("hex")}.json`;
  let b: BenchServer | undefined;
  let db: pg.Client | undefined;
  const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
  const started = performance.now();
  try {
    b = await startServer(undefined, { DATABASE_URL: url.toString(), REDIS_PREFIX: redisPrefix, ROLLOUT_TICK_MS: String(o.tickMs) });
    db = new pg.Client({ connectionString: url.toString() });
    await db.connect();
    const monitorPid = (await db.query<{ pid: number }>(`select pg_backend_pid() pid`)).rows[0]!.pid;
    const productName = uniq("ro");
    const ingestProduct = uniq("ingest");
    await seed(db, productName, o.devices);
    await seed(db, ingestProduct, o.ingestDevices);
    await writeFile(
      credentialsFile,
      JSON.stringify(Array.from({ length: o.devices }, (_, i) => ({ productName, deviceName: `dev-${String(i).padStart(6, "0")}`, secret: SECRET }))),
      { mode: 0o600 },
    );
    const c: Context = {
      o,
      b,
      db,
      dbName,
      monitorPid,
      fw,
      sha256: createHash("sha256").update(fw.file.url).digest("hex"),
      credentialsFile,
      productName,
      redis,
      redisPrefix,
      problems,
      warnings,
      ownQueries: 0,
    };
    if (o.phases.includes("rollout")) rollouts.push(await runRollout(c, "rollout", "1.0", "2.0", 0));
    if (o.phases.includes("ingest")) ingest = await runIngest(c, ingestProduct);
    if (o.phases.includes("failures")) rollouts.push(await runRollout(c, "with failures", "2.0", "3.0", o.failPercent));
  } finally {
    if ((problems.length > 0 || warnings.length > 0) && b) {
      const file = `/tmp/iothub-ota-rollout-bench-server-${randomBytes(4).toString("hex")}.log`;
      await writeFile(file, b.server.logs);
      log(`the server's log (warnings and errors) is in ${file}; its last lines:\n${serverLog(b)}`);
    }
    redis.disconnect();
    await db?.end().catch(() => undefined);
    const stopping = performance.now();
    await b?.stop();
    log(`server stopped in ${round((performance.now() - stopping) / 1000)} s; cleaning up`);
    await fw.stop();
    await rm(credentialsFile, { force: true });
    await database.drop();
    await dropRedisPrefix(redisPrefix).catch((err: unknown) => log(`could not remove the Redis keys ${redisPrefix}*: ${String(err)}`));
    log("cleaned up");
  }

  const mean = (xs: number[]) => (xs.length ? xs.reduce((a, x) => a + x, 0) / xs.length : Number.NaN);
  const pick = (prefix: string, col: string) => ingest.filter((r) => String(r.run).startsWith(prefix) && r.run !== "a0").map((r) => r[col] as number);
  const ratio = (col: string) => round(mean(pick("b", col)) / mean(pick("a", col)), 3);
  const first = rollouts.find((r) => r.run === "rollout");
  const failing = rollouts.find((r) => r.run === "with failures");
  const summary: Record<string, unknown> = {
    devices: o.devices,
    "total s": round((performance.now() - started) / 1000),
    ...(first && {
      rolloutSeconds: first["rollout s"],
      notificationsPerSecond: first["notifications/s"],
      serverCpuMsPerExecution: first["server ms/exec"],
      dbCpuMsPerExecution: first["db ms/exec"],
    }),
    ...(ingest.length > 0 && {
      ingestServerUsPerReport: {
        noRollout: ingest.find((r) => r.run === "a0")?.["server cpu us/report"],
        otherVersion: round(mean(pick("a", "server cpu us/report"))),
        activeRollout: round(mean(pick("b", "server cpu us/report"))),
      },
      ingestRatioServer: ratio("server cpu us/report"),
      ingestRatioServerPlusDb: ratio("server+db us/report"),
      ingestGoalMet: ratio("server cpu us/report") <= 1.1,
    }),
    ...(failing && {
      failuresRolloutSeconds: failing["rollout s"],
      failuresRetried: failing.retried,
      failuresFinal: failing.final,
      failuresFailed: failing.failed,
    }),
    problems,
    warnings,
  };
  return { rollouts, ingest, summary, problems, warnings };
}

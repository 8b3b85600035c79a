// `npm run bench [-- <benchmark> --flags]`: benchmarks of a running server on
// loopback, each printing a JSON line and a table. Never part of `npm test`.
import "reflect-metadata";
import { Command } from "commander";
import { dashboardBench, type DashboardBenchOptions } from "./dashboard.js";
import { downloadsBench, parseSize, type DownloadsOptions } from "./downloads.js";
import { capacityBench, type CapacityOptions } from "./capacity.js";
import { fleetBench, type FleetOptions } from "./fleet.js";
import { ingestBench } from "./ingest.js";
import { memoryBench, type MemorySetup } from "./memory.js";
import { queriesBench, type QueriesOptions } from "./queries.js";
import { rolloutBench, type RolloutBenchOptions } from "./rollout.js";
import { simulatorBench, type SimulatorOptions } from "./simulator.js";
import { subscriptionsBench, type SubscriptionsOptions } from "./subscriptions.js";
import { report } from "./lib.js";

const int = (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new Error(`expected a positive integer, got ${v}`);
  return n;
};

const count = (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new Error(`expected a whole number, got ${v}`);
  return n;
};

const percent = (v: string) => {
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0 || n > 100) throw new Error(`expected a percentage 0..100, got ${v}`);
  return n;
};

const program = new Command("bench");
program
  .command("ingest")
  .description("device reports through the broker into the server, vs a bare subscriber and the seed design")
  .option("--devices <n>", "publishing devices", int, 20)
  .option("--reports <n>", "reports per device", int, 500)
  .option("--brokers <list>", "mosquitto,embedded", "mosquitto,embedded")
  .option("--subscribers <n>", "graphql-ws subscribers that must receive every report (0: stored only)", (v: string) => Number(v), 1)
  .option("--no-references", "skip the bare-subscriber and seed-design runs")
  .option("--instances <n>", "server instances sharing Redis (embedded: over the Redis bus, with a PostgreSQL database of their own)", int, 1)
  .action(async (o: { devices: number; reports: number; subscribers: number; brokers: string; references: boolean; instances: number }) => {
    const brokers = o.brokers.split(",") as ("mosquitto" | "embedded")[];
    const rows = await ingestBench({ ...o, brokers, noReferences: !o.references });
    report("ingest", rows, { devices: o.devices, reports: o.reports, subscribers: o.subscribers, instances: o.instances });
  });

program
  .command("queries")
  .description("otaProgress, otaProgresses and the REST read at fixed concurrency (autocannon)")
  .option("--devices <n>", "devices in the otaProgresses query", int, 1000)
  .option("--connections <n>", "concurrent connections", int, 10)
  .option("--seconds <n>", "seconds per query", int, 10)
  .action(async (o: QueriesOptions) => report("queries", await queriesBench(o), { ...o }));

program
  .command("subscriptions")
  .description("graphql-ws subscribers on one or two instances: fan-out latency and memory per subscriber")
  .option("--subscribers <n>", "concurrent subscribers", int, 1000)
  .option("--instances <n>", "server instances sharing Redis and one Mosquitto (1 or 2)", int, 1)
  .option("--reports <n>", "reports fanned out, one at a time", int, 20)
  .option("--client <kind>", "the subscribers: raw graphql-transport-ws sockets that read each frame's sentAt (raw), or graphql-ws' own client", "raw")
  .option("--warmup <n>", "unmeasured reports first", count, 1)
  .action(async (o: SubscriptionsOptions) => report("subscriptions", await subscriptionsBench(o), { ...o }));

program
  .command("fleet")
  .description("sendOta to a tag held by N registered devices, and listing them all with devices(tag)")
  .option("--devices <n>", "registered devices with the tag", int, 100_000)
  .option("--page-size <n>", "devices per page", int, 1000)
  .action(async (o: FleetOptions) => report("fleet", await fleetBench(o), { ...o }));

program
  .command("simulator")
  .description("simulated devices in one process: connection setup rate and memory per device")
  .option("--devices <n>", "devices against a Mosquitto of its own", int, 10_000)
  .option("--embedded-devices <n>", "devices against the embedded broker (scrypt on first connect)", int, 500)
  .action(async (o: SimulatorOptions) => report("simulator", await simulatorBench(o), { ...o }));

program
  .command("rollout")
  .description(
    "a rollout over N simulated devices (simulator in its own process): time to COMPLETED, notifications/s, server CPU per execution; " +
      "ingest CPU per report with and without an active rollout; the same rollout with injected download failures and retries",
  )
  .option("--devices <n>", "simulated devices in the rollouts", int, 10_000)
  .option("--fail-percent <p>", "upgrades that fail to download (-1) in the run with failures", percent, 5)
  .option("--max-in-progress <n>", "the rollouts' policy.maxInProgress (0: no bound)", count, 1000)
  .option("--max-attempts <n>", "attempts per device for DOWNLOAD_FAILED in the run with failures (first included)", int, 4)
  .option("--backoff-seconds <s>", "retry backoff, doubling up to twice this", int, 1)
  .option("--install-ms <ms>", "the simulated devices' install time", count, 50)
  .option("--firmware-bytes <n>", "size of the firmware file the devices download", int, 4096)
  .option("--tick-ms <ms>", "the server's ROLLOUT_TICK_MS (pause between scheduler passes)", int, 1000)
  .option("--ingest-devices <n>", "MQTT clients reporting progress in the ingest runs", int, 200)
  .option("--ingest-reports <n>", "reports per client per ingest run", int, 50)
  .option("--ingest-rate <n>", "reports per second offered in the ingest runs", int, 1000)
  .option("--phases <list>", "rollout,ingest,failures", "rollout,ingest,failures")
  .action(async (o: Omit<RolloutBenchOptions, "phases"> & { phases: string }) => {
    const phases = o.phases.split(",").map((p) => p.trim()) as RolloutBenchOptions["phases"];
    const unknown = phases.filter((p) => !["rollout", "ingest", "failures"].includes(p));
    if (unknown.length > 0) throw new Error(`--phases: unknown ${unknown.join(", ")} (rollout, ingest, failures)`);
    const r = await rolloutBench({ ...o, phases });
    const { phases: _, ...flags } = o;
    if (r.rollouts.length > 0) report("rollout", r.rollouts, { ...flags });
    if (r.ingest.length > 0) report("rollout-ingest", r.ingest, { devices: o.ingestDevices, reports: o.ingestReports, rate: o.ingestRate });
    process.stdout.write(`${JSON.stringify({ bench: "rollout-summary", ...r.summary })}\n`);
    for (const w of r.warnings) process.stderr.write(`warning: ${w}\n`);
    if (r.problems.length > 0) throw new Error(`rollout benchmark: ${r.problems.join("; ")}`);
  });

program
  .command("downloads")
  .description("N devices downloading one firmware artifact at once by signed URL, beside nginx serving the same file in the same run")
  .option("--devices <n>", "concurrent downloads (one connection each)", int, 200)
  .option("--size <bytes>", "artifact size: 10MB, 512KiB, ...", parseSize, 10_000_000)
  .option("--rounds <n>", "rounds per target, interleaved", int, 3)
  .option("--clients <n>", "client threads sharing the devices", int, 2)
  .option("--hash-every <n>", "md5 every n-th download (1: all)", int, 10)
  .option("--client <kind>", "node (threads of http.get, every download checked) or wrk (keep-alive, for --seconds a round)", "node")
  .option("--seconds <n>", "seconds per round with --client wrk", int, 15)
  .option("--no-references", "skip the bare Node server and nginx without sendfile")
  .action(async (o: DownloadsOptions) => {
    if (o.client !== "node" && o.client !== "wrk") throw new Error(`--client: node or wrk, not ${String(o.client)}`);
    const { rows, summary } = await downloadsBench(o);
    report("downloads", rows, { devices: o.devices, size: o.size, rounds: o.rounds, clients: o.clients, client: o.client });
    process.stdout.write(`${JSON.stringify(summary)}\n`);
    const problems = summary.problems as string[];
    if (problems.length > 0) throw new Error(`downloads benchmark: ${problems.join("; ")}`);
  });

program
  .command("capacity")
  .description("what a connected device, a progress report and a command cost the server and Redis (a Redis of its own): the capacity model's inputs")
  .option("--devices <n>", "connected devices", int, 1000)
  .option("--reports <n>", "progress reports per device", int, 20)
  .action(async (o: CapacityOptions) => {
    report("capacity", await capacityBench(o), { ...o });
  });

program
  .command("dashboard")
  .description("Chromium on the rollout and devices pages during a rollout over N simulated devices: long tasks, frame rate, WebSocket messages, JS heap; the page's counts against the API's")
  .option("--devices <n>", "simulated devices in the rollout", int, 10_000)
  .option("--max-in-progress <n>", "the rollout's policy.maxInProgress (0: no bound)", count, 0)
  .option("--step <percent>", "the devices report progress every this many percent", int, 10)
  .option("--install-ms <ms>", "the simulated devices' install time", count, 500)
  .option("--tick-ms <ms>", "the server's ROLLOUT_TICK_MS", int, 1000)
  .action(async (o: DashboardBenchOptions) => {
    const r = await dashboardBench(o);
    report("dashboard", r.rows, r.summary);
    if (r.problems.length > 0) throw new Error(`dashboard benchmark: ${r.problems.join("; ")}`);
  });

program
  .command("memory")
  .description("an idle server with one simulated device: resident memory over time, on PostgreSQL and PGlite (runs dist/: npm run build first); --breakdown: what each part costs")
  .option("--setups <list>", "postgres,pglite (pglite: a first start on an empty DATA_DIR, then a restart on it)", "postgres,pglite")
  .option("--runs <n>", "runs per setup", int, 3)
  .option("--seconds <n>", "seconds each server is sampled, from its spawn", int, 90)
  .option("--breakdown", "also run the measuring child once per setup: the dependency groups imported one at a time, the schema, the start, the device", false)
  .option("--root <dir>", "the checkout whose dist/ is measured (default: this one)")
  .option("--env <list>", "more settings for the server, K=V,... (e.g. GLIBC_TUNABLES=glibc.malloc.mmap_threshold=131072, as npm start sets it)", "")
  .action(async (o: { setups: string; runs: number; seconds: number; breakdown: boolean; root?: string; env: string }) => {
    const setups = o.setups.split(",").map((s) => s.trim()) as MemorySetup[];
    const unknown = setups.filter((s) => s !== "postgres" && s !== "pglite");
    if (unknown.length > 0) throw new Error(`--setups: unknown ${unknown.join(", ")} (postgres, pglite)`);
    const pairs = o.env.split(",").filter(Boolean);
    const bad = pairs.filter((kv) => kv.indexOf("=") < 1);
    if (bad.length > 0) throw new Error(`--env: expected K=V, got ${bad.join(", ")}`);
    const env = Object.fromEntries(pairs.map((kv) => [kv.slice(0, kv.indexOf("=")), kv.slice(kv.indexOf("=") + 1)]));
    const r = await memoryBench({ runs: o.runs, seconds: o.seconds, setups, breakdown: o.breakdown, root: o.root, env });
    if (r.breakdown.length > 0) report("memory-breakdown", r.breakdown);
    report("memory", r.runs, { seconds: o.seconds, env: o.env });
    report("memory-summary", r.summary, { env: o.env });
  });

program
  .command("all", { isDefault: true })
  .description("every benchmark with its defaults (what BENCHMARKS.md records)")
  .action(async () => {
    report("ingest", await ingestBench({ devices: 20, reports: 1000, subscribers: 1, brokers: ["mosquitto", "embedded"] }));
    report("queries", await queriesBench({ devices: 1000, connections: 1, seconds: 10 }));
    report("queries", await queriesBench({ devices: 1000, connections: 10, seconds: 10 }));
    for (const [subscribers, instances] of [[1000, 1], [10_000, 1], [10_000, 2]] as const) {
      report("subscriptions", await subscriptionsBench({ subscribers, instances, reports: 10 }));
    }
    report("fleet", await fleetBench({ devices: 100_000, pageSize: 1000 }));
    report("simulator", await simulatorBench({ devices: 10_000, embeddedDevices: 500 }));
  });

await program.parseAsync();

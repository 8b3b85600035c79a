import { spawn } from "node:child_process";
import { print } from "graphql";
import type { MqttClient } from "mqtt";
import { registerDevices } from "../src/sim/sim.fleet.js";
import { connectDevices, publishLoad, type LoadDevice } from "./load.js";
import { benchDatabase, cpuSeconds, metric, nowMs, OwnMosquitto, percentile, REDIS_URL, round, sleep, startServer, TOKEN, uniq, wsClient, type BenchServer } from "./lib.js";
import { OtaProgressChangedDocument } from "../src/client/generated/graphql.js";

export interface IngestOptions {
  devices: number;
  reports: number;
  brokers: ("mosquitto" | "embedded")[];
  /** graphql-ws subscribers that must receive every report (0: count stored reports only). */
  subscribers: number;
  /** Skip the reference runs. */
  noReferences?: boolean;
  /**
   * Server instances sharing Redis (default 1). Through Mosquitto they split
   * the reports by one MQTT shared subscription; embedded, each runs its own
   * broker over the Redis bus (BROKER_BUS=redis) and a PostgreSQL database of
   * the bench's, and the devices connect to them in turn. The subscriber is
   * on the first instance; CPU is the sum over all instances.
   */
  instances?: number;
}


/** One deployment under test: its instances, as one. */
interface Deployment {
  servers: BenchServer[];
  stop(): Promise<void>;
}

async function deploy(broker: "mosquitto" | "embedded", mosquittoUrl: string, instances: number): Promise<Deployment> {
  if (instances === 1) {
    const b = await startServer(broker === "mosquitto" ? mosquittoUrl : undefined);
    return { servers: [b], stop: () => b.stop() };
  }
  const servers: BenchServer[] = [];
  // Instances of one deployment share one registry and one keyspace (each with a PGlite of its own, a report
  // of a device registered through another instance would be one of an unknown device).
  const database = await benchDatabase();
  const dropDatabase = database.drop;
  const env: Record<string, string> = {
    MQTT_SHARE_GROUP: uniq("bench"),
    DATABASE_URL: database.url,
    REDIS_PREFIX: `${uniq("bench-ingest")}:`,
    ...(broker === "embedded" ? { BROKER_BUS: "redis" } : {}),
  };
  try {
    for (let i = 0; i < instances; i++) servers.push(await startServer(broker === "mosquitto" ? mosquittoUrl : undefined, env));
  } catch (err) {
    for (const s of servers) await s.stop();
    await dropDatabase();
    throw err;
  }
  return {
    servers,
    stop: async () => {
      for (const s of servers) await s.stop();
      await dropDatabase();
    },
  };
}

interface Run {
  /** Server CPU time per report, microseconds (a steadier figure than rates on a shared machine). */
  cpuUs?: number;
  sent: number;
  received: number;
  stored: number;
  /** Dropped as behind the stored report of their device (server runs only). */
  stale?: number;
  seconds: number;
  latencies: number[];
}

async function devicesFor(servers: BenchServer[], count: number): Promise<{ devices: LoadDevice[]; clients: MqttClient[]; productName: string }> {
  const productName = uniq("bench");
  const first = servers[0] as BenchServer;
  const devices = await registerDevices(first.graphqlUrl, TOKEN, productName, count, []);
  // In turn over the instances' brokers (one broker URL for all through Mosquitto).
  const clients = await Promise.all(servers.map((s, i) => connectDevices(s.mqttUrl, devices.filter((_, j) => j % servers.length === i))));
  const byDevice = devices.map((_, j) => (clients[j % servers.length] as MqttClient[])[Math.floor(j / servers.length)] as MqttClient);
  return { devices, clients: byDevice, productName };
}

/** One load through the server: every report must reach a graphql-ws subscriber. */
async function runServer(d: Deployment, o: IngestOptions, rate: number): Promise<Run> {
  const b = d.servers[0] as BenchServer;
  const { devices, clients: mqttClients, productName } = await devicesFor(d.servers, o.devices);
  const total = o.devices * o.reports;
  const latencies: number[] = [];
  let lastAt = 0;
  let extraDeliveries = 0;
  const onReport = (sentAt: number, first: boolean) => {
    lastAt = nowMs();
    if (first) latencies.push(lastAt - sentAt);
    else extraDeliveries++;
  };
  const clients = await Promise.all(Array.from({ length: o.subscribers }, (_, i) => subscriber(b.wsUrl, productName, onReport, i === 0)));
  const pids = d.servers.map((s) => s.server.process.pid as number);
  const cpu = () => pids.reduce((sum, pid) => sum + cpuSeconds(pid), 0);
  const counted = async (result: string) =>
    (await Promise.all(d.servers.map((s) => metric(s.server.httpUrl, "iothub_ota_ingest_messages_total", { kind: "ota_status", result })))).reduce((a, n) => a + n, 0);
  const accepted = () => counted("accepted");
  const cpuBefore = cpu();
  const storedBefore = await accepted();
  const staleBefore = await counted("stale");
  const load = await publishLoad(mqttClients, devices, o.reports, rate);
  const storedNow = async () => (await accepted()) - storedBefore;
  if (o.subscribers === 0) {
    while ((await storedNow()) < total) await sleep(10);
    lastAt = nowMs();
  }
  await waitFor(() => o.subscribers === 0 || (latencies.length >= total && extraDeliveries >= total * (o.subscribers - 1)));
  const cpuUs = ((cpu() - cpuBefore) * 1e6) / total;
  const stored = await storedNow();
  // Behind a stored report of the same device (taken out of order by another instance): dropped on purpose, not lost.
  const stale = (await counted("stale")) - staleBefore;
  await Promise.all(clients.map((c) => Promise.resolve(c.dispose())));
  await Promise.all(mqttClients.map((c) => c.endAsync(true)));
  return { sent: load.sent, received: o.subscribers === 0 ? stored : latencies.length, stored, stale, seconds: (lastAt - load.firstSendAt) / 1000, latencies, cpuUs };
}

/** The same load through a reference subscriber in its own process (on the same broker). */
async function runReference(mode: "bare" | "seed", url: string, o: IngestOptions): Promise<Run> {
  const productName = uniq("ref");
  const devices = Array.from({ length: o.devices }, (_, i) => ({ productName, deviceName: `d${i}`, secret: "" }));
  const total = o.devices * o.reports;
  const child = spawn(process.execPath, ["--import", "tsx", new URL("reference.ts", import.meta.url).pathname, mode, url, `update_ota_status/${productName}/+/+`, String(total), REDIS_URL], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  let out = "";
  child.stdout.on("data", (d) => (out += d));
  await waitFor(() => out.includes("ready"), 20_000);
  const clients = await connectDevices(url, devices);
  const load = await publishLoad(clients, devices, o.reports, 0);
  await waitFor(() => out.includes("count"));
  child.kill();
  await Promise.all(clients.map((c) => c.endAsync(true)));
  const result = JSON.parse(out.split("\n").find((l) => l.includes("count")) ?? "{}") as { count: number; lastAt: number };
  return { sent: load.sent, received: result.count ?? 0, stored: result.count ?? 0, seconds: (result.lastAt - load.firstSendAt) / 1000, latencies: [] };
}

/** A graphql-ws subscriber to a product's progress; the first one records latencies. */
async function subscriber(url: string, productName: string, onReport: (sentAt: number, first: boolean) => void, first = true) {
  const ws = wsClient(url);
  await new Promise<void>((resolve) => {
    ws.on("connected", () => setTimeout(resolve, 300));
    ws.subscribe(
      { query: print(OtaProgressChangedDocument), variables: { productName } },
      {
        next: (r) => onReport((r.data as { otaProgressChanged: { raw: { sentAt: number } } }).otaProgressChanged.raw.sentAt, first),
        error: (e) => console.error("subscription error", e),
        complete: () => undefined,
      },
    );
  });
  return ws;
}

/** Waits until `done`, or gives up after `timeoutMs` (the row then shows what was lost). */
async function waitFor(done: () => boolean, timeoutMs = 60_000): Promise<void> {
  for (const deadline = Date.now() + timeoutMs; !done() && Date.now() < deadline; ) await sleep(20);
}

function row(name: string, broker: string, rate: string, r: Run, ceiling?: number, seed?: number) {
  const sorted = [...r.latencies].sort((a, b) => a - b);
  const throughput = r.received / r.seconds;
  return {
    run: name,
    broker,
    offered: rate,
    sent: r.sent,
    received: r.received,
    stored: r.stored,
    stale: r.stale ?? 0,
    lost: r.sent - Math.min(r.received, r.stored) - (r.stale ?? 0),
    "reports/s": Math.round(throughput),
    "server cpu us/report": r.cpuUs === undefined ? "-" : Math.round(r.cpuUs),
    "p50 ms": r.latencies.length ? round(percentile(sorted, 50)) : "-",
    "p95 ms": r.latencies.length ? round(percentile(sorted, 95)) : "-",
    "p99 ms": r.latencies.length ? round(percentile(sorted, 99)) : "-",
    "vs bare": ceiling ? `${Math.round((throughput / ceiling) * 100)}%` : "-",
    "vs seed": seed ? `${round(throughput / seed, 2)}x` : "-",
  };
}

export async function ingestBench(o: IngestOptions): Promise<Record<string, unknown>[]> {
  const rows: Record<string, unknown>[] = [];
  const mosquitto = await OwnMosquitto.start();
  try {
    let ceiling: number | undefined;
    let seed: number | undefined;
    if (o.brokers.includes("mosquitto") && !o.noReferences) {
      const bare = await runReference("bare", mosquitto.url, o);
      ceiling = bare.received / bare.seconds;
      rows.push(row("bare subscriber (ceiling)", "mosquitto", "max", bare));
      const seedRun = await runReference("seed", mosquitto.url, o);
      seed = seedRun.received / seedRun.seconds;
      rows.push(row("seed design", "mosquitto", "max", seedRun, ceiling));
    }
    const instances = o.instances ?? 1;
    const name = instances === 1 ? "iothub-ota" : `iothub-ota ×${instances}`;
    for (const broker of o.brokers) {
      const d = await deploy(broker, mosquitto.url, instances);
      try {
        const saturated = await runServer(d, o, 0);
        const sat = saturated.received / saturated.seconds;
        // The bare subscriber ran on this Mosquitto: the embedded broker's figure is set against the same ceiling.
        rows.push(row(name, broker, "max", saturated, ceiling, broker === "mosquitto" ? seed : undefined));
        const half = Math.max(1, Math.round(sat / 2));
        rows.push(row(name, broker, `${half}/s`, await runServer(d, o, half)));
      } finally {
        await d.stop();
      }
    }
  } finally {
    await mosquitto.stop();
  }
  return rows;
}

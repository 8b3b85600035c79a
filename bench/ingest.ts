import { spawn } from "node:child_process";
import { print } from "graphql";
import type { MqttClient } from "mqtt";
import { registerDevices } from "../src/sim/sim.fleet.js";
import { connectDevices, publishLoad, type LoadDevice } from "./load.js";
import { cpuSeconds, metric, nowMs, OwnMosquitto, percentile, REDIS_URL, round, sleep, startServer, TOKEN, uniq, wsClient, type BenchServer } from "./lib.js";
import { OtaProgressChangedDocument } from "../src/client/generated/graphql.js";

export interface IngestOptions {
  devices: number;
  reports: number;
  brokers: ("mosquitto" | "embedded")[];
  /** graphql-ws subscribers that must receive every report (0: count stored reports only). */
  subscribers: number;
  /** Skip the reference runs. */
  noReferences?: boolean;
}

interface Run {
  /** Server CPU time per report, microseconds (a steadier figure than rates on a shared machine). */
  cpuUs?: number;
  sent: number;
  received: number;
  stored: number;
  seconds: number;
  latencies: number[];
}

async function devicesFor(b: BenchServer, count: number): Promise<{ devices: LoadDevice[]; clients: MqttClient[]; productName: string }> {
  const productName = uniq("bench");
  const devices = await registerDevices(b.graphqlUrl, TOKEN, productName, count, []);
  return { devices, clients: await connectDevices(b.mqttUrl, devices), productName };
}

/** One load through the server: every report must reach a graphql-ws subscriber. */
async function runServer(b: BenchServer, o: IngestOptions, rate: number): Promise<Run> {
  const { devices, clients: mqttClients, productName } = await devicesFor(b, o.devices);
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
  const pid = b.server.process.pid as number;
  const cpuBefore = cpuSeconds(pid);
  const storedBefore = await metric(b.server.httpUrl, "iothub_ota_ingest_messages_total", { kind: "ota_status", result: "accepted" });
  const load = await publishLoad(mqttClients, devices, o.reports, rate);
  const storedNow = async () =>
    (await metric(b.server.httpUrl, "iothub_ota_ingest_messages_total", { kind: "ota_status", result: "accepted" })) - storedBefore;
  if (o.subscribers === 0) {
    while ((await storedNow()) < total) await sleep(10);
    lastAt = nowMs();
  }
  await waitFor(() => o.subscribers === 0 || (latencies.length >= total && extraDeliveries >= total * (o.subscribers - 1)));
  const cpuUs = ((cpuSeconds(pid) - cpuBefore) * 1e6) / total;
  const stored = await storedNow();
  await Promise.all(clients.map((c) => c.dispose()));
  await Promise.all(mqttClients.map((c) => c.endAsync(true)));
  return { sent: load.sent, received: o.subscribers === 0 ? stored : latencies.length, stored, seconds: (lastAt - load.firstSendAt) / 1000, latencies, cpuUs };
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
    lost: r.sent - Math.min(r.received, r.stored),
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
    for (const broker of o.brokers) {
      const b = await startServer(broker === "mosquitto" ? mosquitto.url : undefined);
      try {
        const saturated = await runServer(b, o, 0);
        const sat = saturated.received / saturated.seconds;
        const refs = broker === "mosquitto" ? [ceiling, seed] : [undefined, undefined];
        rows.push(row("iothub-ota", broker, "max", saturated, refs[0], refs[1]));
        const half = Math.max(1, Math.round(sat / 2));
        rows.push(row("iothub-ota", broker, `${half}/s`, await runServer(b, o, half)));
      } finally {
        await b.stop();
      }
    }
  } finally {
    await mosquitto.stop();
  }
  return rows;
}

import { spawn } from "node:child_process";
import autocannon from "autocannon";
import { print } from "graphql";
import mqtt from "mqtt";
import { ObjectId } from "bson";
import { OtaProgressDocument, OtaProgressesDocument } from "../src/client/generated/graphql.js";
import { cpuSeconds, freePort, metric, OwnMosquitto, REDIS_URL, round, sleep, startServer, TOKEN, uniq } from "./lib.js";

export interface QueriesOptions {
  devices: number;
  connections: number;
  seconds: number;
  /** Untimed seconds of each case before it is measured (the JIT warms up); default 2. The single read and the reference are measured in interleaved rounds of about 2 s. */
  warmupSeconds?: number;
  /** Only the cases whose names start with one of these (all when absent). */
  only?: string[];
}

const REFERENCE = "reference: IotHub REST (Express, one Redis GET)";

/** The seed's REST read in a process of its own (bench/reference.ts rest), reading the same Redis keys. */
async function startReference(): Promise<{ url: string; pid: number; stop(): void }> {
  const port = await freePort();
  const child = spawn(process.execPath, ["--import", "tsx", new URL("reference.ts", import.meta.url).pathname, "rest", String(port), REDIS_URL], {
    stdio: ["ignore", "pipe", "inherit"],
    env: { ...process.env, NODE_ENV: "production" },
  });
  let out = "";
  child.stdout.on("data", (d) => (out += d));
  const started = Date.now();
  while (!out.includes("ready")) {
    if (child.exitCode !== null || Date.now() - started > 20_000) throw new Error(`REST reference did not start: ${out}`);
    await sleep(20);
  }
  return { url: `http://127.0.0.1:${port}`, pid: child.pid as number, stop: () => void child.kill() };
}

/**
 * Reads at fixed concurrency: `otaProgress` for one device, `otaProgresses`
 * for many, and the IotHub REST read of one device on the same server; beside
 * them, in the same run, the IotHub server's own REST read (the reference).
 */
export async function queriesBench(o: QueriesOptions): Promise<Record<string, unknown>[]> {
  const mosquitto = await OwnMosquitto.start();
  const b = await startServer(mosquitto.url);
  const reference = await startReference();
  try {
    // Progress for every device, ingested the ordinary way (an external broker lets one client speak for all).
    const productName = uniq("q");
    const names = Array.from({ length: o.devices }, (_, i) => `dev-${i}`);
    const before = await metric(b.server.httpUrl, "iothub_ota_ingest_messages_total", { result: "accepted" });
    const client = await mqtt.connectAsync(mosquitto.url, { reconnectPeriod: 0 });
    await Promise.all(
      names.map((d, i) =>
        client.publishAsync(
          `update_ota_status/${productName}/${d}/${new ObjectId().toHexString()}`,
          JSON.stringify({ version: `2.${Math.floor(i / 101)}`, type: "firmware", progress: i % 101, desc: "download" }),
          { qos: 1 },
        ),
      ),
    );
    await client.endAsync();
    while ((await metric(b.server.httpUrl, "iothub_ota_ingest_messages_total", { result: "accepted" })) - before < o.devices) await sleep(20);

    const headers = { "content-type": "application/json", authorization: `Bearer ${TOKEN}` };
    const graphql = (query: string, variables: object) => ({
      url: b.graphqlUrl,
      method: "POST" as const,
      headers,
      body: JSON.stringify({ query, variables }),
    });
    const one = "otaProgress (1 device)";
    // The single read and its reference one after the other, so that their ratio is taken under the same other load.
    const cases = [
      { name: one, ...graphql(print(OtaProgressDocument), { productName, deviceName: names[0] }) },
      { name: REFERENCE, url: `${reference.url}/ota/${productName}/${names[0]}`, method: "GET" as const, headers: {}, pid: reference.pid },
      { name: "REST GET /ota/<product>/<device>", url: `${b.server.httpUrl}/ota/${productName}/${names[0]}`, method: "GET" as const, headers },
      { name: `otaProgresses (${o.devices} devices)`, ...graphql(print(OtaProgressesDocument), { productName, deviceNames: names }) },
    ].filter((c) => !o.only || o.only.some((prefix) => c.name.startsWith(prefix)));
    type Case = (typeof cases)[number];
    interface Tally { requests: number; seconds: number; p50: number[]; p99: number[]; cpu: number; client: number; errors: number }
    const tallies = new Map<Case, Tally>(cases.map((c) => [c, { requests: 0, seconds: 0, p50: [], p99: [], cpu: 0, client: 0, errors: 0 }]));
    const optionsOf = (c: Case) => ({ url: c.url, method: c.method, headers: c.headers, body: "body" in c ? c.body : undefined, connections: o.connections });
    const warmup = o.warmupSeconds ?? 2;
    const warm = async (c: Case) => {
      if (warmup > 0) await autocannon({ ...optionsOf(c), duration: warmup });
    };
    const measure = async (c: Case, seconds: number) => {
      const options = optionsOf(c);
      // CPU of the process answering (the server, or the reference) and of the load generator (this process).
      const pid = ("pid" in c ? c.pid : b.server.process.pid) as number;
      const cpuBefore = cpuSeconds(pid);
      const clientBefore = process.cpuUsage();
      const r = await autocannon({ ...options, duration: seconds });
      const client = process.cpuUsage(clientBefore);
      const t = tallies.get(c)!;
      t.requests += r.requests.total;
      t.seconds += r.duration;
      t.p50.push(r.latency.p50);
      t.p99.push(r.latency.p99);
      t.cpu += cpuSeconds(pid) - cpuBefore;
      t.client += (client.user + client.system) / 1e6;
      t.errors += r.errors + r.non2xx;
      return r.requests.total / r.duration;
    };
    // The single read and its reference in interleaved rounds (A B B A ...), so that their ratio is taken under the same
    // other load: on this shared machine a 10 s run of one and then the other can meet very different neighbours.
    const pair = cases.filter((c) => c.name === one || c.name === REFERENCE);
    const roundRatios: number[] = [];
    if (pair.length === 2) {
      const rounds = Math.max(2, Math.round(o.seconds / 2));
      for (const c of pair) await warm(c);
      for (let i = 0; i < rounds; i++) {
        const order = i % 2 === 0 ? pair : [...pair].reverse();
        const rates = new Map<Case, number>();
        for (const c of order) rates.set(c, await measure(c, o.seconds / rounds));
        roundRatios.push(rates.get(pair[0]!)! / rates.get(pair[1]!)!);
      }
    }
    for (const c of cases) {
      if (pair.length === 2 && pair.includes(c)) continue;
      await warm(c);
      await measure(c, o.seconds);
    }
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? Number.NaN;
    const rows: Record<string, unknown>[] = cases.map((c) => {
      const t = tallies.get(c)!;
      const perReq = (seconds: number) => Math.round((seconds * 1e6) / Math.max(1, t.requests));
      return {
        query: c.name,
        connections: o.connections,
        "req/s": Math.round(t.requests / t.seconds),
        "p50 ms": round(median(t.p50)),
        "p99 ms": round(median(t.p99)),
        "server CPU µs/req": perReq(t.cpu),
        "client CPU µs/req": perReq(t.client),
        errors: t.errors,
      };
    });
    const ours = rows.find((r) => r.query === one);
    const ref = rows.find((r) => r.query === REFERENCE);
    if (ours && ref) {
      rows.push({
        query: `${one} / reference (rounds min-max ${round(Math.min(...roundRatios), 2)}-${round(Math.max(...roundRatios), 2)})`,
        connections: o.connections,
        "req/s": round((ours["req/s"] as number) / (ref["req/s"] as number), 2),
        "p50 ms": "",
        "p99 ms": "",
        // What the ratio would be if both had the CPU they need: reference's CPU per request over ours.
        "server CPU µs/req": round((ref["server CPU µs/req"] as number) / (ours["server CPU µs/req"] as number), 2),
        "client CPU µs/req": "",
        errors: "",
      });
    }
    return rows;
  } finally {
    reference.stop();
    await b.stop();
    await mosquitto.stop();
  }
}

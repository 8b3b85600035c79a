import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { rm } from "node:fs/promises";
import { createClient, type Client } from "graphql-ws";
import pg from "pg";
import WebSocket from "ws";
import { freePort, OwnMosquitto, ServerProcess } from "../test/helpers/processes.js";

export { OwnMosquitto, ServerProcess, freePort };

export const REDIS_URL = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
/** The PostgreSQL server benches create their databases on. */
export const DATABASE_URL = process.env.DATABASE_URL ?? "postgresql://root@localhost/postgres?host=/var/run/postgresql";

/** A PostgreSQL database of the bench's own: its URL, and `drop()` (forced, best effort) when done. */
export async function benchDatabase(): Promise<{ name: string; url: string; drop(): Promise<void> }> {
  const name = `iothub_bench_${randomBytes(4).toString("hex")}`;
  const admin = new pg.Client({ connectionString: DATABASE_URL });
  await admin.connect();
  await admin.query(`create database ${name}`);
  const url = new URL(DATABASE_URL);
  url.pathname = `/${name}`;
  return {
    name,
    url: url.toString(),
    drop: async () => {
      await admin.query(`drop database if exists ${name} with (force)`).catch(() => undefined);
      await admin.end();
    },
  };
}
export const TOKEN = `bench-admin-${randomBytes(12).toString("hex")}`;

export const uniq = (prefix: string) => `${prefix}-${randomBytes(4).toString("hex")}`;

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Wall-clock milliseconds with sub-millisecond precision, comparable across processes. */
export const nowMs = () => performance.timeOrigin + performance.now();

export interface BenchServer {
  server: ServerProcess;
  /** Stops the server and removes its data folder. */
  stop(): Promise<void>;
  /** Node inspector port, when started with `inspect`. */
  inspectPort?: number;
  mqttUrl: string;
  graphqlUrl: string;
  wsUrl: string;
}

/**
 * Starts `iothub-ota serve` on loopback with the embedded broker or against
 * `externalBroker`. With BENCH_PROFILE=<dir> it writes a CPU profile there
 * (summarise it with `npx tsx bench/profile-top.ts <file>`).
 */
export async function startServer(externalBroker?: string, extraEnv: Record<string, string> = {}, inspect = false): Promise<BenchServer> {
  const profileDir = process.env.BENCH_PROFILE;
  const dataDir = `/tmp/iothub-ota-bench-${randomBytes(4).toString("hex")}`;
  const inspectPort = inspect ? await freePort() : undefined;
  const nodeArgs = [
    ...(profileDir ? ["--cpu-prof", `--cpu-prof-dir=${profileDir}`] : []),
    ...(inspectPort ? [`--inspect=127.0.0.1:${inspectPort}`] : []),
  ];
  const mqttPort = await freePort();
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    NODE_ENV: "production",
    ADMIN_TOKEN: TOKEN,
    // Every benchmark client shares this token: the subscriptions bench opens thousands of connections with it.
    WS_MAX_CONNECTIONS_PER_TOKEN: "1000000",
    REDIS_URL,
    LOG_LEVEL: "warn",
    MQTTS_PORT: "0",
    DATA_DIR: dataDir,
    ...(externalBroker ? { MQTT_URL: externalBroker, MQTT_SHARE_GROUP: uniq("bench") } : { MQTT_PORT: String(mqttPort) }),
    ...extraEnv,
  };
  const server = await ServerProcess.start(env, nodeArgs);
  return {
    server,
    stop: async () => {
      await server.stop();
      await rm(dataDir, { recursive: true, force: true });
    },
    inspectPort,
    mqttUrl: externalBroker ?? `mqtt://127.0.0.1:${mqttPort}`,
    graphqlUrl: `${server.httpUrl}/graphql`,
    wsUrl: `${server.httpUrl.replace("http", "ws")}/graphql`,
  };
}

export async function gql<T>(url: string, query: string, variables: Record<string, unknown> = {}): Promise<T> {
  const res = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${TOKEN}` },
    body: JSON.stringify({ query, variables }),
  });
  const body = (await res.json()) as { data?: T; errors?: unknown[] };
  if (!body.data || body.errors) throw new Error(`GraphQL error: ${JSON.stringify(body.errors)}`);
  return body.data;
}

export function wsClient(url: string): Client {
  return createClient({
    url,
    webSocketImpl: WebSocket,
    connectionParams: { authorization: `Bearer ${TOKEN}` },
    retryAttempts: 0,
    lazy: false,
    onNonLazyError: () => undefined,
  });
}

/** The sum of a metric's samples carrying all `labels`, from a server's /metrics. */
export async function metric(httpUrl: string, name: string, labels: Record<string, string> = {}): Promise<number> {
  const text = await (await fetch(`${httpUrl}/metrics`)).text();
  const wanted = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  let sum = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (wanted.every((w) => line.includes(w))) sum += Number(line.split(" ").at(-1));
  }
  return sum;
}

/** The server's JS heap after a full garbage collection, bytes, through the inspector (loopback only). */
export async function heapAfterGc(inspectPort: number): Promise<number> {
  const [target] = (await (await fetch(`http://127.0.0.1:${inspectPort}/json/list`)).json()) as { webSocketDebuggerUrl: string }[];
  const socket = new WebSocket(target!.webSocketDebuggerUrl);
  await new Promise((resolve, reject) => socket.once("open", resolve).once("error", reject));
  let id = 0;
  const call = (method: string) =>
    new Promise<Record<string, number>>((resolve) => {
      const mine = ++id;
      const onMessage = (data: Buffer) => {
        const msg = JSON.parse(data.toString()) as { id?: number; result: Record<string, number> };
        if (msg.id !== mine) return;
        socket.off("message", onMessage);
        resolve(msg.result);
      };
      socket.on("message", onMessage);
      socket.send(JSON.stringify({ id: mine, method }));
    });
  await call("HeapProfiler.collectGarbage");
  await call("HeapProfiler.collectGarbage");
  const { usedSize } = await call("Runtime.getHeapUsage");
  socket.close();
  return usedSize as number;
}

/** CPU seconds (user + system) a process has used so far, from /proc. */
export function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.split(" ") ?? [];
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
}

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] as number;
}

export const round = (n: number, digits = 1) => Math.round(n * 10 ** digits) / 10 ** digits;

/** Prints one JSON line (for machines) and a small table (for people). */
export function report(name: string, rows: Record<string, unknown>[], extra: Record<string, unknown> = {}): void {
  process.stdout.write(`${JSON.stringify({ bench: name, ...extra, rows })}\n`);
  if (rows.length === 0) return;
  const cols = Object.keys(rows[0] as object);
  const width = cols.map((c) => Math.max(c.length, ...rows.map((r) => String(r[c]).length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(width[i] as number)).join("  ");
  process.stdout.write(`\n${name}\n${line(cols)}\n${line(width.map((w) => "-".repeat(w)))}\n`);
  for (const r of rows) process.stdout.write(`${line(cols.map((c) => String(r[c])))}\n`);
  process.stdout.write("\n");
}

// What one device, one report and one command cost the server and Redis: the
// inputs of BENCHMARKS.md's capacity model. A Redis of its own (so that no
// other client's commands are counted), the server in a process of its own
// with the embedded broker, devices on their own MQTT connections.
import { readFileSync } from "node:fs";
import { Redis } from "ioredis";
import { registerDevices } from "../src/sim/sim.fleet.js";
import { OwnRedis } from "../test/helpers/processes.js";
import { connectDevices, publishLoad } from "./load.js";
import { cpuSeconds, gql, heapAfterGc, metric, round, sleep, startServer, TOKEN, uniq } from "./lib.js";

const REFRESH_MS = 1000;
const IDLE_MS = 5000;

export interface CapacityOptions {
  devices: number;
  reports: number;
}

interface RedisSample {
  calls: number;
  byCommand: Map<string, number>;
  bytesIn: number;
  bytesOut: number;
  memory: number;
}

async function sample(redis: Redis): Promise<RedisSample> {
  const stats = await redis.info("commandstats");
  const byCommand = new Map<string, number>();
  for (const m of stats.matchAll(/^cmdstat_([a-z|]+):calls=(\d+)/gm)) byCommand.set(m[1] as string, Number(m[2]));
  const info = await redis.info();
  const field = (name: string) => Number(new RegExp(`^${name}:(\\d+)`, "m").exec(info)?.[1] ?? 0);
  // The INFO calls of the sampling itself are taken off by diff().
  return {
    calls: [...byCommand.values()].reduce((a, b) => a + b, 0),
    byCommand,
    bytesIn: field("total_net_input_bytes"),
    bytesOut: field("total_net_output_bytes"),
    memory: field("used_memory"),
  };
}

/** Per unit: Redis calls (by command, the sampler's own INFO calls left out), bytes in and out, memory. */
function diff(before: RedisSample, after: RedisSample, units: number) {
  const byCommand: Record<string, number> = {};
  for (const [cmd, n] of after.byCommand) {
    if (cmd === "info") continue;
    const d = n - (before.byCommand.get(cmd) ?? 0);
    if (d > 0) byCommand[cmd] = round(d / units, 2);
  }
  const calls = Object.values(byCommand).reduce((a, b) => a + b, 0);
  return {
    redisCalls: round(calls, 2),
    redisCommands: Object.entries(byCommand)
      .map(([cmd, n]) => `${cmd} ${n}`)
      .join(", "),
    redisBytesIn: Math.round((after.bytesIn - before.bytesIn) / units),
    redisBytesOut: Math.round((after.bytesOut - before.bytesOut) / units),
    redisMemoryBytes: Math.round((after.memory - before.memory) / units),
  };
}

const rssOf = (pid: number) => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1]) * 1024;

export async function capacityBench(o: CapacityOptions): Promise<Record<string, unknown>[]> {
  const redis = await OwnRedis.start();
  const probe = new Redis(redis.url);
  const rows = [...(await phases(redis, probe, o, "costs")), ...(await phases(redis, probe, o, "refresh"))];
  await probe.quit();
  await redis.stop();
  return rows;
}

/**
 * "costs": connecting, reports and commands, on a server whose presence is
 * refreshed too seldom to count (once an hour); "refresh": its devices idle,
 * refreshed every second, which is what one refresh costs.
 */
async function phases(redis: OwnRedis, probe: Redis, o: CapacityOptions, what: "costs" | "refresh"): Promise<Record<string, unknown>[]> {
  const ttl = what === "costs" ? 3_600_000 : REFRESH_MS * 3;
  const b = await startServer(undefined, { REDIS_URL: redis.url, PRESENCE_TTL_MS: String(ttl) }, true);
  try {
    const pid = b.server.process.pid as number;
    const productName = uniq("cap");
    const devices = await registerDevices(b.graphqlUrl, TOKEN, productName, o.devices, ["beta"]);
    await sleep(1000);
    const rows: Record<string, unknown>[] = [];

    // A connected device: its session, subscriptions, presence; the server's memory for its connection.
    let before = await sample(probe);
    const heapBefore = await heapAfterGc(b.inspectPort as number);
    const rssBefore = rssOf(pid);
    let cpu = cpuSeconds(pid);
    let start = Date.now();
    // A hundred at a time: first connections cost the broker an scrypt check each.
    const clients = [];
    for (let i = 0; i < devices.length; i += 100) clients.push(...(await connectDevices(b.mqttUrl, devices.slice(i, i + 100))));
    await sleep(3000);
    const connect = { ms: Date.now() - start, cpu: cpuSeconds(pid) - cpu, redis: diff(before, await sample(probe), o.devices) };
    const heapAfter = await heapAfterGc(b.inspectPort as number);
    const rssAfter = rssOf(pid);

    if (what === "refresh") {
      // Connected and idle: the instance refreshes its devices' presence and sessions' live marks.
      before = await sample(probe);
      cpu = cpuSeconds(pid);
      start = Date.now();
      await sleep(IDLE_MS);
      const refreshes = (o.devices * (Date.now() - start)) / REFRESH_MS;
      const cpuUs = round(((cpuSeconds(pid) - cpu) * 1e6) / refreshes, 1);
      await Promise.all(clients.map((c) => c.endAsync(true)));
      return [{ unit: "refresh of a connected device (every PRESENCE_TTL_MS / 3)", count: Math.round(refreshes), serverCpuUs: cpuUs, ...diff(before, await sample(probe), refreshes) }];
    }
    rows.push({
      unit: "connected device",
      count: o.devices,
      serverHeapKB: round((heapAfter - heapBefore) / 1024 / o.devices, 1),
      serverRssKB: round((rssAfter - rssBefore) / 1024 / o.devices, 1),
      serverCpuUs: round((connect.cpu * 1e6) / o.devices, 0),
      ...connect.redis,
    });

    // A progress report: ingest (dedup, order, store, publish to subscribers' channel).
    const accepted = () => metric(b.server.httpUrl, "iothub_ota_ingest_messages_total", { kind: "ota_status", result: "accepted" });
    const stored = await accepted();
    before = await sample(probe);
    cpu = cpuSeconds(pid);
    start = Date.now();
    await publishLoad(clients, devices, o.reports, 0);
    const total = o.devices * o.reports;
    while ((await accepted()) - stored < total) await sleep(20);
    const load = { ms: Date.now() - start, cpu: cpuSeconds(pid) - cpu, redis: diff(before, await sample(probe), total) };
    rows.push({ unit: "progress report", count: total, serverCpuUs: round((load.cpu * 1e6) / total, 0), ...load.redis });

    // A command by device: the attempt mark, the broker's publish, the session queue.
    before = await sample(probe);
    cpu = cpuSeconds(pid);
    start = Date.now();
    const firmware = { url: "https://fw.example/cap.bin", version: "9.0", size: 1000, md5: "0".repeat(32), type: "firmware" };
    for (let i = 0; i < devices.length; i += 50) {
      await Promise.all(
        devices.slice(i, i + 50).map((d) =>
          gql(b.graphqlUrl, "mutation($i: SendOtaInput!) { sendOta(input: $i) { requestId } }", { i: { productName, deviceName: d.deviceName, firmware } }),
        ),
      );
    }
    await sleep(1000);
    const commands = { ms: Date.now() - start, cpu: cpuSeconds(pid) - cpu, redis: diff(before, await sample(probe), devices.length) };
    rows.push({ unit: "command (by device)", count: devices.length, serverCpuUs: round((commands.cpu * 1e6) / devices.length, 0), ...commands.redis });
    await Promise.all(clients.map((c) => c.endAsync(true)));
    return rows;
  } finally {
    await b.stop();
  }
}

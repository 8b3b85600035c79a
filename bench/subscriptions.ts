import { readFileSync } from "node:fs";
import { print } from "graphql";
import type { Client } from "graphql-ws";
import mqtt from "mqtt";
import { ObjectId } from "bson";
import { OtaProgressChangedDocument } from "../src/client/generated/graphql.js";
import { cpuSeconds, heapAfterGc, nowMs, OwnMosquitto, percentile, round, sleep, startServer, uniq, wsClient, type BenchServer } from "./lib.js";

export interface SubscriptionsOptions {
  subscribers: number;
  instances: number;
  reports: number;
}

/** Resident memory of a process, bytes. */
function rss(pid: number): number {
  const line = readFileSync(`/proc/${pid}/status`, "utf8").split("\n").find((l) => l.startsWith("VmRSS:")) ?? "";
  return Number(line.replace(/\D/g, "")) * 1024;
}

/**
 * S graphql-ws subscribers spread over one or two instances: server memory
 * per subscriber, and the latency from a device's publish to each delivery.
 */
export async function subscriptionsBench(o: SubscriptionsOptions): Promise<Record<string, unknown>[]> {
  const mosquitto = await OwnMosquitto.start();
  const shareGroup = uniq("grp");
  const servers: BenchServer[] = [];
  const clients: Client[] = [];
  try {
    for (let i = 0; i < o.instances; i++) servers.push(await startServer(mosquitto.url, { MQTT_SHARE_GROUP: shareGroup }, true));
    const productName = uniq("sub");
    await sleep(1000);
    const pids = servers.map((s) => s.server.process.pid as number);
    const heap = async () => (await Promise.all(servers.map((s) => heapAfterGc(s.inspectPort as number)))).reduce((a, b) => a + b, 0);
    const before = pids.map(rss);
    const heapBefore = await heap();

    const latencies: number[] = [];
    const connectStart = performance.now();
    for (let i = 0; i < o.subscribers; i += 200) {
      await Promise.all(
        Array.from({ length: Math.min(200, o.subscribers - i) }, async (_, j) => {
          const client = wsClient((servers[(i + j) % servers.length] as BenchServer).wsUrl);
          clients.push(client);
          await new Promise<void>((resolve, reject) => {
            client.on("connected", () => resolve());
            client.on("error", reject);
            client.subscribe(
              { query: print(OtaProgressChangedDocument), variables: { productName } },
              {
                next: (r) => latencies.push(nowMs() - (r.data as { otaProgressChanged: { raw: { sentAt: number } } }).otaProgressChanged.raw.sentAt),
                error: (e) => console.error("subscription error", e),
                complete: () => undefined,
              },
            );
          });
        }),
      );
    }
    const connectSeconds = (performance.now() - connectStart) / 1000;
    await sleep(2000);
    const heapPerSubscriber = ((await heap()) - heapBefore) / o.subscribers;
    const after = pids.map(rss);
    const perSubscriber = after.reduce((a, b, i) => a + b - (before[i] as number), 0) / o.subscribers;

    const device = await mqtt.connectAsync(mosquitto.url, { reconnectPeriod: 0 });
    // Where one event's fan-out spends its time: the servers' CPU, and this process's (the 10,000 clients decoding).
    const serverCpuBefore = pids.reduce((sum, pid) => sum + cpuSeconds(pid), 0);
    const clientCpuBefore = process.cpuUsage();
    const fanoutStart = performance.now();
    // One report at a time through the whole fan-out: the next is sent once every subscriber has this one.
    for (let n = 0; n < o.reports; n++) {
      const payload = JSON.stringify({ version: `2.${Math.floor(n / 101)}`, type: "firmware", progress: n % 101, desc: "download", sentAt: nowMs() });
      await device.publishAsync(`update_ota_status/${productName}/dev-1/${new ObjectId().toHexString()}`, payload, { qos: 1 });
      for (let waited = 0; latencies.length < o.subscribers * (n + 1) && waited < 30_000; waited += 5) await sleep(5);
    }
    const fanoutMs = (performance.now() - fanoutStart) / o.reports;
    const serverCpuMs = ((pids.reduce((sum, pid) => sum + cpuSeconds(pid), 0) - serverCpuBefore) * 1000) / o.reports;
    const clientCpu = process.cpuUsage(clientCpuBefore);
    const clientCpuMs = (clientCpu.user + clientCpu.system) / 1000 / o.reports;
    await device.endAsync();
    const expected = o.subscribers * o.reports;
    const sorted = [...latencies].sort((a, b) => a - b);
    return [
      {
        instances: o.instances,
        subscribers: o.subscribers,
        "connect s": round(connectSeconds, 2),
        "heap KB/subscriber": round(heapPerSubscriber / 1024, 1),
        "rss KB/subscriber": round(perSubscriber / 1024, 1),
        deliveries: `${latencies.length}/${expected}`,
        "p50 ms": round(percentile(sorted, 50)),
        "p95 ms": round(percentile(sorted, 95)),
        "p99 ms": round(percentile(sorted, 99)),
        "wall ms/event": round(fanoutMs),
        "server cpu ms/event": round(serverCpuMs),
        "client cpu ms/event": round(clientCpuMs),
      },
    ];
  } finally {
    await Promise.all(clients.map((c) => Promise.resolve(c.dispose())));
    for (const s of servers) await s.stop();
    await mosquitto.stop();
  }
}

import { readFileSync } from "node:fs";
import { print } from "graphql";
import type { Client } from "graphql-ws";
import mqtt from "mqtt";
import { ObjectId } from "bson";
import WebSocket from "ws";
import { OtaProgressChangedDocument } from "../src/client/generated/graphql.js";
import { cpuSeconds, heapAfterGc, nowMs, OwnMosquitto, percentile, round, sleep, startServer, TOKEN, uniq, wsClient, type BenchServer } from "./lib.js";

export interface SubscriptionsOptions {
  subscribers: number;
  instances: number;
  reports: number;
  /** Reports fanned out first and not measured (the server's code paths compiled, as in a server that has been running); default 1. */
  warmup?: number;
  /**
   * The receiving clients: `raw` (default) speaks graphql-transport-ws over
   * `ws` and reads only the `sentAt` of each `next` frame; `graphql-ws` is
   * graphql-ws' own client, which parses and checks every message (about
   * 20 µs of this process's CPU per message here, on the cores the server
   * needs too).
   */
  client?: "raw" | "graphql-ws";
}

/** The subscription id the raw clients use, and so the head of every `next` frame the server sends them. */
const RAW_ID = "1";
const NEXT_HEAD = Buffer.from(`{"id":${JSON.stringify(RAW_ID)},"type":"next","payload":`);
const SENT_AT = Buffer.from('"sentAt":');

/**
 * A graphql-transport-ws subscriber that does only what the measurement
 * needs: connection_init, subscribe, and for each `next` frame the time it
 * arrived and the `sentAt` the device wrote in it (no JSON parse of the rest).
 * Any other message after the subscription is a failure of the bench.
 */
function rawSubscriber(url: string, variables: Record<string, unknown>, onNext: (latencyMs: number) => void): { socket: WebSocket; ready: Promise<void> } {
  const socket = new WebSocket(url, "graphql-transport-ws", { perMessageDeflate: false, skipUTF8Validation: true });
  const ready = new Promise<void>((resolve, reject) => {
    let acknowledged = false;
    socket.once("error", reject);
    socket.once("open", () => socket.send(JSON.stringify({ type: "connection_init", payload: { authorization: `Bearer ${TOKEN}` } })));
    socket.on("message", (data: Buffer) => {
      const receivedAt = nowMs();
      if (!acknowledged) {
        if ((JSON.parse(data.toString()) as { type: string }).type !== "connection_ack") return reject(new Error(`not acknowledged: ${data.toString()}`));
        acknowledged = true;
        socket.send(JSON.stringify({ id: RAW_ID, type: "subscribe", payload: { query: print(OtaProgressChangedDocument), variables } }));
        return resolve();
      }
      const at = data.indexOf(SENT_AT, NEXT_HEAD.length);
      if (data.compare(NEXT_HEAD, 0, NEXT_HEAD.length, 0, NEXT_HEAD.length) !== 0 || at < 0) {
        console.error("unexpected message", data.toString().slice(0, 300));
        return;
      }
      let end = at + SENT_AT.length;
      while (end < data.length && data[end] !== 0x2c /* , */ && data[end] !== 0x7d /* } */) end++;
      onNext(receivedAt - Number(data.toString("latin1", at + SENT_AT.length, end)));
    });
  });
  return { socket, ready };
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
  const sockets: WebSocket[] = [];
  try {
    for (let i = 0; i < o.instances; i++) servers.push(await startServer(mosquitto.url, { MQTT_SHARE_GROUP: shareGroup }, true));
    const productName = uniq("sub");
    await sleep(1000);
    const pids = servers.map((s) => s.server.process.pid as number);
    const heap = async () => (await Promise.all(servers.map((s) => heapAfterGc(s.inspectPort as number)))).reduce((a, b) => a + b, 0);
    const before = pids.map(rss);
    const heapBefore = await heap();

    const latencies = new Float64Array(o.subscribers * o.reports);
    let received = 0;
    /** Deliveries of the warm-up reports, not measured. */
    let skip = 0;
    const onNext = (latencyMs: number) => {
      if (skip > 0) {
        skip--;
        return;
      }
      if (received < latencies.length) latencies[received] = latencyMs;
      received++;
    };
    const connectStart = performance.now();
    for (let i = 0; i < o.subscribers; i += 200) {
      await Promise.all(
        Array.from({ length: Math.min(200, o.subscribers - i) }, async (_, j) => {
          const url = (servers[(i + j) % servers.length] as BenchServer).wsUrl;
          if (o.client !== "graphql-ws") {
            const { socket, ready } = rawSubscriber(url, { productName }, onNext);
            sockets.push(socket);
            return ready;
          }
          const client = wsClient(url);
          clients.push(client);
          await new Promise<void>((resolve, reject) => {
            client.on("connected", () => resolve());
            client.on("error", reject);
            client.subscribe(
              { query: print(OtaProgressChangedDocument), variables: { productName } },
              {
                next: (r) => onNext(nowMs() - (r.data as { otaProgressChanged: { raw: { sentAt: number } } }).otaProgressChanged.raw.sentAt),
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
    // One report at a time through the whole fan-out: the next is sent once every subscriber has this one.
    const fanOut = async (n: number, delivered: () => boolean) => {
      const payload = JSON.stringify({ version: `2.${Math.floor(n / 101)}`, type: "firmware", progress: n % 101, desc: "download", sentAt: nowMs() });
      await device.publishAsync(`update_ota_status/${productName}/dev-1/${new ObjectId().toHexString()}`, payload, { qos: 1 });
      for (let waited = 0; !delivered() && waited < 30_000; waited += 5) await sleep(5);
    };
    const warmup = o.warmup ?? 1;
    for (let n = 0; n < warmup; n++) {
      skip = o.subscribers;
      await fanOut(n, () => skip === 0);
    }
    // Where one event's fan-out spends its time: the servers' CPU, and this process's (the 10,000 clients decoding).
    const serverCpuBefore = pids.reduce((sum, pid) => sum + cpuSeconds(pid), 0);
    const clientCpuBefore = process.cpuUsage();
    const fanoutStart = performance.now();
    for (let n = 0; n < o.reports; n++) await fanOut(warmup + n, () => received >= o.subscribers * (n + 1));
    const fanoutMs = (performance.now() - fanoutStart) / o.reports;
    const serverCpuMs = ((pids.reduce((sum, pid) => sum + cpuSeconds(pid), 0) - serverCpuBefore) * 1000) / o.reports;
    const clientCpu = process.cpuUsage(clientCpuBefore);
    const clientCpuMs = (clientCpu.user + clientCpu.system) / 1000 / o.reports;
    await device.endAsync();
    // What the subscribers leave behind once they have gone: a leak would show here.
    await Promise.all(clients.map((c) => Promise.resolve(c.dispose())));
    clients.length = 0;
    for (const socket of sockets) socket.close();
    sockets.length = 0;
    await sleep(2000);
    const heapLeftPerSubscriber = ((await heap()) - heapBefore) / o.subscribers;
    const expected = o.subscribers * o.reports;
    const sorted = [...latencies.subarray(0, Math.min(received, latencies.length))].sort((a, b) => a - b);
    // The goal is one event's fan-out: each event's own p99 (deliveries are taken in event order), their median and worst.
    const perEvent = Array.from({ length: o.reports }, (_, n) =>
      percentile([...latencies.subarray(n * o.subscribers, (n + 1) * o.subscribers)].sort((a, b) => a - b), 99),
    ).sort((a, b) => a - b);
    return [
      {
        instances: o.instances,
        subscribers: o.subscribers,
        "connect s": round(connectSeconds, 2),
        "heap KB/subscriber": round(heapPerSubscriber / 1024, 1),
        "heap KB/subscriber once gone": round(heapLeftPerSubscriber / 1024, 2),
        "rss KB/subscriber": round(perSubscriber / 1024, 1),
        client: o.client ?? "raw",
        deliveries: `${received}/${expected}`,
        "p50 ms": round(percentile(sorted, 50)),
        "p95 ms": round(percentile(sorted, 95)),
        "p99 ms": round(percentile(sorted, 99)),
        "event p99 ms, median": round(percentile(perEvent, 50)),
        "event p99 ms, worst": round(perEvent.at(-1) ?? Number.NaN),
        "wall ms/event": round(fanoutMs),
        "server cpu ms/event": round(serverCpuMs),
        "client cpu ms/event": round(clientCpuMs),
      },
    ];
  } finally {
    await Promise.all(clients.map((c) => Promise.resolve(c.dispose())));
    for (const socket of sockets) socket.terminate();
    for (const s of servers) await s.stop();
    await mosquitto.stop();
  }
}

import autocannon from "autocannon";
import { print } from "graphql";
import mqtt from "mqtt";
import { ObjectId } from "bson";
import { OtaProgressDocument, OtaProgressesDocument } from "../src/client/generated/graphql.js";
import { metric, OwnMosquitto, round, sleep, startServer, TOKEN, uniq } from "./lib.js";

export interface QueriesOptions {
  devices: number;
  connections: number;
  seconds: number;
}

/**
 * Reads at fixed concurrency: `otaProgress` for one device, `otaProgresses`
 * for many, and the IotHub REST read of one device, on the same server.
 */
export async function queriesBench(o: QueriesOptions): Promise<Record<string, unknown>[]> {
  const mosquitto = await OwnMosquitto.start();
  const b = await startServer(mosquitto.url);
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
    const cases = [
      { name: "otaProgress (1 device)", ...graphql(print(OtaProgressDocument), { productName, deviceName: names[0] }) },
      { name: `otaProgresses (${o.devices} devices)`, ...graphql(print(OtaProgressesDocument), { productName, deviceNames: names }) },
      { name: "REST GET /ota/<product>/<device>", url: `${b.server.httpUrl}/ota/${productName}/${names[0]}`, method: "GET" as const, headers },
    ];
    const rows: Record<string, unknown>[] = [];
    for (const c of cases) {
      const r = await autocannon({ url: c.url, method: c.method, headers: c.headers, body: "body" in c ? c.body : undefined, connections: o.connections, duration: o.seconds });
      rows.push({
        query: c.name,
        connections: o.connections,
        "req/s": Math.round(r.requests.average),
        "p50 ms": round(r.latency.p50),
        "p99 ms": round(r.latency.p99),
        errors: r.errors + r.non2xx,
      });
    }
    return rows;
  } finally {
    await b.stop();
    await mosquitto.stop();
  }
}

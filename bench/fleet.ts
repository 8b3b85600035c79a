import { readFileSync } from "node:fs";
import mqtt from "mqtt";
import pg from "pg";
import { hashSecret } from "../src/devices/secret.js";
import { benchDatabase, gql, round, startServer } from "./lib.js";

export interface FleetOptions {
  devices: number;
  pageSize: number;
}


function memoryMb(pid: number, field: "VmRSS" | "VmHWM"): number {
  const line = readFileSync(`/proc/${pid}/status`, "utf8").split("\n").find((l) => l.startsWith(`${field}:`)) ?? "";
  return round(Number(line.replace(/\D/g, "")) / 1024);
}

/**
 * A fleet of N registered devices sharing a tag, in a PostgreSQL database of
 * its own: `sendOta` to the tag (one device online checks it arrives), and
 * listing every device of the tag page by page, with the server's memory.
 */
export async function fleetBench(o: FleetOptions): Promise<Record<string, unknown>[]> {
  const database = await benchDatabase();
  const b = await startServer(undefined, { DATABASE_URL: database.url });
  const pid = b.server.process.pid as number;
  try {
    // Seed straight into the table the server migrated: registering 100,000 devices through
    // the API would spend its time in scrypt, which is not what this measures.
    const secret = "bench-secret-0000";
    const db = new pg.Client({ connectionString: database.url });
    await db.connect();
    const seedStart = performance.now();
    await db.query(
      `insert into devices (product_name, device_name, secret_hash, tags)
       select 'fleet', 'dev-' || lpad(g::text, 7, '0'), $1, array['all', 'batch-' || (g % 10)]
       from generate_series(1, $2::int) g`,
      [await hashSecret(secret), o.devices],
    );
    const seedSeconds = (performance.now() - seedStart) / 1000;
    await db.end();

    const device = await mqtt.connectAsync(b.mqttUrl, {
      clientId: "fleet/dev-0000001",
      username: "fleet/dev-0000001",
      password: secret,
      reconnectPeriod: 0,
      clean: false,
    });
    await device.subscribeAsync("tags/fleet/all/cmd/+/+/+/#", { qos: 1 });
    const received = new Promise<number>((resolve) => device.once("message", () => resolve(performance.now())));
    const rssBefore = memoryMb(pid, "VmRSS");

    const sendStart = performance.now();
    await gql(b.graphqlUrl, `mutation($i: SendOtaInput!) { sendOta(input: $i) { requestId } }`, {
      i: { productName: "fleet", tag: "all", firmware: { url: "https://fw.example/f.bin", version: "2.0", size: 1, md5: "0".repeat(32), type: "firmware" } },
    });
    const sendMs = performance.now() - sendStart;
    const deliveredMs = (await received) - sendStart;
    await device.endAsync(true);

    const listStart = performance.now();
    let after: string | null = null;
    let pages = 0;
    let listed = 0;
    for (;;) {
      const page: { devices: { nodes: { deviceName: string }[]; pageInfo: { hasNextPage: boolean; endCursor: string | null } } } = await gql(
        b.graphqlUrl,
        `query($after: String, $first: Int) { devices(productName: "fleet", tag: "all", first: $first, after: $after) { nodes { deviceName tags firmwareVersion } pageInfo { hasNextPage endCursor } } }`,
        { after, first: o.pageSize },
      );
      pages++;
      listed += page.devices.nodes.length;
      if (!page.devices.pageInfo.hasNextPage) break;
      after = page.devices.pageInfo.endCursor;
    }
    const listSeconds = (performance.now() - listStart) / 1000;
    return [
      {
        devices: o.devices,
        "seed s": round(seedSeconds, 2),
        "sendOta ms": round(sendMs),
        "delivered ms": round(deliveredMs),
        listed,
        pages,
        "list s": round(listSeconds, 2),
        "ms/page": round((listSeconds * 1000) / pages),
        "rss before MB": rssBefore,
        "rss after MB": memoryMb(pid, "VmRSS"),
        "rss peak MB": memoryMb(pid, "VmHWM"),
      },
    ];
  } finally {
    await b.stop();
    await database.drop();
  }
}

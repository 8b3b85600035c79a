import { redisKeys } from "../../src/storage/progress.redis.js";
import { ObjectId } from "bson";
import { Redis } from "ioredis";
import { describe, expect, it } from "vitest";
import { OtaProgressDocument, RegisterDeviceDocument } from "../../src/client/generated/graphql.js";
import { gqlOk, startApp } from "../helpers/app.js";
import { TestDevice } from "../helpers/device.js";
import { metric } from "../helpers/metrics.js";
import { OwnMosquitto, OwnRedis, ServerProcess, serverEnv } from "../helpers/processes.js";
import { DATABASE_URL, freshDatabase, REDIS_URL, uniq } from "../helpers/services.js";
import { onTeardown } from "../helpers/teardown.js";
import { eventually, sleep } from "../helpers/wait.js";

const DEVICES = 8;
const REPORTS = 200;
/** Report i's progress: rising to 99 and staying there, so every report is applied and the last one shows. */
const progressOf = (i: number) => Math.min(99, Math.floor(i / 2));

/** Devices that stream progress reports at QoS 1 and note which ones were acknowledged. */
class Fleet {
  readonly sent: { dev: TestDevice; id: string; progress: number }[] = [];
  readonly acknowledged = new Set<string>();

  constructor(
    readonly productName: string,
    readonly devices: TestDevice[],
  ) {}

  /**
   * Every device sends reports `from`..`to`-1 without waiting for acknowledgements (mqtt.js keeps them in
   * flight), a round of reports every `paceMs`: the load's shape, so that a stop lands mid-stream.
   */
  async stream(from = 0, to = REPORTS, paceMs = 0): Promise<unknown> {
    const all: Promise<void>[] = [];
    for (let progress = from; progress < to; progress++) {
      if (paceMs > 0 && progress > from) await sleep(paceMs);
      for (const dev of this.devices) {
        const id = new ObjectId().toHexString();
        this.sent.push({ dev, id, progress });
        const topic = `update_ota_status/${this.productName}/${dev.deviceName}/${id}`;
        const body = JSON.stringify({ version: "5.0", type: "firmware", progress: progressOf(progress) });
        all.push(dev.client.publishAsync(topic, body, { qos: 1 }).then(() => void this.acknowledged.add(id)));
      }
    }
    return Promise.all(all);
  }

  /** The messageIds whose effect is in Redis: the dedup key is written in the same atomic step as the report. */
  async stored(redis: Redis, prefix: string, ids: Iterable<string>): Promise<Set<string>> {
    const wanted = this.sent.filter((s) => new Set(ids).has(s.id));
    if (wanted.length === 0) return new Set();
    const values = await redis.mget(wanted.map((s) => redisKeys(prefix).dedup(this.productName, s.dev.deviceName, s.id)));
    return new Set(wanted.filter((_, i) => values[i] !== null).map((s) => s.id));
  }
}

async function register(t: { httpUrl: string; token: string }, productName: string) {
  const { registerDevice } = await gqlOk(t, RegisterDeviceDocument, { input: { productName } });
  return registerDevice;
}

function killed(server: ServerProcess, signal: NodeJS.Signals): Promise<number | null> {
  const exited = new Promise<number | null>((r) => server.process.once("exit", (code) => r(code)));
  server.process.kill(signal);
  return exited;
}

describe.each([
  ["the embedded broker", false],
  ["an external Mosquitto", true],
])("a server stopped mid-ingest, with %s", (_name, external) => {
  it.each([
    ["killed with SIGKILL", "SIGKILL", null],
    ["stopped with SIGTERM", "SIGTERM", 0],
  ] as const)("%s, loses no acknowledged report, and stores the unacknowledged ones once they are sent again", async (_how, signal, exitCode) => {
    const broker = external ? await OwnMosquitto.start() : undefined;
    if (broker) onTeardown(() => broker.stop());
    const { env: base, token, prefix, mqttPort } = await serverEnv("dur");
    const database = DATABASE_URL ? { DATABASE_URL: ((await freshDatabase("postgres")) as { url: string }).url } : {};
    const env = { ...base, ...database, ...(broker ? { MQTT_URL: broker.url, MQTT_CLIENT_ID: uniq("server") } : {}) };
    let server = await ServerProcess.start(env);
    onTeardown(() => server.process.kill("SIGKILL"));
    const api = { httpUrl: server.httpUrl, token };
    const productName = uniq("dur");
    const url = broker?.url ?? `mqtt://127.0.0.1:${mqttPort}`;
    const devices = await Promise.all(
      Array.from({ length: DEVICES }, async () => {
        const { device, secret } = await register(api, productName);
        return TestDevice.connect(url, productName, device.deviceName, broker ? "" : secret, { reconnectPeriod: 100 });
      }),
    );
    const fleet = new Fleet(productName, devices);
    const redis = new Redis(REDIS_URL);
    onTeardown(() => redis.quit());

    const streamed = fleet.stream(0, REPORTS, 10);
    const settled = () => metric(api, "iothub_ota_ingest_messages_total", { kind: "ota_status" });
    await eventually(async () => expect(await settled()).toBeGreaterThan((DEVICES * REPORTS) / 10), 20_000);
    const settledAtKill = await settled();
    expect(await killed(server, signal)).toBe(exitCode);
    const acknowledgedAtKill = new Set(fleet.acknowledged);
    // Some were still to be settled: the stop has something to lose.
    expect(settledAtKill).toBeLessThan(DEVICES * REPORTS);

    server = await ServerProcess.start(env);
    // Everything a device was told was delivered is stored (with an external broker: everything the
    // broker was told, which it alone acknowledged to the devices).
    const storedAtKill = await fleet.stored(redis, prefix, acknowledgedAtKill);
    if (!broker) expect([...acknowledgedAtKill].filter((id) => !storedAtKill.has(id))).toEqual([]);

    // The rest arrives again (devices resend unacknowledged reports; the broker resends to the server's session).
    await streamed;
    await eventually(async () => {
      const stored = await fleet.stored(redis, prefix, fleet.sent.map((s) => s.id));
      expect(fleet.sent.filter((s) => !stored.has(s.id)).map((s) => s.id)).toEqual([]);
    }, 30_000);
    for (const dev of devices) {
      const { otaProgress } = await gqlOk({ httpUrl: server.httpUrl, token }, OtaProgressDocument, { productName, deviceName: dev.deviceName });
      expect(otaProgress?.progress).toBe(progressOf(REPORTS - 1));
    }
    expect((await fetch(`${server.httpUrl}/readyz`)).status).toBe(200);
  }, 90_000);
});

describe("Redis stopped for a few seconds under ingest", () => {
  it("loses no acknowledged report, and the server is healthy once Redis is back", async () => {
    const own = await OwnRedis.start({ durable: true });
    const t = await startApp({ env: { REDIS_URL: own.url } });
    const productName = uniq("outage");
    const devices = await Promise.all(
      Array.from({ length: DEVICES }, async () => {
        const { device, secret } = await register(t, productName);
        return TestDevice.connect(t.mqttUrl, productName, device.deviceName, secret, { reconnectPeriod: 200 });
      }),
    );
    const fleet = new Fleet(productName, devices);
    const redis = new Redis(own.url, { maxRetriesPerRequest: null });
    redis.on("error", () => undefined); // it is stopped on purpose
    onTeardown(() => redis.disconnect());
    const prefix = t.config.redisPrefix;

    const before = fleet.stream(0, REPORTS / 2);
    await eventually(async () => expect(await metric(t, "iothub_ota_ingest_messages_total", { kind: "ota_status" })).toBeGreaterThan(DEVICES * 4));
    await own.stop();
    const during = fleet.stream(REPORTS / 2, REPORTS);
    const streamed = Promise.all([before, during]);
    // Ingest fails and tries again; what it cannot store stays unacknowledged.
    await eventually(async () => expect(await metric(t, "iothub_ota_ingest_unacknowledged_total")).toBeGreaterThan(0), 20_000);
    const acknowledgedDuringOutage = new Set(fleet.acknowledged);
    await own.resume();

    const stored = await fleet.stored(redis, prefix, acknowledgedDuringOutage);
    expect([...acknowledgedDuringOutage].filter((id) => !stored.has(id))).toEqual([]);
    await streamed;
    await eventually(async () => {
      const all = await fleet.stored(redis, prefix, fleet.sent.map((s) => s.id));
      expect(fleet.sent.filter((s) => !all.has(s.id)).length).toBe(0);
    }, 30_000);
    expect(await metric(t, "iothub_ota_ingest_retries_total")).toBeGreaterThan(0);
    await eventually(async () => expect((await fetch(`${t.httpUrl}/readyz`)).status).toBe(200));
    for (const dev of devices) {
      const { otaProgress } = await gqlOk(t, OtaProgressDocument, { productName, deviceName: dev.deviceName });
      expect(otaProgress?.progress).toBe(progressOf(REPORTS - 1));
    }
  }, 90_000);
});

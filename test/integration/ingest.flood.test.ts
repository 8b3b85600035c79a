import { ObjectId } from "bson";
import mqtt, { type MqttClient } from "mqtt";
import { afterEach, describe, expect, it, vi } from "vitest";
import { DeviceDocument, OtaProgressChangedDocument, RegisterDeviceDocument } from "../../src/client/generated/graphql.js";
import { gqlOk, startApp, subscribe, wsClient } from "../helpers/app.js";
import { TestDevice } from "../helpers/device.js";
import { metric } from "../helpers/metrics.js";
import { OwnMosquitto } from "../helpers/processes.js";
import { uniq } from "../helpers/services.js";
import { onTeardown } from "../helpers/teardown.js";
import { eventually, sleep } from "../helpers/wait.js";

/** Reports of the steady device, one every STEADY_PACE_MS, while the other floods. */
const STEADY_REPORTS = 25;
const STEADY_PACE_MS = 200;
/** A status report this large, 20 in flight at a time: the flooding device outruns ingest and goes past its bound. */
const FLOOD_BYTES = 60 * 1024;
const FLOOD_IN_FLIGHT = 20;
/** 36 MB: more than the client's window (16 MiB) and the device's bound in ingest (8 MiB). */
const FLOOD_COUNT = 600;

describe("one device flooding big status reports through an external broker", () => {
  afterEach(() => vi.restoreAllMocks());

  it("neither drops the server's broker connection nor holds up another device's reports", async () => {
    const broker = await OwnMosquitto.start();
    onTeardown(() => broker.stop());
    // The server's own client, to count its connections (mqtt.js emits `connect` on each CONNACK).
    const clientId = uniq("server");
    const connect = vi.spyOn(mqtt, "connect");
    const t = await startApp({ externalBroker: broker.url, mqttClientId: clientId });
    const index = connect.mock.calls.findIndex((call) => (call[1] as { clientId?: string } | undefined)?.clientId === clientId);
    const server = connect.mock.results[index]?.value as MqttClient;
    let reconnects = 0;
    server.on("connect", () => reconnects++);

    const productName = uniq("flood");
    const [flooder, steady] = await Promise.all(
      [0, 1].map(async () => {
        const { registerDevice } = await gqlOk(t, RegisterDeviceDocument, { input: { productName } });
        return TestDevice.connect(broker.url, productName, registerDevice.device.deviceName, "");
      }),
    );
    const live = await subscribe(wsClient(t), OtaProgressChangedDocument, { productName, deviceName: steady.deviceName });

    // A burst larger than the client's window and the device's bound, 20 reports in flight at a time.
    let flooded = 0;
    const filler = "x".repeat(FLOOD_BYTES);
    const started = performance.now();
    const flood = Promise.all(
      Array.from({ length: FLOOD_IN_FLIGHT }, async () => {
        while (flooded < FLOOD_COUNT) await flooder.reportStatus({ firmware_ver: `${flooded++}`, filler });
      }),
    );
    const stored = () => metric(t, "iothub_ota_ingest_messages_total", { kind: "status", result: "accepted" });

    // Meanwhile the other device reports progress, one report every STEADY_PACE_MS.
    const latencies: number[] = [];
    for (let progress = 0; progress < STEADY_REPORTS; progress++) {
      const messageId = new ObjectId().toHexString();
      const sent = performance.now();
      await steady.reportProgress({ version: "2", type: "firmware", progress }, messageId);
      await live.results.next((r) => r.data?.otaProgressChanged.messageId === messageId, 60_000);
      latencies.push(performance.now() - sent);
      await sleep(STEADY_PACE_MS);
    }
    await flood;
    await eventually(async () => expect(await stored()).toBe(FLOOD_COUNT), 60_000);
    const drained = performance.now() - started;
    latencies.sort((a, b) => a - b);
    const p95 = latencies[Math.floor(latencies.length * 0.95)] as number;
    const refused = await metric(t, "iothub_ota_ingest_unacknowledged_total", { kind: "status" });
    console.log(
      `flood: ${FLOOD_COUNT} x ${FLOOD_BYTES / 1024} KB status reports stored in ${drained.toFixed(0)} ms (${refused} refusals); ` +
        `steady device p50 ${latencies[latencies.length >> 1]?.toFixed(0)} ms, p95 ${p95.toFixed(0)} ms, max ${latencies.at(-1)?.toFixed(0)} ms; ${reconnects} reconnects`,
    );
    // The flood went past its bound, and the server kept its connection: nothing the broker sent is sent again.
    expect(refused).toBeGreaterThan(0);
    expect(reconnects).toBe(0);
    // A report waits at most for what was ahead of it in the broker's queue (the burst), not for reconnects.
    expect(p95).toBeLessThan(3000);
    expect((await gqlOk(t, DeviceDocument, { productName, deviceName: flooder.deviceName })).device?.firmwareVersion).toBe(`${FLOOD_COUNT - 1}`);
  }, 120_000);
});

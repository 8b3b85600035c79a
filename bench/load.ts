import { ObjectId } from "bson";
import mqtt, { type MqttClient } from "mqtt";
import { nowMs, sleep } from "./lib.js";

export interface LoadDevice {
  productName: string;
  deviceName: string;
  secret: string;
}

/** Connects the devices that will publish, each on its own connection, as real devices do. */
export async function connectDevices(url: string, devices: LoadDevice[]): Promise<MqttClient[]> {
  return Promise.all(
    devices.map((d) =>
      mqtt.connectAsync(url, {
        clientId: `${d.productName}/${d.deviceName}`,
        username: `${d.productName}/${d.deviceName}`,
        password: d.secret,
        clean: false,
        reconnectPeriod: 0,
        connectTimeout: 60_000,
      }),
    ),
  );
}

export interface LoadResult {
  sent: number;
  firstSendAt: number;
  lastSendAt: number;
}

/**
 * Each device publishes `perDevice` QoS 1 progress reports, each carrying its
 * send time. `rate` reports per second in all (0: as fast as the broker
 * acknowledges, with up to `window` unacknowledged per device).
 */
export async function publishLoad(
  clients: MqttClient[],
  devices: LoadDevice[],
  perDevice: number,
  rate: number,
  window = 64,
): Promise<LoadResult> {
  const firstSendAt = nowMs();
  let sent = 0;
  const publishOne = (i: number, n: number) => {
    const d = devices[i] as LoadDevice;
    const payload = JSON.stringify({ version: `2.${Math.floor(n / 101)}`, type: "firmware", progress: n % 101, desc: "download", sentAt: nowMs() });
    sent++;
    return (clients[i] as MqttClient).publishAsync(`update_ota_status/${d.productName}/${d.deviceName}/${new ObjectId().toHexString()}`, payload, { qos: 1 });
  };
  if (rate <= 0) {
    await Promise.all(
      clients.map(async (_, i) => {
        const inflight = new Set<Promise<unknown>>();
        for (let n = 0; n < perDevice; n++) {
          const p = publishOne(i, n).finally(() => inflight.delete(p));
          inflight.add(p);
          if (inflight.size >= window) await Promise.race(inflight);
        }
        await Promise.all(inflight);
      }),
    );
  } else {
    const total = clients.length * perDevice;
    const tickMs = 5;
    const pending: Promise<unknown>[] = [];
    const counts = new Array<number>(clients.length).fill(0);
    let next = 0;
    const start = performance.now();
    while (next < total) {
      const due = Math.min(total, Math.floor(((performance.now() - start) / 1000) * rate));
      for (; next < due; next++) {
        const i = next % clients.length;
        pending.push(publishOne(i, counts[i]!++));
      }
      await sleep(tickMs);
    }
    await Promise.all(pending);
  }
  return { sent, firstSendAt, lastSendAt: nowMs() };
}

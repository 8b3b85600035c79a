import { readFile, writeFile } from "node:fs/promises";
import { ApiClient } from "../cli/api.client.js";
import { DeleteDeviceDocument, RegisterDeviceDocument } from "../client/generated/graphql.js";
import { checkName } from "../protocol/names.js";
import { SimulatedDevice, type DeviceCredentials, type SimBehaviour, type SimCounters, type SimState } from "./sim.device.js";

export interface FleetOptions {
  mqttUrl: string;
  behaviour: SimBehaviour;
  /** The firmware version every device starts on. */
  initialVersion: string;
  /** Connections being set up at once. */
  connectConcurrency: number;
}

export interface FleetSummary extends SimCounters {
  devices: number;
  connected: number;
  states: Record<SimState, number>;
  connectSeconds: number | null;
  connectionsPerSecond: number | null;
  /**
   * Growth of this process's resident memory while connecting, per connected
   * device; null under {@link KB_PER_DEVICE_MIN} connected devices, where the
   * process's own growth (a collection, lazily loaded code) outweighs theirs.
   */
  kbPerDevice: number | null;
  /** Why devices are not connected now: each reason (connectFailure) with how many devices it holds back. */
  connectFailures: Record<string, number>;
}

/** The fewest connected devices for which the memory per device means something (3 devices read 10173.3 KB each). */
export const KB_PER_DEVICE_MIN = 50;

/** Runs `work` over `items` with at most `concurrency` in flight. */
async function pool<T, R>(items: readonly T[], concurrency: number, work: (item: T, i: number) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const lanes = Array.from({ length: Math.min(concurrency, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await work(items[i] as T, i);
    }
  });
  await Promise.all(lanes);
  return results;
}

/** Registers devices through the GraphQL API, as an operator's script would. */
export async function registerDevices(
  graphqlUrl: string,
  token: string,
  productName: string,
  count: number,
  tags: string[],
  concurrency = 8,
): Promise<DeviceCredentials[]> {
  const api = new ApiClient({ server: graphqlUrl, token });
  return pool(Array.from({ length: count }), concurrency, async () => {
    const { secret, device } = (await api.request(RegisterDeviceDocument, { input: { productName, tags } })).registerDevice;
    return { productName: device.productName, deviceName: device.deviceName, secret };
  });
}

/** Deletes devices through the API (what `simulate --cleanup` registered); returns how many were there. */
export async function deleteDevices(graphqlUrl: string, token: string, devices: readonly DeviceCredentials[], concurrency = 8): Promise<number> {
  const api = new ApiClient({ server: graphqlUrl, token });
  const deleted = await pool(devices, concurrency, async ({ productName, deviceName }) => (await api.request(DeleteDeviceDocument, { productName, deviceName })).deleteDevice);
  return deleted.filter(Boolean).length;
}

/** A credentials file: a JSON array of `{productName, deviceName, secret}`. */
export async function readCredentials(file: string): Promise<DeviceCredentials[]> {
  const parsed = JSON.parse(await readFile(file, "utf8")) as unknown;
  if (!Array.isArray(parsed)) throw new Error(`${file}: expected a JSON array of {productName, deviceName, secret}`);
  return parsed.map((c: Record<string, unknown>, i) => {
    if (!checkName("productName", c.productName).ok || !checkName("deviceName", c.deviceName).ok || typeof c.secret !== "string") {
      throw new Error(`${file}: entry ${i} is not {productName, deviceName, secret}`);
    }
    return { productName: c.productName as string, deviceName: c.deviceName as string, secret: c.secret };
  });
}

export async function writeCredentials(file: string, credentials: DeviceCredentials[]): Promise<void> {
  await writeFile(file, JSON.stringify(credentials), { mode: 0o600 });
}

/** Many simulated devices in one process, with shared counters. */
export class Fleet {
  readonly devices: SimulatedDevice[];
  readonly counters: SimCounters = { reportsSent: 0, duplicatesSent: 0, commandsReceived: 0, expiredIgnored: 0, downloadsResumed: 0, reconnects: 0, errors: 0 };
  #connectSeconds: number | null = null;
  #kbPerDevice: number | null = null;
  #listeners: (() => void)[] = [];

  constructor(
    credentials: DeviceCredentials[],
    private readonly options: FleetOptions,
  ) {
    this.devices = credentials.map(
      (c) => new SimulatedDevice(c, options.mqttUrl, options.behaviour, this.counters, options.initialVersion, () => this.#changed()),
    );
  }

  /** Calls `fn` whenever a device changes state. */
  onChange(fn: () => void): void {
    this.#listeners.push(fn);
  }

  /**
   * Connects every device; returns the setup time. A device that cannot
   * connect counts as an error, keeps its reason (connectFailures) and keeps
   * trying with back-off, as firmware does.
   */
  async connectAll(): Promise<number> {
    const rssBefore = process.memoryUsage.rss();
    const started = performance.now();
    await pool(this.devices, this.options.connectConcurrency, async (d) => {
      try {
        await d.connect();
      } catch {
        this.counters.errors++;
        void d.keepConnecting();
      }
    });
    this.#connectSeconds = (performance.now() - started) / 1000;
    const connected = this.devices.filter((d) => d.connected).length;
    const kb = (process.memoryUsage.rss() - rssBefore) / 1024 / connected;
    // RSS can shrink while connecting (a collection): that is no cost.
    this.#kbPerDevice = connected < KB_PER_DEVICE_MIN ? null : Math.max(0, Math.round(kb * 10) / 10);
    return this.#connectSeconds;
  }

  /**
   * Whether any connected device got `$set_tags` in answer to its `$tags`
   * request within `ms` (this server's broker answers); `signal` ends the wait early.
   */
  async tagsAnswered(ms: number, signal?: AbortSignal): Promise<boolean> {
    const deadline = Date.now() + ms;
    while (Date.now() < deadline && !signal?.aborted) {
      if (this.devices.some((d) => d.tagsAnswered)) return true;
      await new Promise((r) => setTimeout(r, 100));
    }
    return this.devices.some((d) => d.tagsAnswered);
  }

  /** Resolves once no device is downloading or installing (after `settleMs` of quiet), or after `timeoutMs`. */
  async settled(timeoutMs: number, settleMs = 1000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    let quietSince = Date.now();
    while (Date.now() < deadline) {
      const busy = this.devices.some((d) => d.state === "downloading" || d.state === "installing");
      if (busy) quietSince = Date.now();
      else if (Date.now() - quietSince >= settleMs) return true;
      await new Promise((r) => setTimeout(r, 100));
    }
    return false;
  }

  summary(): FleetSummary {
    const states: Record<SimState, number> = {
      idle: 0,
      downloading: 0,
      installing: 0,
      succeeded: 0,
      failed_download: 0,
      failed_md5: 0,
      failed_install: 0,
      rolled_back: 0,
    };
    const connectFailures: Record<string, number> = {};
    for (const d of this.devices) {
      states[d.state]++;
      if (!d.connected && d.lastError !== undefined) connectFailures[d.lastError] = (connectFailures[d.lastError] ?? 0) + 1;
    }
    const s = this.#connectSeconds;
    return {
      devices: this.devices.length,
      connected: this.devices.filter((d) => d.connected).length,
      states,
      ...this.counters,
      connectSeconds: s === null ? null : Math.round(s * 1000) / 1000,
      connectionsPerSecond: s === null || s === 0 ? null : Math.round(this.devices.length / s),
      kbPerDevice: this.#kbPerDevice,
      connectFailures,
    };
  }

  async stop(): Promise<void> {
    await pool(this.devices, 200, (d) => d.stop());
  }

  #changed(): void {
    for (const fn of this.#listeners) fn();
  }
}

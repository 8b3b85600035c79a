import { createHash } from "node:crypto";
import { ObjectId } from "bson";
import mqtt, { type MqttClient } from "mqtt";
import { checkFirmware, type Firmware } from "../ota/firmware.js";
import { checkTags } from "../protocol/names.js";
import { parseCommandTopic } from "../protocol/topics.js";
import { drawFaults, type Fault, type FaultRates } from "./faults.js";

export interface DeviceCredentials {
  productName: string;
  deviceName: string;
  secret: string;
}

export interface SimBehaviour {
  /** Report progress every `step` percent (1..100). */
  step: number;
  /** Pause between progress reports, to play a slow link. */
  paceMs: number;
  /** How long "installing" takes before the reboot. */
  installMs: number;
  /** How long the device stays away while rebooting or offline. */
  offlineMs: number;
  faults: FaultRates;
  random: () => number;
  rejectUnauthorized: boolean;
}

/** Where one simulated device ends up; what the summary counts. */
export type SimState =
  | "idle"
  | "downloading"
  | "installing"
  | "succeeded"
  | "failed_download"
  | "failed_md5"
  | "failed_install"
  | "rolled_back";

export interface SimCounters {
  reportsSent: number;
  duplicatesSent: number;
  commandsReceived: number;
  expiredIgnored: number;
  reconnects: number;
  errors: number;
}


const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * One device, as IotHub firmware behaves (PROTOCOL.md): persistent session,
 * `$tags` request on connect, `$set_tags` applied by (un)subscribing tag
 * topics, `$ota_upgrade` downloaded over HTTP(S), checked, "installed",
 * rebooted into, and confirmed with `firmware_ver`. Expired commands are ignored.
 */
export class SimulatedDevice {
  state: SimState = "idle";
  firmwareVersion: string;
  tags: string[] = [];
  tagsVersion = 0;
  #client: MqttClient | undefined;
  #upgrading = false;
  #stopped = false;
  #tagsApplied: Promise<void> = Promise.resolve();

  constructor(
    readonly credentials: DeviceCredentials,
    private readonly url: string,
    private readonly behaviour: SimBehaviour,
    private readonly counters: SimCounters,
    initialVersion: string,
    private readonly onChange: (device: SimulatedDevice) => void = () => undefined,
  ) {
    this.firmwareVersion = initialVersion;
  }

  get connected(): boolean {
    return this.#client?.connected ?? false;
  }

  /** Connects (resolving on CONNACK) and asks for its tags, as the SDK does on every connect. */
  async connect(): Promise<void> {
    this.#stopped = false;
    const { productName, deviceName, secret } = this.credentials;
    const client = mqtt.connect(this.url, {
      clientId: `${productName}/${deviceName}`,
      username: `${productName}/${deviceName}`,
      password: secret,
      clean: false,
      reconnectPeriod: 0,
      connectTimeout: 30_000,
      keepalive: 60,
      rejectUnauthorized: this.behaviour.rejectUnauthorized,
    });
    this.#client = client;
    // Listen before the CONNACK: a resumed session's queued commands follow it at once.
    client.on("message", (topic, payload) => this.#onMessage(topic, payload));
    await new Promise<void>((resolve, reject) => {
      client.once("connect", () => resolve());
      client.once("error", (err) => reject(err));
      client.once("close", () => reject(new Error("closed before CONNACK")));
    });
    client.on("error", () => this.counters.errors++);
    await this.#publish(`get/${productName}/${deviceName}/$tags/${new ObjectId().toHexString()}`, {
      tags: this.tags,
      tags_version: this.tagsVersion,
    });
    // As IotHub firmware does on every connect: the server knows the running version before any upgrade.
    await this.#publish(`update_status/${productName}/${deviceName}/${new ObjectId().toHexString()}`, { firmware_ver: this.firmwareVersion });
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    await this.#client?.endAsync(true);
  }

  #onMessage(topic: string, payload: Buffer): void {
    const parsed = parseCommandTopic(topic);
    if (!parsed.ok) return;
    this.counters.commandsReceived++;
    const { command, expiresAt } = parsed.value;
    if (expiresAt !== undefined && Date.now() / 1000 > expiresAt) {
      this.counters.expiredIgnored++;
      return;
    }
    let body: unknown;
    try {
      body = JSON.parse(payload.toString("utf8"));
    } catch {
      this.counters.errors++;
      return;
    }
    if (command === "$set_tags") this.#applyTags(body as { tags: string[]; tags_version: number });
    if (command === "$ota_upgrade") {
      // Checked as the server checks what it sends: a malformed command is counted and left alone.
      const firmware = checkFirmware(typeof body === "object" && body !== null ? (body as Record<string, unknown>) : {});
      if (firmware.ok) void this.#upgrade(firmware.value);
      else this.counters.errors++;
    }
  }

  /** Applies `$set_tags` in arrival order; the new list is stored once its subscriptions are made, as firmware does. */
  #applyTags(update: { tags: string[]; tags_version: number }): void {
    this.#tagsApplied = this.#tagsApplied.then(() => this.#applyTagsNow(update));
  }

  async #applyTagsNow({ tags, tags_version }: { tags: string[]; tags_version: number }): Promise<void> {
    if (!Array.isArray(tags) || !checkTags(tags).ok || typeof tags_version !== "number" || tags_version <= this.tagsVersion) return;
    const { productName } = this.credentials;
    const filter = (tag: string) => `tags/${productName}/${tag}/cmd/+/+/+/#`;
    const added = tags.filter((t) => !this.tags.includes(t));
    const removed = this.tags.filter((t) => !tags.includes(t));
    try {
      if (added.length > 0) await this.#client?.subscribeAsync(added.map(filter), { qos: 1 });
      if (removed.length > 0) await this.#client?.unsubscribeAsync(removed.map(filter));
      this.tags = [...tags];
      this.tagsVersion = tags_version;
    } catch {
      this.counters.errors++;
    }
  }

  async #upgrade(cmd: Firmware): Promise<void> {
    if (this.#upgrading || cmd.version === this.firmwareVersion) return;
    this.#upgrading = true;
    const faults = drawFaults(this.behaviour.faults, this.behaviour.random);
    const report = (progress: number, desc: string) =>
      this.#report({ version: cmd.version, type: cmd.type, progress, desc }, faults.has("duplicate"));
    try {
      this.#setState("downloading");
      if (faults.has("downloadError")) return await this.#fail(report, -1, "failed_download", "injected download error");
      let result = await this.#download(cmd, report, faults.has("offline"));
      if (result === "offline") {
        await this.#goOffline();
        result = await this.#download(cmd, report, false);
      }
      if (result === "error" || result === "offline") return await this.#fail(report, -1, "failed_download", "download failed");
      if (faults.has("md5Mismatch") || result.md5 !== cmd.md5 || result.size !== cmd.size) {
        return await this.#fail(report, -2, "failed_md5", "md5 or size check failed");
      }
      this.#setState("installing");
      await sleep(this.behaviour.installMs);
      if (faults.has("installError")) return await this.#fail(report, -3, "failed_install", "injected install error");
      // The new image is written before the reboot; a silent rollback boots the old one again.
      const rolledBack = faults.has("rollback");
      if (!rolledBack) this.firmwareVersion = cmd.version;
      await this.#goOffline(); // the reboot into the new firmware
      await this.#report({ firmware_ver: this.firmwareVersion }, false, "update_status");
      this.#setState(rolledBack ? "rolled_back" : "succeeded");
    } catch {
      this.counters.errors++;
    } finally {
      this.#upgrading = false;
    }
  }

  /** Streams the file, hashing as it goes; reports every `step` percent. */
  async #download(
    cmd: Firmware,
    report: (progress: number, desc: string) => Promise<void>,
    dropMidway: boolean,
  ): Promise<{ md5: string; size: number } | "error" | "offline"> {
    const { step, paceMs } = this.behaviour;
    let response: Response;
    try {
      response = await fetch(cmd.url);
    } catch {
      return "error";
    }
    if (!response.ok || !response.body) return "error";
    const hash = createHash("md5");
    let size = 0;
    let next = 0;
    await report(0, "download");
    next = step;
    try {
      for await (const chunk of response.body) {
        hash.update(chunk);
        size += chunk.length;
        const percent = Math.min(100, Math.floor((size * 100) / cmd.size));
        while (percent >= next && next < 100) {
          if (dropMidway && next >= 50) {
            await response.body.cancel().catch(() => undefined);
            return "offline";
          }
          await report(next, "download");
          next += step;
          if (paceMs > 0) await sleep(paceMs);
        }
      }
    } catch {
      return "error";
    }
    await report(100, "download");
    return { md5: hash.digest("hex"), size };
  }

  async #fail(report: (progress: number, desc: string) => Promise<void>, code: number, state: SimState, desc: string) {
    await report(code, desc);
    this.#setState(state);
  }

  /** Drops the connection, waits, and comes back on the same persistent session. */
  async #goOffline(): Promise<void> {
    await this.#client?.endAsync(true);
    await sleep(this.behaviour.offlineMs);
    if (this.#stopped) return;
    this.counters.reconnects++;
    await this.connect();
  }

  async #report(body: Record<string, unknown>, duplicate: boolean, kind = "update_ota_status"): Promise<void> {
    const { productName, deviceName } = this.credentials;
    const topic = `${kind}/${productName}/${deviceName}/${new ObjectId().toHexString()}`;
    await this.#publish(topic, body);
    this.counters.reportsSent++;
    if (duplicate) {
      await this.#publish(topic, body);
      this.counters.duplicatesSent++;
    }
  }

  async #publish(topic: string, body: unknown): Promise<void> {
    if (!this.#client) throw new Error("not connected");
    await this.#client.publishAsync(topic, JSON.stringify(body), { qos: 1 });
  }

  #setState(state: SimState): void {
    this.state = state;
    this.onChange(this);
  }
}

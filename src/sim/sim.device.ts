import { createHash, type Hash } from "node:crypto";
import mqtt, { type MqttClient } from "mqtt";
import { checkFirmware, type Firmware } from "../ota/firmware.js";
import { checkTags } from "../protocol/names.js";
import { newObjectId } from "../protocol/object-id.js";
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
  /** Back-off between reconnection attempts, doubling from the first to the last (defaults 1 s and 30 s). */
  reconnectMinMs?: number;
  reconnectMaxMs?: number;
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

/** A download so far: what a resumed one goes on from. */
interface DownloadSoFar {
  md5: Hash;
  size: number;
  /** The next percent to report. */
  next: number;
  /** The server answered `Accept-Ranges: bytes`. */
  ranges: boolean;
  etag: string | undefined;
}

const newDownload = (): DownloadSoFar => ({ md5: createHash("md5"), size: 0, next: 0, ranges: false, etag: undefined });

export interface SimCounters {
  reportsSent: number;
  duplicatesSent: number;
  commandsReceived: number;
  expiredIgnored: number;
  /** Downloads taken up again with a `Range` after a lost link (instead of from the first byte). */
  downloadsResumed: number;
  reconnects: number;
  errors: number;
}


const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A QoS 1 publish that fails when the connection closes before its PUBACK (mqtt.js would wait for a reconnection this client never makes). */
function publishOn(client: MqttClient, topic: string, body: unknown): Promise<void> {
  return new Promise((resolve, reject) => {
    if (!client.connected) return reject(new Error("not connected"));
    const onClose = () => reject(new Error("connection closed before PUBACK"));
    client.once("close", onClose);
    client.publish(topic, JSON.stringify(body), { qos: 1 }, (err) => {
      client.off("close", onClose);
      if (err) reject(err);
      else resolve();
    });
  });
}

/** What a failed connection says to the person running the simulator: the cause, and what to do about it. */
export function connectFailure(err: unknown, url: string): string {
  const e = err as { code?: unknown; message?: unknown };
  const code = typeof e.code === "string" ? e.code : typeof e.code === "number" ? String(e.code) : "";
  const message = typeof e.message === "string" ? e.message : String(err);
  if (["DEPTH_ZERO_SELF_SIGNED_CERT", "SELF_SIGNED_CERT_IN_CHAIN", "UNABLE_TO_VERIFY_LEAF_SIGNATURE"].includes(code)) {
    return `${url}: the server's TLS certificate is self-signed (the generated development one?): add --insecure to accept it`;
  }
  if (code === "ECONNREFUSED") return `${url}: nothing listens there: is the server running, on this MQTT_PORT (or MQTTS_PORT)?`;
  if (code === "ENOTFOUND" || code === "EAI_AGAIN") return `${url}: no such host`;
  if (/Bad username or password|Not authorized/i.test(message)) {
    return `${url}: the broker refused the device's credentials (${message}): is this the broker of the server that registered them?`;
  }
  return `${url}: ${code ? `${code} ` : ""}${message}`;
}

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
  /** Why the latest connection attempt failed (connectFailure), until one succeeds. */
  lastError: string | undefined;
  /** Whether the server has ever answered the `$tags` request with `$set_tags` (this server's broker does). */
  tagsAnswered = false;
  #client: MqttClient | undefined;
  /** The upgrade under way, if any: commands that arrive meanwhile are ignored, as IotHub firmware does. */
  #upgrading: object | null = null;
  #stopped = false;
  /** Set while the device is deliberately away (a reboot, an outage it plays): no reconnection behind its back. */
  #away = false;
  /** The reconnection loop running, if any: publishes wait for it. */
  #reconnecting: Promise<void> | undefined;
  #tagsApplied: Promise<void> = Promise.resolve();
  /** Ends the reconnection loop's back-off wait at once: a stopped fleet's process exits without waiting it out (up to 30 s). */
  #wake: (() => void) | undefined;

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
    try {
      await new Promise<void>((resolve, reject) => {
        client.once("connect", () => resolve());
        client.once("error", (err) => reject(err));
        client.once("close", () => reject(new Error("closed before CONNACK")));
      });
    } catch (err) {
      this.lastError = connectFailure(err, this.url);
      client.end(true);
      throw err;
    }
    this.lastError = undefined;
    client.on("error", () => this.counters.errors++);
    // As IotHub firmware does: a lost connection is retried, with back-off, for as long as the device runs.
    client.on("close", () => {
      if (this.#client !== client || this.#stopped || this.#away) return;
      client.end(true);
      void this.keepConnecting();
    });
    await publishOn(client, `get/${productName}/${deviceName}/$tags/${newObjectId()}`, {
      tags: this.tags,
      tags_version: this.tagsVersion,
    });
    // As IotHub firmware does on every connect: the server knows the running version before any upgrade.
    await publishOn(client, `update_status/${productName}/${deviceName}/${newObjectId()}`, { firmware_ver: this.firmwareVersion });
  }

  /** Reconnects with doubling back-off (and jitter) until connected or stopped; one loop at a time. */
  keepConnecting(): Promise<void> {
    this.#reconnecting ??= (async () => {
      const min = this.behaviour.reconnectMinMs ?? 1000;
      const max = this.behaviour.reconnectMaxMs ?? 30_000;
      for (let attempt = 0; !this.#stopped; attempt++) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, Math.min(max, min * 2 ** attempt) * (0.5 + Math.random() / 2));
          this.#wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        this.#wake = undefined;
        if (this.#stopped) return;
        try {
          await this.connect();
          this.counters.reconnects++;
          this.onChange(this);
          return;
        } catch {
          // lastError says why; try again later
        }
      }
    })().finally(() => (this.#reconnecting = undefined));
    return this.#reconnecting;
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.#wake?.();
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
    if (command === "$set_tags") {
      this.tagsAnswered = true;
      this.#applyTags(body as { tags: string[]; tags_version: number });
    }
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
    const run = {};
    this.#upgrading = run;
    const faults = drawFaults(this.behaviour.faults, this.behaviour.random);
    const report = (progress: number, desc: string) =>
      this.#report({ version: cmd.version, type: cmd.type, progress, desc }, faults.has("duplicate"));
    try {
      this.#setState("downloading");
      if (faults.has("downloadError")) return await this.#fail(report, -1, "failed_download", "injected download error");
      const partial = newDownload();
      let result = await this.#download(cmd, report, faults.has("offline"), partial);
      if (result === "offline") {
        await this.#goOffline();
        result = await this.#download(cmd, report, false, partial);
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
      await this.#finish(rolledBack ? "rolled_back" : "succeeded", () => this.#report({ firmware_ver: this.firmwareVersion }, false, "update_status"));
    } catch {
      this.counters.errors++;
    } finally {
      if (this.#upgrading === run) this.#upgrading = null;
    }
  }

  /**
   * Streams the file, hashing as it goes; reports every `step` percent. After
   * a lost link it resumes from `partial` with a `Range` (and `If-Range`, so
   * that changed bytes start over) when the server said it takes ranges;
   * otherwise it starts again from the first byte.
   */
  async #download(
    cmd: Firmware,
    report: (progress: number, desc: string) => Promise<void>,
    dropMidway: boolean,
    partial: DownloadSoFar,
  ): Promise<{ md5: string; size: number } | "error" | "offline"> {
    const { step, paceMs } = this.behaviour;
    const resume = partial.size > 0 && partial.ranges;
    // Every byte came before the link went: nothing left to ask for.
    if (resume && partial.size >= cmd.size) {
      await report(100, "download");
      return { md5: partial.md5.digest("hex"), size: partial.size };
    }
    let response: Response;
    try {
      response = await fetch(cmd.url, resume ? { headers: { range: `bytes=${partial.size}-`, ...(partial.etag ? { "if-range": partial.etag } : {}) } } : {});
    } catch {
      return "error";
    }
    if (!response.ok || !response.body) return "error";
    // A range from elsewhere than where the download stopped is not this download's rest: start over.
    const resumed = resume && response.status === 206 && response.headers.get("content-range")?.startsWith(`bytes ${partial.size}-`) === true;
    if (resumed) this.counters.downloadsResumed++;
    else if (partial.size > 0) {
      if (response.status === 206) {
        await response.body.cancel().catch(() => undefined);
        Object.assign(partial, newDownload());
        return this.#download(cmd, report, false, partial);
      }
      Object.assign(partial, newDownload()); // the whole file again
    }
    partial.ranges = response.headers.get("accept-ranges") === "bytes";
    partial.etag = response.headers.get("etag") ?? undefined;
    if (partial.size === 0) {
      await report(0, "download");
      partial.next = step;
    }
    try {
      for await (const chunk of response.body) {
        partial.md5.update(chunk);
        partial.size += chunk.length;
        const percent = Math.min(100, Math.floor((partial.size * 100) / cmd.size));
        while (percent >= partial.next && partial.next < 100) {
          if (dropMidway && partial.next >= 50) {
            await response.body.cancel().catch(() => undefined);
            return "offline";
          }
          await report(partial.next, "download");
          partial.next += step;
          if (paceMs > 0) await sleep(paceMs);
        }
      }
    } catch {
      return "error";
    }
    await report(100, "download");
    return { md5: partial.md5.digest("hex"), size: partial.size };
  }

  /** Reports the failure as the upgrade's end: a command arriving meanwhile (another rollout's, say) is taken. */
  async #fail(report: (progress: number, desc: string) => Promise<void>, code: number, state: SimState, desc: string) {
    await this.#finish(state, () => report(code, desc));
  }

  /**
   * Ends the upgrade with its last report. The server may send the next
   * command as soon as it has stored that report, before its acknowledgement
   * arrives: the device takes commands again first, as firmware does once it
   * has rebooted or given up.
   */
  async #finish(state: SimState, lastReport: () => Promise<void>): Promise<void> {
    this.#upgrading = null;
    await lastReport();
    if (this.#upgrading === null) this.#setState(state);
  }

  /** Drops the connection, waits, and comes back on the same persistent session (retrying while the server is away). */
  async #goOffline(): Promise<void> {
    this.#away = true;
    try {
      await this.#client?.endAsync(true);
      await sleep(this.behaviour.offlineMs);
    } finally {
      this.#away = false;
    }
    if (this.#stopped) return;
    this.counters.reconnects++;
    try {
      await this.connect();
    } catch {
      await this.keepConnecting();
    }
  }

  async #report(body: Record<string, unknown>, duplicate: boolean, kind = "update_ota_status"): Promise<void> {
    const { productName, deviceName } = this.credentials;
    const topic = `${kind}/${productName}/${deviceName}/${newObjectId()}`;
    await this.#publish(topic, body);
    this.counters.reportsSent++;
    if (duplicate) {
      await this.#publish(topic, body);
      this.counters.duplicatesSent++;
    }
  }

  /** Publishes at QoS 1; while the connection is down it waits for the reconnection, then sends (again): at least once. */
  async #publish(topic: string, body: unknown): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      if (this.#reconnecting) await this.#reconnecting;
      const client = this.#client;
      if (!client || this.#stopped) throw new Error("not connected");
      try {
        return await publishOn(client, topic, body);
      } catch (err) {
        // The connection dropped under the publish: once it is back, the same report (same messageId) goes again.
        if (attempt >= 5 || this.#stopped) throw err;
        await sleep(100);
      }
    }
  }

  #setState(state: SimState): void {
    this.state = state;
    this.onChange(this);
  }
}

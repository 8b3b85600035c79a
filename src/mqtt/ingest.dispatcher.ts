import type { DeviceService } from "../devices/device.service.js";
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";
import type { MessageDeduplicator, ProgressStore } from "../ota/ports.js";
import { recordFromReport, succeedIfVersion } from "../ota/progress.model.js";
import { parseOtaStatus, parseStatus, parseTagsRequest } from "../protocol/payloads.js";
import { parseDeviceTopic, type DeviceMessageTopic } from "../protocol/topics.js";

export interface IngestOptions {
  maxPayloadBytes: number;
  dedupTtlSeconds: number;
}

type Outcome = "accepted" | "duplicate" | "stale" | "ignored";

/**
 * Takes every device message the server's MQTT client receives. mqtt.js does
 * not await its handlers, so messages are chained per device: one device's
 * reports are applied in arrival order, different devices' concurrently.
 */
export class IngestDispatcher {
  readonly #chains = new Map<string, Promise<void>>();

  constructor(
    private readonly devices: DeviceService,
    private readonly progress: ProgressStore & MessageDeduplicator,
    private readonly metrics: Metrics,
    private readonly log: Logger,
    private readonly options: IngestOptions,
    private readonly now: () => number = Date.now,
  ) {}

  /** Never throws: a bad message is counted, logged and dropped; ingest goes on. */
  handle(topic: string, payload: Buffer): void {
    const receivedAt = this.now();
    const parsed = parseDeviceTopic(topic);
    if (!parsed.ok) {
      this.#malformed("unknown", "unknown_topic", topic, parsed.message);
      return;
    }
    const message = parsed.value;
    const key = `${message.productName}/${message.deviceName}`;
    const previous = this.#chains.get(key) ?? Promise.resolve();
    const next = previous.then(() => this.#process(message, topic, payload, receivedAt));
    this.#chains.set(key, next);
    void next.finally(() => {
      if (this.#chains.get(key) === next) this.#chains.delete(key);
    });
  }

  /** Resolves once every message taken so far has been processed. */
  async drain(): Promise<void> {
    while (this.#chains.size > 0) await Promise.allSettled([...this.#chains.values()]);
  }

  async #process(m: DeviceMessageTopic, topic: string, payload: Buffer, receivedAt: number): Promise<void> {
    try {
      const outcome = await this.#apply(m, topic, payload, receivedAt);
      if (outcome !== null) this.metrics.ingest.inc({ kind: m.kind, result: outcome });
    } catch (err) {
      this.metrics.ingest.inc({ kind: m.kind, result: "failed" });
      this.log.error({ err, topic }, "ingest failed");
    }
  }

  /** Returns the outcome, or null when the message was malformed (already counted). */
  async #apply(m: DeviceMessageTopic, topic: string, payload: Buffer, receivedAt: number): Promise<Outcome | null> {
    const { maxPayloadBytes: max, dedupTtlSeconds: ttl } = this.options;
    switch (m.kind) {
      case "ota_status": {
        const report = parseOtaStatus(payload, max);
        if (!report.ok) return this.#malformed(m.kind, report.reason, topic, report.message);
        const record = recordFromReport(m, report.value, m.messageId, receivedAt);
        return this.progress.ingest(record, ttl);
      }
      case "status": {
        const status = parseStatus(payload, max);
        if (!status.ok) return this.#malformed(m.kind, status.reason, topic, status.message);
        return this.#once(m, ttl, async () => {
          const applied = await this.devices.applyStatus(m.productName, m.deviceName, status.value, m.messageId, receivedAt);
          if (!applied) return "stale";
          await this.#completeUpgrade(m.productName, m.deviceName, status.value.firmware_ver as string | undefined);
          return "accepted";
        });
      }
      case "get": {
        // The SDK also asks for `$shadow` and `$ntp`: outside this server's scope (PROTOCOL.md).
        if (m.resource !== "$tags") return "ignored";
        const request = parseTagsRequest(payload, max);
        if (!request.ok) return this.#malformed(m.kind, request.reason, topic, request.message);
        return this.#once(m, ttl, async () => {
          await this.devices.answerTagsRequest(m.productName, m.deviceName, request.value.tagsVersion);
          return "accepted";
        });
      }
      default: {
        const never: never = m;
        return never;
      }
    }
  }

  /** Runs `effect` for the first delivery of a messageId; a failed effect frees the id for a redelivery. */
  async #once(m: DeviceMessageTopic, ttl: number, effect: () => Promise<Outcome>): Promise<Outcome> {
    if (!(await this.progress.claim(m.productName, m.deviceName, m.messageId, ttl))) return "duplicate";
    try {
      return await effect();
    } catch (err) {
      await this.progress.release(m.productName, m.deviceName, m.messageId).catch(() => undefined);
      throw err;
    }
  }

  /** `firmware_ver` equal to the target version completes the upgrade; retried if a report races it. */
  async #completeUpgrade(productName: string, deviceName: string, firmwareVersion: string | undefined) {
    if (firmwareVersion === undefined) return;
    for (let attempt = 0; attempt < 3; attempt++) {
      const current = await this.progress.get(productName, deviceName);
      const next = current && succeedIfVersion(current, firmwareVersion);
      if (!current || !next) return;
      if (await this.progress.compareAndSet(current, next)) return;
    }
  }

  #malformed(kind: string, reason: string, topic: string, message: string): null {
    this.metrics.malformed.inc({ reason });
    this.metrics.ingest.inc({ kind, result: "malformed" });
    this.log.warn({ topic, reason }, `dropped malformed message: ${message}`);
    return null;
  }
}

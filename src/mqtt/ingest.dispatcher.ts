import type { Limits } from "../config/config.js";
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
  limits: Limits;
}

type Outcome = "accepted" | "duplicate" | "stale" | "ignored";

/** One device's work in flight: what its next message must wait for. */
interface Lane {
  /** Completion of the last message that had to wait for everything before it. */
  barrier: Promise<void>;
  /** Progress reports sent to Redis since the barrier, not yet answered. */
  inflight: Set<Promise<void>>;
  pending: number;
}

const SETTLED = Promise.resolve();

/**
 * Takes every device message the server's MQTT client receives. mqtt.js does
 * not await its handlers, so ordering is ours: one device's messages take
 * effect in arrival order, different devices' concurrently. Progress reports
 * need no waiting among themselves, since Redis applies one connection's
 * commands in the order they were sent; a status report or a data request
 * waits for everything before it, and everything after waits for it.
 */
export class IngestDispatcher {
  readonly #lanes = new Map<string, Lane>();

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
    let lane = this.#lanes.get(key);
    if (!lane) {
      lane = { barrier: SETTLED, inflight: new Set(), pending: 0 };
      this.#lanes.set(key, lane);
    }
    const run = () => this.#process(message, topic, payload, receivedAt);
    let done: Promise<void>;
    if (message.kind === "ota_status") {
      done = lane.barrier === SETTLED ? run() : lane.barrier.then(run);
      lane.inflight.add(done);
    } else {
      done = Promise.all([lane.barrier, ...lane.inflight]).then(run);
      lane.barrier = done;
      lane.inflight = new Set();
    }
    lane.pending++;
    const settledLane = lane;
    void done.finally(() => {
      settledLane.inflight.delete(done);
      if (--settledLane.pending === 0 && this.#lanes.get(key) === settledLane) this.#lanes.delete(key);
    });
  }

  /** Resolves once every message taken so far has been processed. */
  async drain(): Promise<void> {
    while (this.#lanes.size > 0) {
      await Promise.allSettled([...this.#lanes.values()].flatMap((l) => [l.barrier, ...l.inflight]));
      await SETTLED; // let the finally callbacks retire the lanes
    }
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

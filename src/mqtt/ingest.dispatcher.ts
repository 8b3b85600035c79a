import type { Limits } from "../config/config.js";
import type { Receipt } from "../devices/device.model.js";
import type { DeviceService } from "../devices/device.service.js";
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";
import type { IngestContext, MessageDeduplicator, ProgressStore, ReportListener } from "../ota/ports.js";
import { rankOf, recordFromReport, succeedIfVersion, type ProgressRecord } from "../ota/progress.model.js";
import { parseOtaStatus, parseStatus, parseTagsRequest } from "../protocol/payloads.js";
import { parseDeviceTopic, type DeviceMessageTopic } from "../protocol/topics.js";

export interface IngestOptions {
  maxPayloadBytes: number;
  dedupTtlSeconds: number;
  limits: Limits;
  /** Payload bytes in flight, all devices together, past which only devices within their share are taken; default 64 MiB. */
  maxPendingBytes?: number;
  /** Payload bytes in flight for one device, past which its messages are refused; default 8 MiB. */
  maxDevicePendingBytes?: number;
  /** Told of each stored report before it is acknowledged (rollout executions). */
  listener?: ReportListener;
}

type Outcome = "accepted" | "duplicate" | "stale" | "ignored";

/**
 * A message whose effect failed is tried again after each of these pauses
 * (a dependency blip), then left unacknowledged: the device sends it again.
 */
const RETRY_DELAYS_MS = [100, 500, 1500] as const;
/**
 * Payload bytes taken and not yet settled, all devices together. The broker
 * side bounds what it hands over (it acknowledges only what settled); past
 * this, a device holding more than an equal share of it is refused at once
 * rather than held (see {@link admission}).
 */
const MAX_PENDING_BYTES = 64 * 1024 * 1024;
/** The same for one device: a device flooding big reports is refused before it crowds out the others. */
const MAX_DEVICE_PENDING_BYTES = 8 * 1024 * 1024;

export type Admission = { ok: true } | { ok: false; why: "device_bound" | "share" | "behind_refused" };

const REFUSED: Record<Exclude<Admission, { ok: true }>["why"], string> = {
  device_bound: "this device has too much in flight",
  share: "ingest is full and this device holds more than its share",
  behind_refused: "an earlier message of this device was refused",
};

/**
 * Whether a device holding `deviceBytes` may take `bytes` more, with
 * `totalBytes` held by `devices` devices (itself included). A device is
 * refused past its own bound, or past the global bound when it would hold
 * more than an equal share of it; a device within its share is taken even
 * past the global bound, so a few flooding devices never get another refused
 * (the overshoot is what devices within their share hold: with the embedded
 * broker, at most one read of each connection; the external client's window
 * is smaller than the global bound).
 */
export function admission(
  deviceBytes: number,
  bytes: number,
  totalBytes: number,
  devices: number,
  bounds: { maxPendingBytes: number; maxDevicePendingBytes: number },
): Admission {
  if (deviceBytes + bytes > bounds.maxDevicePendingBytes) return { ok: false, why: "device_bound" };
  if (totalBytes + bytes > bounds.maxPendingBytes && deviceBytes + bytes > bounds.maxPendingBytes / Math.max(1, devices)) {
    return { ok: false, why: "share" };
  }
  return { ok: true };
}

/** One device's work in flight: what its next message must wait for. */
interface Lane {
  /** Completion of the last message that had to wait for everything before it; never rejects. */
  barrier: Promise<unknown>;
  /** Progress reports sent to Redis since the barrier, not yet answered; never reject. */
  inflight: Set<Promise<unknown>>;
  pending: number;
  /** Payload bytes of the pending messages. */
  bytes: number;
  /**
   * A message of this lane was refused over a bound: what follows is refused
   * too until the lane drains, so it comes again after the refused one; the
   * messages taken before it still take effect (they precede it).
   */
  refusing: boolean;
  /**
   * A message of this lane was left unacknowledged: everything queued behind it
   * is too, so the device's redelivery replays them in their order (a later
   * status applied before an earlier one's redelivery would be overwritten).
   */
  failed: boolean;
}

const SETTLED: Promise<unknown> = Promise.resolve();
const ignore = () => undefined;

/** A message left unacknowledged on purpose: the device sends it again. */
export class IngestRefused extends Error {
  override readonly name = "IngestRefused";
}

/**
 * Takes every device message, from the embedded broker or the server's MQTT
 * client, and settles it: `handle` resolves once the message's effect is
 * durable (or the message was dropped on purpose: malformed, duplicate,
 * stale; counted), and rejects when its effect could not be made durable
 * after a few tries; the caller acknowledges (PUBACK) only what resolved.
 *
 * One device's messages take effect in arrival order, different devices'
 * concurrently. Progress reports need no waiting among themselves (the
 * progress store decides their order in batches); a status report or a data
 * request waits for everything before it, and everything after waits for it.
 */
export class IngestDispatcher {
  readonly #lanes = new Map<string, Lane>();
  readonly #lastLog = new Map<string, { at: number; suppressed: number }>();
  #seq = 0;
  #pendingBytes = 0;
  readonly #context: IngestContext;
  readonly #bounds: { maxPendingBytes: number; maxDevicePendingBytes: number };

  constructor(
    private readonly devices: DeviceService,
    private readonly progress: ProgressStore & MessageDeduplicator,
    private readonly metrics: Metrics,
    private readonly log: Logger,
    private readonly options: IngestOptions,
    private readonly now: () => number = Date.now,
    private readonly sleep: (ms: number) => Promise<void> = (ms) => new Promise((r) => setTimeout(r, ms)),
  ) {
    this.#bounds = {
      maxPendingBytes: options.maxPendingBytes ?? MAX_PENDING_BYTES,
      maxDevicePendingBytes: options.maxDevicePendingBytes ?? MAX_DEVICE_PENDING_BYTES,
    };
    this.#context = { dedupTtlSeconds: options.dedupTtlSeconds, tagsOf: (p, d) => devices.tagsOf(p, d) };
  }

  handle(topic: string, payload: Buffer): Promise<void> {
    const receipt: Receipt = { at: this.now(), seq: this.#seq++ };
    const parsed = parseDeviceTopic(topic);
    if (!parsed.ok) {
      this.#malformed("unknown", "unknown_topic", topic, parsed.message);
      return Promise.resolve();
    }
    const message = parsed.value;
    // Too large for any parser: dropped and acknowledged now, before the in-flight bounds, which would refuse it
    // on every redelivery and, with in-order acknowledgement, hold back everything behind it.
    if (payload.length > this.options.maxPayloadBytes) {
      this.#malformed(message.kind, "too_large", topic, `payload of ${payload.length} bytes is over MAX_PAYLOAD_BYTES`);
      return Promise.resolve();
    }
    const key = `${message.productName}/${message.deviceName}`;
    let lane = this.#lanes.get(key);
    if (!lane) {
      lane = { barrier: SETTLED, inflight: new Set(), pending: 0, bytes: 0, refusing: false, failed: false };
      this.#lanes.set(key, lane);
    }
    // Lanes live while they hold work: their count is the number of devices sharing the global bound.
    const admitted: Admission = lane.refusing
      ? { ok: false, why: "behind_refused" }
      : admission(lane.bytes, payload.length, this.#pendingBytes, this.#lanes.size, this.#bounds);
    if (!admitted.ok) {
      // Refused unprocessed, and so is what follows it from this device until its lane drains: it comes again in order.
      lane.refusing = true;
      const refused = Promise.reject(this.#unacknowledged(message, topic, new IngestRefused(`${REFUSED[admitted.why]}; send it again later`)));
      refused.catch(ignore); // the caller decides what a refusal means; an unobserved one must not end the process
      const thisLane = lane;
      // Not before the messages taken in the same read (one synchronous run) have met the refusing lane.
      queueMicrotask(() => {
        if (thisLane.pending === 0 && this.#lanes.get(key) === thisLane) this.#lanes.delete(key);
      });
      return refused;
    }
    const thisLane = lane;
    const run = () => this.#process(message, topic, payload, receipt, thisLane);
    let done: Promise<void>;
    let settled: Promise<unknown>;
    if (message.kind === "ota_status") {
      done = lane.barrier === SETTLED ? run() : lane.barrier.then(run);
      settled = done.then(ignore, ignore); // also marks `done` observed: a caller that ignores it ends nothing
      lane.inflight.add(settled);
    } else {
      done = Promise.all([lane.barrier, ...lane.inflight]).then(run);
      settled = done.then(ignore, ignore);
      lane.barrier = settled;
      lane.inflight = new Set();
    }
    lane.pending++;
    lane.bytes += payload.length;
    this.#pendingBytes += payload.length;
    void settled.then(() => {
      this.#pendingBytes -= payload.length;
      thisLane.bytes -= payload.length;
      thisLane.inflight.delete(settled);
      if (--thisLane.pending === 0 && this.#lanes.get(key) === thisLane) this.#lanes.delete(key);
    });
    return done;
  }

  /** Resolves once every message taken so far has settled. */
  async drain(): Promise<void> {
    while (this.#lanes.size > 0) {
      await Promise.all([...this.#lanes.values()].flatMap((l) => [l.barrier, ...l.inflight]));
      await SETTLED; // let the settle callbacks retire the lanes
    }
  }

  /** Applies the message, trying again while a dependency fails; rejects when it never took effect. */
  async #process(m: DeviceMessageTopic, topic: string, payload: Buffer, receipt: Receipt, lane: Lane): Promise<void> {
    if (lane.failed) throw this.#unacknowledged(m, topic, new IngestRefused("an earlier message of this device was not stored"));
    for (let attempt = 0; ; attempt++) {
      try {
        const outcome = await this.#apply(m, topic, payload, receipt);
        if (outcome !== null) this.metrics.ingest.inc({ kind: m.kind, result: outcome });
        return;
      } catch (err) {
        if (isPermanent(err)) {
          // Trying again, now or on redelivery, would fail the same way: dropped, counted, logged.
          this.metrics.ingest.inc({ kind: m.kind, result: "failed" });
          this.#throttledLog(`failed:${m.kind}`, (suppressed) => this.log.error({ err, topic, suppressed }, "ingest failed; message dropped"));
          return;
        }
        const delay = RETRY_DELAYS_MS[attempt];
        if (delay === undefined) {
          lane.failed = true;
          throw this.#unacknowledged(m, topic, err);
        }
        this.metrics.ingestRetries.inc({ kind: m.kind });
        await this.sleep(delay);
        if (lane.failed) throw this.#unacknowledged(m, topic, new IngestRefused("an earlier message of this device was not stored"));
      }
    }
  }

  /** Returns the outcome, or null when the message was malformed (already counted). */
  async #apply(m: DeviceMessageTopic, topic: string, payload: Buffer, receipt: Receipt): Promise<Outcome | null> {
    const { maxPayloadBytes: max, dedupTtlSeconds: ttl } = this.options;
    switch (m.kind) {
      case "ota_status": {
        const report = parseOtaStatus(payload, max);
        if (!report.ok) return this.#malformed(m.kind, report.reason, topic, report.message);
        const record = recordFromReport(m, report.value, m.messageId, receipt.at);
        const result = await this.progress.ingest(record, this.#context);
        if (result.outcome === "accepted") await this.#tellListener(record, topic);
        if (result.outcome !== "stale") return result.outcome;
        const { why, stored } = result;
        this.#throttledLog(`stale:${m.kind}:${why}`, (suppressed) =>
          this.log.warn(
            { topic, why, rank: rankOf(record), storedRank: rankOf(stored), storedState: stored.state, version: stored.version, suppressed },
            "dropped a progress report behind the stored one in the same upgrade attempt",
          ),
        );
        return "stale";
      }
      case "status": {
        const status = parseStatus(payload, max);
        if (!status.ok) return this.#malformed(m.kind, status.reason, topic, status.message);
        return this.#once(m, ttl, async () => {
          const applied = await this.devices.applyStatus(m.productName, m.deviceName, status.value, receipt);
          if (!applied) {
            this.#throttledLog(`stale:${m.kind}`, (suppressed) =>
              this.log.warn({ topic, suppressed }, "dropped a status report: one received later is stored"),
            );
            return "stale";
          }
          const firmwareVersion = typeof status.value.firmware_ver === "string" ? status.value.firmware_ver : undefined;
          await this.#completeUpgrade(m.productName, m.deviceName, firmwareVersion, receipt.at);
          await this.options.listener?.onStatus(m.productName, m.deviceName, firmwareVersion);
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

  /**
   * Runs `effect` unless the messageId was seen, and remembers it only once the
   * effect is durable: a failure in between repeats the effect on redelivery
   * (both effects here are idempotent: a status applied again at the same
   * receive order, `$set_tags` sent again), and never drops the redelivery.
   */
  async #once(m: DeviceMessageTopic, ttl: number, effect: () => Promise<Outcome>): Promise<Outcome> {
    if (await this.progress.seen(m.productName, m.deviceName, m.messageId)) return "duplicate";
    const outcome = await effect();
    await this.progress.remember(m.productName, m.deviceName, m.messageId, ttl);
    return outcome;
  }

  /**
   * The report is stored (Redis): acknowledged whatever the listener does. A
   * listener that fails (PostgreSQL down) is counted and logged; the rollout
   * scheduler applies the stored progress to the execution later. Never told
   * of a duplicate: an old report repeated must not move a newer attempt.
   */
  async #tellListener(record: ProgressRecord, topic: string): Promise<void> {
    try {
      await this.options.listener?.onProgress(record);
    } catch (err) {
      this.metrics.rolloutLagging.inc();
      this.#throttledLog("listener:ota_status", (suppressed) =>
        this.log.warn({ err, topic, suppressed }, "a stored progress report could not be applied to its rollout execution yet"),
      );
    }
  }

  /** `firmware_ver` equal to the target version completes the upgrade; tried again if a report races it. */
  async #completeUpgrade(productName: string, deviceName: string, firmwareVersion: string | undefined, at: number) {
    if (firmwareVersion === undefined) return;
    for (let attempt = 0; attempt < 3; attempt++) {
      const current = await this.progress.get(productName, deviceName);
      const next = current && succeedIfVersion(current, firmwareVersion, at);
      if (!current || !next) return;
      if (await this.progress.compareAndSet(current, next)) return;
    }
    throw new Error("progress kept changing while the upgrade was being completed");
  }

  #unacknowledged(m: DeviceMessageTopic, topic: string, err: unknown): unknown {
    this.metrics.unacknowledged.inc({ kind: m.kind });
    this.metrics.ingest.inc({ kind: m.kind, result: "unacknowledged" });
    this.#throttledLog(`unacknowledged:${m.kind}`, (suppressed) =>
      this.log.error({ err, topic, suppressed }, "message left unacknowledged: its effect could not be stored; the device sends it again"),
    );
    return err;
  }

  #malformed(kind: string, reason: string, topic: string, message: string): null {
    this.metrics.malformed.inc({ reason });
    this.metrics.ingest.inc({ kind, result: "malformed" });
    this.#throttledLog(`malformed:${reason}`, (suppressed) => this.log.warn({ topic, reason, suppressed }, `dropped malformed message: ${message}`));
    return null;
  }

  /** Logs at most once per interval per key, saying how many were not logged since: floods must not flood the log. */
  #throttledLog(key: string, write: (suppressed: number) => void): void {
    const now = this.now();
    const last = this.#lastLog.get(key);
    if (last && now - last.at < this.options.limits.refusedLogIntervalMs) {
      last.suppressed++;
      return;
    }
    write(last?.suppressed ?? 0);
    this.#lastLog.set(key, { at: now, suppressed: 0 });
  }
}

/**
 * Whether an error would recur on every try: PostgreSQL's data exceptions
 * (SQLSTATE class 22) and integrity violations (class 23), which payload
 * checks should have prevented. Anything else (a connection lost, a timeout)
 * may pass: tried again, then left to the device's redelivery.
 */
export function isPermanent(err: unknown): boolean {
  for (let e = err, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string" && /^2[23][0-9A-Z]{3}$/.test(code)) return true;
  }
  return false;
}

import type { CommandTarget } from "../protocol/topics.js";
import type { OrderDecision, ProgressRecord } from "./progress.model.js";

/** Sends a command to devices: the MQTT client in production, whatever the broker. */
export interface CommandPublisher {
  /** Resolves once the broker has acknowledged the QoS 1 publish. */
  publishCommand(topic: string, payload: string): Promise<void>;
}

/** Live connections of devices, where the broker is ours to control. */
export interface DeviceSessions {
  /**
   * Closes every connection of the device, on whichever instance holds it;
   * resolves once every instance has been told. A no-op where the broker is external.
   */
  disconnect(productName: string, deviceName: string): Promise<void>;
  /** Closes them and drops the device's persistent session, with the commands queued in it. */
  forget(productName: string, deviceName: string): Promise<void>;
  /**
   * Removes the device's commands with these requestIds from the queues of its
   * offline sessions, so it never receives them; resolves with the requestIds
   * that were found queued and removed. Always empty where the broker is external.
   */
  withdraw(productName: string, deviceName: string, requestIds: readonly string[]): Promise<string[]>;
}

/** What became of a progress report: stored, a repeat of a messageId, or behind what is stored (see orderReport). */
export type IngestOutcome =
  | { outcome: "accepted" | "duplicate" }
  | { outcome: "stale"; why: Extract<OrderDecision, { apply: false }>["why"]; stored: ProgressRecord };

/** What the progress store needs beside the report. */
export interface IngestContext {
  /** How long the report's messageId is remembered (PROTOCOL.md: repeats within 6 hours are dropped). */
  dedupTtlSeconds: number;
  /**
   * The device's tags, for the `$ota_upgrade` commands sent to them; asked only
   * when the report would otherwise be dropped as behind the stored one.
   */
  tagsOf(productName: string, deviceName: string): Promise<readonly string[]>;
}

/** The latest progress per device (Redis), and the event stream of changes. */
export interface ProgressStore {
  /**
   * Unless its messageId was seen, orders the report against the stored one
   * (orderReport) and, when it wins, stores and publishes it; the messageId is
   * remembered in the same atomic step as the effect, never before it.
   */
  ingest(record: ProgressRecord, context: IngestContext): Promise<IngestOutcome>;
  get(productName: string, deviceName: string): Promise<ProgressRecord | null>;
  getMany(productName: string, deviceNames: readonly string[]): Promise<(ProgressRecord | null)[]>;
  /** Replaces `expected` with `next` only if it is still the stored record; publishes on success. */
  compareAndSet(expected: ProgressRecord, next: ProgressRecord): Promise<boolean>;
  delete(productName: string, deviceName: string): Promise<void>;
  /**
   * An `$ota_upgrade` was sent to the target (a device or a tag) at `at`
   * (server time): reports received after it belong to a new attempt.
   */
  startAttempt(target: CommandTarget, at: number): Promise<void>;
}

/**
 * Remembers device messageIds (PROTOCOL.md: "processes a given messageId
 * once"). A messageId is remembered only after its effect is durable, so a
 * failure between the two can only repeat an effect (every effect here is
 * idempotent), never lose one.
 */
export interface MessageDeduplicator {
  seen(productName: string, deviceName: string, messageId: string): Promise<boolean>;
  remember(productName: string, deviceName: string, messageId: string, ttlSeconds: number): Promise<void>;
}

/** The app's link to the devices: the embedded broker, or a client of an external one. */
export interface BrokerLink extends CommandPublisher, DeviceSessions {
  start(): Promise<void>;
  /** Stops taking device messages (and, embedded, closes the listeners). */
  stop(): Promise<void>;
  /** Whether devices can be reached now, for /readyz. */
  readonly ready: boolean;
}

/**
 * Told of every device report once it is stored (rollouts move their
 * executions on them). Called again for a redelivered report, so it must be
 * idempotent; a rejection leaves the report unacknowledged, to come again.
 */
export interface ReportListener {
  onProgress(record: ProgressRecord): Promise<void>;
  onStatus(productName: string, deviceName: string, firmwareVersion: string | undefined): Promise<void>;
}

/**
 * Which devices are connected now, across instances. Known only where the
 * broker is ours (embedded); with an external broker every answer is null.
 */
export interface PresenceReader {
  /** Whether each device is connected, in the order asked. */
  online(productName: string, deviceNames: readonly string[]): Promise<boolean[] | null>;
  countOnline(productName: string): Promise<number | null>;
  /** When each device last connected and last had a connection closed, in the order asked. */
  seen(productName: string, deviceNames: readonly string[]): Promise<Seen[] | null>;
  /** Forgets a deleted device's times. */
  forget(productName: string, deviceName: string): Promise<void>;
}

/** Unix ms; null: never seen (or not since the times were kept). */
export interface Seen {
  connectedAt: number | null;
  disconnectedAt: number | null;
}

import type { CommandTarget } from "../protocol/topics.js";
import type { ProgressRecord } from "./progress.model.js";

/** Sends a command to devices: the MQTT client in production, whatever the broker. */
export interface CommandPublisher {
  /** Resolves once the broker has acknowledged the QoS 1 publish. */
  publishCommand(topic: string, payload: string): Promise<void>;
}

/** Live connections of devices, where the broker is ours to control. */
export interface DeviceSessions {
  /** Closes every connection of the device; a no-op where the broker is external. */
  disconnect(productName: string, deviceName: string): void;
  /** Closes them and drops the device's persistent session, with the commands queued in it. */
  forget(productName: string, deviceName: string): Promise<void>;
}

export type IngestOutcome = "accepted" | "duplicate" | "stale";

/** The latest progress per device (Redis), and the event stream of changes. */
export interface ProgressStore {
  /** De-duplicates by messageId and, unless a newer report is stored, stores and publishes, atomically. */
  ingest(record: ProgressRecord, dedupTtlSeconds: number): Promise<IngestOutcome>;
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

/** Claims a messageId once (PROTOCOL.md: "processes a given messageId once"). */
export interface MessageDeduplicator {
  /** True the first time a device's messageId is seen within the TTL. */
  claim(productName: string, deviceName: string, messageId: string, ttlSeconds: number): Promise<boolean>;
  release(productName: string, deviceName: string, messageId: string): Promise<void>;
}

/** The app's link to the devices: the embedded broker, or a client of an external one. */
export interface BrokerLink extends CommandPublisher, DeviceSessions {
  start(): Promise<void>;
  /** Stops taking device messages (and, embedded, closes the listeners). */
  stop(): Promise<void>;
  /** Whether devices can be reached now, for /readyz. */
  readonly ready: boolean;
}

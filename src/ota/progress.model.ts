import type { OtaStatusReport } from "../protocol/payloads.js";

export type FailureReason = "DOWNLOAD_FAILED" | "MD5_MISMATCH" | "INSTALL_FAILED" | "OTHER";

/** Where a device's upgrade stands, derived from its reports. */
export type OtaPhase =
  | { state: "DOWNLOADING"; failureReason: null }
  | { state: "DOWNLOADED"; failureReason: null }
  | { state: "FAILED"; failureReason: FailureReason }
  | { state: "SUCCEEDED"; failureReason: null };

export type OtaState = OtaPhase["state"];

/** The latest progress of one device, as stored in Redis and sent to subscribers. */
export type ProgressRecord = {
  productName: string;
  deviceName: string;
  version: string;
  type: string;
  progress: number;
  desc: string;
  messageId: string;
  /** Receive time, Unix milliseconds. */
  receivedAt: number;
  raw: Record<string, unknown>;
} & OtaPhase;

/** PROTOCOL.md, `update_ota_status`: -1 download, -2 md5, -3 install, -4 other. */
export function failureReasonOf(progress: number): FailureReason {
  switch (progress) {
    case -1:
      return "DOWNLOAD_FAILED";
    case -2:
      return "MD5_MISMATCH";
    case -3:
      return "INSTALL_FAILED";
    default:
      return "OTHER";
  }
}

export function phaseOf(progress: number): OtaPhase {
  if (progress < 0) return { state: "FAILED", failureReason: failureReasonOf(progress) };
  if (progress === 100) return { state: "DOWNLOADED", failureReason: null };
  return { state: "DOWNLOADING", failureReason: null };
}

export function recordFromReport(
  device: { productName: string; deviceName: string },
  report: OtaStatusReport,
  messageId: string,
  receivedAt: number,
): ProgressRecord {
  return {
    productName: device.productName,
    deviceName: device.deviceName,
    version: report.version,
    type: report.type,
    progress: report.progress,
    desc: report.desc,
    messageId,
    receivedAt,
    raw: report.raw,
    ...phaseOf(report.progress),
  };
}

/**
 * The upgrade is complete once the device reports `firmware_ver` equal to the
 * target version (PROTOCOL.md, `update_status`) received `at`. Returns the
 * new record, or null when nothing changes.
 */
export function succeedIfVersion(record: ProgressRecord, firmwareVersion: string | undefined, at: number): ProgressRecord | null {
  if (firmwareVersion === undefined || record.version === "" || record.version !== firmwareVersion) return null;
  switch (record.state) {
    case "SUCCEEDED":
      return null;
    case "DOWNLOADING":
    case "DOWNLOADED":
    case "FAILED":
      // Received now: a command sent before the completing status is not a new attempt (orderReport).
      return { ...record, state: "SUCCEEDED", failureReason: null, receivedAt: Math.max(record.receivedAt, at) };
    default: {
      const never: never = record;
      return never;
    }
  }
}

/** The seed's REST shape: the report as the device sent it, plus `ts`, the receive time in Unix seconds. */
export function restView(record: ProgressRecord): Record<string, unknown> {
  return { ...record.raw, ts: Math.floor(record.receivedAt / 1000) };
}

/**
 * How far an upgrade attempt has come, for ordering reports within one
 * attempt: the download percentage while downloading, then DOWNLOADED, FAILED
 * and SUCCEEDED. Within an attempt progress never goes backwards, so a late
 * report never moves SUCCEEDED back to DOWNLOADED.
 */
export function rankOf(record: OtaPhase & { progress: number }): number {
  switch (record.state) {
    case "DOWNLOADING":
      return Math.max(0, Math.min(99, record.progress));
    case "DOWNLOADED":
      return 100;
    case "FAILED":
      return 101;
    case "SUCCEEDED":
      return 102;
    default: {
      const never: never = record;
      return never;
    }
  }
}

/** Why a progress report was applied or dropped (counted and logged with the drop). */
export type OrderDecision =
  | { apply: true; why: "first" | "new_attempt" | "other_firmware" | "forward" }
  | { apply: false; why: "behind_in_attempt" };

/**
 * Whether a progress report replaces the stored one. Device clocks are not to
 * be trusted (PROTOCOL.md, `update_status`: devices reset them on reboot), so
 * the order is the server's: an `$ota_upgrade` sent after the stored report
 * was received starts a new attempt; a report of another firmware (version,
 * type) than the stored one wins by receive order; within one attempt of one
 * firmware, a report wins unless it is behind the stored one ({@link rankOf}).
 * `lastCommandAt`: the latest `$ota_upgrade` sent to the device or one of its
 * tags, server time, or null when none is known.
 */
export function orderReport(incoming: ProgressRecord, stored: ProgressRecord | null, lastCommandAt: number | null): OrderDecision {
  if (stored === null) return { apply: true, why: "first" };
  if (lastCommandAt !== null && lastCommandAt > stored.receivedAt) return { apply: true, why: "new_attempt" };
  if (incoming.version !== stored.version || incoming.type !== stored.type) return { apply: true, why: "other_firmware" };
  return rankOf(incoming) >= rankOf(stored) ? { apply: true, why: "forward" } : { apply: false, why: "behind_in_attempt" };
}

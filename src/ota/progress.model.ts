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
 * target version (PROTOCOL.md, `update_status`). Returns the new record, or
 * null when nothing changes.
 */
export function succeedIfVersion(record: ProgressRecord, firmwareVersion: string | undefined): ProgressRecord | null {
  if (firmwareVersion === undefined || record.version === "" || record.version !== firmwareVersion) return null;
  switch (record.state) {
    case "SUCCEEDED":
      return null;
    case "DOWNLOADING":
    case "DOWNLOADED":
    case "FAILED":
      return { ...record, state: "SUCCEEDED", failureReason: null };
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

import type { devices } from "../storage/schema.js";

export type DeviceRow = typeof devices.$inferSelect;

/** A device as the API shows it: never its secret hash. */
export interface Device {
  productName: string;
  deviceName: string;
  tags: string[];
  tagsVersion: number;
  status: Record<string, unknown> | null;
  firmwareVersion: string | null;
  lastStatusAt: Date | null;
  suspended: boolean;
  createdAt: Date;
}

export function toDevice(row: DeviceRow): Device {
  const fw = row.status?.firmware_ver;
  return {
    productName: row.productName,
    deviceName: row.deviceName,
    tags: row.tags,
    tagsVersion: row.tagsVersion,
    status: row.status ?? null,
    firmwareVersion: typeof fw === "string" ? fw : null,
    lastStatusAt: row.statusAt,
    suspended: row.suspended,
    createdAt: row.createdAt,
  };
}

/**
 * Sort key of an `update_status` report, so the newest wins whatever the
 * arrival order (PROTOCOL.md). The SDK's messageIds are ObjectIds, which
 * begin with their creation second and end with a per-process counter, so
 * they sort in creation order; any other messageId sorts by receive time.
 */
export function statusOrder(messageId: string, receivedAt: number): string {
  if (/^[0-9a-fA-F]{24}$/.test(messageId)) return messageId.toLowerCase();
  const seconds = Math.floor(receivedAt / 1000).toString(16).padStart(8, "0");
  return `${seconds}${(receivedAt % 1000).toString(16).padStart(16, "0")}`;
}

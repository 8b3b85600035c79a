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

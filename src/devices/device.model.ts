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

/** What a device list can be narrowed to: connected now, not connected (and not suspended), suspended. */
export const DEVICE_STATES = ["ONLINE", "OFFLINE", "SUSPENDED"] as const;
export type DeviceState = (typeof DEVICE_STATES)[number];

/** A product's fleet at a glance; `online` is null where the broker is external (the server cannot know). */
export interface FleetSummary {
  productName: string;
  devices: number;
  suspended: number;
  online: number | null;
  versions: { firmwareVersion: string | null; devices: number }[];
}

/** When the server received a device message: time, and a per-process sequence for messages of the same millisecond. */
export interface Receipt {
  at: number;
  seq: number;
}

/**
 * The order of `update_status` reports: the order the server received them
 * in, never the device's clock (PROTOCOL.md, `update_status`: devices reset
 * their clocks). Compared as bytes; the leading "r" sorts after the hex
 * ObjectId orders that older versions stored, so a device's next report
 * replaces whatever they left.
 */
export function statusOrder({ at, seq }: Receipt): string {
  return `r${at.toString(16).padStart(12, "0")}${(seq >>> 0).toString(16).padStart(8, "0")}`;
}

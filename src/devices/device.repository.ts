import { and, arrayContains, asc, eq, gt, isNull, or, sql } from "drizzle-orm";
import type { Db } from "../storage/database.js";
import { devices } from "../storage/schema.js";
import type { DeviceRow } from "./device.model.js";

export interface DevicePage {
  rows: DeviceRow[];
  hasNextPage: boolean;
}

/** PostgreSQL access for devices; no rules here, only queries. */
export class DeviceRepository {
  constructor(private readonly db: () => Db) {}

  /** Inserts, or returns null when the name is taken. */
  async insert(row: { productName: string; deviceName: string; secretHash: string; tags: string[] }) {
    const [inserted] = await this.db().insert(devices).values(row).onConflictDoNothing().returning();
    return inserted ?? null;
  }

  async find(productName: string, deviceName: string): Promise<DeviceRow | null> {
    const [row] = await this.db()
      .select()
      .from(devices)
      .where(and(eq(devices.productName, productName), eq(devices.deviceName, deviceName)));
    return row ?? null;
  }

  /** Keyset pagination by device name: stable under inserts, O(page) at any depth. */
  async list(productName: string, tag: string | undefined, first: number, after: string | undefined): Promise<DevicePage> {
    const rows = await this.db()
      .select()
      .from(devices)
      .where(
        and(
          eq(devices.productName, productName),
          tag === undefined ? undefined : arrayContains(devices.tags, [tag]),
          after === undefined ? undefined : gt(devices.deviceName, after),
        ),
      )
      .orderBy(asc(devices.deviceName))
      .limit(first + 1);
    return { rows: rows.slice(0, first), hasNextPage: rows.length > first };
  }

  async setTags(productName: string, deviceName: string, tags: string[]): Promise<DeviceRow | null> {
    const [row] = await this.db()
      .update(devices)
      .set({ tags, tagsVersion: sql`${devices.tagsVersion} + 1` })
      .where(and(eq(devices.productName, productName), eq(devices.deviceName, deviceName)))
      .returning();
    return row ?? null;
  }

  async setSuspended(productName: string, deviceName: string, suspended: boolean): Promise<DeviceRow | null> {
    const [row] = await this.db()
      .update(devices)
      .set({ suspended })
      .where(and(eq(devices.productName, productName), eq(devices.deviceName, deviceName)))
      .returning();
    return row ?? null;
  }

  async delete(productName: string, deviceName: string): Promise<boolean> {
    const deleted = await this.db()
      .delete(devices)
      .where(and(eq(devices.productName, productName), eq(devices.deviceName, deviceName)))
      .returning({ deviceName: devices.deviceName });
    return deleted.length > 0;
  }

  /**
   * Stores a status report unless one of a later order is stored; returns
   * whether it was applied. An equal order is the same report applied again
   * (a retry after a failure): applied, so retries are idempotent.
   */
  async applyStatus(
    productName: string,
    deviceName: string,
    status: Record<string, unknown>,
    order: string,
    at: Date,
  ): Promise<boolean> {
    const updated = await this.db()
      .update(devices)
      .set({ status, statusOrder: order, statusAt: at })
      .where(
        and(
          eq(devices.productName, productName),
          eq(devices.deviceName, deviceName),
          // "C" collation: plain byte order, whatever the server's locale.
          or(isNull(devices.statusOrder), sql`${devices.statusOrder} collate "C" <= ${order}`),
        ),
      )
      .returning({ deviceName: devices.deviceName });
    return updated.length > 0;
  }
}

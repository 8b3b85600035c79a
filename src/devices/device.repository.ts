import { and, arrayContains, asc, eq, gt, inArray, isNull, or, sql } from "drizzle-orm";
import { rowsOf, type Db } from "../storage/database.js";
import { devices } from "../storage/schema.js";
import type { DeviceRow } from "./device.model.js";

/** What a device list is narrowed to in the registry (presence is checked by the service). */
export interface DeviceFilter {
  tag?: string;
  firmwareVersion?: string;
  suspended?: boolean;
}

/** A product's devices counted by reported firmware version (null: none reported yet). */
export interface VersionCount {
  firmwareVersion: string | null;
  devices: number;
  suspended: number;
}

/** `firmware_ver` of the stored status, as the API shows it. */
const firmwareVersion = sql<string | null>`${devices.status}->>'firmware_ver'`;

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
  async list(productName: string, filter: DeviceFilter, first: number, after: string | undefined): Promise<DevicePage> {
    const { tag, suspended } = filter;
    const rows = await this.db()
      .select()
      .from(devices)
      .where(
        and(
          eq(devices.productName, productName),
          tag === undefined ? undefined : arrayContains(devices.tags, [tag]),
          filter.firmwareVersion === undefined ? undefined : eq(firmwareVersion, filter.firmwareVersion),
          suspended === undefined ? undefined : eq(devices.suspended, suspended),
          after === undefined ? undefined : gt(devices.deviceName, after),
        ),
      )
      .orderBy(asc(devices.deviceName))
      .limit(first + 1);
    return { rows: rows.slice(0, first), hasNextPage: rows.length > first };
  }

  /** The product's devices by firmware version, with how many of each are suspended: one grouped scan. */
  async versionCounts(productName: string): Promise<VersionCount[]> {
    const rows = await this.db()
      .select({
        firmwareVersion,
        devices: sql<number>`count(*)::int`,
        suspended: sql<number>`(count(*) filter (where ${devices.suspended}))::int`,
      })
      .from(devices)
      .where(eq(devices.productName, productName))
      .groupBy(firmwareVersion);
    return rows;
  }

  async countWithTag(productName: string, tag: string): Promise<number> {
    const [row] = await this.db()
      .select({ n: sql<number>`count(*)::int` })
      .from(devices)
      .where(and(eq(devices.productName, productName), arrayContains(devices.tags, [tag]), eq(devices.suspended, false)));
    return row?.n ?? 0;
  }

  /** Which of these products have registered devices, in order. */
  async productsAmong(names: readonly string[]): Promise<string[]> {
    if (names.length === 0) return [];
    const rows = await this.db()
      .selectDistinct({ n: devices.productName })
      .from(devices)
      .where(inArray(devices.productName, [...names]))
      .orderBy(asc(devices.productName));
    return rows.map((r) => r.n);
  }

  /** Product names of the registered devices, in order: a walk of the primary key, one probe per product. */
  async productNames(limit: number): Promise<string[]> {
    const result = await this.db().execute(sql`
      with recursive p(n) as (
        (select product_name from devices order by product_name limit 1)
        union all
        select (select d.product_name from devices d where d.product_name > p.n order by d.product_name limit 1) from p where p.n is not null
      )
      select n from p where n is not null limit ${limit}`);
    return rowsOf<{ n: string }>(result).map((r) => r.n);
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

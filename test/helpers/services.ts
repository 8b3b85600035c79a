import { randomBytes } from "node:crypto";
import pg from "pg";
import type { DatabaseConfig } from "../../src/config/config.js";
import { onTeardown } from "./teardown.js";

/** The real services the tests run against; `.ci/run` starts them. */
export const REDIS_URL = process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379";
export const MOSQUITTO_URL = process.env.TEST_MOSQUITTO_URL ?? "mqtt://127.0.0.1:1883";
/** A PostgreSQL server; when unset, the PostgreSQL-server variants of the suites are skipped. */
export const DATABASE_URL = process.env.DATABASE_URL;

/** A name no other test (or earlier run) uses, valid as a product, device or tag name. */
export function uniq(prefix: string): string {
  return `${prefix}-${randomBytes(5).toString("hex")}`;
}

export type DatabaseKind = "pglite" | "postgres";

export const DATABASE_KINDS: DatabaseKind[] = DATABASE_URL ? ["pglite", "postgres"] : ["pglite"];

/** The database the integration suites use by default: the server when there is one. */
export const DEFAULT_DATABASE: DatabaseKind = DATABASE_URL ? "postgres" : "pglite";

/** A fresh, empty database of the given kind, dropped after the file's tests. */
export async function freshDatabase(kind: DatabaseKind): Promise<DatabaseConfig> {
  if (kind === "pglite") return { kind: "pglite", dataDir: "memory://" };
  if (!DATABASE_URL) throw new Error("DATABASE_URL is not set");
  const name = `iothub_test_${randomBytes(6).toString("hex")}`;
  const admin = new pg.Client({ connectionString: DATABASE_URL });
  await admin.connect();
  await admin.query(`create database ${name}`);
  await admin.end();
  onTeardown(async () => {
    const c = new pg.Client({ connectionString: DATABASE_URL });
    await c.connect();
    await c.query(`drop database if exists ${name} with (force)`);
    await c.end();
  });
  const url = new URL(DATABASE_URL);
  url.pathname = `/${name}`;
  return { kind: "postgres", url: url.toString() };
}

import { mkdir } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { PGlite } from "@electric-sql/pglite";
import { sql } from "drizzle-orm";
import { drizzle as drizzlePglite } from "drizzle-orm/pglite";
import { migrate as migratePglite } from "drizzle-orm/pglite/migrator";
import { drizzle as drizzlePg } from "drizzle-orm/node-postgres";
import { migrate as migratePg } from "drizzle-orm/node-postgres/migrator";
import type { PgDatabase, PgQueryResultHKT } from "drizzle-orm/pg-core";
import pg from "pg";
import type { DatabaseConfig } from "../config/config.js";
import * as schema from "./schema.js";

export type Db = PgDatabase<PgQueryResultHKT, typeof schema>;

const MIGRATIONS = fileURLToPath(new URL("../../drizzle", import.meta.url));

/** PostgreSQL through drizzle: embedded PGlite, or a server when DATABASE_URL is set. */
export class Database {
  #db: Db | undefined;
  #close: (() => Promise<void>) | undefined;

  constructor(private readonly config: DatabaseConfig) {}

  get db(): Db {
    if (!this.#db) throw new Error("database not started");
    return this.#db;
  }

  /** Connects and applies the committed migrations. */
  async start(): Promise<void> {
    if (this.config.kind === "pglite") {
      const dir = this.config.dataDir;
      if (!dir.startsWith("memory://")) await mkdir(dir, { recursive: true });
      const client = await PGlite.create(dir);
      const db = drizzlePglite(client, { schema });
      await migratePglite(db, { migrationsFolder: MIGRATIONS });
      this.#db = db as unknown as Db;
      this.#close = () => client.close();
    } else {
      const pool = new pg.Pool({ connectionString: this.config.url, max: 10 });
      pool.on("error", () => undefined); // idle client errors surface on the next query instead
      const db = drizzlePg(pool, { schema });
      await migratePg(db, { migrationsFolder: MIGRATIONS });
      this.#db = db as unknown as Db;
      this.#close = () => pool.end();
    }
  }

  async ping(): Promise<void> {
    await this.db.execute(sql`select 1`);
  }

  async stop(): Promise<void> {
    const close = this.#close;
    this.#close = undefined;
    this.#db = undefined;
    await close?.();
  }
}

import { spawn } from "node:child_process";
import { access, mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { sql } from "drizzle-orm";
import { drizzle as drizzlePg } from "drizzle-orm/node-postgres";
import { migrate as migratePg } from "drizzle-orm/node-postgres/migrator";
import type { PgDatabase, PgQueryResultHKT } from "drizzle-orm/pg-core";
import pg from "pg";
import { StartupError, redactUrl } from "../errors.js";
import type { DatabaseConfig, Limits } from "../config/config.js";
import * as schema from "./schema.js";

export type Db = PgDatabase<PgQueryResultHKT, typeof schema>;

/**
 * PGlite runs PostgreSQL inside this process (WebAssembly, 128 MB of memory
 * at least): its buffers default to a database server's sizes, which fill
 * that memory and grow it. The registry of a fleet needs far less.
 */
const PGLITE_OPTIONS = {
  postgresqlconf: ["shared_buffers = 8MB", "work_mem = 2MB", "maintenance_work_mem = 16MB", "temp_buffers = 2MB"],
};

/**
 * Makes a new PGlite database in `argv[2]` with the options `argv[3]`, the package being `argv[1]`; gives up as soon
 * as its stdin ends, which is when the server that started it has gone (however it went: even SIGKILL closes the pipe),
 * so that no initdb goes on in a folder the next start uses.
 */
const INIT_PGLITE = [
  `process.stdin.on("end", () => process.exit(70)).resume();`,
  `require(process.argv[1]).PGlite.create(process.argv[2], JSON.parse(process.argv[3]))`,
  `.then((db) => db.close()).then(() => process.exit(0), (err) => { console.error(err); process.exit(1); });`,
].join("\n");

/**
 * Makes the database of a first start in a process of its own. PGlite's
 * initdb runs a second PostgreSQL beside the one it then serves with (570 MB
 * of WebAssembly memory at its peak), and what that leaves in this process'
 * allocator stays resident for good: about 130 MB of the first start's 360.
 */
async function createPglite(dir: string): Promise<void> {
  if (await access(join(dir, "PG_VERSION")).then(() => true, () => false)) return;
  const pglite = createRequire(import.meta.url).resolve("@electric-sql/pglite");
  const child = spawn(process.execPath, ["-e", INIT_PGLITE, pglite, dir, JSON.stringify(PGLITE_OPTIONS)], { stdio: ["pipe", "ignore", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
  const code = await new Promise<number | null>((resolve, reject) => child.once("error", reject).once("exit", resolve));
  if (code !== 0) throw new Error(`could not create the embedded database in ${dir} (exit ${code}): ${stderr.trim()}`);
}

/** A PostgreSQL that cannot be reached or logged into says where, and which setting names it. */
function unreachable(err: unknown, url: string): unknown {
  const code = (err as { code?: unknown }).code;
  const connecting = ["ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "ETIMEDOUT", "ECONNRESET", "28P01", "28000", "3D000"];
  if (typeof code !== "string" || !connecting.includes(code)) {
    if (!(err instanceof Error && /timeout|terminated/i.test(err.message))) return err;
  }
  const why = err instanceof Error ? err.message : String(err);
  return new StartupError(`could not connect to PostgreSQL at ${redactUrl(url)} (${why}): start it, or fix DATABASE_URL (unset, the built-in database is used)`);
}

/** The rows of `db.execute`: node-postgres answers `{rows}`, PGlite the same shape; either way, the rows. */
export function rowsOf<T>(result: unknown): T[] {
  return ((result as { rows?: T[] }).rows ?? (result as T[])) as T[];
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

const MIGRATIONS = fileURLToPath(new URL("../../drizzle", import.meta.url));

/** PostgreSQL through drizzle: embedded PGlite, or a server when DATABASE_URL is set. */
export class Database {
  #db: Db | undefined;
  #close: (() => Promise<void>) | undefined;
  #lockFile: string | undefined;

  constructor(
    private readonly config: DatabaseConfig,
    /** PostgreSQL server only: PGlite runs in process, with nothing to wait for. */
    private readonly timeouts?: Pick<Limits, "dbConnectTimeoutMs" | "dbStatementTimeoutMs">,
  ) {}

  get db(): Db {
    if (!this.#db) throw new Error("database not started");
    return this.#db;
  }

  /** Connects and applies the committed migrations. */
  async start(): Promise<void> {
    if (this.config.kind === "pglite") {
      const dir = this.config.dataDir;
      if (!dir.startsWith("memory://")) {
        await mkdir(dir, { recursive: true });
        await this.#lock(`${dir}.pid`);
      }
      try {
        // Loaded only when used: a server on PostgreSQL never needs PGlite.
        const [{ PGlite }, { drizzle: drizzlePglite }, { migrate: migratePglite }] = await Promise.all([
          import("@electric-sql/pglite"),
          import("drizzle-orm/pglite"),
          import("drizzle-orm/pglite/migrator"),
          dir.startsWith("memory://") ? undefined : createPglite(dir),
        ]);
        const client = await PGlite.create(dir, PGLITE_OPTIONS);
        this.#close = () => client.close();
        const db = drizzlePglite(client, { schema });
        await migratePglite(db, { migrationsFolder: MIGRATIONS });
        this.#db = db as unknown as Db;
      } catch (err) {
        await this.stop();
        throw err;
      }
    } else {
      const t = this.timeouts;
      const pool = new pg.Pool({
        connectionString: this.config.url,
        max: 10,
        // A server that stops answering fails queries instead of holding them (and their callers) forever.
        ...(t && {
          connectionTimeoutMillis: t.dbConnectTimeoutMs,
          statement_timeout: t.dbStatementTimeoutMs,
          query_timeout: t.dbStatementTimeoutMs + 1_000,
        }),
      });
      pool.on("error", () => undefined); // idle client errors surface on the next query instead
      const db = drizzlePg(pool, { schema });
      try {
        await migratePg(db, { migrationsFolder: MIGRATIONS });
      } catch (err) {
        await pool.end();
        throw unreachable(err, this.config.url);
      }
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
    if (this.#lockFile) await rm(this.#lockFile, { force: true });
    this.#lockFile = undefined;
  }

  /**
   * PGlite is one process's database: a second process opening the same
   * folder (a second server, or `token create` beside a running one) would
   * corrupt it. A pid file says who holds it.
   */
  async #lock(file: string): Promise<void> {
    const holder = Number(await readFile(file, "utf8").catch(() => ""));
    if (Number.isInteger(holder) && holder > 0 && isAlive(holder)) {
      throw new Error(
        `the embedded database ${file.slice(0, -4)} is in use by process ${holder}: stop that first ` +
          `(or delete ${file} if it is not iothub-ota), or use DATABASE_URL`,
      );
    }
    await writeFile(file, String(process.pid));
    this.#lockFile = file;
  }
}

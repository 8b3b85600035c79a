import { and, desc, eq, inArray, lt, or, sql } from "drizzle-orm";
import type { Db } from "../storage/database.js";
import { firmwares, rolloutExecutions, rollouts } from "../storage/schema.js";
import { ACTIVE_ROLLOUT } from "../rollouts/rollout.model.js";
import type { Artifact } from "./artifact.model.js";

type Row = typeof firmwares.$inferSelect;

const toArtifact = (r: Row): Artifact => ({ ...r, createdAt: r.createdAt.getTime() });

/**
 * Serialises what must not interleave for one artifact until the transaction
 * ends (all instances): a rollout taking it, and its deletion.
 */
export async function lockArtifact(db: Db, id: string): Promise<Artifact | null> {
  await db.execute(sql`select pg_advisory_xact_lock(hashtext(${`iothub-ota firmware ${id}`}))`);
  const [row] = await db.select().from(firmwares).where(eq(firmwares.id, id));
  return row ? toArtifact(row) : null;
}

export class ArtifactRepository {
  constructor(private readonly db: () => Db) {}

  /** Inserts the artifact unless its (product, version, type) exists; returns the one stored, and whether it is this one. */
  async insert(a: Omit<Artifact, "createdAt">): Promise<{ artifact: Artifact; created: boolean }> {
    const [inserted] = await this.db()
      .insert(firmwares)
      // Milliseconds, as the API's cursors carry them.
      .values({ ...a, createdAt: new Date() })
      .onConflictDoNothing({ target: [firmwares.productName, firmwares.version, firmwares.type] })
      .returning();
    if (inserted) return { artifact: toArtifact(inserted), created: true };
    const existing = await this.findVersion(a.productName, a.version, a.type);
    // Deleted between the two statements: the caller may try again.
    if (!existing) throw new Error("the artifact of this version was deleted while being uploaded again");
    return { artifact: existing, created: false };
  }

  async find(id: string): Promise<Artifact | null> {
    const [row] = await this.db().select().from(firmwares).where(eq(firmwares.id, id));
    return row ? toArtifact(row) : null;
  }

  /** Which of these ids have a row. */
  async existing(ids: readonly string[]): Promise<Set<string>> {
    if (ids.length === 0) return new Set();
    const rows = await this.db().select({ id: firmwares.id }).from(firmwares).where(inArray(firmwares.id, [...ids]));
    return new Set(rows.map((r) => r.id));
  }

  async findVersion(productName: string, version: string, type: string): Promise<Artifact | null> {
    const f = firmwares;
    const [row] = await this.db().select().from(f).where(and(eq(f.productName, productName), eq(f.version, version), eq(f.type, type)));
    return row ? toArtifact(row) : null;
  }

  /** A product's artifacts, newest first, after the cursor's. */
  async list(productName: string, limit: number, after: { createdAt: number; id: string } | null) {
    const f = firmwares;
    const at = after && new Date(after.createdAt);
    const rows = await this.db()
      .select()
      .from(f)
      .where(and(eq(f.productName, productName), at && after ? or(lt(f.createdAt, at), and(eq(f.createdAt, at), lt(f.id, after.id))) : undefined))
      .orderBy(desc(f.createdAt), desc(f.id))
      .limit(limit + 1);
    return { rows: rows.slice(0, limit).map(toArtifact), hasNextPage: rows.length > limit };
  }

  /**
   * Deletes the artifact unless a rollout uses it: an active one, or an ended
   * one with devices still downloading or installing; `inUse` names them.
   * Under the artifact's lock: a rollout being created with it either
   * committed first (and is seen) or finds it gone.
   */
  async deleteUnlessInUse(id: string): Promise<{ deleted: Artifact | null; inUse: string[] }> {
    return this.db().transaction(async (tx) => {
      const artifact = await lockArtifact(tx as unknown as Db, id);
      if (!artifact) return { deleted: null, inUse: [] };
      const users = await tx
        .select({ id: rollouts.id })
        .from(rollouts)
        .where(
          and(
            sql`${rollouts.firmware}->>'firmwareId' = ${id}`,
            or(
              inArray(rollouts.state, [...ACTIVE_ROLLOUT]),
              sql`exists (select 1 from ${rolloutExecutions} e where e.rollout_id = ${rollouts.id} and e.state in ('NOTIFIED', 'DOWNLOADING', 'DOWNLOADED'))`,
            ),
          ),
        )
        .limit(10);
      if (users.length > 0) return { deleted: null, inUse: users.map((u) => u.id) };
      await tx.delete(firmwares).where(eq(firmwares.id, id));
      return { deleted: artifact, inUse: [] };
    });
  }
}

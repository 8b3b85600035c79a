import { and, count, desc, eq, inArray, isNull } from "drizzle-orm";
import type { Db } from "../storage/database.js";
import { apiTokens } from "../storage/schema.js";

export type TokenRow = typeof apiTokens.$inferSelect;

/** What a new token's row holds: its SHA-256 digest, never the token. */
export type NewTokenRow = Pick<TokenRow, "name" | "scopes" | "products" | "expiresAt" | "tokenHash">;

/** PostgreSQL access for API tokens; no rules here, only queries. */
export class TokenRepository {
  constructor(private readonly db: () => Db) {}

  async insert(values: NewTokenRow): Promise<TokenRow> {
    const [row] = await this.db().insert(apiTokens).values(values).returning();
    return row as TokenRow;
  }

  async count(): Promise<number> {
    const [row] = await this.db().select({ n: count() }).from(apiTokens);
    return row?.n ?? 0;
  }

  /** Every token, newest first, revoked and expired ones included. */
  newestFirst(): Promise<TokenRow[]> {
    return this.db().select().from(apiTokens).orderBy(desc(apiTokens.createdAt));
  }

  /** Marks a token revoked at `at`: its digest, or undefined when there is no such token or it was already revoked. */
  async revoke(id: string, at: Date): Promise<string | undefined> {
    const [row] = await this.db()
      .update(apiTokens)
      .set({ revokedAt: at })
      .where(and(eq(apiTokens.id, id), isNull(apiTokens.revokedAt)))
      .returning({ tokenHash: apiTokens.tokenHash });
    return row?.tokenHash;
  }

  /** The unrevoked token with this digest (hex), if any. */
  async unrevokedByDigest(hex: string): Promise<TokenRow | undefined> {
    const [row] = await this.db()
      .select()
      .from(apiTokens)
      .where(and(eq(apiTokens.tokenHash, hex), isNull(apiTokens.revokedAt)));
    return row;
  }

  /** Of these token ids, the unrevoked ones with their expiry. */
  unrevokedExpiries(ids: readonly string[]): Promise<{ id: string; expiresAt: Date | null }[]> {
    return this.db()
      .select({ id: apiTokens.id, expiresAt: apiTokens.expiresAt })
      .from(apiTokens)
      .where(and(inArray(apiTokens.id, [...ids]), isNull(apiTokens.revokedAt)));
  }
}

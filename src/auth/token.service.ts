import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { count, eq } from "drizzle-orm";
import type { Db } from "../storage/database.js";
import { apiTokens } from "../storage/schema.js";
import { ADMIN_SCOPE, type Principal } from "./principal.js";

const sha256 = (s: string) => createHash("sha256").update(s).digest();

const CACHE_MS = 10_000;

/** API tokens: issued once, stored as SHA-256 digests, checked on every request. */
export class TokenService {
  readonly #adminDigest: Buffer | undefined;
  readonly #cache = new Map<string, { principal: Principal; until: number }>();

  constructor(
    private readonly db: () => Db,
    adminToken: string | undefined,
  ) {
    this.#adminDigest = adminToken === undefined ? undefined : sha256(adminToken);
  }

  /** Creates a token and returns it; this is the only time it is seen in clear. */
  async create(name: string, scopes: readonly string[] = [ADMIN_SCOPE]): Promise<string> {
    const token = `iot_${randomBytes(32).toString("base64url")}`;
    await this.db().insert(apiTokens).values({ name, scopes: [...scopes], tokenHash: sha256(token).toString("hex") });
    return token;
  }

  async count(): Promise<number> {
    const [row] = await this.db().select({ n: count() }).from(apiTokens);
    return row?.n ?? 0;
  }

  /** The caller behind a token, or null. */
  async verify(token: string | undefined): Promise<Principal | null> {
    if (!token || token.length > 512) return null;
    const digest = sha256(token);
    if (this.#adminDigest && timingSafeEqual(digest, this.#adminDigest)) return { tokenId: "ADMIN_TOKEN", scopes: [ADMIN_SCOPE] };
    const hex = digest.toString("hex");
    const cached = this.#cache.get(hex);
    if (cached && cached.until > Date.now()) return cached.principal;
    const [row] = await this.db().select().from(apiTokens).where(eq(apiTokens.tokenHash, hex));
    if (!row) return null;
    const principal = { tokenId: row.id, scopes: row.scopes };
    if (this.#cache.size > 10_000) this.#cache.clear();
    this.#cache.set(hex, { principal, until: Date.now() + CACHE_MS });
    return principal;
  }
}

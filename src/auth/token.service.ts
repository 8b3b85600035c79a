import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { LRUCache } from "lru-cache";
import { upTo } from "../lru.js";
import { badInput } from "../errors.js";
import { isValidName } from "../protocol/names.js";
import type { Db } from "../storage/database.js";
import { isAccess, principalOf, type Access, type Principal } from "./principal.js";
import { TokenRepository, type TokenRow } from "./token.repository.js";

const sha256 = (s: string) => createHash("sha256").update(s).digest();

/**
 * How long a verified token is trusted without asking the database again.
 * A revocation takes effect at once on the instance that made it, and within
 * this on the others (their caches, and their sweep of live WebSocket connections).
 */
const TOKEN_CACHE_MAX = 10_000;
/** The principal of the `ADMIN_TOKEN` setting: admin on every product, never expires, cannot be revoked. */
export const ADMIN_TOKEN_ID = "ADMIN_TOKEN";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export interface NewToken {
  name: string;
  access: Access;
  /** Limit the token to these products; null or absent: every product. */
  products?: readonly string[] | null;
  expiresAt?: Date | null;
}

/** A token as listed: everything but the secret. */
export interface TokenInfo {
  id: string;
  name: string;
  access: Access;
  products: string[] | null;
  createdAt: Date;
  expiresAt: Date | null;
  revokedAt: Date | null;
}

/** Validates a token request; throws BAD_USER_INPUT naming the field. Pure. */
export function checkNewToken(input: NewToken, now: number): Required<NewToken> {
  const name = input.name;
  if (typeof name !== "string" || name.trim() === "" || name.length > 64 || /[\u0000-\u001f\u007f]/.test(name)) {
    throw badInput("name", "must be 1..64 printable characters");
  }
  if (!isAccess(input.access)) throw badInput("access", "must be read, write or admin");
  const products = input.products ?? null;
  if (products !== null) {
    if (products.length === 0 || products.length > 100) throw badInput("products", "give 1..100 products, or none for every product");
    if (!products.every((p) => typeof p === "string" && isValidName(p))) {
      throw badInput("products", "each must be 1..64 characters of [A-Za-z0-9_.:-]");
    }
  }
  const expiresAt = input.expiresAt ?? null;
  if (expiresAt !== null && !(expiresAt.getTime() > now)) throw badInput("expiresAt", "must be in the future");
  return { name, access: input.access, products: products && [...new Set(products)].sort(), expiresAt };
}

const accessOf = (row: TokenRow): Access => {
  const level = row.scopes[0];
  // Rows are written by create() only; anything else is refused rather than guessed.
  return isAccess(level) ? level : "read";
};

function infoOf(row: TokenRow): TokenInfo {
  return {
    id: row.id,
    name: row.name,
    access: accessOf(row),
    products: row.products,
    createdAt: row.createdAt,
    expiresAt: row.expiresAt,
    revokedAt: row.revokedAt,
  };
}

/** API tokens: issued once, stored as SHA-256 digests, checked on every request. */
export class TokenService {
  readonly #adminDigest: Buffer | undefined;
  /** Verified principals by token digest; only valid tokens are kept. */
  readonly #cache: LRUCache<string, Principal>;
  readonly #revokedListeners = new Set<(tokenId: string) => void>();
  /** Revocations made by this instance so far: a verification that overlapped one does not cache what it read. */
  #revocations = 0;
  readonly #rows: TokenRepository;

  constructor(
    db: () => Db,
    adminToken: string | undefined,
    /** How long a verified token is remembered (TOKEN_CACHE_TTL_MS): other instances refuse a revoked token within it. */
    cacheTtlMs: number,
    private readonly now: () => number = Date.now,
  ) {
    this.#rows = new TokenRepository(db);
    this.#adminDigest = adminToken === undefined ? undefined : sha256(adminToken);
    this.#cache = new LRUCache<string, Principal>({ ...upTo(TOKEN_CACHE_MAX), ttl: cacheTtlMs });
  }

  /** Creates a token; this is the only time it is seen in clear. */
  async create(request: NewToken): Promise<{ token: string; info: TokenInfo }> {
    const input = checkNewToken(request, this.now());
    const token = `iot_${randomBytes(32).toString("base64url")}`;
    const row = await this.#rows.insert({
      name: input.name,
      scopes: [input.access],
      products: input.products === null ? null : [...input.products],
      expiresAt: input.expiresAt,
      tokenHash: sha256(token).toString("hex"),
    });
    return { token, info: infoOf(row) };
  }

  count(): Promise<number> {
    return this.#rows.count();
  }

  /** Every token, newest first, revoked and expired ones included. */
  async list(): Promise<TokenInfo[]> {
    const rows = await this.#rows.newestFirst();
    return rows.map(infoOf);
  }

  /**
   * Revokes a token: refused at once by this instance, and its live
   * WebSocket connections here are closed (listeners); other instances
   * refuse it within the cache TTL. False when there is no such
   * token or it was already revoked.
   */
  async revoke(id: string): Promise<boolean> {
    if (!UUID.test(id)) throw badInput("id", "not a token id");
    const tokenHash = await this.#rows.revoke(id, new Date(this.now()));
    if (tokenHash === undefined) return false;
    this.#revocations++;
    this.#cache.delete(tokenHash);
    for (const listener of this.#revokedListeners) listener(id);
    return true;
  }

  /** Called with the id of every token this instance revokes. */
  onRevoked(listener: (tokenId: string) => void): () => void {
    this.#revokedListeners.add(listener);
    return () => this.#revokedListeners.delete(listener);
  }

  /** The caller behind a token, or null (unknown, revoked or expired). */
  async verify(token: string | undefined): Promise<Principal | null> {
    if (!token || token.length > 512) return null;
    const digest = sha256(token);
    if (this.#adminDigest && timingSafeEqual(digest, this.#adminDigest)) return principalOf(ADMIN_TOKEN_ID, "admin", null, null);
    const hex = digest.toString("hex");
    let principal = this.#cache.get(hex);
    while (!principal) {
      const revocations = this.#revocations;
      const row = await this.#rows.unrevokedByDigest(hex);
      if (!row) return null;
      // A revocation here while the row was read may concern this very token: read again rather than cache it.
      if (revocations !== this.#revocations) continue;
      principal = principalOf(row.id, accessOf(row), row.products, row.expiresAt?.getTime() ?? null);
      this.#cache.set(hex, principal);
    }
    return this.isExpired(principal) ? null : principal;
  }

  isExpired(principal: Principal): boolean {
    return principal.expiresAt !== null && principal.expiresAt <= this.now();
  }

  /** Of these token ids, those still usable (not revoked, not expired): for re-checking live connections. */
  async stillValid(ids: readonly string[]): Promise<Set<string>> {
    const valid = new Set<string>(ids.filter((id) => id === ADMIN_TOKEN_ID));
    const stored = ids.filter((id) => UUID.test(id));
    if (stored.length === 0) return valid;
    const rows = await this.#rows.unrevokedExpiries(stored);
    for (const row of rows) if (row.expiresAt === null || row.expiresAt.getTime() > this.now()) valid.add(row.id);
    return valid;
  }
}

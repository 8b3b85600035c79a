import { AppError, ErrorCode } from "../errors.js";

/**
 * What an API token may do, each level including the one before:
 * `read` (devices, progress, subscriptions), `write` (send upgrades, set tags,
 * suspend and resume), `admin` (register and delete devices, manage tokens).
 */
export const ACCESS_LEVELS = ["read", "write", "admin"] as const;
export type Access = (typeof ACCESS_LEVELS)[number];

export function isAccess(value: unknown): value is Access {
  return typeof value === "string" && (ACCESS_LEVELS as readonly string[]).includes(value);
}

/** Who is calling the API. */
export interface Principal {
  tokenId: string;
  access: Access;
  /** The products the token is limited to; null: every product. */
  products: readonly string[] | null;
  /** Unix milliseconds after which the token is refused; null: never. */
  expiresAt: number | null;
  /**
   * The permissions as one canonical list (`[access, "product:<name>", ...]`):
   * principals with equal scopes may share an execution's result.
   */
  scopes: readonly string[];
}

export function principalOf(tokenId: string, access: Access, products: readonly string[] | null, expiresAt: number | null): Principal {
  const sorted = products === null ? null : [...new Set(products)].sort();
  return { tokenId, access, products: sorted, expiresAt, scopes: [access, ...(sorted ?? []).map((p) => `product:${p}`)] };
}

/** `@Authorized(level, PRODUCT_CHECKED_BY_RESOLVER)`: the resolver checks the product of what it loads (a rollout by id). */
export const PRODUCT_CHECKED_BY_RESOLVER = "product-checked-by-resolver";

/** For {@link refusal}: check the access level only; the caller checks the product once it knows it. */
export const ANY_PRODUCT = Symbol("any product");

/** Why a principal may not do something, or null when it may. Pure: the one rule every surface applies. */
export function refusal(principal: Principal, need: Access, productName?: string | typeof ANY_PRODUCT): string | null {
  if (ACCESS_LEVELS.indexOf(principal.access) < ACCESS_LEVELS.indexOf(need)) {
    return `this API token has ${principal.access} access; this needs ${need}`;
  }
  if (principal.products === null || productName === ANY_PRODUCT) return null;
  // Operations on no product in particular (managing tokens) belong to tokens of every product.
  if (productName === undefined) return "this API token is limited to some products; this needs a token for every product";
  if (!principal.products.includes(productName)) return `this API token may not access product ${JSON.stringify(productName)}`;
  return null;
}

/**
 * The permission check of GraphQL over HTTP, graphql-ws and REST alike:
 * throws FORBIDDEN when the principal may not act with `need` on the product.
 */
export function requireAccess(principal: Principal, need: Access, productName?: string | typeof ANY_PRODUCT): void {
  const why = refusal(principal, need, productName);
  if (why !== null) throw new AppError(ErrorCode.FORBIDDEN, why);
}

/** `Authorization: Bearer <token>` → the token, or undefined. */
export function bearerToken(header: unknown): string | undefined {
  if (typeof header !== "string") return undefined;
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return m?.[1];
}

/** Who is calling the API. Scopes name what a token may do; `admin` may do everything. */
export interface Principal {
  tokenId: string;
  scopes: readonly string[];
}

export const ADMIN_SCOPE = "admin";

/** Whether the principal holds every scope asked for. */
export function hasScopes(principal: Principal, required: readonly string[]): boolean {
  if (principal.scopes.includes(ADMIN_SCOPE)) return true;
  return required.every((s) => principal.scopes.includes(s));
}

/** `Authorization: Bearer <token>` → the token, or undefined. */
export function bearerToken(header: unknown): string | undefined {
  if (typeof header !== "string") return undefined;
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return m?.[1];
}

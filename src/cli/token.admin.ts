import { z } from "zod";
import { ACCESS_LEVELS } from "../auth/principal.js";
import type { NewToken, TokenInfo } from "../auth/token.service.js";
import { ApiTokensDocument, CreateApiTokenDocument, RevokeApiTokenDocument, type ApiAccess } from "../client/generated/graphql.js";
import { ApiClient } from "./api.client.js";

/** What the `token` commands do with tokens: the token service on the database, or a running server's API. */
export interface TokenAdmin {
  create(input: NewToken): Promise<{ token: string; info: TokenInfo }>;
  list(): Promise<TokenInfo[]>;
  revoke(id: string): Promise<boolean>;
}

const tokenInfo = z.object({
  id: z.string(),
  name: z.string(),
  // GraphQL names the levels READ, WRITE, ADMIN.
  access: z
    .string()
    .transform((a) => a.toLowerCase())
    .pipe(z.enum(ACCESS_LEVELS)),
  products: z.array(z.string()).nullable(),
  createdAt: z.coerce.date(),
  expiresAt: z.coerce.date().nullable(),
  revokedAt: z.coerce.date().nullable(),
});

/**
 * Token management through a running server's GraphQL API (with an admin
 * token of every product): works beside a server that holds PGlite, which no
 * second process may open.
 */
export class ApiTokenAdmin implements TokenAdmin {
  readonly #api: ApiClient;

  constructor(graphqlUrl: string, token: string) {
    this.#api = new ApiClient({ server: graphqlUrl, token });
  }

  async create(input: NewToken): Promise<{ token: string; info: TokenInfo }> {
    const { createApiToken } = await this.#api.request(CreateApiTokenDocument, {
      input: {
        name: input.name,
        access: input.access.toUpperCase() as ApiAccess,
        products: input.products === null || input.products === undefined ? null : [...input.products],
        expiresAt: input.expiresAt?.toISOString() ?? null,
      },
    });
    return { token: createApiToken.token, info: tokenInfo.parse(createApiToken.apiToken) };
  }

  async list(): Promise<TokenInfo[]> {
    return z.array(tokenInfo).parse((await this.#api.request(ApiTokensDocument, {})).apiTokens);
  }

  async revoke(id: string): Promise<boolean> {
    return (await this.#api.request(RevokeApiTokenDocument, { id })).revokeApiToken;
  }
}

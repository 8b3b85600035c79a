import { z } from "zod";
import { ACCESS_LEVELS } from "./principal.js";
import type { NewToken, TokenInfo } from "./token.service.js";

/** What the CLI does with tokens: the token service on the database, or a running server's API. */
export interface TokenAdmin {
  create(input: NewToken): Promise<{ token: string; info: TokenInfo }>;
  list(): Promise<TokenInfo[]>;
  revoke(id: string): Promise<boolean>;
}

const FIELDS = "id name access products createdAt expiresAt revokedAt";

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

const answer = z.object({
  data: z.record(z.string(), z.unknown()).nullish(),
  errors: z.array(z.object({ message: z.string(), extensions: z.object({ code: z.string().optional() }).passthrough().optional() })).optional(),
});

/**
 * Token management through a running server's GraphQL API (with an admin
 * token of every product): works beside a server that holds PGlite, which no
 * second process may open.
 */
export class ApiTokenAdmin implements TokenAdmin {
  constructor(
    private readonly url: string,
    private readonly token: string,
  ) {}

  async #call(query: string, variables: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
    const res = await fetch(this.url, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${this.token}` },
      body: JSON.stringify({ query, variables }),
    });
    const text = await res.text();
    let parsed: z.infer<typeof answer>;
    try {
      parsed = answer.parse(JSON.parse(text));
    } catch {
      throw new Error(`${this.url} answered ${res.status}, not a GraphQL answer`);
    }
    if (parsed.errors?.length) {
      throw new Error(parsed.errors.map((e) => `${e.extensions?.code ?? "ERROR"}: ${e.message}`).join("\n"));
    }
    if (!parsed.data) throw new Error(`${this.url} answered ${res.status} without data`);
    return parsed.data;
  }

  async create(input: NewToken): Promise<{ token: string; info: TokenInfo }> {
    const data = await this.#call(
      `mutation($input: CreateApiTokenInput!) { createApiToken(input: $input) { token apiToken { ${FIELDS} } } }`,
      { input: { name: input.name, access: input.access.toUpperCase(), products: input.products ?? null, expiresAt: input.expiresAt?.toISOString() ?? null } },
    );
    const created = z.object({ token: z.string(), apiToken: tokenInfo }).parse(data.createApiToken);
    return { token: created.token, info: created.apiToken };
  }

  async list(): Promise<TokenInfo[]> {
    const data = await this.#call(`{ apiTokens { ${FIELDS} } }`);
    return z.array(tokenInfo).parse(data.apiTokens);
  }

  async revoke(id: string): Promise<boolean> {
    const data = await this.#call(`mutation($id: ID!) { revokeApiToken(id: $id) }`, { id });
    return z.boolean().parse(data.revokeApiToken);
  }
}

import { Arg, Authorized, ID, Mutation, Query, Resolver } from "type-graphql";
import { TokenService } from "./token.service.js";
import { ApiToken, CreateApiTokenInput, CreatedApiToken, toApiToken } from "./token.types.js";

/** Token management: admin tokens of every product only (no product argument, see `refusal`). */
@Resolver(() => ApiToken)
export class TokenResolver {
  constructor(private readonly tokens: TokenService) {}

  @Authorized("admin")
  @Mutation(() => CreatedApiToken, { description: "Creates an API token; the token itself is in the answer only." })
  async createApiToken(@Arg("input", () => CreateApiTokenInput) input: CreateApiTokenInput): Promise<CreatedApiToken> {
    const { token, info } = await this.tokens.create({ ...input, access: input.access });
    return { token, apiToken: toApiToken(info) };
  }

  @Authorized("admin")
  @Query(() => [ApiToken], { description: "Every API token (revoked and expired ones too), newest first. The ADMIN_TOKEN setting is not listed." })
  async apiTokens(): Promise<ApiToken[]> {
    return (await this.tokens.list()).map(toApiToken);
  }

  @Authorized("admin")
  @Mutation(() => Boolean, {
    description:
      "Revokes a token: refused at once by this instance and within 5 s by the others; its graphql-ws connections are closed with code 4401. False when there was no such token or it was already revoked.",
  })
  revokeApiToken(@Arg("id", () => ID) id: string): Promise<boolean> {
    return this.tokens.revoke(id);
  }
}

import { DateTimeISOResolver } from "graphql-scalars";
import { Field, ID, InputType, ObjectType, registerEnumType } from "type-graphql";
import type { Access } from "./principal.js";
import type { TokenInfo } from "./token.service.js";

export enum ApiAccess {
  READ = "read",
  WRITE = "write",
  ADMIN = "admin",
}
registerEnumType(ApiAccess, {
  name: "ApiAccess",
  description: "What a token may do, each level including the one before.",
  valuesConfig: {
    READ: { description: "Read devices and progress, subscribe to progress." },
    WRITE: { description: "Also send upgrades, set tags, suspend and resume devices." },
    ADMIN: { description: "Also register and delete devices; with no product limit, manage API tokens." },
  },
});

@ObjectType({ description: "An API token, without its secret.", simpleResolvers: true })
export class ApiToken {
  @Field(() => ID)
  id!: string;

  @Field(() => String)
  name!: string;

  @Field(() => ApiAccess)
  access!: Access;

  @Field(() => [String], { nullable: true, description: "The products the token is limited to; null: every product." })
  products!: string[] | null;

  @Field(() => DateTimeISOResolver)
  createdAt!: Date;

  @Field(() => DateTimeISOResolver, { nullable: true, description: "Refused from then on; null: never expires." })
  expiresAt!: Date | null;

  @Field(() => DateTimeISOResolver, { nullable: true })
  revokedAt!: Date | null;
}

export const toApiToken = (info: TokenInfo): ApiToken => ({ ...info });

@InputType()
export class CreateApiTokenInput {
  @Field(() => String, { description: "A label, 1..64 characters." })
  name!: string;

  @Field(() => ApiAccess)
  access!: ApiAccess;

  @Field(() => [String], { nullable: true, description: "Limit the token to these products (1..100); omitted: every product." })
  products?: string[] | null;

  @Field(() => DateTimeISOResolver, { nullable: true, description: "Refuse the token from then on; omitted: never expires." })
  expiresAt?: Date | null;
}

@ObjectType()
export class CreatedApiToken {
  @Field(() => String, { description: "The token, as `Authorization: Bearer <token>`. Shown once: only a hash is kept." })
  token!: string;

  @Field(() => ApiToken)
  apiToken!: ApiToken;
}

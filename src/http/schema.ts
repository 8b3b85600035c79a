import "reflect-metadata";
import { lexicographicSortSchema, printSchema, type GraphQLSchema } from "graphql";
import { buildSchema, type AuthChecker, type PubSub } from "type-graphql";
import { hasScopes } from "../auth/principal.js";
import { DeviceResolver } from "../devices/device.resolver.js";
import { OtaResolver } from "../ota/ota.resolver.js";
import type { Context } from "./context.js";

const authChecker: AuthChecker<Context> = ({ context }, scopes) => hasScopes(context.principal, scopes);

/**
 * The GraphQL schema from the type-graphql classes. Resolver instances come
 * from `resolvers`; without them (emitting `schema.graphql`) nothing runs.
 */
export function buildGraphqlSchema(pubSub: PubSub, resolvers: object[] = []): Promise<GraphQLSchema> {
  const instances = new Map<unknown, object>(resolvers.map((r) => [r.constructor, r]));
  return buildSchema({
    resolvers: [DeviceResolver, OtaResolver],
    container: { get: (cls) => instances.get(cls) },
    pubSub,
    authChecker,
    authMode: "error",
    validate: false,
  });
}

const notForExecution: PubSub = {
  publish() {
    throw new Error("schema built for printing only");
  },
  subscribe() {
    throw new Error("schema built for printing only");
  },
};

/** The SDL committed as `schema.graphql`; a test fails when it is stale. */
export async function printSchemaFile(): Promise<string> {
  return `${printSchema(lexicographicSortSchema(await buildGraphqlSchema(notForExecution)))}\n`;
}

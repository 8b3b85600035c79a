import "reflect-metadata";
import { lexicographicSortSchema, printSchema, type GraphQLSchema } from "graphql";
import { buildSchema, type AuthChecker, type PubSub } from "type-graphql";
import { ANY_PRODUCT, isAccess, PRODUCT_CHECKED_BY_RESOLVER, requireAccess } from "../auth/principal.js";
import { TokenResolver } from "../auth/token.resolver.js";
import { DeviceResolver } from "../devices/device.resolver.js";
import { ArtifactResolver } from "../firmware/artifact.resolver.js";
import { OtaResolver } from "../ota/ota.resolver.js";
import { ProgressBatchResolver } from "../ota/progress.batch.resolver.js";
import { DeviceRolloutResolver, FleetRolloutResolver, RolloutResolver } from "../rollouts/rollout.resolver.js";
import type { Context } from "./context.js";

/** The product an operation acts on: its `productName` argument, or its input's. */
function productOf(args: Record<string, unknown>): string | undefined {
  const input = args.input as { productName?: unknown } | undefined;
  const product = args.productName ?? input?.productName;
  return typeof product === "string" ? product : undefined;
}

/**
 * `@Authorized("read" | "write" | "admin")` on every operation; the check is
 * the one REST and graphql-ws use too ({@link requireAccess}), refusing with FORBIDDEN.
 * type-graphql runs it on a subscription's subscribe as well, so a
 * subscriber only ever watches products its token may read.
 */
const authChecker: AuthChecker<Context> = ({ context, args }, roles) => {
  const [need, product] = roles;
  const byResolver = product === PRODUCT_CHECKED_BY_RESOLVER;
  if (roles.length !== (byResolver ? 2 : 1) || !isAccess(need)) throw new Error(`@Authorized takes one access level, got ${JSON.stringify(roles)}`);
  // Operations on a rollout by id: the level here, the rollout's product once the resolver has read it.
  requireAccess(context.principal, need, byResolver ? ANY_PRODUCT : productOf(args));
  return true;
};

/**
 * The GraphQL schema from the type-graphql classes. Resolver instances come
 * from `resolvers`; without them (emitting `schema.graphql`) nothing runs.
 */
export function buildGraphqlSchema(pubSub: PubSub, resolvers: object[] = []): Promise<GraphQLSchema> {
  const instances = new Map<unknown, object>(resolvers.map((r) => [r.constructor, r]));
  return buildSchema({
    resolvers: [DeviceResolver, OtaResolver, ProgressBatchResolver, TokenResolver, RolloutResolver, DeviceRolloutResolver, FleetRolloutResolver, ArtifactResolver],
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

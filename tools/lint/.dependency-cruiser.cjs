// `npm run lint` (scripts/lint.sh) runs this from the repository root: every path is relative to it.
// The layers of docs/DESIGN.md ("Layout", "Where the next capabilities go"), as the code keeps them.

/** The domain rooms: they receive ports (interfaces) for what they store and send. */
const DOMAIN = "^src/(devices|ota|rollouts|firmware|auth|protocol)/";
/** Libraries that move bytes (HTTP, WebSocket, MQTT, the broker) or hold state (Redis, PostgreSQL drivers). */
const TRANSPORT_AND_DRIVERS =
  "^node_modules/(express|cors|ws|graphql-ws|@apollo/server|@as-integrations/[^/]+|aedes|aedes-[^/]+|mqtt|mqemitter|mqemitter-[^/]+|ioredis|graphql-redis-subscriptions|pg|@electric-sql/pglite)/";
/** The GraphQL schema side of a room: resolvers and their types (type-graphql by design). */
const SCHEMA_FILES = "\\.(resolver|types|resolver\\.args)\\.ts$";

/** @type {import('dependency-cruiser').IConfiguration} */
module.exports = {
  forbidden: [
    {
      name: "no-circular",
      severity: "error",
      comment: "A cycle makes start-up order and types depend on import order; split the shared part out.",
      from: {},
      to: { circular: true },
    },
    {
      name: "protocol-is-pure",
      severity: "error",
      comment: "src/protocol is pure functions over the wire format (PROTOCOL.md): itself, src/errors.ts and Node builtins only.",
      from: { path: "^src/protocol/" },
      to: { dependencyTypesNot: ["core"], pathNot: ["^src/protocol/", "^src/errors\\.ts$"] },
    },
    {
      name: "domain-imports-no-transport-or-driver",
      severity: "error",
      comment:
        "docs/DESIGN.md: domain code does not import MQTT, Redis, HTTP or database-driver libraries; it is given ports " +
        "(src/ota/ports.ts) and repositories as constructor parameters.",
      from: { path: DOMAIN },
      to: { path: TRANSPORT_AND_DRIVERS },
    },
    {
      name: "domain-imports-no-adapter",
      severity: "error",
      comment:
        "Domain code is wired to the broker, the MQTT client, Redis and the app by app.ts, never the other way round.",
      from: { path: DOMAIN },
      to: { path: "^src/(broker|mqtt|cli|sim|config)/|^src/(app|main)\\.ts$" },
    },
    {
      name: "storage-only-in-repositories",
      severity: "error",
      comment:
        "Domain code reaches PostgreSQL through its *.repository.ts: only those import drizzle-orm or src/storage/ " +
        "(a model may name its row type, type-only, to map rows to the model).",
      from: { path: DOMAIN, pathNot: "\\.repository\\.ts$" },
      to: { path: ["^node_modules/drizzle-orm/", "^src/storage/"], dependencyTypesNot: ["type-only"] },
    },
    {
      name: "storage-types-only-in-models-and-repositories",
      severity: "error",
      comment: "A row type is not the domain model: only a *.model.ts (mapping rows) or a *.repository.ts names one.",
      from: { path: DOMAIN, pathNot: "\\.(repository|model)\\.ts$" },
      to: { path: "^src/storage/schema\\.ts$", dependencyTypes: ["type-only"] },
    },
    {
      name: "graphql-only-in-schema-files",
      severity: "error",
      comment:
        "Resolvers and *.types.ts are the GraphQL side of a room (type-graphql by design); services and models " +
        "know nothing of GraphQL or of src/http.",
      from: { path: DOMAIN, pathNot: SCHEMA_FILES },
      to: { path: ["^node_modules/(type-graphql|graphql|graphql-scalars|dataloader)/", "^src/http/"] },
    },
    {
      name: "schema-files-use-only-http-context",
      severity: "error",
      comment:
        "A resolver imports no HTTP module (docs/DESIGN.md): from src/http only the request context, the per-request " +
        "loaders and the generic connection types.",
      from: { path: DOMAIN },
      to: { path: "^src/http/", pathNot: "^src/http/(context|loaders|connection\\.types)\\.ts$" },
    },
    {
      name: "clients-stay-out-of-the-server",
      severity: "error",
      comment: "src/cli and src/sim are clients of the server: only main.ts (and the simulator, of the CLI's client) starts them.",
      from: { path: "^src/", pathNot: "^src/(main\\.ts|cli/|sim/)" },
      to: { path: "^src/(cli|sim)/" },
    },
    {
      name: "server-imports-no-tests",
      severity: "error",
      comment: "src/ is what ships (npm pack): it imports nothing from test/, bench/ or scripts/.",
      from: { path: "^src/" },
      to: { path: "^(test|bench|scripts)/" },
    },
    {
      name: "dashboard-imports-no-server",
      severity: "error",
      comment: "The dashboard talks to the server over GraphQL only: from src/ it takes the generated operations.",
      from: { path: "^web/" },
      to: { path: "^src/", pathNot: "^src/client/generated/" },
    },
    {
      name: "not-to-unresolvable",
      severity: "error",
      comment: "An import the cruiser cannot resolve would also escape every rule above.",
      from: {},
      to: { couldNotResolve: true },
    },
  ],
  options: {
    doNotFollow: { path: "node_modules" },
    exclude: { path: "^(web/dist|dist)/" },
    tsConfig: { fileName: "tsconfig.json" },
    // `import type` edges are kept (and told apart) so the rules can allow them where a model names its row type
    tsPreCompilationDeps: true,
    enhancedResolveOptions: {
      exportsFields: ["exports"],
      conditionNames: ["import", "require", "node", "default", "types"],
      mainFields: ["module", "main", "types", "typings"],
    },
  },
};

import { Option, type Command } from "commander";
import { z } from "zod";
import { ACCESS_LEVELS } from "../auth/principal.js";
import { ConfigError, loadConfig, type Config } from "../config/config.js";
import { settingsHelp } from "../config/settings.help.js";
import { FAULT_FLAGS, type Fault } from "../sim/faults.js";
import type { SimulateOptions } from "../sim/sim.cli.js";
import { withExample } from "./cli.command.js";
import { ApiTokenAdmin, type TokenAdmin } from "./token.admin.js";

// The database and the simulator are imported by the commands that use them: a client command (devices, rollout,
// ota…) starts in half the time without them.

/** The settings from the environment; a refused one is printed and exits 2. */
export function configOrExit(): Config {
  try {
    return loadConfig();
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
}

function exitWith(err: unknown): never {
  process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(2);
}

/** What each `simulate` fault flag does, to a percentage of upgrades. */
const FAULT_HELP: Record<Fault, string> = {
  downloadError: "upgrades that report -1",
  md5Mismatch: "upgrades whose md5 check fails (-2)",
  installError: "upgrades that report -3",
  rollback: "upgrades that silently come back on the old version",
  offline: "upgrades interrupted by going offline mid-download",
  duplicate: "upgrades whose reports are each sent twice",
};

/** commander's option key of a flag: fail-download -> failDownload. */
const camel = (flag: string) => flag.replace(/-(.)/g, (_, c: string) => c.toUpperCase());

const durationMs = z
  .string()
  .regex(/^\d+[smhd]$/, "must be a number and a unit: 90s, 30m, 12h, 30d")
  .transform((v) => Number(v.slice(0, -1)) * { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 }[v.slice(-1) as "s" | "m" | "h" | "d"]);

/** Where the token commands act: a running server's API when given --url or --server, else the database of the settings. */
const apiFlags = z
  .object({
    url: z.string().url("--url must be the GraphQL endpoint, http(s)://host:port/graphql").optional(),
    server: z.string().url("--server must be the server's URL, http(s)://host:port").optional(),
    token: z.string().optional(),
  })
  .transform((o) => ({ url: o.url ?? (o.server === undefined ? undefined : new URL("/graphql", o.server).toString()), token: o.token }))
  .refine((o) => o.url === undefined || (o.token ?? "") !== "", "--url or --server needs --token (or IOTHUB_OTA_TOKEN): an admin token of every product");

const createFlags = z.object({
  name: z.string().min(1),
  access: z.enum(ACCESS_LEVELS, { error: "--access must be read, write or admin" }),
  products: z
    .string()
    .optional()
    .transform((v) => (v === undefined ? null : v.split(",").map((p) => p.trim()).filter((p) => p !== ""))),
  expiresIn: durationMs.optional(),
});

function parseFlags<T extends z.ZodType>(schema: T, flags: unknown): z.infer<T> {
  const r = schema.safeParse(flags);
  if (!r.success) exitWith(new Error(r.error.issues.map((i) => i.message).join("\n")));
  return r.data;
}

/** Runs `use` with the token service on the database (PGlite: refused while a server holds it), or with the server's API. */
async function withTokens<T>(flags: { url?: string; token?: string }, use: (admin: TokenAdmin) => Promise<T>): Promise<T> {
  const api = parseFlags(apiFlags, flags);
  if (api.url !== undefined) return use(new ApiTokenAdmin(api.url, api.token as string));
  const config = configOrExit();
  const [{ Database }, { TokenService }] = await Promise.all([import("../storage/database.js"), import("../auth/token.service.js")]);
  const database = new Database(config.database, config.limits);
  await database.start();
  try {
    return await use(new TokenService(() => database.db, undefined, config.limits.tokenCacheTtlMs));
  } finally {
    await database.stop();
  }
}

const apiOptions = (c: Command) =>
  c
    .option("--url <url>", "a running server's GraphQL endpoint (http://host:4000/graphql); without it or --server, the database of the settings")
    .option("--server <url>", "a running server's URL (http://host:4000), as the client commands take it")
    .addOption(new Option("--token <token>", "with --url: an admin API token of every product").env("IOTHUB_OTA_TOKEN"));

/** serve (its action given: main.ts runs the server), token create|list|revoke, simulate, firmware-server. */
export function registerServerCommands(program: Command, serve: () => Promise<void>): void {
  withExample(
    program.command("serve").description("run the server (settings from the environment)").addHelpText("after", settingsHelp),
    "DATABASE_URL=postgres://ota@db.example/ota REDIS_URL=redis://127.0.0.1:6379 PORT=4000 iothub-ota serve\n" +
      "iothub-ota serve    # no settings: embedded PostgreSQL (PGlite) in ./data, Redis on localhost, the dashboard on :4000",
  ).action(serve);

  const token = withExample(
    program.command("token").description("API tokens: create, list, revoke"),
    "iothub-ota token create --name ci --access write --products demo --expires-in 30d > ci.token",
  );
  withExample(
    apiOptions(
      token
        .command("create")
        .description("create an API token and print it on stdout (shown once); its id and limits go to stderr")
        .option("--name <name>", "a label for the token", "cli")
        .option("--access <level>", "read | write (send, tag, suspend) | admin (register, delete, tokens)", "read")
        .option("--products <a,b>", "limit the token to these products (default: every product)")
        .option("--expires-in <duration>", "refuse the token after this long: 90s, 30m, 12h, 30d (default: never)"),
    ),
    "iothub-ota token create --name dashboard --access read --expires-in 12h    # on the server's machine: its database\n" +
      'iothub-ota token create --name ci --access write --server http://ota.example:4000 --token "$ADMIN_TOKEN"',
  ).action((o: Record<string, string | undefined>) => {
    const { name, access, products, expiresIn } = parseFlags(createFlags, o);
    return withTokens(o, async (admin) => {
      const expiresAt = expiresIn === undefined ? null : new Date(Date.now() + expiresIn);
      const { token, info } = await admin.create({ name, access, products, expiresAt });
      process.stdout.write(`${token}\n`);
      process.stderr.write(`${JSON.stringify(info)}\n`);
    }).catch(exitWith);
  });
  withExample(
    apiOptions(token.command("list").description("list API tokens as JSON (revoked and expired ones too), never their secrets")),
    "iothub-ota token list --server http://ota.example:4000 --token \"$ADMIN_TOKEN\" | jq -r '.[] | select(.revokedAt == null) | .id'",
  ).action((o: Record<string, string | undefined>) =>
    withTokens(o, async (admin) => void process.stdout.write(`${JSON.stringify(await admin.list(), null, 2)}\n`)).catch(exitWith),
  );
  withExample(
    apiOptions(
      token
        .command("revoke")
        .argument("<id>", "the token's id (from token list)")
        .description("revoke an API token; its WebSocket connections are closed (4401)"),
    ),
    'iothub-ota token revoke 3f2c9a4e-0b1d-4c8e-9a57-2d6f1e0c8b13 --server http://ota.example:4000 --token "$ADMIN_TOKEN"',
  ).action((id: string, o: Record<string, string | undefined>) =>
    withTokens(o, async (admin) => {
      if (!(await admin.revoke(id))) exitWith(new Error(`no token ${id}, or it was already revoked`));
      process.stdout.write(`revoked ${id}\n`);
    }).catch(exitWith),
  );

  const simulate = withExample(
    program
      .command("simulate")
      .description("run a fleet of simulated devices that speak the IotHub protocol; Ctrl-C ends it with a JSON summary")
      .option("--api <url>", "GraphQL endpoint, to register devices (default: this machine's, on PORT)")
      .addOption(new Option("--token <token>", "API token, to register devices").env("IOTHUB_OTA_TOKEN"))
      .option("--mqtt <url>", "broker URL, mqtts:// for TLS (default: this machine's, on MQTT_PORT)")
      .option("--tls", "by default, connect to MQTTS_PORT over TLS")
      .option("--cleanup", "delete the devices this run registered when it ends")
      .option("--product <name>", "product name", "demo")
      .option("-n, --devices <n>", "how many devices", "10")
      .option("--tags <a,b>", "tags of registered devices", "")
      .option("--credentials <file>", "use these devices instead of registering (JSON [{productName, deviceName, secret}])")
      .option("--save-credentials <file>", "write the credentials used, for a later --credentials")
      .option("--initial-version <v>", "firmware version the devices start on", "1.0")
      .option("--step <percent>", "report progress every this many percent", "10")
      .option("--pace-ms <ms>", "pause between progress reports", "200")
      .option("--install-ms <ms>", "how long installing takes", "2000")
      .option("--offline-ms <ms>", "how long a reboot or an outage lasts", "1000")
      .option("--concurrency <n>", "connections set up at once", "100")
      .option("--seed <n>", "seed of the fault dice", "1")
      .option("--insecure", "accept any TLS certificate (the development one)")
      .option("--exit-after-ms <ms>", "stop by itself this long after starting (registering and connecting included)"),
    "iothub-ota simulate --product demo -n 200 --tags beta --fail-download 5 --cleanup\n" +
      "iothub-ota simulate --credentials fleet.json --mqtt mqtts://ota.example:8883 --tls --offline 10",
  );
  // One flag per fault, named by FAULT_FLAGS (which the simulator's messages use too).
  for (const [fault, flag] of Object.entries(FAULT_FLAGS) as [Fault, string][]) simulate.option(`--${flag} <percent>`, FAULT_HELP[fault], "0");
  simulate.action((o: Record<string, string>) =>
    import("../sim/sim.cli.js")
      .then(({ simulate }) =>
        simulate({
          ...(o as unknown as SimulateOptions),
          faults: Object.fromEntries(Object.entries(FAULT_FLAGS).map(([fault, flag]) => [fault, o[camel(flag)]])),
        }),
      )
      .catch(exitWith),
  );

  withExample(
    program
      .command("firmware-server")
      .description("serve a generated firmware file for demos; prints its url, size and md5")
      .option("--size <bytes>", "file size", "1048576")
      .option("--port <port>", "port (0: any free one)", "8080")
      .option("--host <host>", "bind address", "127.0.0.1"),
    "iothub-ota firmware-server --size 524288 --port 8080    # then: ota send ... --url <its url> --size 524288 --md5 <its md5>",
  ).action((o: { size: string; port: string; host: string }) =>
    import("../sim/sim.cli.js").then(({ firmwareServer }) => firmwareServer(o)).catch(exitWith),
  );
}

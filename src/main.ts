import { readFileSync } from "node:fs";
import { Command } from "commander";
import { z } from "zod";
import { ACCESS_LEVELS } from "./auth/principal.js";
import { ApiTokenAdmin, type TokenAdmin } from "./cli/token.admin.js";
import { registerClientCommands } from "./cli/index.js";
import { ConfigError, loadConfig, type Config } from "./config/config.js";
import { settingsHelp } from "./config/settings.help.js";
import { FAULT_FLAGS } from "./sim/faults.js";
import type { SimulateOptions } from "./sim/sim.cli.js";

// The server, the database and the simulator are imported by the commands that run them: a client command
// (devices, rollout, ota…) starts in half the time without them.

/** Apollo's drain grace is 10 s; past this something is stuck and the orchestrator would kill us anyway. */
const SHUTDOWN_DEADLINE_MS = 30_000;

function configOrExit(): Config {
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

/** Runs the server until SIGTERM or SIGINT, then stops everything in reverse order and exits 0. */
async function serve(): Promise<void> {
  await import("reflect-metadata");
  const { App } = await import("./app.js");
  const app = new App(configOrExit());
  let stopping = false;
  const shutdown = (signal: string) => {
    if (stopping) {
      app.log.warn({ signal }, "second signal: exiting without finishing the shutdown");
      process.exit(1);
    }
    stopping = true;
    app.log.info({ signal }, "shutting down");
    setTimeout(() => {
      app.log.error(`shutdown took longer than ${SHUTDOWN_DEADLINE_MS} ms: exiting`);
      process.exit(1);
    }, SHUTDOWN_DEADLINE_MS).unref();
    app.stop().then(
      () => {
        app.log.info("stopped: exiting");
        process.exit(0);
      },
      () => process.exit(1),
    );
  };
  process.on("SIGTERM", () => shutdown("SIGTERM"));
  process.on("SIGINT", () => shutdown("SIGINT"));
  // A promise a library left unawaited that rejects in a dependency blip (a Redis or database outage) must not
  // end the process (Node's default); it is logged with its error. An uncaught exception still does.
  process.on("unhandledRejection", (err) => app.log.error({ err }, "unhandled promise rejection"));
  // App.start has logged why, once.
  await app.start().catch(() => process.exit(1));
}

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
  const [{ Database }, { TokenService }] = await Promise.all([import("./storage/database.js"), import("./auth/token.service.js")]);
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
    .option("--token <token>", "with --url: an admin API token of every product (or IOTHUB_OTA_TOKEN)", process.env.IOTHUB_OTA_TOKEN);

const { version } = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string };
const program = new Command("iothub-ota").description("Over-the-air firmware upgrades for IoT device fleets.").version(version);
program
  .command("serve")
  .description("run the server (settings from the environment)")
  .addHelpText("after", settingsHelp)
  .action(serve);
const token = program.command("token").description("API tokens: create, list, revoke");
apiOptions(
  token
    .command("create")
    .description("create an API token and print it on stdout (shown once); its id and limits go to stderr")
    .option("--name <name>", "a label for the token", "cli")
    .option("--access <level>", "read | write (send, tag, suspend) | admin (register, delete, tokens)", "read")
    .option("--products <a,b>", "limit the token to these products (default: every product)")
    .option("--expires-in <duration>", "refuse the token after this long: 90s, 30m, 12h, 30d (default: never)"),
).action((o: Record<string, string | undefined>) => {
  const { name, access, products, expiresIn } = parseFlags(createFlags, o);
  return withTokens(o, async (admin) => {
    const expiresAt = expiresIn === undefined ? null : new Date(Date.now() + expiresIn);
    const { token, info } = await admin.create({ name, access, products, expiresAt });
    process.stdout.write(`${token}\n`);
    process.stderr.write(`${JSON.stringify(info)}\n`);
  }).catch(exitWith);
});
apiOptions(token.command("list").description("list API tokens as JSON (revoked and expired ones too), never their secrets")).action(
  (o: Record<string, string | undefined>) =>
    withTokens(o, async (admin) => void process.stdout.write(`${JSON.stringify(await admin.list(), null, 2)}\n`)).catch(exitWith),
);
apiOptions(
  token
    .command("revoke")
    .argument("<id>", "the token's id (from token list)")
    .description("revoke an API token; its WebSocket connections are closed (4401)"),
).action((id: string, o: Record<string, string | undefined>) =>
  withTokens(o, async (admin) => {
    if (!(await admin.revoke(id))) exitWith(new Error(`no token ${id}, or it was already revoked`));
    process.stdout.write(`revoked ${id}\n`);
  }).catch(exitWith),
);

program
  .command("simulate")
  .description("run a fleet of simulated devices that speak the IotHub protocol; Ctrl-C ends it with a JSON summary")
  .option("--api <url>", "GraphQL endpoint, to register devices (default: this machine's, on PORT)")
  .option("--token <token>", "API token, to register devices (or IOTHUB_OTA_TOKEN)", process.env.IOTHUB_OTA_TOKEN)
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
  .option("--exit-after-ms <ms>", "stop by itself after this long")
  .option("--fail-download <percent>", "upgrades that report -1", "0")
  .option("--fail-md5 <percent>", "upgrades whose md5 check fails (-2)", "0")
  .option("--fail-install <percent>", "upgrades that report -3", "0")
  .option("--rollback <percent>", "upgrades that silently come back on the old version", "0")
  .option("--offline <percent>", "upgrades interrupted by going offline mid-download", "0")
  .option("--duplicate <percent>", "upgrades whose reports are each sent twice", "0")
  .action((o: Record<string, string>) =>
    import("./sim/sim.cli.js")
      .then(({ simulate }) =>
        simulate({
          ...(o as unknown as SimulateOptions),
          faults: Object.fromEntries(Object.entries(FAULT_FLAGS).map(([fault, flag]) => [fault, o[camel(flag)]])),
        }),
      )
      .catch(exitWith),
  );
program
  .command("firmware-server")
  .description("serve a generated firmware file for demos; prints its url, size and md5")
  .option("--size <bytes>", "file size", "1048576")
  .option("--port <port>", "port (0: any free one)", "8080")
  .option("--host <host>", "bind address", "127.0.0.1")
  .action((o: { size: string; port: string; host: string }) =>
    import("./sim/sim.cli.js").then(({ firmwareServer }) => firmwareServer(o)).catch(exitWith),
  );
registerClientCommands(program);

await program.parseAsync();

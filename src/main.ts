import "reflect-metadata";
import { Command } from "commander";
import { App } from "./app.js";
import { TokenService } from "./auth/token.service.js";
import { ConfigError, loadConfig, type Config } from "./config/config.js";
import { Database } from "./storage/database.js";

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

/** Runs the server until SIGTERM or SIGINT, then stops everything in reverse order and exits 0. */
async function serve(): Promise<void> {
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
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on("SIGTERM", () => shutdown("SIGTERM"));
  process.on("SIGINT", () => shutdown("SIGINT"));
  try {
    await app.start();
  } catch (err) {
    app.log.fatal({ err }, "could not start");
    process.exit(1);
  }
}

/** Prints a new API token. With embedded PGlite, run it while the server is stopped. */
async function createToken(name: string): Promise<void> {
  const config = configOrExit();
  const database = new Database(config.database);
  await database.start();
  try {
    const token = await new TokenService(() => database.db, undefined).create(name);
    process.stdout.write(`${token}\n`);
  } finally {
    await database.stop();
  }
}

const program = new Command("iothub-ota").description("Over-the-air firmware upgrades for IoT device fleets.");
program.command("serve").description("run the server (settings from the environment)").action(serve);
program
  .command("token")
  .description("API tokens")
  .command("create")
  .description("create an API token and print it (shown once)")
  .option("--name <name>", "a label for the token", "cli")
  .action((opts: { name: string }) => createToken(opts.name));

await program.parseAsync();

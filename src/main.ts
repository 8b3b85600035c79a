import { configOrExit, createProgram } from "./cli/index.js";

// The server, the database and the simulator are imported by the commands that run them: a client command
// (devices, rollout, ota…) starts in half the time without them.

/** Apollo's drain grace is 10 s; past this something is stuck and the orchestrator would kill us anyway. */
const SHUTDOWN_DEADLINE_MS = 30_000;

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

await createProgram(serve).parseAsync();

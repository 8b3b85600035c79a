import { readFileSync } from "node:fs";
import { Command } from "commander";
import { withExample } from "./cli.command.js";
import { registerClientCommands } from "./client.commands.js";
import { registerServerCommands } from "./server.commands.js";

const { version } = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version: string };

/**
 * The `iothub-ota` command and every subcommand, unparsed: main.ts parses
 * the process's arguments with it, the tests walk it (every command's help
 * has an example). `serve` runs the server, which main.ts owns.
 */
export function createProgram(serve: () => Promise<void>): Command {
  const program = new Command("iothub-ota").description("Over-the-air firmware upgrades for IoT device fleets.").version(version);
  registerServerCommands(program, serve);
  registerClientCommands(program);
  return withExample(
    program,
    `iothub-ota serve                                  # the server, settings from the environment (serve --help)
iothub-ota token create --name ci --access write  # an API token, printed once
export IOTHUB_OTA_SERVER=http://localhost:4000 IOTHUB_OTA_TOKEN=iot_...
iothub-ota rollout create --product demo --tag beta --firmware-id "$fw" --wave 10% --wave 100% --watch`,
  );
}

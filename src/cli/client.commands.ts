import type { Command } from "commander";
import { DEFAULT_SERVER } from "./cli.command.js";
import { registerDeviceCommands } from "./devices.commands.js";
import { registerFirmwareCommands } from "./firmware.commands.js";
import { registerOtaCommands } from "./ota.commands.js";
import { registerProgressCommands } from "./progress.commands.js";
import { EXIT_CODES_HELP, registerRolloutCommands } from "./rollout.commands.js";

/** The commands that talk to a running server: devices, firmware, ota, progress, rollout. */
export function registerClientCommands(program: Command): void {
  // The program's own options (--version) only before a command's name: after it, `--version 2.0` is the firmware's.
  program.enablePositionalOptions();
  registerDeviceCommands(program);
  registerFirmwareCommands(program);
  registerOtaCommands(program);
  registerProgressCommands(program);
  registerRolloutCommands(program);
  program.addHelpText(
    "after",
    `
The commands devices, firmware, ota, progress and rollout talk to a running server: --server <url> (or IOTHUB_OTA_SERVER;
default ${DEFAULT_SERVER}) with an API token from --token (or IOTHUB_OTA_TOKEN). They print tables for people and
JSON with --json; errors print the API's code (error FORBIDDEN: ...) on stderr and exit 2. The watches reopen a lost
connection (a server restart) for --reconnect-timeout, noting it on stderr, and exit 6 if it does not come back.
${EXIT_CODES_HELP.trimEnd()}`,
  );
}

export { registerClientCommands } from "./client.commands.js";

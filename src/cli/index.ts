export { createProgram } from "./program.js";
export { configOrExit } from "./server.commands.js";

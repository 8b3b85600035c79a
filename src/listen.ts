import type { Server } from "node:net";
import { StartupError } from "./errors.js";

/**
 * Listens, turning "address in use" into a message that names the setting to
 * change. Errors after that (a failed accept, say) go to `onLaterError`: an
 * `error` event with no listener would end the process.
 */
export function listen<S extends Server>(
  server: S,
  host: string,
  port: number,
  setting: string,
  onLaterError: (err: Error) => void,
): Promise<S> {
  return new Promise((resolve, reject) => {
    const onStartError = (err: NodeJS.ErrnoException) =>
      reject(err.code === "EADDRINUSE" ? new StartupError(`port ${port} on ${host} is already in use: set ${setting} to a free port (or stop what holds it)`) : err);
    server.once("error", onStartError);
    server.listen(port, host, () => {
      server.off("error", onStartError);
      server.on("error", onLaterError);
      resolve(server);
    });
  });
}

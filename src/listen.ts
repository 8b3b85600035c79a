import type { Server } from "node:net";

/** Listens, turning "address in use" into a message that names the setting to change. */
export function listen<S extends Server>(server: S, host: string, port: number, setting = "MQTT_PORT"): Promise<S> {
  return new Promise((resolve, reject) => {
    server.once("error", (err: NodeJS.ErrnoException) =>
      reject(err.code === "EADDRINUSE" ? new Error(`port ${port} on ${host} is already in use: set ${setting}`) : err),
    );
    server.listen(port, host, () => {
      server.removeAllListeners("error");
      resolve(server);
    });
  });
}

import { Redis } from "ioredis";
import { StartupError, redactUrl } from "../errors.js";

/**
 * A Redis connection that fails fast instead of queueing commands forever:
 * a command fails after `commandTimeoutMs`, or after 3 reconnection attempts.
 */
export function createRedis(
  url: string,
  name: string,
  commandTimeoutMs: number | undefined,
  onError: (err: Error) => void,
): Redis {
  const redis = new Redis(url, {
    connectionName: `iothub-ota:${name}`,
    lazyConnect: true,
    maxRetriesPerRequest: 3,
    commandTimeout: commandTimeoutMs,
    enableAutoPipelining: true,
  });
  // An unhandled 'error' event would end the process; a Redis blip must not.
  redis.on("error", onError);
  return redis;
}

/** Connects every client; on failure disconnects them all so nothing keeps the process alive, and says where it tried. */
export async function connectAll(clients: Redis[], url: string): Promise<void> {
  try {
    await Promise.all(clients.map((c) => c.connect()));
  } catch (err) {
    for (const c of clients) c.disconnect();
    const why = err instanceof Error ? err.message : String(err);
    throw new StartupError(`could not connect to Redis at ${redactUrl(url)} (${why}): start Redis there, or set REDIS_URL`);
  }
}

export async function quitAll(clients: Redis[]): Promise<void> {
  await Promise.all(
    clients.map(async (c) => {
      if (c.status === "end") return;
      try {
        await c.quit();
      } catch {
        c.disconnect();
      }
    }),
  );
}

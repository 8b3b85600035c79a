import { Redis } from "ioredis";

/** A Redis connection that fails fast on start instead of queueing commands forever. */
export function createRedis(url: string, name: string): Redis {
  return new Redis(url, {
    connectionName: `iothub-ota:${name}`,
    lazyConnect: true,
    maxRetriesPerRequest: 3,
    enableAutoPipelining: true,
  });
}

/** Connects every client; on failure disconnects them all so nothing keeps the process alive. */
export async function connectAll(clients: Redis[]): Promise<void> {
  try {
    await Promise.all(clients.map((c) => c.connect()));
  } catch (err) {
    for (const c of clients) c.disconnect();
    throw err;
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

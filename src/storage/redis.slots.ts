import calculateSlot from "cluster-key-slot";
import type { Cluster, Redis } from "ioredis";

/** A Redis connection: one server (or Sentinel's primary), or a Redis Cluster. */
export type RedisClient = Redis | Cluster;

/**
 * Splits items into the groups that may go to Redis in one multi-key command
 * or script. On one server that is all of them, in one group (one round
 * trip, as before); in a Redis Cluster, one group per hash slot of the item's
 * key, since a command's keys must all hash to one slot. The keys of one
 * device share a hash tag (`{<product>/<device>}`, progress.redis.ts), so one
 * device's keys always travel together.
 */
export function bySlot<T>(redis: RedisClient, items: readonly T[], keyOf: (item: T) => string): T[][] {
  if (!redis.isCluster) return items.length === 0 ? [] : [[...items]];
  const groups = new Map<number, T[]>();
  for (const item of items) {
    const slot = calculateSlot(keyOf(item));
    const group = groups.get(slot);
    if (group) group.push(item);
    else groups.set(slot, [item]);
  }
  return [...groups.values()];
}

/** MGET of keys of any slots: one MGET per slot group, in parallel, answers in the order of `keys`. */
export async function mgetAny(redis: RedisClient, keys: readonly string[]): Promise<(string | null)[]> {
  if (keys.length === 0) return [];
  if (!redis.isCluster) return redis.mget(...keys);
  const groups = bySlot(redis, keys.map((key, i) => ({ key, i })), (k) => k.key);
  const out = new Array<string | null>(keys.length);
  await Promise.all(
    groups.map(async (group) => {
      const values = await redis.mget(...group.map((k) => k.key));
      group.forEach((k, j) => (out[k.i] = values[j] ?? null));
    }),
  );
  return out;
}

/**
 * In a Redis Cluster, ioredis' auto-pipelining routes a command by its first
 * argument, which for a script is the number of keys or the script itself,
 * not a key: scripts sent in the same tick to different nodes then fail the
 * pipeline ("All keys in the pipeline should belong to the same slots
 * allocation group"). These commands are sent on their own there (ioredis
 * routes them by their declared keys).
 */
export function sendScriptsAlone(redis: RedisClient, commands: readonly string[]): void {
  if (!redis.isCluster) return;
  const ignored = (redis.options.autoPipeliningIgnoredCommands ??= []);
  for (const c of commands) if (!ignored.includes(c)) ignored.push(c);
}

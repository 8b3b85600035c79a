import type { Redis } from "ioredis";
import type { RedisClient } from "./redis.slots.js";

/** Set once every key is in the layout with hash tags (progress.redis.ts); a start that finds it scans nothing. */
const MARK = "keys_layout";
const LAYOUT = "2";

/**
 * One family of keys of the layout before hash tags: what follows `base`,
 * split at `/`, gives the new name, or null to delete the key (presence,
 * which the instances holding connections write again within a refresh).
 */
interface Family {
  base: string;
  parts: number;
  to: ((parts: string[]) => string) | null;
}

const families: Family[] = [
  { base: "ota_progress/", parts: 2, to: ([p, d]) => `ota_progress/{${p}/${d}}` },
  { base: "ota_attempt/", parts: 2, to: ([p, d]) => `ota_attempt/{${p}/${d}}` },
  { base: "ota_attempt_tag/", parts: 2, to: ([p, tag]) => `ota_attempt_tag/{${p}}/${tag}` },
  { base: "msg_dedup/", parts: 3, to: ([p, d, id]) => `msg_dedup/{${p}/${d}}/${id}` },
  // The embedded broker's own keys (sessions.ts), under the same prefix.
  { base: "device-sessions:", parts: 2, to: ([p, d]) => `device-sessions:{${p}/${d}}` },
  { base: "device-live:", parts: 2, to: ([p, d]) => `device-live:{${p}/${d}}` },
  // A product's set (`presence/<p>`) and its devices' holder hashes (`presence/<p>/<d>`); not `presence/<p>#connected`.
  { base: "presence/", parts: 1, to: null },
  { base: "presence/", parts: 2, to: null },
];

const bases = [...new Set(families.map((f) => f.base))];

export interface KeysMigration {
  renamed: number;
  deleted: number;
}

/**
 * Renames the keys a server before the Redis Cluster layout wrote (no hash
 * tags) to their tagged names, once per deployment (`REDIS_PREFIX`): the
 * first start of this version does it before it serves, later starts read
 * one key. RENAMENX keeps each key's expiry; where the tagged key exists
 * already it is the newer one and the old key goes. Several instances
 * starting at once may run it together: a key another one renamed first is
 * skipped. Instances of the older version must be stopped first (they would
 * go on writing the old names). A Redis Cluster never held the old layout
 * (its scripts span slots): there it only sets the mark.
 */
export async function migrateKeys(redis: RedisClient, prefix: string): Promise<KeysMigration> {
  const done: KeysMigration = { renamed: 0, deleted: 0 };
  if ((await redis.get(`${prefix}${MARK}`)) === LAYOUT) return done;
  if (!redis.isCluster) {
    // One pass over the deployment's keys (SCAN visits the whole keyspace whatever it matches).
    const stream = (redis as Redis).scanStream({ match: `${prefix}*`, count: 5000 });
    for await (const keys of stream as AsyncIterable<string[]>) await renameAll(redis, prefix, keys, done);
  }
  await redis.set(`${prefix}${MARK}`, LAYOUT);
  return done;
}

async function renameAll(redis: RedisClient, prefix: string, keys: string[], done: KeysMigration): Promise<void> {
  const moves: { from: string; to: string | null }[] = [];
  for (const key of keys) {
    const name = key.slice(prefix.length);
    const base = bases.find((b) => name.startsWith(b));
    if (base === undefined) continue;
    const rest = name.slice(base.length);
    // Tagged already, or a product's `#connected`/`#disconnected` times (names hold neither character).
    if (rest.includes("{") || rest.includes("#")) continue;
    const parts = rest.split("/");
    const family = families.find((f) => f.base === base && f.parts === parts.length);
    if (!family || parts.some((p) => p === "")) continue; // not a key of ours
    moves.push({ from: key, to: family.to === null ? null : `${prefix}${family.to(parts)}` });
  }
  if (moves.length === 0) return;
  const renames = redis.pipeline();
  for (const { from, to } of moves) {
    if (to === null) renames.del(from);
    else renames.renamenx(from, to);
  }
  const results = (await renames.exec()) ?? [];
  const stale = redis.pipeline();
  let staleCount = 0;
  moves.forEach(({ from, to }, i) => {
    const [err, value] = results[i] ?? [null, null];
    if (err) return; // renamed by another instance meanwhile
    if (to === null) done.deleted += Number(value);
    else if (value === 1) done.renamed++;
    else {
      stale.del(from);
      staleCount++;
    }
  });
  if (staleCount > 0) {
    await stale.exec();
    done.deleted += staleCount;
  }
}

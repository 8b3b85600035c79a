import { randomUUID } from "node:crypto";
import type { PresenceReader, Seen } from "../ota/ports.js";
import { PRESENCE_BUCKETS, presenceBucketOf, type RedisKeys } from "./progress.redis.js";
import { sendScriptsAlone, type RedisClient } from "./redis.slots.js";

/** An entry lives this long unless its instance refreshes it (PRESENCE_TTL_MS): a dead instance's devices go offline after it. */
export const PRESENCE_TTL_MS = 60_000;
/** Devices one {@link HOLD_SCRIPT} run writes: each run holds Redis for a bounded time. */
const CHUNK = 500;

/**
 * Records that one instance holds (or, with expiry 0, no longer holds) a
 * connection of each given device, and recomputes the devices' entries.
 *
 * Per device, `<presence key>/<device>` hashes instance id -> the expiry that
 * instance last wrote: a device on two instances at once (a takeover across
 * instances, a load balancer moving it) has two holders, and the one that
 * lets go removes only its own. The product's sorted set keeps, per device,
 * the latest expiry of its holders: what readers count, in O(log n), and what
 * stops counting by itself once no holder refreshes it (an instance killed
 * with its connections). Expired holders are dropped as they are met; a
 * holder hash expires with its last holder. A run's devices are of one
 * bucket (one hash slot: the set and its holder hashes share a tag).
 *
 * KEYS: per device, its bucket's set then its holder hash.
 * ARGV: instance id, expiry (ms; 0: let go), now (ms), then the device names.
 */
const HOLD_SCRIPT = `
local instance, expiresAt, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
for d = 4, #ARGV do
  local set, holders, device = KEYS[2 * (d - 3) - 1], KEYS[2 * (d - 3)], ARGV[d]
  if expiresAt > 0 then redis.call('HSET', holders, instance, expiresAt) else redis.call('HDEL', holders, instance) end
  local latest = 0
  local all = redis.call('HGETALL', holders)
  for i = 1, #all, 2 do
    local e = tonumber(all[i + 1])
    if not e or e <= now then redis.call('HDEL', holders, all[i]) elseif e > latest then latest = e end
  end
  if latest > 0 then
    redis.call('PEXPIREAT', holders, latest)
    redis.call('ZADD', set, latest, device)
  else
    redis.call('ZREM', set, device)
  end
end
return 0`;

type Entry = { productName: string; deviceName: string };

/**
 * Presence in Redis: per product, {@link PRESENCE_BUCKETS} sorted sets
 * (a device in the one its name hashes to), member the device name, score
 * the time its entry expires; when each device last connected or had a
 * connection closed, as the instance holding it saw it, in a hash per product
 * (`presenceSeen`). The instance a device is connected to
 * writes it on connect, refreshes it while connected and lets go of it on
 * disconnect (see {@link HOLD_SCRIPT}); readers count only unexpired entries.
 */
export class RedisPresence implements PresenceReader {
  /** This instance, as a holder of device entries. */
  readonly instanceId = randomUUID();
  /** The devices (`<product>/<device>`) this instance holds. */
  readonly #held = new Set<string>();

  constructor(
    private readonly redis: RedisClient,
    private readonly keys: RedisKeys,
    /** How long an entry outlives its instance's last refresh. */
    readonly ttlMs = PRESENCE_TTL_MS,
  ) {
    sendScriptsAlone(redis, ["eval"]);
  }

  async connected({ productName, deviceName }: Entry): Promise<void> {
    this.#held.add(`${productName}/${deviceName}`);
    const now = Date.now();
    await this.#hold(productName, [deviceName], now + this.ttlMs, now);
    await this.redis.hset(this.keys.presenceSeen(productName, "connected"), deviceName, now);
  }

  async disconnected({ productName, deviceName }: Entry): Promise<void> {
    if (!this.#held.delete(`${productName}/${deviceName}`)) return;
    const now = Date.now();
    await this.#hold(productName, [deviceName], 0, now);
    await this.redis.hset(this.keys.presenceSeen(productName, "disconnected"), deviceName, now);
  }

  async seen(productName: string, deviceNames: readonly string[]): Promise<Seen[]> {
    if (deviceNames.length === 0) return [];
    const [connected, disconnected] = await Promise.all(
      (["connected", "disconnected"] as const).map((what) => this.redis.hmget(this.keys.presenceSeen(productName, what), ...deviceNames)),
    );
    const at = (v: string | null | undefined) => (v == null ? null : Number(v));
    return deviceNames.map((_, i) => ({ connectedAt: at(connected?.[i]), disconnectedAt: at(disconnected?.[i]) }));
  }

  /** Forgets a deleted device's times. */
  async forget(productName: string, deviceName: string): Promise<void> {
    await Promise.all((["connected", "disconnected"] as const).map((what) => this.redis.hdel(this.keys.presenceSeen(productName, what), deviceName)));
  }

  /** Extends the entries of the devices connected here and drops every expired entry of their products. */
  async refresh(): Promise<void> {
    const now = Date.now();
    const byProduct = new Map<string, string[]>();
    for (const key of this.#held) {
      const [productName, deviceName] = key.split("/") as [string, string];
      const names = byProduct.get(productName) ?? [];
      names.push(deviceName);
      byProduct.set(productName, names);
    }
    for (const [productName, names] of byProduct) {
      for (const bucket of byBucket(names)) {
        for (let i = 0; i < bucket.length; i += CHUNK) {
          // Disconnected meanwhile: not written again.
          const still = bucket.slice(i, i + CHUNK).filter((d) => this.#held.has(`${productName}/${d}`));
          if (still.length > 0) await this.#hold(productName, still, now + this.ttlMs, now);
        }
      }
      await Promise.all(buckets().map((b) => this.redis.zremrangebyscore(this.keys.presenceBucket(productName, b), "-inf", now)));
    }
  }

  async online(productName: string, deviceNames: readonly string[]): Promise<boolean[]> {
    if (deviceNames.length === 0) return [];
    const now = Date.now();
    const online = new Map<string, boolean>();
    await Promise.all(
      byBucket(deviceNames).map(async (names) => {
        const scores = await this.redis.zmscore(this.keys.presenceOf(productName, names[0]!), ...names);
        names.forEach((d, i) => online.set(d, scores[i] != null && Number(scores[i]) > now));
      }),
    );
    return deviceNames.map((d) => online.get(d) ?? false);
  }

  async countOnline(productName: string): Promise<number> {
    const since = `(${Date.now()}`;
    const counts = await Promise.all(buckets().map((b) => this.redis.zcount(this.keys.presenceBucket(productName, b), since, "+inf")));
    return counts.reduce((a, b) => a + b, 0);
  }

  /** Devices of one bucket. */
  async #hold(productName: string, deviceNames: readonly string[], expiresAt: number, now: number): Promise<void> {
    const set = this.keys.presenceOf(productName, deviceNames[0]!);
    const keys = deviceNames.flatMap((d) => [set, this.keys.presenceHolders(productName, d)]);
    await this.redis.eval(HOLD_SCRIPT, keys.length, ...keys, this.instanceId, expiresAt, now, ...deviceNames);
  }
}

const buckets = () => Array.from({ length: PRESENCE_BUCKETS }, (_, b) => b);

/** Device names grouped by presence bucket. */
function byBucket(deviceNames: readonly string[]): string[][] {
  const groups = new Map<number, string[]>();
  for (const d of deviceNames) {
    const b = presenceBucketOf(d);
    const group = groups.get(b);
    if (group) group.push(d);
    else groups.set(b, [d]);
  }
  return [...groups.values()];
}

/** Where the broker is external the server cannot know who is connected. */
export const unknownPresence: PresenceReader = {
  online: () => Promise.resolve(null),
  countOnline: () => Promise.resolve(null),
  seen: () => Promise.resolve(null),
  forget: () => Promise.resolve(),
};

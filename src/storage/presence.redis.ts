import type { Redis } from "ioredis";
import type { PresenceReader } from "../ota/ports.js";
import type { RedisKeys } from "./progress.redis.js";

/** An entry lives this long unless its instance refreshes it; a dead instance's devices go offline after it. */
export const PRESENCE_TTL_MS = 60_000;
/** How often an instance refreshes the entries of the devices connected to it. */
export const PRESENCE_REFRESH_MS = 20_000;
const CHUNK = 1000;

// Removes the entry only if it is still the one this instance wrote: a device that has since
// connected to another instance (which wrote a later expiry) stays online.
const REMOVE_IF_OURS = `
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0`;

type Entry = { productName: string; deviceName: string };

/**
 * Presence in Redis: one sorted set per product, member the device name,
 * score the time its entry expires. The instance a device is connected to
 * writes it on connect, refreshes it while connected and removes it on
 * disconnect; readers count only unexpired entries.
 */
export class RedisPresence implements PresenceReader {
  /** The expiry this instance last wrote per device (`<product>/<device>`). */
  readonly #written = new Map<string, number>();

  constructor(
    private readonly redis: Redis,
    private readonly keys: RedisKeys,
  ) {}

  async connected({ productName, deviceName }: Entry): Promise<void> {
    const expiresAt = Date.now() + PRESENCE_TTL_MS;
    this.#written.set(`${productName}/${deviceName}`, expiresAt);
    await this.redis.zadd(this.keys.presence(productName), expiresAt, deviceName);
  }

  async disconnected({ productName, deviceName }: Entry): Promise<void> {
    const key = `${productName}/${deviceName}`;
    const written = this.#written.get(key);
    this.#written.delete(key);
    if (written === undefined) return;
    await this.redis.eval(REMOVE_IF_OURS, 1, this.keys.presence(productName), deviceName, written);
  }

  /** Extends the entries of the devices connected here and drops every expired entry of their products. */
  async refresh(): Promise<void> {
    const now = Date.now();
    const expiresAt = now + PRESENCE_TTL_MS;
    const keys = [...this.#written.keys()];
    const products = new Set<string>();
    for (let i = 0; i < keys.length; i += CHUNK) {
      const pipeline = this.redis.pipeline();
      for (const key of keys.slice(i, i + CHUNK)) {
        if (!this.#written.has(key)) continue; // disconnected meanwhile
        const [productName, deviceName] = key.split("/") as [string, string];
        products.add(productName);
        this.#written.set(key, expiresAt);
        pipeline.zadd(this.keys.presence(productName), expiresAt, deviceName);
      }
      await pipeline.exec();
    }
    const pipeline = this.redis.pipeline();
    for (const p of products) pipeline.zremrangebyscore(this.keys.presence(p), "-inf", now);
    await pipeline.exec();
  }

  async online(productName: string, deviceNames: readonly string[]): Promise<boolean[]> {
    if (deviceNames.length === 0) return [];
    const now = Date.now();
    const scores = await this.redis.zmscore(this.keys.presence(productName), ...deviceNames);
    return scores.map((s) => s !== null && Number(s) > now);
  }

  countOnline(productName: string): Promise<number> {
    return this.redis.zcount(this.keys.presence(productName), `(${Date.now()}`, "+inf");
  }
}

/** Where the broker is external the server cannot know who is connected. */
export const unknownPresence: PresenceReader = {
  online: () => Promise.resolve(null),
  countOnline: () => Promise.resolve(null),
};

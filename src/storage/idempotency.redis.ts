import { createHash } from "node:crypto";
import type { Redis } from "ioredis";
import type { IdempotencyEntry, IdempotencyStore } from "../ota/idempotency.js";

// Claim a key, or say what it holds, in one step (SET NX GET needs Redis 7; this works on any).
// KEYS: the key. ARGV: entry json, ttl seconds. Returns the held json, or false when claimed.
const CLAIM = `
local held = redis.call('GET', KEYS[1])
if held then return held end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
`;

/** Idempotency keys in Redis, under the configured prefix; the client's key is hashed, so any length or character is safe. */
export class RedisIdempotencyStore implements IdempotencyStore {
  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
  ) {}

  #key(scope: string, key: string): string {
    return `${this.prefix}idempotency/${scope}/${createHash("sha256").update(key).digest("base64url")}`;
  }

  async claim(scope: string, key: string, entry: IdempotencyEntry, ttlSeconds: number): Promise<IdempotencyEntry | null> {
    const held = (await this.redis.eval(CLAIM, 1, this.#key(scope, key), JSON.stringify(entry), ttlSeconds)) as string | null;
    return held ? (JSON.parse(held) as IdempotencyEntry) : null;
  }

  async settle(scope: string, key: string, entry: IdempotencyEntry, ttlSeconds: number): Promise<void> {
    await this.redis.set(this.#key(scope, key), JSON.stringify(entry), "EX", ttlSeconds);
  }

  async release(scope: string, key: string): Promise<void> {
    await this.redis.del(this.#key(scope, key));
  }
}

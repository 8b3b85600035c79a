import type { Redis } from "ioredis";
import type { IngestOutcome, MessageDeduplicator, ProgressStore } from "../ota/ports.js";
import { reportOrder } from "../protocol/object-id.js";
import type { ProgressRecord } from "../ota/progress.model.js";

/** Redis keys and channels; the progress key is the seed's own (`ota_progress/<product>/<device>`). */
export const keys = {
  progress: (p: string, d: string) => `ota_progress/${p}/${d}`,
  /** Sort key of the stored report (reportOrder), so an older report never replaces a newer one. */
  progressOrder: (p: string, d: string) => `ota_progress_order/${p}/${d}`,
  dedup: (p: string, d: string, messageId: string) => `msg_dedup/${p}/${d}/${messageId}`,
  /** One pub/sub channel per product; subscribers filter by device or tag in process. */
  progressChannel: (p: string) => `ota_progress_changed/${p}`,
};

// Dedup, store and publish in one round trip: the per-report Redis work of the
// seed, atomically. Reports of one device can be reordered (QoS 1 redelivery,
// instances sharing a subscription): the newest by sort key wins.
// Returns 1 applied, 0 duplicate, 2 older than the stored report.
const INGEST = `
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
local stored = redis.call('GET', KEYS[4])
if stored and stored > ARGV[3] then return 2 end
redis.call('SET', KEYS[4], ARGV[3])
redis.call('SET', KEYS[2], ARGV[2])
redis.call('PUBLISH', KEYS[3], ARGV[2])
return 1`;

const COMPARE_AND_SET = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  redis.call('PUBLISH', KEYS[2], ARGV[2])
  return 1
end
return 0`;

const INGEST_OUTCOMES: Record<number, IngestOutcome> = { 0: "duplicate", 1: "accepted", 2: "stale" };

type Scripts = {
  otaIngest(dedup: string, progress: string, channel: string, order: string, ttl: number, json: string, sortKey: string): Promise<number>;
  otaCompareAndSet(progress: string, channel: string, expected: string, next: string): Promise<number>;
};

/** The progress store and the messageId de-duplicator, both in Redis. */
export class RedisProgressStore implements ProgressStore, MessageDeduplicator {
  readonly #redis: Redis & Scripts;

  constructor(redis: Redis) {
    redis.defineCommand("otaIngest", { numberOfKeys: 4, lua: INGEST });
    redis.defineCommand("otaCompareAndSet", { numberOfKeys: 2, lua: COMPARE_AND_SET });
    this.#redis = redis as Redis & Scripts;
  }

  async ingest(record: ProgressRecord, ttlSeconds: number): Promise<IngestOutcome> {
    const { productName: p, deviceName: d } = record;
    const result = await this.#redis.otaIngest(
      keys.dedup(p, d, record.messageId),
      keys.progress(p, d),
      keys.progressChannel(p),
      keys.progressOrder(p, d),
      ttlSeconds,
      JSON.stringify(record),
      reportOrder(record.messageId, record.receivedAt),
    );
    return INGEST_OUTCOMES[result] ?? "duplicate";
  }

  async get(productName: string, deviceName: string): Promise<ProgressRecord | null> {
    return decode(await this.#redis.get(keys.progress(productName, deviceName)));
  }

  async getMany(productName: string, deviceNames: readonly string[]): Promise<(ProgressRecord | null)[]> {
    if (deviceNames.length === 0) return [];
    const values = await this.#redis.mget(deviceNames.map((d) => keys.progress(productName, d)));
    return values.map(decode);
  }

  async compareAndSet(expected: ProgressRecord, next: ProgressRecord): Promise<boolean> {
    const applied = await this.#redis.otaCompareAndSet(
      keys.progress(next.productName, next.deviceName),
      keys.progressChannel(next.productName),
      JSON.stringify(expected),
      JSON.stringify(next),
    );
    return applied === 1;
  }

  async delete(productName: string, deviceName: string): Promise<void> {
    await this.#redis.del(keys.progress(productName, deviceName), keys.progressOrder(productName, deviceName));
  }

  async claim(productName: string, deviceName: string, messageId: string, ttlSeconds: number): Promise<boolean> {
    return (await this.#redis.set(keys.dedup(productName, deviceName, messageId), "1", "EX", ttlSeconds, "NX")) === "OK";
  }

  async release(productName: string, deviceName: string, messageId: string): Promise<void> {
    await this.#redis.del(keys.dedup(productName, deviceName, messageId));
  }
}

function decode(value: string | null): ProgressRecord | null {
  if (value === null) return null;
  try {
    const parsed = JSON.parse(value) as ProgressRecord;
    // A record left by the seed server is the bare report: tolerate it rather than fail the query.
    return typeof parsed.state === "string" ? parsed : null;
  } catch {
    return null;
  }
}

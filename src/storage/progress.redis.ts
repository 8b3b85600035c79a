import type { Redis } from "ioredis";
import type { IngestOutcome, MessageDeduplicator, ProgressStore } from "../ota/ports.js";
import { reportOrder } from "../protocol/object-id.js";
import type { ProgressRecord } from "../ota/progress.model.js";
import type { CommandTarget } from "../protocol/topics.js";

/**
 * Redis keys and channels, under the configured prefix (`REDIS_PREFIX`, empty
 * by default so the progress key stays the seed's own:
 * `ota_progress/<product>/<device>`). Keys are prefixed here rather than by
 * ioredis' `keyPrefix`, which does not apply to pub/sub channels.
 */
export function redisKeys(prefix = "") {
  return {
    progress: (p: string, d: string) => `${prefix}ota_progress/${p}/${d}`,
    /** Sort key of the stored report (reportOrder), so an older report never replaces a newer one. */
    progressOrder: (p: string, d: string) => `${prefix}ota_progress_order/${p}/${d}`,
    dedup: (p: string, d: string, messageId: string) => `${prefix}msg_dedup/${p}/${d}/${messageId}`,
    /** One pub/sub channel per product; subscribers filter by device or tag in process. */
    progressChannel: (p: string) => `${prefix}ota_progress_changed/${p}`,
  };
}

export type RedisKeys = ReturnType<typeof redisKeys>;

// Dedup, store and publish: the per-report Redis work of the seed, atomically,
// for a batch of reports in one round trip. Reports of one device can be
// reordered (QoS 1 redelivery, instances sharing a subscription): the newest
// by sort key wins. Each product's applied reports go out as one message, a
// JSON array. Per report: 1 applied, 0 duplicate, 2 older than the stored one.
// KEYS: per report dedup, progress, order, channel. ARGV: per report ttl, json, sort key.
const INGEST_BATCH = `
local out, lists, channels = {}, {}, {}
for i = 0, #KEYS / 4 - 1 do
  local k, a = 4 * i, 3 * i
  if not redis.call('SET', KEYS[k + 1], '1', 'NX', 'EX', ARGV[a + 1]) then
    out[i + 1] = 0
  else
    local stored = redis.call('GET', KEYS[k + 3])
    if stored and stored > ARGV[a + 3] then
      out[i + 1] = 2
    else
      redis.call('SET', KEYS[k + 3], ARGV[a + 3])
      redis.call('SET', KEYS[k + 2], ARGV[a + 2])
      local channel = KEYS[k + 4]
      local list = lists[channel]
      if not list then
        list = {}
        lists[channel] = list
        channels[#channels + 1] = channel
      end
      list[#list + 1] = ARGV[a + 2]
      out[i + 1] = 1
    end
  end
end
for _, channel in ipairs(channels) do
  redis.call('PUBLISH', channel, '[' .. table.concat(lists[channel], ',') .. ']')
end
return out`;

/** Reports gathered in one turn of the event loop go to Redis together; more than this start a new batch. */
const MAX_BATCH = 500;

interface Pending {
  record: ProgressRecord;
  ttlSeconds: number;
  resolve: (outcome: IngestOutcome) => void;
  reject: (err: unknown) => void;
}

const COMPARE_AND_SET = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  redis.call('PUBLISH', KEYS[2], '[' .. ARGV[2] .. ']')
  return 1
end
return 0`;

const INGEST_OUTCOMES: Record<number, IngestOutcome> = { 0: "duplicate", 1: "accepted", 2: "stale" };

type Scripts = {
  otaIngestBatch(numKeys: number, ...keysThenArgs: (string | number)[]): Promise<number[]>;
  otaCompareAndSet(progress: string, channel: string, expected: string, next: string): Promise<number>;
};

/** The progress store and the messageId de-duplicator, both in Redis. */
export class RedisProgressStore implements ProgressStore, MessageDeduplicator {
  readonly #redis: Redis & Scripts;
  #batch: Pending[] = [];

  constructor(
    redis: Redis,
    private readonly keys: RedisKeys = redisKeys(),
  ) {
    redis.defineCommand("otaIngestBatch", { lua: INGEST_BATCH });
    redis.defineCommand("otaCompareAndSet", { numberOfKeys: 2, lua: COMPARE_AND_SET });
    this.#redis = redis as Redis & Scripts;
  }

  /** Queues the report for this turn's batch (see INGEST_BATCH); resolves with its outcome. */
  ingest(record: ProgressRecord, ttlSeconds: number): Promise<IngestOutcome> {
    return new Promise((resolve, reject) => {
      this.#batch.push({ record, ttlSeconds, resolve, reject });
      if (this.#batch.length === 1) setImmediate(() => this.#flush());
      else if (this.#batch.length >= MAX_BATCH) this.#flush();
    });
  }

  #flush(): void {
    const batch = this.#batch;
    if (batch.length === 0) return;
    this.#batch = [];
    const keyList: string[] = [];
    const args: (string | number)[] = [];
    for (const { record: r, ttlSeconds } of batch) {
      const { productName: p, deviceName: d } = r;
      keyList.push(this.keys.dedup(p, d, r.messageId), this.keys.progress(p, d), this.keys.progressOrder(p, d), this.keys.progressChannel(p));
      args.push(ttlSeconds, JSON.stringify(r), reportOrder(r.messageId, r.receivedAt));
    }
    this.#redis.otaIngestBatch(keyList.length, ...keyList, ...args).then(
      (results) => batch.forEach((b, i) => b.resolve(INGEST_OUTCOMES[results[i] as number] ?? "duplicate")),
      (err: unknown) => batch.forEach((b) => b.reject(err)),
    );
  }

  async get(productName: string, deviceName: string): Promise<ProgressRecord | null> {
    return decode(await this.#redis.get(this.keys.progress(productName, deviceName)));
  }

  async getMany(productName: string, deviceNames: readonly string[]): Promise<(ProgressRecord | null)[]> {
    if (deviceNames.length === 0) return [];
    const values = await this.#redis.mget(deviceNames.map((d) => this.keys.progress(productName, d)));
    return values.map(decode);
  }

  async compareAndSet(expected: ProgressRecord, next: ProgressRecord): Promise<boolean> {
    const applied = await this.#redis.otaCompareAndSet(
      this.keys.progress(next.productName, next.deviceName),
      this.keys.progressChannel(next.productName),
      JSON.stringify(expected),
      JSON.stringify(next),
    );
    return applied === 1;
  }

  async delete(productName: string, deviceName: string): Promise<void> {
    await this.#redis.del(this.keys.progress(productName, deviceName), this.keys.progressOrder(productName, deviceName));
  }

  async startAttempt(_target: CommandTarget, _at: number): Promise<void> {
    // TODO(ordering): record the attempt boundary
  }

  async claim(productName: string, deviceName: string, messageId: string, ttlSeconds: number): Promise<boolean> {
    return (await this.#redis.set(this.keys.dedup(productName, deviceName, messageId), "1", "EX", ttlSeconds, "NX")) === "OK";
  }

  async release(productName: string, deviceName: string, messageId: string): Promise<void> {
    await this.#redis.del(this.keys.dedup(productName, deviceName, messageId));
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

import calculateSlot from "cluster-key-slot";
import type { IngestContext, IngestOutcome, MessageDeduplicator, ProgressStore } from "../ota/ports.js";
import { orderReport, type OrderDecision, type ProgressRecord } from "../ota/progress.model.js";
import type { CommandTarget } from "../protocol/topics.js";
import { bySlot, mgetAny, sendScriptsAlone, type RedisClient } from "./redis.slots.js";

/**
 * Redis keys and channels, under the configured prefix (`REDIS_PREFIX`).
 * Keys are prefixed here rather than by ioredis' `keyPrefix`, which does not
 * apply to pub/sub channels.
 *
 * Ready for Redis Cluster: the keys one operation touches together share a
 * hash tag, the part in braces that alone decides the slot. A device's keys
 * carry `{<product>/<device>}` (its progress, attempt and de-duplication keys
 * go to Redis in one script); a product's tag attempts `{<product>}`; a
 * presence bucket `{<product>#<bucket>}`. Names and the prefix hold no braces
 * (names.ts, config.ts), so no other brace can end up in a key. The layout
 * before this one (no tags) is renamed at start by keys.migration.ts.
 */
export function redisKeys(prefix = "") {
  const device = (p: string, d: string) => `{${p}/${d}}`;
  return {
    prefix,
    progress: (p: string, d: string) => `${prefix}ota_progress/${device(p, d)}`,
    /** When the latest `$ota_upgrade` was sent to the device (server time, ms): the start of its current attempt. */
    deviceAttempt: (p: string, d: string) => `${prefix}ota_attempt/${device(p, d)}`,
    /** The same for a tag of a product: every device holding the tag starts a new attempt. */
    tagAttempt: (p: string, tag: string) => `${prefix}ota_attempt_tag/{${p}}/${tag}`,
    dedup: (p: string, d: string, messageId: string) => `${prefix}msg_dedup/${device(p, d)}/${messageId}`,
    /** One pub/sub channel per product; subscribers filter by device or tag in process. */
    progressChannel: (p: string) => `${prefix}ota_progress_changed/${p}`,
    /** Every rollout change, all products: `{id, productName}`. */
    rolloutChannel: `${prefix}rollouts_changed`,
    /**
     * Devices connected to an embedded broker: per product, {@link PRESENCE_BUCKETS} sorted sets scored by when the
     * entry expires (ms), a device in the bucket its name hashes to, so that a large product spreads over a cluster.
     */
    presenceBucket: (p: string, bucket: number) => `${prefix}presence/{${p}#${bucket}}`,
    /** The presence set a device is in. */
    presenceOf: (p: string, d: string) => `${prefix}presence/{${p}#${presenceBucketOf(d)}}`,
    /** Which instances hold a device's connection (presence.redis.ts): in its bucket's slot. */
    presenceHolders: (p: string, d: string) => `${prefix}presence/{${p}#${presenceBucketOf(d)}}/${d}`,
    /** When each device of a product last connected, or had a connection closed: a hash per product. */
    presenceSeen: (p: string, what: "connected" | "disconnected") => `${prefix}presence/${p}#${what}`,
  };
}

/** Presence sets per product; fixed, since a device's bucket is part of its keys' names. */
export const PRESENCE_BUCKETS = 16;

/** The presence bucket of a device (its name's CRC16, as Redis Cluster hashes keys). */
export function presenceBucketOf(deviceName: string): number {
  return calculateSlot(deviceName) % PRESENCE_BUCKETS;
}

export type RedisKeys = ReturnType<typeof redisKeys>;

/**
 * How long an attempt's start is kept: longer than a command can wait for an
 * offline device (OFFLINE_COMMAND_TTL_SECONDS, 7 days by default), so the
 * device's first report of the attempt still finds it.
 */
const ATTEMPT_TTL_SECONDS = 30 * 24 * 3600;

// The write half of a batch of progress reports, atomically, in one round
// trip. The decisions were made in process (orderReport) against the stored
// records read just before; each applies only if its device's stored record is
// still the one it was decided against (another instance may have written in
// between: then it is decided again). The messageId is remembered in the same
// step as the effect. Each product's applied reports go out as one message,
// a JSON array. In a Redis Cluster, one run per hash slot (bySlot).
// KEYS: per report dedup, progress. ARGV: per report ttl, expected stored
// record ('' for none), 1 apply / 0 drop, json, channel (a channel is not a
// key: it names no slot).
// Per report: 0 duplicate, 1 applied, 2 dropped as behind, 3 conflict.
const WRITE_BATCH = `
local out, lists, channels = {}, {}, {}
for i = 0, #KEYS / 2 - 1 do
  local k, a = 2 * i, 5 * i
  if redis.call('EXISTS', KEYS[k + 1]) == 1 then
    out[i + 1] = 0
  elseif (redis.call('GET', KEYS[k + 2]) or '') ~= ARGV[a + 2] then
    out[i + 1] = 3
  else
    redis.call('SET', KEYS[k + 1], '1', 'EX', ARGV[a + 1])
    if ARGV[a + 3] == '1' then
      redis.call('SET', KEYS[k + 2], ARGV[a + 4])
      local channel = ARGV[a + 5]
      local list = lists[channel]
      if not list then
        list = {}
        lists[channel] = list
        channels[#channels + 1] = channel
      end
      list[#list + 1] = ARGV[a + 4]
      out[i + 1] = 1
    else
      out[i + 1] = 2
    end
  end
end
for _, channel in ipairs(channels) do
  redis.call('PUBLISH', channel, '[' .. table.concat(lists[channel], ',') .. ']')
end
return out`;

/** Reports gathered while the previous batch was in flight go to Redis together, at most this many at once. */
const MAX_BATCH = 500;
/** A report decided against a record another instance replaced meanwhile is decided again, at most this often. */
const MAX_CONFLICTS = 10;

interface Pending {
  record: ProgressRecord;
  context: IngestContext;
  json: string;
  conflicts: number;
  resolve: (outcome: IngestOutcome) => void;
  reject: (err: unknown) => void;
}

/** One report's write: its keys (dedup, progress) and the stored record it was decided against. */
interface Write {
  pending: Pending;
  decision: OrderDecision;
  view: ProgressRecord | null;
  keys: [string, string];
  expected: string;
}

/** What a batch knows of one device: its stored record as the batch's earlier reports leave it. */
interface DeviceView {
  stored: string;
  record: ProgressRecord | null;
  commandAt: number | null;
  tagsAsked: boolean;
}

const COMPARE_AND_SET = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  redis.call('PUBLISH', ARGV[3], '[' .. ARGV[2] .. ']')
  return 1
end
return 0`;

type Scripts = {
  otaWriteBatch(numKeys: number, ...keysThenArgs: (string | number)[]): Promise<number[]>;
  otaCompareAndSet(progress: string, expected: string, next: string, channel: string): Promise<number>;
};

/** The progress store and the messageId de-duplicator, both in Redis. */
export class RedisProgressStore implements ProgressStore, MessageDeduplicator {
  readonly #redis: RedisClient & Scripts;
  #queue: Pending[] = [];
  #flushing = false;

  constructor(
    redis: RedisClient,
    private readonly keys: RedisKeys = redisKeys(),
  ) {
    redis.defineCommand("otaWriteBatch", { lua: WRITE_BATCH });
    redis.defineCommand("otaCompareAndSet", { numberOfKeys: 1, lua: COMPARE_AND_SET });
    sendScriptsAlone(redis, ["otaWriteBatch"]);
    this.#redis = redis as RedisClient & Scripts;
  }

  /**
   * Queues the report for the next batch; resolves with its outcome. One batch
   * is in flight at a time, so a batch decides against what the previous one
   * wrote, and reports arriving meanwhile gather into the next one.
   */
  ingest(record: ProgressRecord, context: IngestContext): Promise<IngestOutcome> {
    return new Promise((resolve, reject) => {
      this.#queue.push({ record, context, json: JSON.stringify(record), conflicts: 0, resolve, reject });
      if (this.#queue.length === 1 && !this.#flushing) setImmediate(() => void this.#flush());
    });
  }

  async #flush(): Promise<void> {
    if (this.#flushing) return;
    this.#flushing = true;
    try {
      while (this.#queue.length > 0) {
        const batch = this.#queue.splice(0, MAX_BATCH);
        try {
          const conflicted = await this.#write(batch);
          // Decided against a record that changed meanwhile: again, ahead of what came later, in order.
          this.#queue.unshift(...conflicted);
        } catch (err) {
          for (const b of batch) b.reject(err);
        }
      }
    } finally {
      this.#flushing = false;
    }
  }

  /** Reads, decides (orderReport), writes; returns the reports to decide again. */
  async #write(batch: Pending[]): Promise<Pending[]> {
    const devices = new Map<string, DeviceView>();
    const deviceKey = (r: ProgressRecord) => `${r.productName}/${r.deviceName}`;
    for (const { record: r } of batch) devices.set(deviceKey(r), { stored: "", record: null, commandAt: null, tagsAsked: false });
    const names = [...devices.keys()].map((k) => k.split("/") as [string, string]);
    const read = await mgetAny(
      this.#redis,
      [
      ...names.flatMap(([p, d]) => [this.keys.progress(p, d), this.keys.deviceAttempt(p, d)]),
      ...batch.map(({ record: r }) => this.keys.dedup(r.productName, r.deviceName, r.messageId)),
      ],
    );
    names.forEach(([p, d], i) => {
      const stored = read[2 * i] ?? null;
      Object.assign(devices.get(`${p}/${d}`)!, { stored: stored ?? "", record: decode(stored), commandAt: toTime(read[2 * i + 1] ?? null) });
    });

    const seen = new Set<string>();
    const writes: Write[] = [];
    for (const [i, pending] of batch.entries()) {
      const { record: r, context } = pending;
      const dedupKey = this.keys.dedup(r.productName, r.deviceName, r.messageId);
      if (read[2 * names.length + i] !== null || seen.has(dedupKey)) {
        pending.resolve({ outcome: "duplicate" });
        continue;
      }
      const view = devices.get(deviceKey(r))!;
      let decision = orderReport(r, view.record, view.commandAt);
      if (!decision.apply && !view.tagsAsked) {
        // The rare path: a command to one of the device's tags may have started a new attempt.
        try {
          view.commandAt = await this.#latestCommand(r.productName, r.deviceName, view.commandAt, context);
        } catch (err) {
          // Undecidable now (the registry is down): this report fails alone, the batch goes on.
          pending.reject(err);
          continue;
        }
        view.tagsAsked = true;
        decision = orderReport(r, view.record, view.commandAt);
      }
      seen.add(dedupKey);
      const progressKey = this.keys.progress(r.productName, r.deviceName);
      writes.push({ pending, decision, view: view.record, keys: [dedupKey, progressKey], expected: view.stored });
      if (decision.apply) Object.assign(view, { stored: pending.json, record: r });
    }
    if (writes.length === 0) return [];

    const results = new Map<Write, number>();
    await Promise.all(
      bySlot(this.#redis, writes, (w) => w.keys[1]).map(async (group) => {
        const keys = group.flatMap((w) => w.keys);
        const args = group.flatMap(({ pending, decision, expected }) => [
          pending.context.dedupTtlSeconds,
          expected,
          decision.apply ? 1 : 0,
          pending.json,
          this.keys.progressChannel(pending.record.productName),
        ]);
        const out = await this.#redis.otaWriteBatch(keys.length, ...keys, ...args);
        group.forEach((w, i) => results.set(w, out[i] ?? 3));
      }),
    );
    const conflicted: Pending[] = [];
    for (const write of writes) {
      const { pending, decision, view } = write;
      switch (results.get(write) ?? 3) {
        case 0:
          pending.resolve({ outcome: "duplicate" });
          break;
        case 1:
          pending.resolve({ outcome: "accepted" });
          break;
        case 2: // only what was decided as dropped
          pending.resolve({ outcome: "stale", why: decision.apply ? "behind_in_attempt" : decision.why, stored: view! });
          break;
        default:
          if (++pending.conflicts > MAX_CONFLICTS) pending.reject(new Error("progress record kept changing under the report"));
          else conflicted.push(pending);
      }
    }
    return conflicted;
  }

  /** The latest `$ota_upgrade` sent to the device or any of its tags. */
  async #latestCommand(productName: string, deviceName: string, deviceCommandAt: number | null, context: IngestContext) {
    const tags = await context.tagsOf(productName, deviceName);
    if (tags.length === 0) return deviceCommandAt;
    const times = (await this.#redis.mget(tags.map((t) => this.keys.tagAttempt(productName, t)))).map(toTime);
    return [deviceCommandAt, ...times].reduce<number | null>((a, b) => (b !== null && (a === null || b > a) ? b : a), null);
  }

  async get(productName: string, deviceName: string): Promise<ProgressRecord | null> {
    return decode(await this.#redis.get(this.keys.progress(productName, deviceName)));
  }

  async getMany(productName: string, deviceNames: readonly string[]): Promise<(ProgressRecord | null)[]> {
    if (deviceNames.length === 0) return [];
    const values = await mgetAny(
      this.#redis,
      deviceNames.map((d) => this.keys.progress(productName, d)),
    );
    return values.map(decode);
  }

  async compareAndSet(expected: ProgressRecord, next: ProgressRecord): Promise<boolean> {
    const applied = await this.#redis.otaCompareAndSet(
      this.keys.progress(next.productName, next.deviceName),
      JSON.stringify(expected),
      JSON.stringify(next),
      this.keys.progressChannel(next.productName),
    );
    return applied === 1;
  }

  async delete(productName: string, deviceName: string): Promise<void> {
    await this.#redis.del(this.keys.progress(productName, deviceName), this.keys.deviceAttempt(productName, deviceName));
  }

  async startAttempt(target: CommandTarget, at: number): Promise<void> {
    const key =
      target.deviceName !== undefined
        ? this.keys.deviceAttempt(target.productName, target.deviceName)
        : this.keys.tagAttempt(target.productName, target.tag as string);
    await this.#redis.set(key, String(at), "EX", ATTEMPT_TTL_SECONDS);
  }

  async seen(productName: string, deviceName: string, messageId: string): Promise<boolean> {
    return (await this.#redis.exists(this.keys.dedup(productName, deviceName, messageId))) === 1;
  }

  async remember(productName: string, deviceName: string, messageId: string, ttlSeconds: number): Promise<void> {
    await this.#redis.set(this.keys.dedup(productName, deviceName, messageId), "1", "EX", ttlSeconds);
  }
}

function toTime(value: string | null): number | null {
  const n = value === null ? NaN : Number(value);
  return Number.isFinite(n) ? n : null;
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

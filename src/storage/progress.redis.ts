import type { Redis } from "ioredis";
import type { IngestContext, IngestOutcome, MessageDeduplicator, ProgressStore } from "../ota/ports.js";
import { orderReport, type OrderDecision, type ProgressRecord } from "../ota/progress.model.js";
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
    /** When the latest `$ota_upgrade` was sent to the device (server time, ms): the start of its current attempt. */
    deviceAttempt: (p: string, d: string) => `${prefix}ota_attempt/${p}/${d}`,
    /** The same for a tag of a product: every device holding the tag starts a new attempt. */
    tagAttempt: (p: string, tag: string) => `${prefix}ota_attempt_tag/${p}/${tag}`,
    dedup: (p: string, d: string, messageId: string) => `${prefix}msg_dedup/${p}/${d}/${messageId}`,
    /** One pub/sub channel per product; subscribers filter by device or tag in process. */
    progressChannel: (p: string) => `${prefix}ota_progress_changed/${p}`,
    /** Every rollout change, all products: `{id, productName}`. */
    rolloutChannel: `${prefix}rollouts_changed`,
    /** Devices connected to an embedded broker: a sorted set per product, scored by when the entry expires (ms). */
    presence: (p: string) => `${prefix}presence/${p}`,
  };
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
// a JSON array.
// KEYS: per report dedup, progress, channel. ARGV: per report ttl, expected
// stored record ('' for none), 1 apply / 0 drop, json.
// Per report: 0 duplicate, 1 applied, 2 dropped as behind, 3 conflict.
const WRITE_BATCH = `
local out, lists, channels = {}, {}, {}
for i = 0, #KEYS / 3 - 1 do
  local k, a = 3 * i, 4 * i
  if redis.call('EXISTS', KEYS[k + 1]) == 1 then
    out[i + 1] = 0
  elseif (redis.call('GET', KEYS[k + 2]) or '') ~= ARGV[a + 2] then
    out[i + 1] = 3
  else
    redis.call('SET', KEYS[k + 1], '1', 'EX', ARGV[a + 1])
    if ARGV[a + 3] == '1' then
      redis.call('SET', KEYS[k + 2], ARGV[a + 4])
      local channel = KEYS[k + 3]
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
  redis.call('PUBLISH', KEYS[2], '[' .. ARGV[2] .. ']')
  return 1
end
return 0`;

type Scripts = {
  otaWriteBatch(numKeys: number, ...keysThenArgs: (string | number)[]): Promise<number[]>;
  otaCompareAndSet(progress: string, channel: string, expected: string, next: string): Promise<number>;
};

/** The progress store and the messageId de-duplicator, both in Redis. */
export class RedisProgressStore implements ProgressStore, MessageDeduplicator {
  readonly #redis: Redis & Scripts;
  #queue: Pending[] = [];
  #flushing = false;

  constructor(
    redis: Redis,
    private readonly keys: RedisKeys = redisKeys(),
  ) {
    redis.defineCommand("otaWriteBatch", { lua: WRITE_BATCH });
    redis.defineCommand("otaCompareAndSet", { numberOfKeys: 2, lua: COMPARE_AND_SET });
    this.#redis = redis as Redis & Scripts;
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
    const read = await this.#redis.mget(
      ...names.flatMap(([p, d]) => [this.keys.progress(p, d), this.keys.deviceAttempt(p, d)]),
      ...batch.map(({ record: r }) => this.keys.dedup(r.productName, r.deviceName, r.messageId)),
    );
    names.forEach(([p, d], i) => {
      const stored = read[2 * i] ?? null;
      Object.assign(devices.get(`${p}/${d}`)!, { stored: stored ?? "", record: decode(stored), commandAt: toTime(read[2 * i + 1] ?? null) });
    });

    const seen = new Set<string>();
    const writes: { pending: Pending; decision: OrderDecision; view: ProgressRecord | null }[] = [];
    const keyList: string[] = [];
    const args: (string | number)[] = [];
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
      writes.push({ pending, decision, view: view.record });
      keyList.push(dedupKey, this.keys.progress(r.productName, r.deviceName), this.keys.progressChannel(r.productName));
      args.push(context.dedupTtlSeconds, view.stored, decision.apply ? 1 : 0, pending.json);
      if (decision.apply) Object.assign(view, { stored: pending.json, record: r });
    }
    if (writes.length === 0) return [];

    const results = await this.#redis.otaWriteBatch(keyList.length, ...keyList, ...args);
    const conflicted: Pending[] = [];
    writes.forEach(({ pending, decision, view }, i) => {
      switch (results[i]) {
        case 0:
          return pending.resolve({ outcome: "duplicate" });
        case 1:
          return pending.resolve({ outcome: "accepted" });
        case 2: // only what was decided as dropped
          return pending.resolve({ outcome: "stale", why: decision.apply ? "behind_in_attempt" : decision.why, stored: view! });
        default:
          if (++pending.conflicts > MAX_CONFLICTS) pending.reject(new Error("progress record kept changing under the report"));
          else conflicted.push(pending);
      }
    });
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

import calculateSlot from "cluster-key-slot";
import { Cluster, Redis } from "ioredis";
import { beforeAll, describe, expect, it } from "vitest";
import { DeviceSessions } from "../../src/broker/sessions.js";
import type { IngestContext } from "../../src/ota/ports.js";
import { recordFromReport, type ProgressRecord } from "../../src/ota/progress.model.js";
import { migrateKeys } from "../../src/storage/keys.migration.js";
import { RedisPresence } from "../../src/storage/presence.redis.js";
import { RedisProgressStore, redisKeys } from "../../src/storage/progress.redis.js";
import { OwnRedisCluster } from "../helpers/processes.js";
import { REDIS_URL, uniq } from "../helpers/services.js";
import { onTeardown } from "../helpers/teardown.js";
import { eventually } from "../helpers/wait.js";

// The keys are ready for Redis Cluster (issue 9 §4): what touches several keys at once stays within one hash slot,
// and the stores run on a real cluster of three masters. The server itself is not wired to a cluster yet.

const report = (productName: string, deviceName: string, progress: number, messageId: string, version = "2.0"): ProgressRecord =>
  recordFromReport({ productName, deviceName }, { version, type: "firmware", progress, desc: "", raw: {} } as never, messageId, Date.now());

describe("the Redis stores on a Redis Cluster", () => {
  let cluster: OwnRedisCluster;
  let redis: Cluster;
  const keys = redisKeys(`${uniq("rc")}:`);
  // Enough devices that their keys fall on every node.
  const devices = Array.from({ length: 60 }, (_, i) => `dev${i}`);
  const context = (tags: Record<string, string[]> = {}): IngestContext => ({
    dedupTtlSeconds: 60,
    tagsOf: (_p, d) => Promise.resolve(tags[d] ?? []),
  });

  beforeAll(async () => {
    cluster = await OwnRedisCluster.start();
    redis = new Cluster(cluster.nodes, { enableAutoPipelining: true });
    onTeardown(() => redis.quit());
    await redis.ping();
  }, 60_000);

  it("spreads the devices' keys over every node", () => {
    const per = Math.ceil(16384 / 3);
    const nodes = new Set(devices.map((d) => Math.floor(calculateSlot(keys.progress("prod", d)) / per)));
    expect(nodes.size).toBe(3);
  });

  it("ingests one batch of reports of devices on every node, each written with its messageId in one script", async () => {
    const store = new RedisProgressStore(redis, keys);
    const product = uniq("ingest");
    const sub = new Cluster(cluster.nodes);
    onTeardown(() => sub.quit());
    const published: ProgressRecord[] = [];
    sub.on("message", (_channel: string, message: string) => published.push(...(JSON.parse(message) as ProgressRecord[])));
    await sub.subscribe(keys.progressChannel(product));

    const first = await Promise.all(devices.map((d) => store.ingest(report(product, d, 50, `m-${d}-1`), context())));
    expect(first.map((o) => o.outcome)).toEqual(devices.map(() => "accepted"));
    expect((await store.getMany(product, devices)).map((r) => r?.progress)).toEqual(devices.map(() => 50));
    await eventually(() => expect(published.length).toBe(devices.length));

    // The same messageIds again: remembered beside each record.
    const again = await Promise.all(devices.map((d) => store.ingest(report(product, d, 60, `m-${d}-1`), context())));
    expect(new Set(again.map((o) => o.outcome))).toEqual(new Set(["duplicate"]));
    // Behind the stored record within the attempt.
    const behind = await store.ingest(report(product, "dev0", 10, "m-dev0-2"), context());
    expect(behind.outcome).toBe("stale");
  });

  it("reads a device's attempt and its tags' attempts on a cluster (a new attempt takes a report behind the last)", async () => {
    const store = new RedisProgressStore(redis, keys);
    const product = uniq("attempts");
    for (const d of ["dev1", "dev2", "dev3"]) expect((await store.ingest(report(product, d, 50, `m-${d}-1`), context())).outcome).toBe("accepted");
    await store.startAttempt({ productName: product, deviceName: "dev1" }, Date.now() + 1);
    await store.startAttempt({ productName: product, tag: "north" }, Date.now() + 1);
    await new Promise((r) => setTimeout(r, 5));
    const [byDevice, byTag, neither] = await Promise.all([
      store.ingest(report(product, "dev1", 5, "m-dev1-2"), context()),
      store.ingest(report(product, "dev2", 5, "m-dev2-2"), context({ dev2: ["south", "north"] })),
      store.ingest(report(product, "dev3", 5, "m-dev3-2"), context({ dev3: ["south"] })),
    ]);
    expect([byDevice.outcome, byTag.outcome, neither.outcome]).toEqual(["accepted", "accepted", "stale"]);
  });

  it("compares and sets, reads one and deletes a device's keys", async () => {
    const store = new RedisProgressStore(redis, keys);
    const product = uniq("cas");
    await store.ingest(report(product, "dev4", 100, "m-dev4-1"), context());
    const stored = (await store.get(product, "dev4"))!;
    expect(stored.state).toBe("DOWNLOADED");
    const next: ProgressRecord = { ...stored, state: "SUCCEEDED", failureReason: null };
    expect(await store.compareAndSet(stored, next)).toBe(true);
    expect(await store.compareAndSet(stored, next)).toBe(false);
    expect((await store.get(product, "dev4"))?.state).toBe("SUCCEEDED");
    await store.delete(product, "dev4");
    expect(await store.get(product, "dev4")).toBeNull();
  });

  it("keeps presence in buckets spread over the nodes", async () => {
    const presence = new RedisPresence(redis, keys);
    const product = uniq("presence");
    const online = devices.slice(0, 40);
    for (const d of online) await presence.connected({ productName: product, deviceName: d });
    await presence.refresh();
    expect(await presence.countOnline(product)).toBe(40);
    expect(await presence.online(product, devices)).toEqual(devices.map((d) => online.includes(d)));
    await presence.disconnected({ productName: product, deviceName: "dev0" });
    expect(await presence.countOnline(product)).toBe(39);
    expect((await presence.seen(product, ["dev0"]))[0]?.disconnectedAt).toBeGreaterThan(0);
    const sets = new Set(online.map((d) => keys.presenceOf(product, d)));
    expect(sets.size).toBeGreaterThan(8);
  });

  it("records a device's broker sessions and live marks in one transaction", async () => {
    const sessions = new DeviceSessions(redis, 2, { brokerId: "b1", ttlMs: 10_000 });
    const id = { productName: uniq("sessions"), deviceName: "dev5" };
    expect(await sessions.connected(id, "prod/dev5/a", 1)).toEqual([]);
    expect(await sessions.connected(id, "prod/dev5/b", 2)).toEqual([]);
    expect(await sessions.connected(id, "prod/dev5/c", 3)).toEqual(["prod/dev5/a"]);
    await sessions.released(id, "prod/dev5/c");
    expect(await sessions.list(id)).toEqual(["prod/dev5/a", "prod/dev5/b", "prod/dev5/c"]);
  });

  it("has no keys of the layout before hash tags to move: the migration only marks the deployment", async () => {
    const prefix = `${uniq("mig")}:`;
    expect(await migrateKeys(redis, prefix)).toEqual({ renamed: 0, deleted: 0 });
    expect(await redis.get(`${prefix}keys_layout`)).toBe("2");
  });
});

describe("moving a deployment's keys to the hash-tagged layout", () => {
  const redis = new Redis(REDIS_URL);
  onTeardown(() => redis.quit());

  it("renames every key of the old layout once, keeping values and expiries, and keeps a tagged key that exists already", async () => {
    const prefix = `${uniq("mig")}:`;
    const keys = redisKeys(prefix);
    const old = {
      progress: `${prefix}ota_progress/p/d1`,
      attempt: `${prefix}ota_attempt/p/d1`,
      tagAttempt: `${prefix}ota_attempt_tag/p/north`,
      dedup: `${prefix}msg_dedup/p/d1/m-1`,
      sessions: `${prefix}device-sessions:p/d1`,
      live: `${prefix}device-live:p/d1`,
      newer: `${prefix}ota_progress/p/d2`,
      presenceSet: `${prefix}presence/p`,
      presenceHolders: `${prefix}presence/p/d1`,
    };
    await redis
      .multi()
      .set(old.progress, "record-1")
      .set(old.attempt, "123", "EX", 1000)
      .set(old.tagAttempt, "456", "EX", 1000)
      .set(old.dedup, "1", "EX", 500)
      .zadd(old.sessions, 1, "p/d1")
      .hset(old.live, "p/d1", "9 b")
      .set(old.newer, "older-record")
      .set(keys.progress("p", "d2"), "newer-record")
      .zadd(old.presenceSet, Date.now() + 60_000, "d1")
      .hset(old.presenceHolders, "instance", "1")
      .hset(keys.presenceSeen("p", "connected"), "d1", "7")
      .set(`${prefix}ota_progress/p/d3/extra`, "not ours")
      .exec();

    expect(await migrateKeys(redis, prefix)).toEqual({ renamed: 6, deleted: 3 });
    expect(await redis.get(keys.progress("p", "d1"))).toBe("record-1");
    expect(await redis.get(keys.deviceAttempt("p", "d1"))).toBe("123");
    expect(await redis.ttl(keys.deviceAttempt("p", "d1"))).toBeGreaterThan(900);
    expect(await redis.get(keys.tagAttempt("p", "north"))).toBe("456");
    expect(await redis.ttl(keys.dedup("p", "d1", "m-1"))).toBeGreaterThan(400);
    expect(await redis.zrange(`${prefix}device-sessions:{p/d1}`, 0, -1)).toEqual(["p/d1"]);
    expect(await redis.hget(`${prefix}device-live:{p/d1}`, "p/d1")).toBe("9 b");
    expect(await redis.get(keys.progress("p", "d2"))).toBe("newer-record");
    // Presence goes (the instances write it again); the times of connections stay; a key not of ours stays.
    expect(await redis.exists(old.presenceSet, old.presenceHolders, old.progress, old.newer, old.dedup)).toBe(0);
    expect(await redis.hget(keys.presenceSeen("p", "connected"), "d1")).toBe("7");
    expect(await redis.get(`${prefix}ota_progress/p/d3/extra`)).toBe("not ours");

    // Once marked, a start reads one key: an old-layout key written now is not looked for.
    await redis.set(old.progress, "late");
    expect(await migrateKeys(redis, prefix)).toEqual({ renamed: 0, deleted: 0 });
    expect(await redis.get(old.progress)).toBe("late");
  });
});

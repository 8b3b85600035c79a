import type { ChainableCommander } from "ioredis";
import type { RedisClient } from "../storage/redis.slots.js";
import type { DeviceIdentity } from "../protocol/acl.js";

/** A device's persistent client ids, scored by last CONNECT time (ms); under the broker's key prefix. */
export const deviceSessionsKey = (id: DeviceIdentity) => `device-sessions:{${id.productName}/${id.deviceName}}`;

/** Which instance has each of a device's persistent client ids connected: client id -> `<expiresAt ms> <broker id>`. */
export const deviceLiveKey = (id: DeviceIdentity) => `device-live:{${id.productName}/${id.deviceName}}`;

/** Deletes a client id's live mark only if this broker wrote it: one that took the session over since keeps its own. */
const RELEASE_SCRIPT = `
local mark = redis.call('HGET', KEYS[1], ARGV[1])
if mark and string.sub(mark, -#ARGV[2] - 1) == ' ' .. ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0`;

/** A broker instance marking the sessions it has connected: its id, and how long a mark outlives its last refresh. */
export interface SessionHolder {
  readonly brokerId: string;
  readonly ttlMs: number;
}

/**
 * Which persistent sessions a device keeps: the `max` most recently connected
 * client ids. A small sorted set per device, so a login costs O(log n) and
 * never reads the whole `clients` set.
 *
 * And which of them are connected, on which instance ("live marks"): an
 * instance must not edit the queue of a session another one is delivering
 * (embedded.broker.ts, withdraw). A mark is written at CONNECT before the
 * session's queue is read, on the same connection, refreshed while the
 * connection lasts and deleted at its close; one of an instance that died
 * expires with its time.
 */
export class DeviceSessions {
  constructor(
    private readonly db: RedisClient,
    private readonly max: number,
    private readonly holder: SessionHolder,
  ) {}

  /**
   * Records that `clientId` connects now, here, and returns the device's other
   * client ids past the newest `max`, to be dropped with {@link forgotten}.
   */
  async connected(id: DeviceIdentity, clientId: string, now = Date.now()): Promise<string[]> {
    const key = deviceSessionsKey(id);
    const results =
      (await this.#mark(this.db.multi().zadd(key, now, clientId).zrange(key, 0, -(this.max + 1)), id, clientId, now).exec()) ?? [];
    for (const [err] of results) if (err) throw err;
    const excess = results[1]?.[1];
    // A tie on the score could rank the connecting id among the oldest: it is never its own victim.
    return ((excess as string[] | undefined) ?? []).filter((other) => other !== clientId);
  }

  /** Extends the live marks of the sessions connected here. */
  async refresh(connected: Iterable<{ id: DeviceIdentity; clientId: string }>, now = Date.now()): Promise<void> {
    let pipeline = this.db.pipeline();
    let queued = 0;
    for (const { id, clientId } of connected) {
      this.#mark(pipeline, id, clientId, now);
      if (++queued % 500 === 0) {
        await pipeline.exec();
        pipeline = this.db.pipeline();
      }
    }
    if (queued % 500 !== 0) await pipeline.exec();
  }

  /** The connection of `clientId` here has closed. */
  async released(id: DeviceIdentity, clientId: string): Promise<void> {
    await this.db.eval(RELEASE_SCRIPT, 1, deviceLiveKey(id), clientId, this.holder.brokerId);
  }

  /** Every client id recorded for the device. */
  list(id: DeviceIdentity): Promise<string[]> {
    return this.db.zrange(deviceSessionsKey(id), 0, -1);
  }

  /** Drops client ids whose sessions are gone (or the whole record). */
  async forgotten(id: DeviceIdentity, clientIds?: string[]): Promise<void> {
    if (clientIds === undefined) await this.db.del(deviceSessionsKey(id));
    else if (clientIds.length > 0) await this.db.zrem(deviceSessionsKey(id), ...clientIds);
  }

  #mark(batch: ChainableCommander, id: DeviceIdentity, clientId: string, now: number): ChainableCommander {
    const { brokerId, ttlMs } = this.holder;
    const key = deviceLiveKey(id);
    // The hash outlives its newest mark, whose time says whether it still holds.
    batch.hset(key, clientId, `${now + ttlMs} ${brokerId}`).pexpire(key, 2 * ttlMs);
    return batch;
  }
}

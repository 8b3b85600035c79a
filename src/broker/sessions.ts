import type { Redis } from "ioredis";
import type { DeviceIdentity } from "../protocol/acl.js";

/** A device's persistent client ids, scored by last CONNECT time (ms); under the broker's key prefix. */
export const deviceSessionsKey = (id: DeviceIdentity) => `device-sessions:${id.productName}/${id.deviceName}`;

/**
 * Which persistent sessions a device keeps: the `max` most recently connected
 * client ids. A small sorted set per device, so a login costs O(log n) and
 * never reads the whole `clients` set.
 */
export class DeviceSessions {
  constructor(
    private readonly db: Redis,
    private readonly max: number,
  ) {}

  /**
   * Records that `clientId` connects now, and returns the device's other
   * client ids past the newest `max`, to be dropped with {@link forgotten}.
   */
  async connected(id: DeviceIdentity, clientId: string, now = Date.now()): Promise<string[]> {
    const key = deviceSessionsKey(id);
    const results = (await this.db.multi().zadd(key, now, clientId).zrange(key, 0, -(this.max + 1)).exec()) ?? [];
    for (const [err] of results) if (err) throw err;
    const excess = results[1]?.[1];
    // A tie on the score could rank the connecting id among the oldest: it is never its own victim.
    return ((excess as string[] | undefined) ?? []).filter((other) => other !== clientId);
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
}

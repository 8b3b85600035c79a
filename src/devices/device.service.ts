import { createHash } from "node:crypto";
import { LRUCache } from "lru-cache";
import { upTo } from "../lru.js";
import { AppError, ErrorCode, badInput } from "../errors.js";
import { checkName, checkTags } from "../protocol/names.js";
import { newObjectId } from "../protocol/object-id.js";
import { buildCommandTopic } from "../protocol/topics.js";
import type { CommandPublisher, DeviceSessions, PresenceReader, ProgressStore, Seen } from "../ota/ports.js";
import { statusOrder, toDevice, type Device, type DeviceRow, type DeviceState, type FleetSummary, type Receipt } from "./device.model.js";
import type { DeviceFilter, DeviceRepository } from "./device.repository.js";
import { hashSecret, newSecret, verifySecret } from "./secret.js";

export type AuthResult = "ok" | "bad_credentials" | "suspended";

export interface DevicePage {
  edges: { cursor: string; device: Device }[];
  endCursor: string | null;
  hasNextPage: boolean;
}

export const MAX_PAGE = 1000;
/** A presence-filtered list walks the registry this many devices at a time, and at most SCAN_MAX per page. */
const SCAN_BATCH = 500;
const SCAN_MAX = 10_000;

/** How long a product's fleet summary is shared, and how many of its versions it lists (most devices first). */
const FLEET_CACHE_MS = 2000;
const MAX_VERSIONS = 100;

/** The most product names `products` answers. */
export const MAX_PRODUCTS = 1000;

/** What the API lets a device list be narrowed to. */
export interface DeviceQuery {
  tag?: string | null;
  firmwareVersion?: string | null;
  state?: DeviceState | null;
}

/** Devices whose verified secret is remembered (least recently connected forgotten first). */
const VERIFIED_CACHE_SIZE = 200_000;
/** Devices whose tags ingest remembers, and for how long (another instance may change them). */
const TAGS_CACHE_SIZE = 10_000;
const TAGS_CACHE_TTL_MS = 10_000;

/** Throws BAD_USER_INPUT naming the field unless `value` is a valid name. */
export function requireName(field: "productName" | "deviceName" | "tag", value: unknown): string {
  const r = checkName(field, value);
  if (!r.ok) throw badInput(field, r.message.replace(`${field} `, ""));
  return r.value;
}

const encodeCursor = (deviceName: string) => Buffer.from(deviceName, "utf8").toString("base64url");
function decodeCursor(cursor: string): string {
  const name = Buffer.from(cursor, "base64url").toString("utf8");
  if (!checkName("deviceName", name).ok) throw badInput("after", "not a cursor from this API");
  return name;
}

/** The device registry: its rules, and the commands that keep devices in step with it. */
export class DeviceService {
  readonly #verified = new LRUCache<string, { secretHash: string; digest: string }>(upTo(VERIFIED_CACHE_SIZE));
  /** Concurrent asks for one device share one query (lru-cache's fetch). */
  readonly #tags = new LRUCache<string, readonly string[]>({
    ...upTo(TAGS_CACHE_SIZE),
    ttl: TAGS_CACHE_TTL_MS,
    fetchMethod: async (key) => {
      const [productName, deviceName] = key.split("/") as [string, string];
      return (await this.repo.find(productName, deviceName))?.tags ?? [];
    },
  });

  readonly #fleets = new LRUCache<string, FleetSummary>({
    ...upTo(1000),
    ttl: FLEET_CACHE_MS,
    fetchMethod: (productName) => this.#loadFleet(productName),
  });

  constructor(
    private readonly repo: DeviceRepository,
    private readonly commands: CommandPublisher,
    private readonly sessions: DeviceSessions,
    private readonly progress: ProgressStore,
    private readonly presence: PresenceReader,
  ) {}

  async register(input: { productName: string; deviceName?: string | null; tags?: string[] | null }) {
    const productName = requireName("productName", input.productName);
    const deviceName = input.deviceName == null ? newObjectId() : requireName("deviceName", input.deviceName);
    const tags = this.#checkTags(input.tags ?? []);
    const secret = newSecret();
    const row = await this.repo.insert({ productName, deviceName, secretHash: await hashSecret(secret), tags });
    if (!row) throw new AppError(ErrorCode.DEVICE_EXISTS, `device ${productName}/${deviceName} already exists`);
    return { device: toDevice(row), secret };
  }

  async find(productName: string, deviceName: string): Promise<Device | null> {
    const row = await this.repo.find(requireName("productName", productName), requireName("deviceName", deviceName));
    return row && toDevice(row);
  }

  async get(productName: string, deviceName: string): Promise<Device> {
    const device = await this.find(productName, deviceName);
    if (!device) throw notFound(productName, deviceName);
    return device;
  }

  async list(productName: string, query: DeviceQuery = {}, first?: number | null, after?: string | null): Promise<DevicePage> {
    requireName("productName", productName);
    const limit = first ?? 50;
    if (!Number.isInteger(limit) || limit < 1 || limit > MAX_PAGE) throw badInput("first", `must be 1..${MAX_PAGE}`);
    const filter = this.#filterOf(query);
    const start = after == null ? undefined : decodeCursor(after);
    if (query.state === "ONLINE" || query.state === "OFFLINE") return this.#listByPresence(productName, filter, query.state === "ONLINE", limit, start);
    const page = await this.repo.list(productName, filter, limit, start);
    const edges = page.rows.map((row) => ({ cursor: encodeCursor(row.deviceName), device: toDevice(row) }));
    return { edges, endCursor: edges.at(-1)?.cursor ?? null, hasNextPage: page.hasNextPage };
  }

  /**
   * Devices connected now (or not): presence lives in Redis, the registry in
   * PostgreSQL, so the registry is walked in name order a batch at a time and
   * each batch checked in one round trip, never loading a product's whole
   * presence. A walk stops after SCAN_MAX devices: the page may then be short,
   * its endCursor where the walk stopped, hasNextPage true.
   */
  async #listByPresence(productName: string, filter: DeviceFilter, online: boolean, limit: number, after: string | undefined): Promise<DevicePage> {
    const edges: DevicePage["edges"] = [];
    let cursor = after;
    let scanned = 0;
    for (;;) {
      const batch = await this.repo.list(productName, { ...filter, suspended: false }, SCAN_BATCH, cursor);
      const names = batch.rows.map((r) => r.deviceName);
      const states = await this.presence.online(productName, names);
      if (states === null) throw badInput("state", "whether devices are connected is unknown with an external broker (only SUSPENDED)");
      for (const [i, row] of batch.rows.entries()) {
        if (states[i] !== online) continue;
        if (edges.length === limit) return { edges, endCursor: edges.at(-1)?.cursor ?? null, hasNextPage: true };
        edges.push({ cursor: encodeCursor(row.deviceName), device: toDevice(row) });
      }
      scanned += batch.rows.length;
      cursor = names.at(-1) ?? cursor;
      if (!batch.hasNextPage) return { edges, endCursor: edges.at(-1)?.cursor ?? null, hasNextPage: false };
      if (scanned >= SCAN_MAX) return { edges, endCursor: cursor === undefined ? null : encodeCursor(cursor), hasNextPage: true };
    }
  }

  #filterOf({ tag, firmwareVersion, state }: DeviceQuery): DeviceFilter {
    const filter: DeviceFilter = {};
    if (tag != null) filter.tag = requireName("tag", tag);
    if (firmwareVersion != null) {
      if (firmwareVersion === "" || firmwareVersion.length > 64) throw badInput("firmwareVersion", "must be 1..64 characters");
      filter.firmwareVersion = firmwareVersion;
    }
    if (state === "SUSPENDED") filter.suspended = true;
    return filter;
  }

  /** When each device last connected and last had a connection closed, in order (null: unknown, the broker is external). */
  seen(productName: string, deviceNames: readonly string[]): Promise<Seen[] | null> {
    return this.presence.seen(productName, deviceNames);
  }

  /** Whether each device is connected now, in order (null: unknown, the broker is external). */
  online(productName: string, deviceNames: readonly string[]): Promise<boolean[] | null> {
    return this.presence.online(productName, deviceNames);
  }

  /**
   * Devices by firmware version, suspended and online counts: one grouped scan
   * of the product and one Redis count, shared for FLEET_CACHE_MS by every
   * asker (a dashboard polls it; aliases in one request must not multiply the scan).
   */
  async fleet(productName: string): Promise<FleetSummary> {
    requireName("productName", productName);
    return (await this.#fleets.fetch(productName)) as FleetSummary;
  }

  async #loadFleet(productName: string): Promise<FleetSummary> {
    const [counts, online] = await Promise.all([
      this.repo.versionCounts(productName),
      // Presence is a nicety here: a Redis blip leaves the counts that PostgreSQL has.
      this.presence.countOnline(productName).catch(() => null),
    ]);
    const versions = counts
      .map(({ firmwareVersion, devices }) => ({ firmwareVersion, devices }))
      .sort((a, b) => b.devices - a.devices || String(a.firmwareVersion).localeCompare(String(b.firmwareVersion)))
      .slice(0, MAX_VERSIONS);
    return {
      productName,
      devices: counts.reduce((n, c) => n + c.devices, 0),
      suspended: counts.reduce((n, c) => n + c.suspended, 0),
      online,
      versions,
    };
  }

  /** Registered devices holding the tag that may receive commands (not suspended). */
  countWithTag(productName: string, tag: string): Promise<number> {
    return this.repo.countWithTag(productName, tag);
  }

  /** Product names that have registered devices, in order (at most MAX_PRODUCTS); only among `allowed` when given. */
  productNames(allowed: readonly string[] | null): Promise<string[]> {
    return allowed === null ? this.repo.productNames(MAX_PRODUCTS) : this.repo.productsAmong(allowed.slice(0, MAX_PRODUCTS));
  }

  /** Replaces the tags, bumps tagsVersion and pushes `$set_tags` (PROTOCOL.md, `$set_tags`). */
  async setTags(productName: string, deviceName: string, tags: string[]): Promise<Device> {
    requireName("productName", productName);
    requireName("deviceName", deviceName);
    const row = await this.repo.setTags(productName, deviceName, this.#checkTags(tags));
    if (!row) throw notFound(productName, deviceName);
    this.#tags.delete(`${productName}/${deviceName}`);
    await this.sendTags(row);
    return toDevice(row);
  }

  /** Sends the device its tags, as after a change or in answer to its `$tags` request. */
  async sendTags(row: Pick<DeviceRow, "productName" | "deviceName" | "tags" | "tagsVersion">): Promise<void> {
    const topic = buildCommandTopic({
      target: { productName: row.productName, deviceName: row.deviceName },
      command: "$set_tags",
      encoding: "plain",
      requestId: newObjectId(),
    });
    await this.commands.publishCommand(topic, JSON.stringify({ tags: row.tags, tags_version: row.tagsVersion }));
  }

  /** Answers a device's `get/.../$tags` request when the server holds newer tags. */
  async answerTagsRequest(productName: string, deviceName: string, deviceTagsVersion: number): Promise<boolean> {
    const row = await this.repo.find(productName, deviceName);
    if (!row || row.tagsVersion <= deviceTagsVersion) return false;
    await this.sendTags(row);
    return true;
  }

  async setSuspended(productName: string, deviceName: string, suspended: boolean): Promise<Device> {
    const row = await this.repo.setSuspended(
      requireName("productName", productName),
      requireName("deviceName", deviceName),
      suspended,
    );
    if (!row) throw notFound(productName, deviceName);
    if (suspended) await this.sessions.disconnect(productName, deviceName);
    return toDevice(row);
  }

  async delete(productName: string, deviceName: string): Promise<boolean> {
    const deleted = await this.repo.delete(requireName("productName", productName), requireName("deviceName", deviceName));
    if (deleted) {
      this.#tags.delete(`${productName}/${deviceName}`);
      this.#verified.delete(`${productName}/${deviceName}`);
      await this.sessions.forget(productName, deviceName);
      await this.progress.delete(productName, deviceName);
      await this.presence.forget(productName, deviceName);
    }
    return deleted;
  }

  /**
   * Checks a device's MQTT credentials (PROTOCOL.md, "Identity and connection").
   * scrypt costs tens of milliseconds of CPU, and devices reconnect often (every
   * upgrade ends in a reboot), so a secret verified once is remembered, by
   * digest, for as long as the stored hash is unchanged.
   */
  async authenticate(productName: string, deviceName: string, secret: string): Promise<AuthResult> {
    const row = await this.repo.find(productName, deviceName);
    if (!row) return "bad_credentials";
    const key = `${productName}/${deviceName}`;
    const digest = createHash("sha256").update(secret).digest("base64");
    const known = this.#verified.get(key);
    if (known?.secretHash !== row.secretHash || known.digest !== digest) {
      if (!(await verifySecret(secret, row.secretHash))) return "bad_credentials";
      this.#verified.set(key, { secretHash: row.secretHash, digest });
    }
    return row.suspended ? "suspended" : "ok";
  }

  /** Stores an `update_status` report unless one received later is stored; returns whether it was applied. */
  applyStatus(productName: string, deviceName: string, status: Record<string, unknown>, receipt: Receipt) {
    return this.repo.applyStatus(productName, deviceName, status, statusOrder(receipt), new Date(receipt.at));
  }

  /** The device's tags, remembered for a few seconds: for ingest's rare questions about tag commands. */
  async tagsOf(productName: string, deviceName: string): Promise<readonly string[]> {
    return (await this.#tags.fetch(`${productName}/${deviceName}`)) ?? [];
  }

  /** Throws unless the device exists and may receive commands. */
  async requireActive(productName: string, deviceName: string): Promise<void> {
    const row = await this.repo.find(productName, deviceName);
    if (!row) throw notFound(productName, deviceName);
    if (row.suspended) throw new AppError(ErrorCode.DEVICE_SUSPENDED, `device ${productName}/${deviceName} is suspended`);
  }

  #checkTags(tags: readonly unknown[]): string[] {
    const r = checkTags(tags);
    if (!r.ok) throw badInput("tags", r.message.replace(/^tags?:? ?/, ""));
    return r.value;
  }
}

const notFound = (productName: string, deviceName: string) =>
  new AppError(ErrorCode.DEVICE_NOT_FOUND, `device ${productName}/${deviceName} not found`);

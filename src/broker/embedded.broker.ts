import { randomUUID } from "node:crypto";
import { createRequire } from "node:module";
import { createServer, type AddressInfo, type Server, type Socket } from "node:net";
import { Readable } from "node:stream";
import { createServer as createTlsServer } from "node:tls";
import { Aedes, type AedesPublishPacket, type AuthenticateError, type Client, type PublishPacket } from "aedes";
import persistence from "aedes-persistence-redis";
import type { Redis } from "ioredis";
import type { Limits } from "../config/config.js";
import type { DeviceService } from "../devices/device.service.js";
import { listen } from "../listen.js";
import { AppError, ErrorCode } from "../errors.js";
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";
import type { BrokerLink } from "../ota/ports.js";
import {
  authorizedPublish,
  canPublish,
  canSubscribe,
  clientIdentity,
  clientIdMatches,
  parseUsername,
  type DeviceIdentity,
} from "../protocol/acl.js";
import { isObjectId } from "../protocol/object-id.js";
import { deviceAutoSubscriptions } from "../protocol/topics.js";
import type { RedisPresence } from "../storage/presence.redis.js";
import { RedisBus, type BrokerBusKind } from "./bus.js";
import { guardFrames } from "./frame.guard.js";
import { Refusals } from "./refusals.js";
import { deviceLiveKey, DeviceSessions } from "./sessions.js";
import { loadTls } from "./tls.js";

export interface EmbeddedBrokerOptions {
  host: string;
  port: number | null;
  tlsPort: number | null;
  tlsCertFile: string | undefined;
  tlsKeyFile: string | undefined;
  /** Where a generated development certificate is kept. */
  dataDir: string;
  /** Prepended to the broker's Redis keys (REDIS_PREFIX). */
  redisPrefix: string;
  limits: Limits;
  /** aedes' heartbeat; stored wills of a broker silent for 3 of these are replayed every 4 (aedes default: 60 s). */
  heartbeatIntervalMs?: number;
  /** BROKER_BUS: aedes' message bus in process (one instance alone: the default here), or over Redis, shared by the instances of a deployment. */
  bus?: BrokerBusKind;
}

/**
 * The deployment's control messages between instances, on aedes' bus. No
 * device can publish or subscribe to a `$` topic (PROTOCOL.md, "Access
 * control"; MQTT 3.1.1 §4.7.2: wildcards never match them), and device
 * publishes reach the bus only past access control.
 */
const DISCONNECT_TOPIC = "$iothub-ota/disconnect";
/** What BroadcastPersistence (aedes-persistence) publishes when a session subscribes; every instance adds it to its trie. */
const SUBSCRIPTIONS_ADDED_TOPIC = "$SYS/sub/add";
/** Sessions whose subscriptions one resync reads at once. */
const RESYNC_BATCH = 200;

// MQTT 3.1.1 §3.2.2.3 CONNACK return codes.
const IDENTIFIER_REJECTED = 2;
const SERVER_UNAVAILABLE = 3;
const BAD_CREDENTIALS = 4;
const NOT_AUTHORIZED = 5;

/** aedes-persistence-redis's key names (asyncPersistence.js): the set of client ids with a stored session, retained messages, a session's queue. */
const CLIENTS_KEY = "clients";
const RETAINED_KEY = "retained";
const outgoingKey = (clientId: string) => `outgoing:${encodeURIComponent(clientId)}`;

/** Queue entries one {@link WITHDRAW_SCRIPT} run reads: each run holds Redis for a bounded time, however long the queue. */
const WITHDRAW_CHUNK = 200;

/**
 * Removes, from one session's queue, the commands to one device with the
 * given requestIds; one chunk of the queue per run.
 *
 * aedes-persistence-redis stores a queued QoS 1 publish once, msgpack-encoded
 * under `packet:<brokerId>:<brokerCounter>`, with a count of the sessions
 * still to deliver it in `<that key>:offlineCount`; each session's queue
 * `outgoing:<clientId>` lists those key names (unprefixed: ioredis adds the
 * prefix to KEYS only, so the script adds it itself, ARGV[1]). A withdrawn
 * entry leaves the queue, its count goes down with it, and the packet goes
 * once no session points to it (as outgoingClearMessageId does on PUBACK).
 * In one script, so that no reader ever sees the entry without its packet
 * or the other way round. Entries of another kind (a QoS 2 session's
 * `outgoing:<id>:<broker>:<counter>` PUBRELs) are skipped. Packet keys
 * named by list entries, not KEYS, are fine on the one Redis node the store
 * is given (`conn`, never `cluster`).
 *
 * Redis' cmsgpack cannot decode the packets (no bin type, which the payload
 * is): the script reads the top-level map's `topic` itself, skipping other
 * values by their msgpack headers (github.com/msgpack/msgpack/blob/master/spec.md).
 *
 * A session connected on any instance is left alone: its live mark is read
 * in the same script, and a CONNECT writes its mark before it reads its queue.
 *
 * KEYS[1] the queue, KEYS[2] the device's live marks; ARGV: key prefix, `cmd/<p>/<d>/`, first index, count,
 * client id, now (ms), requestIds...
 * Returns {next index, 1 when the queue ended within the chunk (or is not ours to edit), removed requestIds}.
 */
const WITHDRAW_SCRIPT = `
local raw
local function uint(pos, n)
  local v = 0
  for i = pos, pos + n - 1 do v = v * 256 + string.byte(raw, i) end
  return v
end
local FIXED = { [0xca] = 4, [0xcb] = 8, [0xcc] = 1, [0xcd] = 2, [0xce] = 4, [0xcf] = 8, [0xd0] = 1, [0xd1] = 2,
  [0xd2] = 4, [0xd3] = 8, [0xd4] = 2, [0xd5] = 3, [0xd6] = 5, [0xd7] = 9, [0xd8] = 17 }
local SIZED = { [0xc4] = 1, [0xc5] = 2, [0xc6] = 4, [0xc7] = 1, [0xc8] = 2, [0xc9] = 4, [0xd9] = 1, [0xda] = 2,
  [0xdb] = 4, [0xdc] = 2, [0xdd] = 4, [0xde] = 2, [0xdf] = 4 }
-- The value at pos: 'str', 'map', 'array' or 'other'; its size (bytes, or entries of a container); where its body starts.
local function head(pos)
  local b = string.byte(raw, pos)
  if b < 0x80 or b >= 0xe0 or (b >= 0xc0 and b <= 0xc3) then return 'other', 0, pos + 1 end
  if b < 0x90 then return 'map', b - 0x80, pos + 1 end
  if b < 0xa0 then return 'array', b - 0x90, pos + 1 end
  if b < 0xc0 then return 'str', b - 0xa0, pos + 1 end
  if FIXED[b] then return 'other', FIXED[b], pos + 1 end
  local n = SIZED[b]
  local size = uint(pos + 1, n)
  if b >= 0xc7 and b <= 0xc9 then size = size + 1 end -- ext: a type byte, then the data
  local kind = b >= 0xdc and (b >= 0xde and 'map' or 'array') or (b >= 0xd9 and 'str') or 'other'
  return kind, size, pos + 1 + n
end
local function skip(pos)
  local kind, size, body = head(pos)
  if kind == 'map' then size = size * 2 elseif kind ~= 'array' then return body + size end
  for _ = 1, size do body = skip(body) end
  return body
end
local function topicOf(value)
  raw = value
  local kind, entries, pos = head(1)
  if kind ~= 'map' then return nil end
  for _ = 1, entries do
    local k, len, body = head(pos)
    local key = k == 'str' and string.sub(raw, body, body + len - 1)
    pos = skip(pos)
    if key == 'topic' then
      local v, size, start = head(pos)
      return v == 'str' and string.sub(raw, start, start + size - 1) or nil
    end
    pos = skip(pos)
  end
end

local prefix, topicHead = ARGV[1], ARGV[2]
local first, count = tonumber(ARGV[3]), tonumber(ARGV[4])
-- Connected on some instance (its live mark, sessions.ts, has not expired): its broker may be delivering this queue.
local mark = redis.call('HGET', KEYS[2], ARGV[5])
if mark and tonumber(string.match(mark, '^%d+')) > tonumber(ARGV[6]) then return {first, 1, {}} end
local wanted = {}
for i = 7, #ARGV do wanted[ARGV[i]] = true end
local entries = redis.call('LRANGE', KEYS[1], first, first + count - 1)
local removed, gone = {}, 0
for _, entry in ipairs(entries) do
  local value = string.sub(entry, 1, 7) == 'packet:' and redis.call('GET', prefix .. entry)
  local ok, topic = false, nil
  -- A malformed packet (pcall: reading past its end) is not a command of ours.
  if value then ok, topic = pcall(topicOf, value) end
  if ok and type(topic) == 'string' and string.sub(topic, 1, #topicHead) == topicHead then
    -- <command>/<encoding>/<requestId>[/<expiresAt>]
    local parts, from = {}, #topicHead + 1
    while true do
      local slash = string.find(topic, '/', from, true)
      parts[#parts + 1] = string.sub(topic, from, slash and slash - 1 or -1)
      if not slash then break end
      from = slash + 1
    end
    local id = parts[3]
    if (#parts == 3 or #parts == 4) and wanted[id] then
      local n = redis.call('LREM', KEYS[1], 0, entry)
      gone = gone + n
      removed[#removed + 1] = id
      local counter = prefix .. entry .. ':offlineCount'
      -- No count (it expired first): other sessions may still need the packet, which expires on its own.
      if redis.call('EXISTS', counter) == 1 and redis.call('DECRBY', counter, n) <= 0 then
        redis.call('DEL', prefix .. entry, counter)
      end
    end
  end
end
return {first + #entries - gone, #entries < count and 1 or 0, removed}
`;

function refuse(returnCode: number, message: string): AuthenticateError {
  return Object.assign(new Error(message), { returnCode }) as AuthenticateError;
}

type Done = (err?: Error | null) => void;
/** aedes' typings omit its 'error' event. */
type EventEmitterLike = { on(event: "error", listener: (err: Error) => void): unknown };
type Subscription = { topic: string; qos: 0 | 1 | 2 };
type InboundPacket = { messageId?: number };

/** The parts of aedes-persistence-redis this broker wraps or calls (its own typings stop short). */
interface Store {
  destroy(): Promise<void>;
  addSubscriptions(client: { id: string }, subs: Subscription[]): Promise<unknown>;
  removeSubscriptions(client: { id: string }, topics: string[]): Promise<unknown>;
  subscriptionsByClient(client: { id: string }): Promise<Subscription[]>;
  cleanSubscriptions(client: { id: string }): Promise<unknown>;
  putWill(client: { id: string }, packet: unknown): Promise<unknown>;
  delWill(client: { id: string; brokerId?: string }): Promise<unknown>;
  outgoingEnqueue(sub: { clientId: string }, packet: unknown): Promise<unknown>;
  outgoingEnqueueCombi(subs: { clientId: string }[], packet: unknown): Promise<unknown>;
  incomingStorePacket(client: Client, packet: InboundPacket): Promise<unknown>;
  incomingGetPacket(client: Client, packet: InboundPacket): Promise<unknown>;
  incomingDelPacket(client: Client, packet: InboundPacket): Promise<unknown>;
  createRetainedStreamCombi(patterns: string[]): Readable;
}

/** A device connection as the broker knows it, from the moment its login is being checked. */
interface DeviceClient {
  readonly identity: DeviceIdentity;
  /** Suspended or deleted (set by {@link EmbeddedBroker.disconnect}, even mid-login): nothing more in or out. */
  cutOff: boolean;
  /** Settles when every earlier PUBLISH of this connection has been answered: PUBACKs keep arrival order. */
  ackTurn: Promise<unknown>;
  /** Its CONNECT created its persistent session (sessionPresent false): subscribed live once registered. */
  freshSession: boolean;
  /**
   * Message ids of inbound QoS 2 PUBLISHes awaiting PUBREL (MQTT 3.1.1 §4.3.3):
   * aedes' "incoming" store, kept with the connection instead of in Redis.
   */
  readonly awaitingRelease: Set<number>;
  /** Filters granted and not yet in client.subscriptions (aedes adds them once the whole SUBSCRIBE is granted). */
  readonly granted: Set<string>;
}

/**
 * Filters one session may hold: a device holds at most 32 tags (names.ts
 * checkTags) plus its auto-subscriptions, with room for a tag change in
 * flight. Past it a SUBSCRIBE gets 0x80: a device cannot grow the broker's
 * subscription tree and its Redis session without bound.
 */
const MAX_SUBSCRIPTIONS_PER_SESSION = 64;

const SETTLED: Promise<unknown> = Promise.resolve();
const noop = () => undefined;

/**
 * mqtt-packet, as aedes writes packets with it, fills a table of 65,536
 * two-byte Buffers (every message id and length) on its first write, unless
 * told not to: 6.5 MB of heap, each object marked at every full GC, to spare
 * one small allocation per PUBACK. Resolved from aedes' own location, so that
 * it is the copy aedes uses.
 */
function writeNumbersUncached(): void {
  const fromHere = createRequire(import.meta.url);
  const mqttPacket = createRequire(fromHere.resolve("aedes"))("mqtt-packet") as { writeToStream: { cacheNumbers: boolean } };
  mqttPacket.writeToStream.cacheNumbers = false;
}

/**
 * aedes, plus one thing it cannot do: acknowledge a PUBLISH and drop it
 * (MQTT 3.1.1 §3.3.5 allows "a positive acknowledgement" to a publish the
 * server does not authorize; aedes only knows closing the connection, moscajs/aedes#210).
 * authorizePublish marks such a packet consumed; aedes then writes the PUBACK
 * and calls publish(), which goes no further.
 */
class DeviceAedes extends Aedes {
  readonly consumed = new WeakSet<object>();

  override publish(packet: PublishPacket, clientOrDone: unknown, done?: Done): void {
    if (this.consumed.has(packet)) {
      const callback = typeof clientOrDone === "function" ? (clientOrDone as Done) : done;
      callback?.(null);
      return;
    }
    (Aedes.prototype.publish as (...args: unknown[]) => void).call(this, packet, clientOrDone, done);
  }
}

/**
 * aedes-persistence-redis leaves some Redis commands unawaited (putWill,
 * delWill, the clean-up in its list readers): in a Redis outage their
 * rejections would be unhandled and end the process. Every command's promise
 * gets a handler here; callers that await still see the error, and the
 * connection's 'error' listener logs the outage.
 */
function withHandledRejections(redis: Redis): Redis {
  return new Proxy(redis, {
    get(target, prop) {
      const value = Reflect.get(target, prop, target) as unknown;
      if (typeof value !== "function") return value;
      return (...args: unknown[]) => {
        const result = (value as (...a: unknown[]) => unknown).apply(target, args);
        if (result instanceof Promise) result.catch(noop);
        return result;
      };
    },
  });
}

/** Whether a will came from Redis (aedes-persistence-redis putWill stamps the broker that stored it). */
const isStoredWill = (packet: PublishPacket) => (packet as { brokerId?: unknown }).brokerId !== undefined;

/**
 * The embedded aedes broker: authenticates devices against the registry,
 * enforces PROTOCOL.md's access control, auto-subscribes each device, takes
 * its reports in process (acknowledged once ingest has made them durable) and
 * keeps sessions in Redis so queued QoS 1 commands survive a restart.
 */
export class EmbeddedBroker implements BrokerLink {
  #aedes: DeviceAedes | undefined;
  #store: Store | undefined;
  #db: Redis | undefined;
  #servers: Server[] = [];
  readonly #clients = new WeakMap<Client, DeviceClient>();
  /** Connections per device (`<product>/<device>`), from login to close. */
  readonly #byDevice = new Map<string, Set<Client>>();
  #sessions: DeviceSessions | undefined;
  readonly #refusals: Refusals;
  /** Registered connections per device (`<product>/<device>`), for presence. */
  readonly #online = new Map<string, number>();
  /** The connections counted in #online (each once). */
  readonly #present = new WeakSet<Client>();
  #presenceTimer: NodeJS.Timeout | undefined;
  /**
   * Redis writes started and not awaited where they start (presence, session
   * live marks): a connection's close starts them, and aedes.close() returns
   * before its connections' closes come. stop() awaits them before the Redis
   * connections go.
   */
  readonly #writes = new Set<Promise<void>>();
  #bus: RedisBus | undefined;
  /** This broker's id among the instances (aedes' `id`: its heartbeats, its packets' brokerId, its live marks). */
  readonly #brokerId = randomUUID();
  /** aedes-persistence-redis' own subscriptionsByClient, before {@link #wrapStore}: a session's stored filters, nothing more. */
  #storedSubscriptions: ((client: { id: string }) => Promise<Subscription[]>) | undefined;

  constructor(
    private readonly options: EmbeddedBrokerOptions,
    /**
     * Takes a device report, in process. Resolves once its effect is durable
     * (or it was deliberately dropped); only then is it acknowledged.
     */
    private readonly onMessage: (topic: string, payload: Buffer) => Promise<void> | void,
    private readonly devices: DeviceService,
    private readonly redis: Redis,
    private readonly metrics: Metrics,
    private readonly log: Logger,
    private readonly presence?: RedisPresence,
  ) {
    this.#refusals = new Refusals(metrics, log, options.limits.refusedLogIntervalMs);
  }

  readonly #listenerError = (err: Error) => this.log.error({ err: err.message }, "mqtt listener error");

  get ready(): boolean {
    return this.#aedes !== undefined && !this.#aedes.closed;
  }

  /** The bound ports, once started (useful when configured as 0). */
  ports: { mqtt: number | null; mqtts: number | null } = { mqtt: null, mqtts: null };

  async start(): Promise<void> {
    try {
      await this.#start();
    } catch (err) {
      await this.stop();
      throw err;
    }
  }

  async #start(): Promise<void> {
    const { limits, redisPrefix } = this.options;
    writeNumbersUncached();
    // aedes-persistence-redis uses no Lua, no key patterns and no Redis pub/sub (its only
    // scans match hash fields), so ioredis' keyPrefix namespaces every key it touches.
    const db = this.redis.duplicate({ keyPrefix: redisPrefix, lazyConnect: true });
    this.#db = db;
    db.on("error", (err: Error) => {
      if (this.#refusals.shouldLog("redis")) this.log.warn({ err: err.message }, "broker redis connection error");
    });
    await db.connect();
    await this.#dropRetained(db);

    const store = persistence({
      conn: withHandledRejections(db),
      maxSessionDelivery: 10_000,
      // Offline QoS 1 commands expire instead of piling up for devices that never return.
      packetTTL: () => limits.offlineCommandTtlSeconds,
    }) as unknown as Store;
    // PROTOCOL.md: one client id per program, `<product>/<device>[/<suffix>]`. Each session holds its subscriptions in
    // Redis and in every instance's subscription trie, and gets its own copy of every command: a device cycling
    // suffixes would grow both without end.
    this.#sessions = new DeviceSessions(db, limits.mqttMaxSessionsPerDevice, { brokerId: this.#brokerId, ttlMs: limits.presenceTtlMs });
    this.#storedSubscriptions = store.subscriptionsByClient.bind(store);
    this.#wrapStore(store, db, this.#sessions);
    this.#store = store;
    const mq = this.options.bus === "redis" ? await this.#startBus() : undefined;

    const aedes = new DeviceAedes({
      id: this.#brokerId,
      persistence: store,
      ...(mq ? { mq } : {}),
      connectTimeout: limits.mqttConnectTimeoutMs,
      ...(this.options.heartbeatIntervalMs === undefined ? {} : { heartbeatInterval: this.options.heartbeatIntervalMs }),
      authenticate: (client, username, password, done) => {
        this.#login(client, username, password).then(
          () => done(null, true),
          (err: AuthenticateError) => done(err, false),
        );
      },
      authorizePublish: (client, packet, done) => this.#authorizePublish(client, packet, done),
      authorizeSubscribe: (client, sub, done) => {
        const reason = !this.#mayHold(client, sub.topic) ? "not_allowed" : !this.#roomFor(client, sub.topic) ? "too_many" : undefined;
        if (reason === undefined) return done(null, sub);
        this.#refusals.refuse("subscribe", reason, this.#keyOf(client), { clientId: client.id, topic: sub.topic });
        done(null, null); // SUBACK 0x80 for this filter (MQTT 3.1.1 §3.9.3), the connection stays
      },
      authorizeForward: (client, packet) => this.#authorizeForward(client, packet),
    });
    this.#aedes = aedes;
    await aedes.listen();
    // aedes reports persistence failures (a Redis outage) as 'error' on itself: unheard, that ends the process.
    (aedes as unknown as EventEmitterLike).on("error", (err: Error) => {
      if (this.#refusals.shouldLog("aedes")) this.log.error({ err }, "broker error (persistence unavailable?)");
    });
    await new Promise<void>((resolve) => aedes.subscribe(DISCONNECT_TOPIC, (packet, done) => this.#onDisconnectNotice(packet, done), resolve));
    aedes.on("client", (client) => this.#onRegistered(client));
    aedes.on("clientDisconnect", (client) => {
      if (this.#clients.has(client)) this.metrics.connectedDevices.dec();
    });
    this.#presenceTimer = setInterval(() => {
      if (this.presence) this.#write(this.presence.refresh(), "could not refresh device presence");
      if (this.#sessions) this.#write(this.#sessions.refresh(this.#persistentHere()), "could not refresh the live marks of sessions");
    }, Math.floor(limits.presenceTtlMs / 3));
    this.#presenceTimer.unref();
    aedes.on("unsubscribe", (filters, client) => {
      const granted = client && this.#clients.get(client)?.granted;
      for (const f of granted ? filters : []) granted?.delete(f);
    });
    aedes.on("clientError", (client, err) => this.log.debug({ clientId: client.id, err: err.message }, "client error"));

    const { host, port, tlsPort, tlsCertFile, tlsKeyFile, dataDir } = this.options;
    const handle = (socket: Socket) => {
      aedes.handle(socket);
      guardFrames(socket, limits.mqttMaxPacketBytes, (verdict) =>
        this.#refusals.refuse("packet", verdict.reason, `addr:${socket.remoteAddress}`, { remoteAddress: socket.remoteAddress, ...verdict }),
      );
    };
    if (port !== null) {
      const server = await listen(createServer(handle), host, port, "MQTT_PORT", this.#listenerError);
      this.#servers.push(server);
      this.ports.mqtt = (server.address() as AddressInfo).port;
    }
    if (tlsPort !== null) {
      const tls = await loadTls(tlsCertFile, tlsKeyFile, dataDir);
      const server = await listen(createTlsServer({ cert: tls.cert, key: tls.key }, handle), host, tlsPort, "MQTTS_PORT", this.#listenerError);
      this.#servers.push(server);
      this.ports.mqtts = (server.address() as AddressInfo).port;
    }
    this.log.info({ ...this.ports }, "embedded broker listening");
  }

  /**
   * Publishes in process rather than through an MQTT client: aedes answers a
   * client's QoS 1 PUBLISH with PUBACK before it has queued the message for
   * offline sessions, whereas this resolves only once the message is queued
   * in Redis for every offline device, so a command acknowledged to the API
   * survives an immediate restart.
   */
  publishCommand(topic: string, payload: string): Promise<void> {
    const aedes = this.#aedes;
    if (!aedes || aedes.closed) return Promise.reject(new AppError(ErrorCode.BROKER_UNAVAILABLE, "the broker is not running"));
    const ms = this.options.limits.publishTimeoutMs;
    return new Promise((resolve, reject) => {
      const unconfirmed = (why: string) =>
        reject(new AppError(ErrorCode.COMMAND_UNCONFIRMED, `the broker did not confirm the command (${why}); it may still arrive`));
      const timer = setTimeout(() => unconfirmed(`no answer within ${ms} ms`), ms);
      // The server's own commands are the only publishes without a client; aedes does not pass them
      // through authorizePublish, whose client-less calls are therefore stored wills only.
      aedes.publish({ cmd: "publish", topic, payload: Buffer.from(payload), qos: 1, retain: false, dup: false }, (err?: Error) => {
        clearTimeout(timer);
        if (!err) return resolve();
        // Queued for some offline sessions perhaps, delivered to none yet.
        this.log.error({ err, topic }, "command publish failed");
        unconfirmed("queueing failed");
      });
    });
  }

  /**
   * Closes every connection of the device, here at once and on every other
   * instance of the deployment through the bus; resolves once the notice is
   * on the bus (BROKER_UNAVAILABLE when it could not be sent, so a
   * suspension never passes for done while the device may still be
   * connected elsewhere).
   */
  async disconnect(productName: string, deviceName: string): Promise<void> {
    this.#disconnectHere(productName, deviceName);
    const aedes = this.#aedes;
    if (!aedes || aedes.closed) throw new AppError(ErrorCode.BROKER_UNAVAILABLE, "the broker is not running");
    const payload = Buffer.from(`${productName}/${deviceName}`);
    await new Promise<void>((resolve, reject) =>
      aedes.publish({ cmd: "publish", topic: DISCONNECT_TOPIC, payload, qos: 0, retain: false, dup: false }, (err?: Error) => {
        if (!err) return resolve();
        this.log.error({ err, productName, deviceName }, "could not tell the other instances to disconnect a device");
        reject(new AppError(ErrorCode.BROKER_UNAVAILABLE, "the other instances could not be told to disconnect the device (Redis unavailable)"));
      }),
    );
  }

  /** Closes every connection of the device here, those still logging in too, and stops its traffic at once. */
  #disconnectHere(productName: string, deviceName: string): void {
    for (const client of this.#byDevice.get(`${productName}/${deviceName}`) ?? []) {
      const device = this.#clients.get(client);
      if (device) device.cutOff = true;
      client.close();
    }
  }

  /** Another instance (or this one: the bus brings its own messages back) disconnects a device. */
  #onDisconnectNotice(packet: { payload?: unknown }, done: () => void): void {
    const payload = Buffer.isBuffer(packet.payload) ? packet.payload.toString("utf8") : String(packet.payload);
    const id = parseUsername(payload);
    if (id.ok) this.#disconnectHere(id.value.productName, id.value.deviceName);
    else this.#refusals.refuse("bus", "malformed", "disconnect", { topic: DISCONNECT_TOPIC, payload: payload.slice(0, 200) });
    done();
  }

  /** Disconnects the device and drops every persistent session of it: all client ids `<p>/<d>[/<suffix>]`, online or not. */
  async forget(productName: string, deviceName: string): Promise<void> {
    await this.disconnect(productName, deviceName);
    const store = this.#store;
    const db = this.#db;
    const sessions = this.#sessions;
    if (!store || !db || !sessions) return;
    const device = { productName, deviceName };
    const ids = await this.#sessionIds(db, sessions, device);
    await Promise.all(ids.map((id) => store.cleanSubscriptions({ id })));
    await sessions.forgotten(device);
  }

  /**
   * Takes the device's commands with these requestIds out of the queues of its
   * offline sessions. A connected session is left to its broker, which may be
   * delivering its queue and expects each entry until the PUBACK: one
   * connected here (from its login on) is known here, one connected on
   * another instance by its live mark (sessions.ts), read in the script
   * itself. A CONNECT writes its mark before it reads its queue, so it either
   * comes after the script or is seen by it.
   */
  async withdraw(productName: string, deviceName: string, requestIds: readonly string[]): Promise<string[]> {
    const db = this.#db;
    const sessions = this.#sessions;
    const wanted = [...new Set(requestIds.filter(isObjectId))];
    if (!db || !sessions || wanted.length === 0) return [];
    const device = { productName, deviceName };
    const head = `cmd/${productName}/${deviceName}/`;
    const removed = new Set<string>();
    // The device's session record only (every persistent CONNECT enters it): no scan of every session, a cancel
    // withdraws from thousands of devices.
    const clientIds = new Set([`${productName}/${deviceName}`, ...(await sessions.list(device))]);
    for (const clientId of clientIds) {
      // In chunks, each its own script: a long queue never holds Redis for long. A chunk that removes
      // entries moves the later ones up, hence `next` from the script; a session that connects
      // meanwhile keeps the rest of its queue.
      let next = 0;
      for (let done = false; !done && !this.#isConnected(device, clientId); ) {
        const [index, ended, ids] = (await db.eval(
          WITHDRAW_SCRIPT,
          2,
          outgoingKey(clientId),
          deviceLiveKey(device),
          this.options.redisPrefix,
          head,
          next,
          WITHDRAW_CHUNK,
          clientId,
          Date.now(),
          ...wanted,
        )) as [number, number, string[]];
        for (const id of ids) removed.add(id);
        next = index;
        done = ended === 1;
      }
    }
    return [...removed];
  }

  /** Every persistent client id of the device: `<p>/<d>`, those recorded for it, and any `<p>/<d>/<suffix>` with a stored session. */
  async #sessionIds(db: Redis, sessions: DeviceSessions, device: DeviceIdentity): Promise<string[]> {
    const { productName, deviceName } = device;
    const ids = new Set([`${productName}/${deviceName}`, ...(await sessions.list(device))]);
    // Names are [A-Za-z0-9_.:-]: nothing in them is a glob character.
    for await (const batch of db.sscanStream(CLIENTS_KEY, { match: `${productName}/${deviceName}*`, count: 1000 }) as AsyncIterable<string[]>) {
      for (const id of batch) {
        const owner = clientIdentity(id);
        if (owner?.productName === productName && owner.deviceName === deviceName) ids.add(id);
      }
    }
    return [...ids];
  }

  /** Whether a connection with this client id is in its login or connected here. */
  #isConnected(device: DeviceIdentity, clientId: string): boolean {
    for (const client of this.#byDevice.get(`${device.productName}/${device.deviceName}`) ?? []) if (client.id === clientId) return true;
    return false;
  }

  /** The persistent sessions connected here (those logging in too): their live marks are kept fresh. */
  *#persistentHere(): Generator<{ id: DeviceIdentity; clientId: string }> {
    for (const clients of this.#byDevice.values()) {
      for (const client of clients) {
        const device = this.#clients.get(client);
        if (device && client.clean === false) yield { id: device.identity, clientId: client.id };
      }
    }
  }

  /**
   * The bus over Redis, connected before aedes publishes its first notice.
   * Redis pub/sub delivers at most once, so whatever was published while
   * this instance's subscriber was away is lost to it; what matters of that
   * is sessions' subscriptions, which commands are queued by (aedes-persistence
   * keeps them in a trie per instance, fed by `$SYS/sub/add` notices): read
   * again from Redis on every reconnection.
   */
  async #startBus(): Promise<RedisBus> {
    const channel = `${this.options.redisPrefix}mqtt-bus`;
    // Commands are not retried by ioredis on the subscriber; its SUBSCRIBE waits for messages by design.
    const subscriber = this.redis.duplicate({ lazyConnect: true, commandTimeout: undefined });
    const publisher = this.redis.duplicate({ lazyConnect: true });
    const bus = new RedisBus(channel, subscriber, publisher, (err) => {
      if (this.#refusals.shouldLog("redis")) this.log.warn({ err: err.message }, "broker bus redis connection error");
    });
    this.#bus = bus;
    await bus.start();
    const failed = (err: unknown) => this.log.error({ err }, "could not read sessions' subscriptions again after a bus outage");
    bus.onResubscribed(() => void this.#resync().catch(failed), failed);
    return bus;
  }

  /** Feeds every stored session's subscriptions to this instance's trie again, as the notices it may have missed would have. */
  async #resync(): Promise<void> {
    const db = this.#db;
    const bus = this.#bus;
    const stored = this.#storedSubscriptions;
    if (!db || !bus || !stored) return;
    let sessions = 0;
    for await (const batch of db.sscanStream(CLIENTS_KEY, { count: RESYNC_BATCH }) as AsyncIterable<string[]>) {
      const subs = await Promise.all(batch.map((id) => stored({ id })));
      for (const [i, clientId] of batch.entries()) {
        const held = subs[i] ?? [];
        if (held.length === 0) continue;
        sessions++;
        bus.emitLocal({ topic: SUBSCRIPTIONS_ADDED_TOPIC, payload: Buffer.from(JSON.stringify({ clientId, subs: held })) });
      }
    }
    this.log.info({ sessions }, "bus back: sessions' subscriptions read again");
  }

  async stop(): Promise<void> {
    clearInterval(this.#presenceTimer);
    const aedes = this.#aedes;
    this.#aedes = undefined;
    for (const server of this.#servers) server.close();
    this.#servers = [];
    // aedes closes its bus; one it never got is closed here.
    if (aedes) await new Promise<void>((resolve) => aedes.close(() => resolve()));
    else await new Promise<void>((resolve) => (this.#bus ? this.#bus.close(resolve) : resolve()));
    this.#bus = undefined;
    // A clean stop leaves its devices offline and its sessions' live marks released, before Redis goes.
    await this.#connectionsClosed();
    await Promise.all(this.#writes);
    const store = this.#store;
    this.#store = undefined;
    this.#sessions = undefined;
    const db = this.#db;
    this.#db = undefined;
    if (store) {
      // Disconnects the connection it was given.
      await store.destroy().catch((err: unknown) => this.log.warn({ err }, "broker persistence did not close cleanly"));
    } else {
      db?.disconnect();
    }
  }

  /**
   * Resolves once every device connection has emitted 'close', which is when
   * its presence and live-mark writes start: aedes.close() destroys the
   * sockets of registered clients and returns before that, and leaves those
   * still in their CONNECT open, closed here.
   */
  async #connectionsClosed(): Promise<void> {
    const open = [...this.#byDevice.values()].flatMap((clients) => [...clients]).filter((client) => !client.conn.closed);
    await Promise.all(
      open.map((client) => {
        const closed = new Promise((resolve) => client.conn.once("close", resolve));
        client.close();
        return closed;
      }),
    );
  }

  /**
   * aedes-persistence-redis, adjusted:
   * - a SUBSCRIBE is stored whole, refused filters too, and once per granted filter (aedes'
   *   storeSubscriptions takes packet.subscriptions): keep only what access control grants, never
   *   an auto-subscription, which the connect path below owns, and store it once;
   * - a session's subscription changes are stored one after the other: BroadcastPersistence
   *   (aedes-persistence) waits for its own `$SYS/sub/...` notice to come back over the bus,
   *   under a key of the client id and the first filter, so two at once overwrite each other's
   *   waiter and one never settles (over the Redis bus the notice is not back within the call,
   *   as it is in process). One whose notice does not come back within PUBLISH_TIMEOUT_MS fails;
   * - the session a CONNECT finds (fetchSubs, clean:false only) always holds the
   *   auto-subscriptions, stored before the CONNACK so commands queue even if the device
   *   drops at once; a session that had nothing before reads as absent, so the CONNACK's
   *   sessionPresent is true only for a session older than this CONNECT (MQTT 3.1.1 §3.2.2.2);
   * - a device keeps at most MQTT_MAX_SESSIONS_PER_DEVICE persistent sessions: the CONNECT of
   *   another one drops the least recently connected (see {@link #admitSession});
   * - a session's queue (`outgoing:<id>`, a list of packet keys) expires with the commands
   *   it points to (packetTTL), instead of keeping keys of expired packets forever;
   * - an inbound QoS 2 PUBLISH is remembered with its connection, never in Redis: aedes
   *   stores each one before its PUBREC, refused ones too, and one withheld PUBREL at a time
   *   a device could fill Redis (aedes' in-flight cap is per connection). Devices publish at
   *   QoS 1 (PROTOCOL.md); a QoS 2 one sent again after a reconnect is handled again, which
   *   ingest's messageId deduplication makes harmless;
   * - wills are never stored: only the connection that set one may publish it (a stored
   *   will is published with no client after a crash, past access control). The
   *   CONNECT-time delWill carries no broker id, so it can never match a stored will.
   */
  #wrapStore(store: Store, db: Redis, sessions: DeviceSessions): void {
    const addSubscriptions = store.addSubscriptions.bind(store);
    const removeSubscriptions = store.removeSubscriptions.bind(store);
    const subscriptionsByClient = store.subscriptionsByClient.bind(store);
    const delWill = store.delWill.bind(store);
    const outgoingEnqueueCombi = store.outgoingEnqueueCombi.bind(store);
    const changing = new Map<string, Promise<unknown>>();
    const inTurn = (clientId: string, change: () => Promise<unknown>): Promise<unknown> => {
      const ms = this.options.limits.publishTimeoutMs;
      const run = () => {
        let timer: NodeJS.Timeout | undefined;
        const late = new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`the subscription change was not confirmed within ${ms} ms`)), ms);
        });
        return Promise.race([change(), late]).finally(() => clearTimeout(timer));
      };
      const next = (changing.get(clientId) ?? SETTLED).then(run, run);
      const settled = next.catch(noop);
      changing.set(clientId, settled);
      void settled.then(() => changing.get(clientId) === settled && changing.delete(clientId));
      return next;
    };
    const storing = new WeakMap<object, Promise<unknown>>();
    store.addSubscriptions = (client, subs) => {
      const pending = storing.get(subs);
      if (pending) return pending;
      const id = this.#clients.get(client as Client)?.identity;
      const auto = id ? deviceAutoSubscriptions(id.productName, id.deviceName) : [];
      const kept = subs.filter((s) => this.#mayHold(client, s.topic) && !auto.includes(s.topic));
      const stored = kept.length === 0 ? Promise.resolve() : inTurn(client.id, () => addSubscriptions(client, kept));
      storing.set(subs, stored);
      return stored;
    };
    // cleanSubscriptions calls it too (this.removeSubscriptions).
    store.removeSubscriptions = (client, topics) => inTurn(client.id, () => removeSubscriptions(client, topics));
    store.subscriptionsByClient = async (client) => {
      const id = clientIdentity(client.id);
      if (!id) return subscriptionsByClient(client);
      await this.#admitSession(store, sessions, id, client.id);
      const subs = await subscriptionsByClient(client);
      const missing = deviceAutoSubscriptions(id.productName, id.deviceName)
        .filter((topic) => !subs.some((s) => s.topic === topic))
        .map((topic) => ({ topic, qos: 1 as const }));
      if (missing.length > 0) await inTurn(client.id, () => addSubscriptions(client, missing));
      if (subs.length === 0) {
        this.#markFresh(id, client.id);
        return [];
      }
      return [...subs, ...missing];
    };
    const ttl = this.options.limits.offlineCommandTtlSeconds;
    store.outgoingEnqueueCombi = async (subs, packet) => {
      await outgoingEnqueueCombi(subs, packet);
      if (ttl <= 0 || subs.length === 0) return;
      const expiring = db.pipeline();
      for (const sub of subs) expiring.expire(outgoingKey(sub.clientId), ttl);
      await expiring.exec();
    };
    // Its own implementation calls its own outgoingEnqueueCombi, not the one above.
    store.outgoingEnqueue = (sub, packet) => store.outgoingEnqueueCombi([sub], packet);
    store.incomingStorePacket = (client, packet) => {
      const awaiting = this.#clients.get(client)?.awaitingRelease;
      if (!awaiting || packet.messageId === undefined) return Promise.reject(new Error("not a device connection"));
      awaiting.add(packet.messageId);
      return Promise.resolve();
    };
    store.incomingGetPacket = (client, packet) =>
      packet.messageId !== undefined && this.#clients.get(client)?.awaitingRelease.has(packet.messageId)
        ? Promise.resolve(packet)
        : Promise.reject(new Error("no such packet"));
    store.incomingDelPacket = (client, packet) => {
      if (packet.messageId !== undefined) this.#clients.get(client)?.awaitingRelease.delete(packet.messageId);
      return Promise.resolve();
    };
    store.putWill = () => Promise.resolve();
    store.delWill = (client) => (client.brokerId === undefined ? Promise.resolve(null) : delWill(client));
    // No retained message can be stored (every publish has its retain flag cleared; those an older build left are
    // dropped at the start), so a SUBSCRIBE has none to look up in Redis. aedes pipes this stream with no error
    // listener: a Redis failure during the lookup was an unhandled 'error' event, and ended the process.
    store.createRetainedStreamCombi = () => Readable.from([]);
  }

  /**
   * Records the persistent session a device connects with, and drops the
   * device's least recently connected ones past MQTT_MAX_SESSIONS_PER_DEVICE
   * (closing any still connected here, so nothing runs on a dropped session).
   * The record goes only once the session is gone, so an outage midway leaves
   * it to be dropped at the next CONNECT.
   */
  async #admitSession(store: Store, sessions: DeviceSessions, id: DeviceIdentity, clientId: string): Promise<void> {
    const excess = await sessions.connected(id, clientId);
    if (excess.length === 0) return;
    const connected = (this.#aedes as { clients?: Record<string, Client | undefined> } | undefined)?.clients;
    for (const other of excess) connected?.[other]?.close();
    await Promise.all(excess.map((other) => store.cleanSubscriptions({ id: other })));
    await sessions.forgotten(id, excess);
    this.#refusals.refuse("session", "too_many", `${id.productName}/${id.deviceName}`, { clientId, dropped: excess });
  }

  /**
   * fetchSubs knows the client id only: the connection behind it is the one of
   * this id still in its CONNECT. The mark lives with the connection, so a
   * CONNECT aborted before registration leaves nothing behind.
   */
  #markFresh(id: DeviceIdentity, clientId: string): void {
    for (const client of this.#byDevice.get(`${id.productName}/${id.deviceName}`) ?? []) {
      const device = this.#clients.get(client);
      if (device && client.id === clientId && client.connecting) device.freshSession = true;
    }
  }

  /** Retained messages have no use in the protocol and only devices could have left them (before their retain flag was cleared). */
  async #dropRetained(db: Redis): Promise<void> {
    const count = await db.hlen(RETAINED_KEY);
    if (count === 0) return;
    await db.del(RETAINED_KEY);
    this.log.warn({ count }, "dropped retained messages left in Redis (devices may not retain)");
  }

  async #login(client: Client, username: string | undefined, password: Buffer | undefined): Promise<void> {
    const id = parseUsername(username);
    if (!id.ok || !password) throw this.#refuseConnect(client, BAD_CREDENTIALS, "bad_username");
    const identity = id.value;
    if (!clientIdMatches(client.id, identity)) throw this.#refuseConnect(client, IDENTIFIER_REJECTED, "client_id");
    // Known as the device's from now on, so that a suspension while the secret is being
    // checked (scrypt: tens of ms) reaches this connection too.
    const device: DeviceClient = { identity, cutOff: false, ackTurn: SETTLED, freshSession: false, awaitingRelease: new Set(), granted: new Set() };
    this.#clients.set(client, device);
    this.#track(client, identity);
    let result;
    try {
      result = await this.devices.authenticate(identity.productName, identity.deviceName, password.toString("utf8"));
    } catch (err) {
      this.log.error({ err, clientId: client.id }, "device login failed: registry unavailable");
      throw this.#refuseConnect(client, SERVER_UNAVAILABLE, "registry_unavailable");
    }
    if (device.cutOff) result = "suspended" as const;
    switch (result) {
      case "ok":
        break;
      case "suspended":
        throw this.#refuseConnect(client, NOT_AUTHORIZED, "suspended");
      case "bad_credentials":
        throw this.#refuseConnect(client, BAD_CREDENTIALS, "bad_credentials");
      default: {
        const never: never = result;
        return never;
      }
    }
    this.#checkWill(client, device);
  }

  #refuseConnect(client: Client, returnCode: number, reason: string): AuthenticateError {
    this.#refusals.refuse("connect", reason, this.#keyOf(client), { clientId: client.id });
    return refuse(returnCode, reason.replace(/_/g, " "));
  }

  /** Until the connection closes, `disconnect()` can find it; then its session's live mark goes, unless another connection here took it over. */
  #track(client: Client, identity: DeviceIdentity): void {
    const key = `${identity.productName}/${identity.deviceName}`;
    const set = this.#byDevice.get(key) ?? new Set<Client>();
    set.add(client);
    this.#byDevice.set(key, set);
    client.conn.once("close", () => {
      if (set.delete(client) && set.size === 0 && this.#byDevice.get(key) === set) this.#byDevice.delete(key);
      if (client.clean !== false || this.#isConnected(identity, client.id) || !this.#sessions) return;
      this.#write(this.#sessions.released(identity, client.id), "could not release a session's live mark (it expires)");
    });
  }

  /**
   * A will is a publish the device makes in advance: held to the same rules
   * (PROTOCOL.md, "Access control"). One outside them is dropped, the
   * connection kept (friendlier to firmware than refusing it); the retain
   * flag goes as for any device publish. aedes keeps the CONNECT's will in
   * `_will` until its storeWill step (lib/handlers/connect.js), after this.
   */
  #checkWill(client: Client, device: DeviceClient): void {
    const c = client as Client & { _will?: PublishPacket | null };
    const will = c._will;
    if (!will) return;
    if (!canPublish(device.identity, will.topic)) {
      c._will = null;
      this.#refusals.refuse("will", "not_allowed", this.#keyOf(client), { clientId: client.id, topic: will.topic });
    } else if (will.retain) {
      will.retain = false;
      this.metrics.refused.inc({ kind: "retain", reason: "cleared" });
    }
  }

  /**
   * aedes asks here before it acknowledges a device's PUBLISH (QoS 1: the
   * PUBACK follows `done(null)`; an error closes the connection unacknowledged)
   * and before it publishes a will. Reports are ingested here, so that the
   * PUBACK means "stored" (aedes writes it before delivering to any
   * subscriber: a subscriber's callback could not hold it back).
   */
  #authorizePublish(client: Client | null, packet: PublishPacket, done: Done): void {
    const device = client ? this.#clients.get(client) : undefined;
    if (!client || !device || isStoredWill(packet)) {
      // No client: aedes replaying a will stored by a broker that died (aedes.js _clearWills).
      // This broker stores none, so it predates that rule: never published, deleted by aedes.
      this.#refusals.refuse("will", "stored", client?.id ?? "stored", { topic: packet.topic });
      return this.#consume(packet, done);
    }
    if (device.cutOff) {
      this.metrics.refused.inc({ kind: "publish", reason: "suspended" });
      return this.#consume(packet, done);
    }
    if (packet.retain) {
      // The protocol has no use for retained messages; kept, they would outlive every check.
      packet.retain = false;
      this.metrics.refused.inc({ kind: "retain", reason: "cleared" });
    }
    const topic = authorizedPublish(device.identity, packet.topic);
    if (!topic) {
      // Acknowledged and dropped, not disconnected: a refused publish must not become a
      // reconnect-and-resend loop (PROTOCOL.md, "Access control"; MQTT 3.1.1 §3.3.5).
      this.#refusals.refuse("publish", "not_allowed", this.#keyOf(client), { clientId: client.id, topic: packet.topic });
      return this.#consume(packet, done);
    }
    switch (topic.kind) {
      case "ota_status":
      case "status":
      case "get":
        return this.#ingest(client, device, packet, done);
      case "m2m":
        return done(null); // delivered through the target's m2m auto-subscription
      case "upload_data":
      case "cmd_resp":
      case "rpc_resp":
        // Part of the IotHub contract, not this server's business: accepted, not acted on.
        this.metrics.ingest.inc({ kind: topic.kind, result: "ignored" });
        return this.#consume(packet, done);
      default: {
        const never: never = topic;
        return never;
      }
    }
  }

  /**
   * Hands the report to ingest at once (its per-device order is arrival
   * order) and acknowledges it once the effect is durable, in arrival order.
   * A failed effect is not acknowledged: the connection is closed, and the
   * device sends the report again when it reconnects (MQTT 3.1.1 §4.4).
   */
  #ingest(client: Client, device: DeviceClient, packet: PublishPacket, done: Done): void {
    const payload = Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload);
    let effect: Promise<void>;
    try {
      effect = Promise.resolve(this.onMessage(packet.topic, payload));
    } catch (err) {
      effect = Promise.reject(err);
    }
    const turn = Promise.all([device.ackTurn, effect]);
    device.ackTurn = turn.catch(noop);
    turn.then(
      () => this.#consume(packet, done),
      (err: unknown) => {
        // Ingest counted and logged it (unacknowledged{kind}); closing the connection is what is left.
        this.log.debug({ err, clientId: client.id, topic: packet.topic }, "report not stored: connection closed unacknowledged");
        done(err instanceof Error ? err : new Error(String(err)));
      },
    );
  }

  /** Lets aedes acknowledge the packet as usual, and publish it nowhere (see {@link DeviceAedes}). */
  #consume(packet: PublishPacket, done: Done): void {
    this.#aedes?.consumed.add(packet);
    done(null);
  }

  #authorizeForward(client: Client, packet: AedesPublishPacket): AedesPublishPacket | null {
    const device = this.#clients.get(client);
    if (!device || device.cutOff) return null;
    // Only the retained store yields retained packets here, and only devices could have filled it.
    if (packet.retain) return null;
    return packet;
  }

  /** Whether the session may hold one more filter (MAX_SUBSCRIPTIONS_PER_SESSION); records it when it may. */
  #roomFor(client: Client, filter: string): boolean {
    const device = this.#clients.get(client);
    if (!device) return false;
    const current = (client as unknown as { subscriptions: Record<string, unknown> }).subscriptions;
    // Grants aedes has applied are in client.subscriptions (and leave it on UNSUBSCRIBE); keep only those in flight.
    for (const g of device.granted) if (g in current) device.granted.delete(g);
    if (filter in current || device.granted.has(filter)) return true;
    if (Object.keys(current).length + device.granted.size >= MAX_SUBSCRIPTIONS_PER_SESSION) return false;
    device.granted.add(filter);
    return true;
  }

  /** PROTOCOL.md, "Access control": a device may subscribe to its product's tags (and its own auto-subscriptions). */
  #mayHold(client: { id: string }, filter: string): boolean {
    const device = this.#clients.get(client as Client);
    return device !== undefined && canSubscribe(device.identity, filter);
  }

  /** A device's first connection here marks it online, its last one's close offline (Redis: best effort, refreshed). */
  #presenceChange(identity: DeviceIdentity, delta: 1 | -1): void {
    const key = `${identity.productName}/${identity.deviceName}`;
    const count = (this.#online.get(key) ?? 0) + delta;
    if (count > 0) this.#online.set(key, count);
    else this.#online.delete(key);
    if (!this.presence || count !== (delta > 0 ? 1 : 0)) return;
    this.#write(delta > 0 ? this.presence.connected(identity) : this.presence.disconnected(identity), "could not record device presence");
  }

  /** Keeps a presence or live-mark write until it settles (see {@link #writes}); a failure is logged, rate-limited. */
  #write(write: Promise<unknown>, failure: string): void {
    const kept: Promise<void> = write
      .then(
        () => undefined,
        (err: unknown) => {
          if (this.#refusals.shouldLog("presence")) this.log.warn({ err }, failure);
        },
      )
      .finally(() => this.#writes.delete(kept));
    this.#writes.add(kept);
  }

  #keyOf(client: Client): string {
    const id = this.#clients.get(client)?.identity;
    return id ? `${id.productName}/${id.deviceName}` : `client:${client.id}`;
  }

  /**
   * Registered (just before the CONNACK). A clean session, or a persistent one
   * this CONNECT created, is subscribed live here: the persistent one's
   * filters are already stored, so nothing waits on Redis and the
   * subscription is live before anything can be published to it.
   */
  #onRegistered(client: Client): void {
    const device = this.#clients.get(client);
    if (!device) return;
    this.metrics.connectedDevices.inc();
    // Presence counts connections, each once, from registration to its socket's close: aedes' events can come
    // for a connection that closed mid-CONNECT (a takeover), or for one it never registered.
    if (!client.closed && !client.conn.destroyed && !this.#present.has(client)) {
      this.#present.add(client);
      this.#presenceChange(device.identity, +1);
      client.conn.once("close", () => {
        if (this.#present.delete(client)) this.#presenceChange(device.identity, -1);
      });
    }
    if (!client.clean && !device.freshSession) return;
    const { productName, deviceName } = device.identity;
    const subscriptions = deviceAutoSubscriptions(productName, deviceName).map((topic) => ({ topic, qos: 1 as const }));
    client.subscribe(subscriptions, (err) => {
      if (err) this.log.error({ clientId: client.id, err }, "auto-subscription failed");
    });
  }
}

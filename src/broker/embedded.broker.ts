import { createServer, type AddressInfo, type Server } from "node:net";
import { createServer as createTlsServer } from "node:tls";
import { Aedes, type AuthenticateError, type Client } from "aedes";
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
  canPublish,
  canSubscribe,
  clientIdMatches,
  parseUsername,
  type DeviceIdentity,
} from "../protocol/acl.js";
import { deviceCommandFilter, INGEST_FILTERS } from "../protocol/topics.js";
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
}


// MQTT 3.1.1 §3.2.2.3 CONNACK return codes.
const BAD_CREDENTIALS = 4;
const NOT_AUTHORIZED = 5;
const IDENTIFIER_REJECTED = 2;

function refuse(returnCode: number, message: string): AuthenticateError {
  return Object.assign(new Error(message), { returnCode }) as AuthenticateError;
}

/**
 * The embedded aedes broker: authenticates devices against the registry,
 * enforces PROTOCOL.md's access control, auto-subscribes each device to its
 * command topic, and keeps sessions in Redis so queued QoS 1 commands
 * survive a restart.
 */
export class EmbeddedBroker implements BrokerLink {
  #aedes: Aedes | undefined;
  #persistence: ReturnType<typeof persistence> | undefined;
  #servers: Server[] = [];
  readonly #principals = new WeakMap<Client, DeviceIdentity>();
  readonly #online = new Map<string, Set<Client>>();

  constructor(
    private readonly options: EmbeddedBrokerOptions,
    /** Takes every device report, in process: no client, no loopback hop, no per-message session writes. */
    private readonly onMessage: (topic: string, payload: Buffer) => void,
    private readonly devices: DeviceService,
    private readonly redis: Redis,
    private readonly metrics: Metrics,
    private readonly log: Logger,
  ) {}

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
    const store = persistence({ conn: this.redis, maxSessionDelivery: 10_000 });
    // aedes stores every filter of a SUBSCRIBE packet in a persistent session,
    // the refused ones too (its storeSubscriptions takes packet.subscriptions
    // whole). A stored `#` would queue every message for the device while it
    // is offline and hand them over when it reconnects: store only what the
    // access control grants.
    const addSubscriptions = store.addSubscriptions.bind(store);
    store.addSubscriptions = (client, subs) => addSubscriptions(client, subs.filter((s) => this.#mayHold(client, s.topic)));
    this.#persistence = store;
    const aedes = await Aedes.createBroker({
      persistence: store,
      authenticate: (client, username, password, done) => {
        this.#authenticate(client, username, password)
          .then(async (principal) => {
            this.#principals.set(client, principal);
            await this.#autoSubscribe(client, principal);
          })
          .then(
            () => done(null, true),
            (err: AuthenticateError) => done(err, false),
          );
      },
      authorizePublish: (client, packet, done) => {
        const p = client && this.#principals.get(client);
        if (!client) return done(null); // the server's own commands (publishCommand)
        if (p && canPublish(p, packet.topic)) return done(null);
        this.log.warn({ clientId: client.id, topic: packet.topic }, "refused publish");
        done(new Error("publish not allowed"));
      },
      authorizeSubscribe: (client, sub, done) => {
        if (this.#mayHold(client, sub.topic)) return done(null, sub);
        this.log.warn({ clientId: client.id, topic: sub.topic }, "refused subscription");
        done(null, null); // SUBACK 0x80 for this filter (MQTT 3.1.1 §3.9.3)
      },
    });
    this.#aedes = aedes;
    aedes.on("client", (client) => this.#onConnect(client));
    aedes.on("clientDisconnect", (client) => this.#onDisconnect(client));
    aedes.on("clientError", (client, err) => this.log.debug({ clientId: client.id, err: err.message }, "client error"));

    await Promise.all(
      INGEST_FILTERS.map(
        (filter) =>
          new Promise<void>((resolve) =>
            aedes.subscribe(
              filter,
              (packet, done) => {
                this.onMessage(packet.topic, Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload));
                done();
              },
              resolve,
            ),
          ),
      ),
    );
    const { host, port, tlsPort, tlsCertFile, tlsKeyFile, dataDir } = this.options;
    if (port !== null) {
      const server = await listen(createServer(aedes.handle), host, port, "MQTT_PORT", this.#listenerError);
      this.#servers.push(server);
      this.ports.mqtt = (server.address() as AddressInfo).port;
    }
    if (tlsPort !== null) {
      const tls = await loadTls(tlsCertFile, tlsKeyFile, dataDir);
      const server = await listen(createTlsServer({ cert: tls.cert, key: tls.key }, aedes.handle), host, tlsPort, "MQTTS_PORT", this.#listenerError);
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
    if (!aedes) return Promise.reject(new AppError(ErrorCode.BROKER_UNAVAILABLE, "the broker is not running"));
    return new Promise((resolve, reject) =>
      aedes.publish({ cmd: "publish", topic, payload: Buffer.from(payload), qos: 1, retain: false, dup: false }, (err) =>
        err ? reject(err) : resolve(),
      ),
    );
  }

  disconnect(productName: string, deviceName: string): void {
    for (const client of this.#online.get(`${productName}/${deviceName}`) ?? []) client.close();
  }

  /** Disconnects the device and drops its sessions (the canonical client id and any connected now). */
  async forget(productName: string, deviceName: string): Promise<void> {
    const ids = new Set([`${productName}/${deviceName}`]);
    for (const client of this.#online.get(`${productName}/${deviceName}`) ?? []) ids.add(client.id);
    this.disconnect(productName, deviceName);
    await Promise.all([...ids].map((id) => this.#persistence?.cleanSubscriptions({ id })));
  }

  async stop(): Promise<void> {
    const aedes = this.#aedes;
    this.#aedes = undefined;
    for (const server of this.#servers) server.close();
    this.#servers = [];
    if (aedes) await new Promise<void>((resolve) => aedes.close(() => resolve()));
    const store = this.#persistence;
    this.#persistence = undefined;
    await store?.destroy().catch(() => undefined);
  }

  async #authenticate(client: Client, username: string | undefined, password: Buffer | undefined): Promise<DeviceIdentity> {
    const id = parseUsername(username);
    if (!id.ok || !password) throw refuse(BAD_CREDENTIALS, "bad username or password");
    if (!clientIdMatches(client.id, id.value)) throw refuse(IDENTIFIER_REJECTED, "client id must be <product>/<device>[/<suffix>]");
    const result = await this.devices.authenticate(id.value.productName, id.value.deviceName, password.toString("utf8"));
    switch (result) {
      case "ok":
        return id.value;
      case "suspended":
        throw refuse(NOT_AUTHORIZED, "device suspended");
      case "bad_credentials":
        this.log.info({ clientId: client.id }, "refused connection: bad credentials");
        throw refuse(BAD_CREDENTIALS, "bad username or password");
      default: {
        const never: never = result;
        return never;
      }
    }
  }

  /** PROTOCOL.md, "Access control": a device may subscribe to its own commands and its product's tags. */
  #mayHold(client: { id: string }, filter: string): boolean {
    const p = this.#principals.get(client as Client);
    return p !== undefined && canSubscribe(p, filter);
  }

  #onConnect(client: Client): void {
    const p = this.#principals.get(client);
    if (!p) return;
    const key = `${p.productName}/${p.deviceName}`;
    const set = this.#online.get(key) ?? new Set<Client>();
    set.add(client);
    this.#online.set(key, set);
    this.metrics.connectedDevices.inc();
    if (client.clean) {
      client.subscribe({ topic: deviceCommandFilter(p.productName, p.deviceName), qos: 1 }, (err) => {
        if (err) this.log.error({ clientId: client.id, err: err.message }, "auto-subscription failed");
      });
    }
  }

  /**
   * EMQX-style auto-subscription: devices never subscribe to their own
   * command topic (PROTOCOL.md). For a persistent session it is stored before
   * the CONNACK, so aedes restores it with the session and commands queue
   * for the device even if it drops straight after connecting; a clean
   * session is subscribed once it is registered (#onConnect).
   */
  async #autoSubscribe(client: Client, id: DeviceIdentity): Promise<void> {
    if (client.clean || !this.#persistence) return;
    await this.#persistence.addSubscriptions(client, [{ topic: deviceCommandFilter(id.productName, id.deviceName), qos: 1 }]);
  }

  #onDisconnect(client: Client): void {
    const p = this.#principals.get(client);
    if (!p) return;
    const key = `${p.productName}/${p.deviceName}`;
    const set = this.#online.get(key);
    if (set?.delete(client)) this.metrics.connectedDevices.dec();
    if (set && set.size === 0) this.#online.delete(key);
  }
}

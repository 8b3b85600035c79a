import { networkInterfaces } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import type { Redis } from "ioredis";
import type { Config } from "./config/config.js";
import { TokenResolver } from "./auth/token.resolver.js";
import { TokenService } from "./auth/token.service.js";
import { EmbeddedBroker } from "./broker/embedded.broker.js";
import { AppError, ErrorCode, StartupError } from "./errors.js";
import { DeviceRepository } from "./devices/device.repository.js";
import { DeviceResolver } from "./devices/device.resolver.js";
import { DeviceService } from "./devices/device.service.js";
import { HttpServer } from "./http/http.server.js";
import { buildGraphqlSchema } from "./http/schema.js";
import { createLogger, type Logger } from "./logger.js";
import { createMetrics, type Metrics } from "./metrics.js";
import { IngestDispatcher } from "./mqtt/ingest.dispatcher.js";
import { ServerMqttClient } from "./mqtt/server.client.js";
import { OtaResolver } from "./ota/ota.resolver.js";
import { ProgressBatchResolver } from "./ota/progress.batch.resolver.js";
import { OtaService } from "./ota/ota.service.js";
import type { BrokerLink, CommandPublisher, DeviceSessions } from "./ota/ports.js";
import { parseCommandTopic } from "./protocol/topics.js";
import { ProgressFeed } from "./ota/progress.feed.js";
import { Database } from "./storage/database.js";
import { RedisPubSubAdapter } from "./storage/pubsub.js";
import { RedisIdempotencyStore } from "./storage/idempotency.redis.js";
import { RedisPresence, unknownPresence } from "./storage/presence.redis.js";
import { RedisProgressStore, redisKeys } from "./storage/progress.redis.js";
import { migrateKeys } from "./storage/keys.migration.js";
import { connectAll, createRedis, quitAll } from "./storage/redis.js";
import { RedisRolloutSignals } from "./storage/rollout.signals.js";
import { RolloutFeed } from "./rollouts/rollout.feed.js";
import { RolloutRepository } from "./rollouts/rollout.repository.js";
import { DeviceRolloutResolver, FleetRolloutResolver, RolloutResolver } from "./rollouts/rollout.resolver.js";
import { RolloutScheduler } from "./rollouts/rollout.scheduler.js";
import { RolloutService } from "./rollouts/rollout.service.js";
import { ArtifactRepository } from "./firmware/artifact.repository.js";
import { ArtifactResolver } from "./firmware/artifact.resolver.js";
import { ArtifactService } from "./firmware/artifact.service.js";
import { DirectoryArtifactStore } from "./firmware/artifact.store.js";
import { UrlSigner, urlKey } from "./firmware/url.signer.js";

interface Component {
  name: string;
  start(): Promise<void>;
  stop(): Promise<void>;
}

/** Where the started app can be reached (ports resolved when configured as 0). */
export interface AppAddress {
  http: number;
  mqtt: number | null;
  mqtts: number | null;
}

/**
 * Wiring: creates every component, starts them in order and stops them in
 * reverse. Nothing here does I/O before `start()`.
 */
export class App {
  readonly log: Logger;
  readonly metrics: Metrics;
  readonly database: Database;
  readonly tokens: TokenService;
  readonly devices: DeviceService;
  readonly ota: OtaService;
  readonly progressFeed: ProgressFeed;
  readonly rollouts: RolloutService;
  readonly rolloutFeed: RolloutFeed;
  readonly artifacts: ArtifactService;
  readonly #scheduler: RolloutScheduler;
  readonly #redis: Redis;
  readonly #subscriber: Redis;
  readonly #embedded: EmbeddedBroker | undefined;
  readonly #link: BrokerLink;
  readonly #ingest: IngestDispatcher;
  readonly #http: HttpServer;
  readonly #components: Component[];
  readonly #heap = new HeapSettler();
  #started: Component[] = [];

  constructor(
    readonly config: Config,
    log?: Logger,
  ) {
    this.log = log ?? createLogger(config.logLevel);
    this.metrics = createMetrics();
    this.database = new Database(config.database, config.limits);
    const db = () => this.database.db;
    const redisTimeout = config.limits.redisCommandTimeoutMs;
    const redisError = (name: string) => (err: Error) => this.log.warn({ err: err.message, client: name }, "redis connection error");
    this.#redis = createRedis(config.redisUrl, "main", redisTimeout, redisError("main"));
    // A subscriber connection waits for messages by design: no command timeout.
    this.#subscriber = createRedis(config.redisUrl, "subscriber", undefined, redisError("subscriber"));
    const keys = redisKeys(config.redisPrefix);
    const progress = new RedisProgressStore(this.#redis, keys);
    const pubsub = new RedisPubSubAdapter(this.#redis, this.#subscriber);

    // The broker and the devices need each other: commands and sessions are late-bound.
    const commands: CommandPublisher = {
      publishCommand: async (topic, payload) => {
        const parsed = parseCommandTopic(topic);
        // Reports received from now on belong to a new upgrade attempt (progress ordering does not trust
        // device clocks); marked before the publish, so that no answer of the device can precede it.
        if (parsed.ok && parsed.value.command === "$ota_upgrade") {
          await progress.startAttempt(parsed.value.target, Date.now()).catch((err: unknown) => {
            this.log.error({ err, topic }, "could not mark the upgrade attempt; the command was not sent");
            throw new AppError(ErrorCode.BROKER_UNAVAILABLE, "the command could not be prepared (Redis unavailable); nothing was sent");
          });
        }
        await this.#link.publishCommand(topic, payload);
        this.metrics.commands.inc({ command: parsed.ok ? parsed.value.command : "unknown" });
      },
    };
    const sessions: DeviceSessions = {
      disconnect: (p, d) => this.#link.disconnect(p, d),
      forget: (p, d) => this.#link.forget(p, d),
      withdraw: (p, d, ids) => this.#link.withdraw(p, d, ids),
    };
    this.tokens = new TokenService(db, config.adminToken, config.limits.tokenCacheTtlMs);
    const artifactStore = new DirectoryArtifactStore(join(config.dataDir, "firmware"));
    let signingKey: Buffer | undefined;
    const signer = new UrlSigner(
      () => {
        if (!signingKey) throw new Error("the firmware URL key is read at start");
        return signingKey;
      },
      () => this.downloadBase,
    );
    this.artifacts = new ArtifactService(new ArtifactRepository(db), artifactStore, signer, {
      maxBytes: config.limits.firmwareMaxBytes,
      maxUploads: config.limits.firmwareMaxUploads,
      urlGraceSeconds: config.limits.firmwareUrlGraceSeconds,
      deviceActive: async (productName, deviceName) => {
        const device = await this.devices.find(productName, deviceName);
        return device !== null && !device.suspended;
      },
      log: this.log,
    });
    const presence = config.broker.kind === "embedded" ? new RedisPresence(this.#redis, keys, config.limits.presenceTtlMs) : undefined;
    this.devices = new DeviceService(new DeviceRepository(db), commands, sessions, progress, presence ?? unknownPresence);
    this.ota = new OtaService(this.devices, commands, progress, {
      artifacts: this.artifacts,
      offlineCommandTtlSeconds: config.limits.offlineCommandTtlSeconds,
      idempotency: new RedisIdempotencyStore(this.#redis, config.redisPrefix),
      // A first request can still be publishing for this long: marking the attempt (Redis), then the publish itself.
      inFlightMs: config.limits.redisCommandTimeoutMs + config.limits.publishTimeoutMs,
      idempotencyTtlSeconds: config.limits.idempotencyTtlSeconds,
      log: this.log,
    });
    const feed = (this.progressFeed = new ProgressFeed(
      (p) => pubsub.subscribe(keys.progressChannel(p)),
      (p, d) => this.devices.tagsOf(p, d),
      { queueMax: config.limits.subscriberQueueMax, onOverflow: (n) => this.metrics.subscriberOverflow.inc(n) },
    ));

    const signals = new RedisRolloutSignals(pubsub, keys.rolloutChannel, (err) =>
      this.log.warn({ err }, "could not publish a rollout change; its subscribers recount on the next one"),
    );
    const rolloutRepo = new RolloutRepository(db);
    this.rollouts = new RolloutService(rolloutRepo, commands, sessions, progress, {
      artifacts: this.artifacts,
      log: this.log,
      signals,
      publishTimeoutMs: config.limits.publishTimeoutMs,
      wake: () => this.#scheduler.wake(),
    });
    this.#scheduler = new RolloutScheduler(this.rollouts, rolloutRepo, { intervalMs: config.limits.rolloutTickMs, log: this.log });
    this.rolloutFeed = new RolloutFeed({
      load: (id) => this.rollouts.snapshot(id),
      coalesceMs: 250,
      onError: (err) => this.log.warn({ err }, "could not read a rollout's counts for its subscribers"),
    });
    let signalsOn = false;

    this.#ingest = new IngestDispatcher(this.devices, progress, this.metrics, this.log, {
      listener: this.rollouts,
      maxPayloadBytes: config.maxPayloadBytes,
      dedupTtlSeconds: config.dedupTtlSeconds,
      maxPendingBytes: config.limits.ingestMaxPendingBytes,
      maxDevicePendingBytes: config.limits.ingestMaxDevicePendingBytes,
      limits: config.limits,
    });
    const broker = config.broker;
    const onMessage = (topic: string, payload: Buffer) => this.#ingest.handle(topic, payload);
    if (broker.kind === "embedded") {
      this.#embedded = new EmbeddedBroker(
        { ...broker, dataDir: config.dataDir, redisPrefix: config.redisPrefix, limits: config.limits, bus: config.brokerBus },
        onMessage,
        this.devices,
        // Not connected here: the broker connects a prefixed duplicate of it, and closes that.
        createRedis(config.redisUrl, "broker", redisTimeout, redisError("broker")),
        this.metrics,
        this.log,
        presence,
      );
      this.#link = this.#embedded;
    } else {
      const { url, username, password, shareGroup, tlsInsecure } = broker;
      this.#link = new ServerMqttClient(
        { url, username, password, shareGroup, clientId: config.mqttClientId, rejectUnauthorized: !tlsInsecure, limits: config.limits },
        onMessage,
        this.log,
      );
    }

    const resolvers = [
      new DeviceResolver(this.devices),
      new OtaResolver(this.ota),
      new ProgressBatchResolver(),
      new TokenResolver(this.tokens),
      new RolloutResolver(this.rollouts),
      new DeviceRolloutResolver(this.rollouts, this.ota),
      new FleetRolloutResolver(this.rollouts),
      new ArtifactResolver(this.artifacts),
    ];
    this.#http = new HttpServer({
      tokens: this.tokens,
      devices: this.devices,
      ota: this.ota,
      progressFeed: feed,
      rolloutFeed: this.rolloutFeed,
      rollouts: this.rollouts,
      artifacts: this.artifacts,
      emqx: config.emqx,
      firmwareAccelRedirect: config.firmwareAccelRedirect,
      corsOrigins: config.corsOrigins,
      limits: config.limits,
      metrics: this.metrics,
      log: this.log,
      readiness: {
        redis: async () => void (await this.#redis.ping()),
        database: () => this.database.ping(),
        broker: async () => {
          if (!this.#link.ready) throw new Error(broker.kind === "embedded" ? "broker not running" : "mqtt client not connected");
        },
      },
    });

    const redisClients = [this.#redis, this.#subscriber];
    this.#components = [
      { name: "database", start: () => this.database.start(), stop: () => this.database.stop() },
      {
        name: "redis",
        start: async () => {
          await connectAll(redisClients, config.redisUrl);
          const moved = await migrateKeys(this.#redis, config.redisPrefix);
          if (moved.renamed + moved.deleted > 0) this.log.info(moved, "redis keys moved to the hash-tagged layout");
        },
        stop: () => quitAll(redisClients),
      },
      {
        name: "firmware store",
        start: async () => {
          await this.artifacts.start();
          signingKey = await urlKey(config.firmwareUrlKey, join(artifactStore.dir, "url.key"));
        },
        stop: async () => undefined,
      },
      {
        // Rollout changes from every instance: subscribers recount, ingest re-reads the versions in play.
        name: "rollout signals",
        start: async () => {
          signalsOn = true;
          const source = signals.events();
          void (async () => {
            for await (const { id, productName } of source) {
              if (!signalsOn) return;
              this.rolloutFeed.signal(id);
              this.rollouts.forgetVersions(productName);
            }
          })().catch((err: unknown) => this.log.error({ err }, "rollout signals stopped"));
        },
        // The source is not ended here: graphql-redis-subscriptions would send UNSUBSCRIBE without awaiting it, and
        // the subscriber connection's QUIT that follows would reject it unhandled. Closing that connection ends it.
        stop: async () => {
          signalsOn = false;
          signals.flush();
          this.rolloutFeed.stop();
        },
      },
      {
        name: "broker",
        start: () => this.#link.start(),
        // Stop taking messages first, then finish those already taken.
        stop: async () => {
          await this.#link.stop();
          await this.#ingest.drain();
        },
      },
      { name: "rollout scheduler", start: () => this.#scheduler.start(), stop: () => this.#scheduler.stop() },
      {
        name: "http",
        start: async () => this.#http.start(await buildGraphqlSchema(pubsub, resolvers), config.httpPort, config.httpHost),
        stop: () => this.#http.stop(),
      },
      // Last: a token printed "only this once" must belong to a server that is serving, not to a start that fails after it.
      { name: "bootstrap token", start: () => this.#bootstrapToken(), stop: async () => undefined },
    ];
  }

  /** Where devices download firmware from (PUBLIC_URL, or this machine and the HTTP port). */
  get downloadBase(): string {
    return this.config.publicUrl ?? `http://${reachableHost(this.config.httpHost)}:${this.#http.port}`;
  }

  get address(): AppAddress {
    return { http: this.#http.port, mqtt: this.#embedded?.ports.mqtt ?? null, mqtts: this.#embedded?.ports.mqtts ?? null };
  }

  async start(): Promise<void> {
    for (const component of this.#components) {
      try {
        await component.start();
      } catch (err) {
        // Logged here, once: a StartupError's message says what to change, and its stack says nothing more.
        if (err instanceof StartupError) this.log.fatal({ component: component.name }, `could not start: ${err.message}`);
        else this.log.fatal({ err, component: component.name }, "could not start");
        await this.stop();
        throw err;
      }
      this.#started.push(component);
    }
    this.log.info({ address: this.address, firmwareDownloads: this.downloadBase }, "iothub-ota started");
    this.#heap.start();
  }

  /** Idempotent: stops what was started, in reverse order. */
  async stop(): Promise<void> {
    this.#heap.stop();
    const started = this.#started;
    this.#started = [];
    for (const component of started.reverse()) {
      try {
        await component.stop();
        this.log.info({ component: component.name }, "stopped");
      } catch (err) {
        this.log.error({ err, component: component.name }, "stop failed");
      }
    }
  }

  /** With no token anywhere, makes one and prints it once, so a fresh install is usable. */
  async #bootstrapToken(): Promise<void> {
    if (this.config.adminToken !== undefined || (await this.tokens.count()) > 0) return;
    const { token } = await this.tokens.create({ name: "bootstrap", access: "admin" });
    process.stderr.write(
      `\n  No API token existed, so one was created. It is shown only this once:\n\n    ${token}\n\n` +
        `  Use it as "Authorization: Bearer <token>"; the command line reads it from IOTHUB_OTA_TOKEN.\n` +
        `  Lost it? npx iothub-ota token create --access admin   makes another (with the built-in database: while the server is stopped).\n\n`,
    );
  }
}

/** Quiet: the event loop busy less than this share of a second (an idle server with devices connected: under 1 %). */
const QUIET_UTILIZATION = 0.05;
const QUIET_SECONDS = 5;
/** Never quiet this long after the start: left to V8. */
const SETTLE_GIVE_UP_SECONDS = 120;

type Gc = (options: { type: "major"; execution: "async" }) => void;

/** V8's gc(): the one --expose-gc gave, or one of a context made while the flag is on (the flag goes off again). */
function exposedGc(): Gc | undefined {
  const given = (globalThis as { gc?: unknown }).gc;
  if (typeof given === "function") return given as Gc;
  setFlagsFromString("--expose-gc");
  try {
    const gc = runInNewContext("gc") as unknown;
    return typeof gc === "function" ? (gc as Gc) : undefined;
  } finally {
    setFlagsFromString("--no-expose-gc");
  }
}

/**
 * Start-up (every module's code, the schema build, the migrations) leaves
 * V8's young generation at its largest (2 x 16 MB) and the old one holding
 * garbage: some 35 MB resident that V8 gives back only after a GC made while
 * allocation is slow. Its memory reducer, judging the rate by the start's,
 * waits 45 s to 2 min for that on an idle server. Here, once the started
 * server has been quiet for a few seconds, two incremental GCs (a second
 * apart, so that the second measures the quiet) return it. A busy process is
 * left to V8: its heap is in use.
 */
class HeapSettler {
  #timer: NodeJS.Timeout | undefined;

  start(): void {
    if (this.#timer) return;
    const gc = exposedGc();
    if (!gc) return;
    let last = performance.eventLoopUtilization();
    let quiet = 0;
    let seconds = 0;
    this.#timer = setInterval(() => {
      const now = performance.eventLoopUtilization();
      quiet = performance.eventLoopUtilization(now, last).utilization < QUIET_UTILIZATION ? quiet + 1 : 0;
      last = now;
      seconds++;
      if (quiet >= QUIET_SECONDS) gc({ type: "major", execution: "async" });
      if (quiet > QUIET_SECONDS || seconds >= SETTLE_GIVE_UP_SECONDS) this.#clear();
    }, 1000).unref();
  }

  stop(): void {
    this.#clear();
  }

  #clear(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }
}

/** A host devices can reach for a bind address: the address itself, or this machine's first external IPv4 for a wildcard. */
function reachableHost(bind: string): string {
  if (bind !== "0.0.0.0" && bind !== "::") return bind.includes(":") ? `[${bind}]` : bind;
  const external = Object.values(networkInterfaces())
    .flat()
    .find((i) => i !== undefined && i.family === "IPv4" && !i.internal);
  return external?.address ?? "127.0.0.1";
}

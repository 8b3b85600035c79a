import { z } from "zod";

/** How the server reaches its MQTT devices: an embedded aedes broker, or an external one. */
export type BrokerConfig =
  | {
      kind: "embedded";
      /** Plain MQTT listener port; null disables it, 0 picks a free port. */
      port: number | null;
      /** MQTT over TLS listener port; null disables it, 0 picks a free port. */
      tlsPort: number | null;
      tlsCertFile: string | undefined;
      tlsKeyFile: string | undefined;
      host: string;
    }
  | {
      kind: "external";
      url: string;
      username: string | undefined;
      password: string | undefined;
      /** Group of the `$share/<group>/...` ingest subscriptions that instances split. */
      shareGroup: string;
      /** Skip checking the broker's TLS certificate (development only). */
      tlsInsecure: boolean;
    };

export type DatabaseConfig = { kind: "pglite"; dataDir: string } | { kind: "postgres"; url: string };

/**
 * The endpoints EMQX's HTTP authenticator and authorizer call (src/http/emqx.routes.ts),
 * mounted when EMQX_AUTH_SECRET is set.
 */
export interface EmqxAuthConfig {
  /** What EMQX sends in the X-EMQX-Auth-Secret header: callers without it are denied before anything is read. */
  readonly secret: string;
  /** The server's own MQTT credentials (MQTT_USERNAME, MQTT_PASSWORD), admitted with the server's access rules. */
  readonly serverUsername: string | undefined;
  readonly serverPassword: string | undefined;
}

/**
 * Operational limits: bounds, timeouts and sizes, each with its default
 * beside it (and in the README's settings table). Past a limit the server
 * refuses or drops with a clear error and a counter; it never grows without
 * bound or waits forever.
 */
export interface Limits {
  /** MQTT: a packet whose declared length is larger is refused as soon as the length is read (before authentication). */
  readonly mqttMaxPacketBytes: number;
  /** MQTT: a connection that has not sent CONNECT within this is closed. */
  readonly mqttConnectTimeoutMs: number;
  /** MQTT: a QoS 1 command queued for an offline device is dropped after this (aedes `packetTTL`). */
  readonly offlineCommandTtlSeconds: number;
  /**
   * MQTT: persistent sessions (client ids `<product>/<device>[/<suffix>]`) one device may keep; past it the
   * least recently connected is dropped. Each holds subscriptions and a copy of every command.
   */
  readonly mqttMaxSessionsPerDevice: number;
  /** MQTT: a refused publish is logged once per device per this interval (it is always counted). */
  readonly refusedLogIntervalMs: number;
  /**
   * Ingest: payload bytes taken and not yet stored, for all devices together and for one. Past its own bound a
   * device's reports are left unacknowledged (sent again later); past the global one, only devices over an equal share.
   */
  readonly ingestMaxPendingBytes: number;
  readonly ingestMaxDevicePendingBytes: number;
  /** Redis: a command not answered within this fails. */
  readonly redisCommandTimeoutMs: number;
  /** PostgreSQL: connecting, and any one statement, fail after this. */
  readonly dbConnectTimeoutMs: number;
  readonly dbStatementTimeoutMs: number;
  /** Publishing one command to the broker fails after this. */
  readonly publishTimeoutMs: number;
  /** HTTP: largest GraphQL or REST request body. */
  readonly httpBodyBytes: number;
  /** GraphQL: selection depth, aliases, directives, tokens and cost per operation (GraphQL Armor's rules). */
  readonly graphqlMaxDepth: number;
  readonly graphqlMaxAliases: number;
  readonly graphqlMaxDirectives: number;
  readonly graphqlMaxTokens: number;
  readonly graphqlMaxCost: number;
  /** GraphQL: list items one operation may ask for in all (list arguments and page sizes, over every alias). */
  readonly graphqlMaxListItems: number;
  /** graphql-ws: largest WebSocket frame, subscriptions per connection, connections per token, time to send connection_init. */
  readonly wsMaxPayloadBytes: number;
  readonly wsMaxSubscriptionsPerConnection: number;
  readonly wsMaxConnectionsPerToken: number;
  readonly wsInitTimeoutMs: number;
  /** Reports waiting for one slow subscriber; past this the subscriber keeps only the latest report per device. */
  readonly subscriberQueueMax: number;
  /** How long a verified API token is remembered: another instance refuses a revoked token within this. */
  readonly tokenCacheTtlMs: number;
  /** How long a sendOta idempotency key is remembered. */
  readonly idempotencyTtlSeconds: number;
  /** Rollouts: the pause between the scheduler's passes over active rollouts. */
  readonly rolloutTickMs: number;
  /** Firmware: the largest artifact an upload may store (GraphQL's Int bounds it to 2 GiB - 1). */
  readonly firmwareMaxBytes: number;
  /** Firmware: uploads being received at once on one instance (each holds a file and disk space); the next answers 503. */
  readonly firmwareMaxUploads: number;
  /** HTTP: a connection that moves no byte either way for this long is closed (a stalled upload or download; idle keep-alive has its own 5 s). */
  readonly httpIdleTimeoutMs: number;
  /** Firmware: a download URL lives this long past its command's expiry, so that a download begun in time can be resumed. */
  readonly firmwareUrlGraceSeconds: number;
  /** EMQX authentication calls being answered at once (secret checks queue for CPU); past it one is denied at once. */
  readonly emqxAuthMaxPending: number;
  /** Embedded broker: a device stays online this long after its instance's last refresh (an instance that died). */
  readonly presenceTtlMs: number;
}

export interface Config {
  readonly httpPort: number;
  readonly httpHost: string;
  readonly broker: BrokerConfig;
  readonly database: DatabaseConfig;
  readonly dataDir: string;
  readonly redisUrl: string;
  readonly adminToken: string | undefined;
  readonly logLevel: "fatal" | "error" | "warn" | "info" | "debug" | "trace" | "silent";
  /** MQTT client id of the server's own client; set it to keep a persistent session across restarts. */
  readonly mqttClientId: string | undefined;
  /** Origins allowed to call the API from a browser; empty: no CORS headers. */
  readonly corsOrigins: readonly string[];
  readonly maxPayloadBytes: number;
  readonly dedupTtlSeconds: number;
  /** Prepended to every Redis key and channel of this server, so several environments (or tests) share one Redis. */
  readonly redisPrefix: string;
  /** Embedded broker: its message bus in process (`memory`, one instance alone) or over Redis (`redis`, any number of instances). */
  readonly brokerBus: "memory" | "redis";
  /** Where devices reach this server's HTTP port (firmware download URLs); unset: this machine's address and PORT. */
  readonly publicUrl: string | undefined;
  /** The key of firmware download URL signatures; unset: one generated under DATA_DIR (shared by instances on a shared volume). */
  readonly firmwareUrlKey: string | undefined;
  /** Set: a checked download answers `X-Accel-Redirect: <this><id>` and the proxy in front (nginx) sends the file. */
  readonly firmwareAccelRedirect: string | undefined;
  /** Set with EMQX_AUTH_SECRET: EMQX's HTTP authentication and authorization endpoints are served. */
  readonly emqx: EmqxAuthConfig | undefined;
  readonly limits: Limits;
}

const port = (name: string, fallback: number) =>
  z.coerce
    .number({ error: `${name} must be a port number` })
    .int(`${name} must be an integer`)
    .min(0, `${name} must be 0..65535`)
    .max(65535, `${name} must be 0..65535`)
    .default(fallback);

const int = (min: number, fallback: number, max = Number.MAX_SAFE_INTEGER) =>
  z.coerce.number().int().min(min).max(max).default(fallback);

const optionalString = z
  .string()
  .optional()
  .transform((v) => (v === undefined || v === "" ? undefined : v));

const envSchema = z.object({
  PORT: port("PORT", 4000),
  HOST: z.string().min(1).default("0.0.0.0"),
  MQTT_PORT: port("MQTT_PORT", 1883),
  MQTTS_PORT: port("MQTTS_PORT", 8883),
  MQTT_HOST: z.string().min(1).default("0.0.0.0"),
  TLS_CERT_FILE: optionalString,
  TLS_KEY_FILE: optionalString,
  MQTT_URL: optionalString.pipe(
    z
      .string()
      .regex(/^(mqtt|mqtts|tcp|tls|ws|wss):\/\//, "MQTT_URL must start with mqtt://, mqtts://, ws:// or wss://")
      .optional(),
  ),
  MQTT_USERNAME: optionalString,
  MQTT_PASSWORD: optionalString,
  MQTT_CLIENT_ID: optionalString,
  MQTT_TLS_INSECURE: z.enum(["true", "false", "1", "0", ""]).default("false").transform((v) => v === "true" || v === "1"),
  MQTT_SHARE_GROUP: z
    .string()
    .regex(/^[A-Za-z0-9_.-]{1,64}$/, "MQTT_SHARE_GROUP must be 1..64 of [A-Za-z0-9_.-]")
    .default("iothub-ota"),
  DATABASE_URL: optionalString.pipe(
    z.string().regex(/^postgres(ql)?:\/\//, "DATABASE_URL must start with postgres:// or postgresql://").optional(),
  ),
  DATA_DIR: z.string().min(1).default("./data"),
  REDIS_URL: z
    .string()
    .regex(/^rediss?:\/\//, "REDIS_URL must start with redis:// or rediss://")
    .default("redis://127.0.0.1:6379"),
  ADMIN_TOKEN: optionalString.pipe(z.string().min(16, "ADMIN_TOKEN must be at least 16 characters").optional()),
  LOG_LEVEL: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]).default("info"),
  CORS_ORIGINS: z
    .string()
    .default("")
    .transform((v) => v.split(",").map((o) => o.trim()).filter((o) => o !== ""))
    .pipe(z.array(z.string().regex(/^(\*|https?:\/\/[^/\s]+)$/, "CORS_ORIGINS must be * or comma-separated http(s)://host[:port] origins"))),
  MAX_PAYLOAD_BYTES: z.coerce.number().int().min(256).max(10_485_760).default(65_536),
  DEDUP_TTL_SECONDS: z.coerce.number().int().min(1).default(21_600),
  REDIS_PREFIX: z.string().regex(/^[A-Za-z0-9_.:-]{0,64}$/, "REDIS_PREFIX must be 0..64 of [A-Za-z0-9_.:-]").default(""),
  BROKER_BUS: z.enum(["redis", "memory"], { error: "BROKER_BUS must be redis or memory" }).default("redis"),
  MQTT_MAX_PACKET_BYTES: int(1024, 131_072, 268_435_455),
  MQTT_CONNECT_TIMEOUT_MS: int(100, 10_000),
  OFFLINE_COMMAND_TTL_SECONDS: int(1, 604_800, 31_536_000),
  MQTT_MAX_SESSIONS_PER_DEVICE: int(2, 8, 1_000),
  REFUSED_LOG_INTERVAL_MS: int(0, 60_000),
  INGEST_MAX_PENDING_BYTES: int(65_536, 67_108_864),
  INGEST_MAX_DEVICE_PENDING_BYTES: int(65_536, 8_388_608),
  REDIS_COMMAND_TIMEOUT_MS: int(100, 5_000),
  DB_CONNECT_TIMEOUT_MS: int(100, 5_000),
  DB_STATEMENT_TIMEOUT_MS: int(100, 10_000),
  PUBLISH_TIMEOUT_MS: int(100, 10_000),
  HTTP_BODY_LIMIT_BYTES: int(1024, 262_144, 104_857_600),
  GRAPHQL_MAX_DEPTH: int(1, 10),
  GRAPHQL_MAX_ALIASES: int(0, 15),
  GRAPHQL_MAX_DIRECTIVES: int(0, 10),
  GRAPHQL_MAX_TOKENS: int(10, 2_000),
  GRAPHQL_MAX_COST: int(1, 5_000),
  GRAPHQL_MAX_LIST_ITEMS: int(1, 10_000),
  WS_MAX_PAYLOAD_BYTES: int(1024, 65_536, 104_857_600),
  WS_MAX_SUBSCRIPTIONS_PER_CONNECTION: int(1, 100),
  WS_MAX_CONNECTIONS_PER_TOKEN: int(1, 1_000),
  WS_INIT_TIMEOUT_MS: int(100, 3_000),
  SUBSCRIBER_QUEUE_MAX: int(1, 1_000),
  TOKEN_CACHE_TTL_MS: int(100, 5_000, 300_000),
  IDEMPOTENCY_TTL_SECONDS: int(60, 86_400),
  ROLLOUT_TICK_MS: int(50, 1_000, 60_000),
  PUBLIC_URL: optionalString.pipe(
    z
      .string()
      .regex(/^https?:\/\/[^\s/?#]+(\/[^\s?#]*)?$/, "PUBLIC_URL must be an http(s) URL without query or fragment, e.g. https://ota.example.com")
      .optional(),
  ),
  FIRMWARE_URL_KEY: optionalString.pipe(z.string().min(32, "FIRMWARE_URL_KEY must be at least 32 characters").optional()),
  FIRMWARE_ACCEL_REDIRECT: optionalString.pipe(
    z
      .string()
      .regex(/^\/[A-Za-z0-9_.\/-]*\/$/, "FIRMWARE_ACCEL_REDIRECT must be an internal location path that starts and ends with /, e.g. /_firmware/")
      .optional(),
  ),
  FIRMWARE_MAX_BYTES: int(1, 1_073_741_824, 2_147_483_647),
  FIRMWARE_MAX_UPLOADS: int(1, 8, 1_000),
  FIRMWARE_URL_GRACE_SECONDS: int(0, 0, 2_592_000),
  HTTP_IDLE_TIMEOUT_MS: int(1_000, 60_000, 3_600_000),
  EMQX_AUTH_SECRET: optionalString.pipe(z.string().min(32, "EMQX_AUTH_SECRET must be at least 32 characters").optional()),
  EMQX_AUTH_MAX_PENDING: int(1, 256, 100_000),
  PRESENCE_TTL_MS: int(3_000, 60_000, 3_600_000),
});

export class ConfigError extends Error {}

/**
 * Reads the environment into one frozen, validated object. Any bad variable
 * is named in the thrown {@link ConfigError}; nothing else reads `process.env`.
 */
/** Every setting the server reads (README.md, "Settings", documents each). */
export const SETTING_NAMES: readonly string[] = Object.keys(envSchema.shape);

/**
 * Where a server started with these settings is reached from this machine:
 * the defaults of the simulator and the command line, so that they follow
 * PORT, MQTT_PORT and MQTTS_PORT as the server does.
 */
export function localAddresses(env: NodeJS.ProcessEnv = process.env): { server: string; api: string; mqtt: string; mqtts: string } {
  const parsed = envSchema.pick({ PORT: true, MQTT_PORT: true, MQTTS_PORT: true }).safeParse(env);
  if (!parsed.success) throw new ConfigError(`invalid configuration:\n  ${parsed.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("\n  ")}`);
  const { PORT, MQTT_PORT, MQTTS_PORT } = parsed.data;
  const server = `http://127.0.0.1:${PORT}`;
  const mqtts = `mqtts://127.0.0.1:${MQTTS_PORT}`;
  return { server, api: `${server}/graphql`, mqtt: MQTT_PORT === 0 ? mqtts : `mqtt://127.0.0.1:${MQTT_PORT}`, mqtts };
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const parsed = envSchema.safeParse(env);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`);
    throw new ConfigError(`invalid configuration:\n  ${problems.join("\n  ")}`);
  }
  const e = parsed.data;
  if (e.INGEST_MAX_DEVICE_PENDING_BYTES < e.MAX_PAYLOAD_BYTES || e.INGEST_MAX_PENDING_BYTES < e.INGEST_MAX_DEVICE_PENDING_BYTES) {
    // A report the bounds could never admit would be refused on every redelivery.
    throw new ConfigError(
      "invalid configuration:\n  INGEST_MAX_PENDING_BYTES >= INGEST_MAX_DEVICE_PENDING_BYTES >= MAX_PAYLOAD_BYTES is required",
    );
  }
  if ((e.TLS_CERT_FILE === undefined) !== (e.TLS_KEY_FILE === undefined)) {
    throw new ConfigError("invalid configuration:\n  TLS_CERT_FILE and TLS_KEY_FILE must be set together");
  }
  if (e.EMQX_AUTH_SECRET !== undefined && e.MQTT_USERNAME !== undefined && e.MQTT_USERNAME.includes("/")) {
    // A device's username is <product>/<device>: the server's must never be one (src/http/emqx.routes.ts).
    throw new ConfigError("invalid configuration:\n  MQTT_USERNAME must not contain / when EMQX_AUTH_SECRET is set (device usernames are <product>/<device>)");
  }
  const broker: BrokerConfig = e.MQTT_URL
    ? {
        kind: "external",
        url: e.MQTT_URL,
        username: e.MQTT_USERNAME,
        password: e.MQTT_PASSWORD,
        shareGroup: e.MQTT_SHARE_GROUP,
        tlsInsecure: e.MQTT_TLS_INSECURE,
      }
    : {
        kind: "embedded",
        port: e.MQTT_PORT === 0 ? null : e.MQTT_PORT,
        tlsPort: e.MQTTS_PORT === 0 ? null : e.MQTTS_PORT,
        tlsCertFile: e.TLS_CERT_FILE,
        tlsKeyFile: e.TLS_KEY_FILE,
        host: e.MQTT_HOST,
      };
  return Object.freeze({
    httpPort: e.PORT,
    httpHost: e.HOST,
    broker: Object.freeze(broker),
    database: Object.freeze(
      e.DATABASE_URL
        ? { kind: "postgres" as const, url: e.DATABASE_URL }
        : { kind: "pglite" as const, dataDir: `${e.DATA_DIR}/pglite` },
    ),
    dataDir: e.DATA_DIR,
    redisUrl: e.REDIS_URL,
    adminToken: e.ADMIN_TOKEN,
    logLevel: e.LOG_LEVEL,
    mqttClientId: e.MQTT_CLIENT_ID,
    corsOrigins: Object.freeze(e.CORS_ORIGINS),
    maxPayloadBytes: e.MAX_PAYLOAD_BYTES,
    dedupTtlSeconds: e.DEDUP_TTL_SECONDS,
    redisPrefix: e.REDIS_PREFIX,
    brokerBus: e.BROKER_BUS,
    publicUrl: e.PUBLIC_URL,
    firmwareUrlKey: e.FIRMWARE_URL_KEY,
    firmwareAccelRedirect: e.FIRMWARE_ACCEL_REDIRECT,
    emqx:
      e.EMQX_AUTH_SECRET === undefined
        ? undefined
        : Object.freeze({ secret: e.EMQX_AUTH_SECRET, serverUsername: e.MQTT_USERNAME, serverPassword: e.MQTT_PASSWORD }),
    limits: Object.freeze({
      mqttMaxPacketBytes: e.MQTT_MAX_PACKET_BYTES,
      mqttConnectTimeoutMs: e.MQTT_CONNECT_TIMEOUT_MS,
      offlineCommandTtlSeconds: e.OFFLINE_COMMAND_TTL_SECONDS,
      mqttMaxSessionsPerDevice: e.MQTT_MAX_SESSIONS_PER_DEVICE,
      refusedLogIntervalMs: e.REFUSED_LOG_INTERVAL_MS,
      ingestMaxPendingBytes: e.INGEST_MAX_PENDING_BYTES,
      ingestMaxDevicePendingBytes: e.INGEST_MAX_DEVICE_PENDING_BYTES,
      redisCommandTimeoutMs: e.REDIS_COMMAND_TIMEOUT_MS,
      dbConnectTimeoutMs: e.DB_CONNECT_TIMEOUT_MS,
      dbStatementTimeoutMs: e.DB_STATEMENT_TIMEOUT_MS,
      publishTimeoutMs: e.PUBLISH_TIMEOUT_MS,
      httpBodyBytes: e.HTTP_BODY_LIMIT_BYTES,
      graphqlMaxDepth: e.GRAPHQL_MAX_DEPTH,
      graphqlMaxAliases: e.GRAPHQL_MAX_ALIASES,
      graphqlMaxDirectives: e.GRAPHQL_MAX_DIRECTIVES,
      graphqlMaxTokens: e.GRAPHQL_MAX_TOKENS,
      graphqlMaxCost: e.GRAPHQL_MAX_COST,
      graphqlMaxListItems: e.GRAPHQL_MAX_LIST_ITEMS,
      wsMaxPayloadBytes: e.WS_MAX_PAYLOAD_BYTES,
      wsMaxSubscriptionsPerConnection: e.WS_MAX_SUBSCRIPTIONS_PER_CONNECTION,
      wsMaxConnectionsPerToken: e.WS_MAX_CONNECTIONS_PER_TOKEN,
      wsInitTimeoutMs: e.WS_INIT_TIMEOUT_MS,
      subscriberQueueMax: e.SUBSCRIBER_QUEUE_MAX,
      tokenCacheTtlMs: e.TOKEN_CACHE_TTL_MS,
      idempotencyTtlSeconds: e.IDEMPOTENCY_TTL_SECONDS,
      rolloutTickMs: e.ROLLOUT_TICK_MS,
      firmwareMaxBytes: e.FIRMWARE_MAX_BYTES,
      firmwareMaxUploads: e.FIRMWARE_MAX_UPLOADS,
      httpIdleTimeoutMs: e.HTTP_IDLE_TIMEOUT_MS,
      firmwareUrlGraceSeconds: e.FIRMWARE_URL_GRACE_SECONDS,
      emqxAuthMaxPending: e.EMQX_AUTH_MAX_PENDING,
      presenceTtlMs: e.PRESENCE_TTL_MS,
    }),
  });
}

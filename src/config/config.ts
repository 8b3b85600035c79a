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
}

const port = (name: string, fallback: number) =>
  z.coerce
    .number({ error: `${name} must be a port number` })
    .int(`${name} must be an integer`)
    .min(0, `${name} must be 0..65535`)
    .max(65535, `${name} must be 0..65535`)
    .default(fallback);

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
});

export class ConfigError extends Error {}

/**
 * Reads the environment into one frozen, validated object. Any bad variable
 * is named in the thrown {@link ConfigError}; nothing else reads `process.env`.
 */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const parsed = envSchema.safeParse(env);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`);
    throw new ConfigError(`invalid configuration:\n  ${problems.join("\n  ")}`);
  }
  const e = parsed.data;
  if ((e.TLS_CERT_FILE === undefined) !== (e.TLS_KEY_FILE === undefined)) {
    throw new ConfigError("invalid configuration:\n  TLS_CERT_FILE and TLS_KEY_FILE must be set together");
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
  });
}

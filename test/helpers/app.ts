import { randomBytes } from "node:crypto";
import type { TypedDocumentNode } from "@graphql-typed-document-node/core";
import { print, type ExecutionResult } from "graphql";
import { createClient, type Client } from "graphql-ws";
import { Redis } from "ioredis";
import WebSocket from "ws";
import { App } from "../../src/app.js";
import { loadConfig, type BrokerConfig, type Config } from "../../src/config/config.js";
import { createLogger } from "../../src/logger.js";
import { redisKeys } from "../../src/storage/progress.redis.js";
import { DEFAULT_DATABASE, freshDatabase, REDIS_URL, uniq, type DatabaseKind } from "./services.js";
import { onTeardown, tempDir } from "./teardown.js";
import { eventually, Inbox } from "./wait.js";

export interface TestApp {
  app: App;
  config: Config;
  httpUrl: string;
  wsUrl: string;
  /** Where devices connect: the embedded broker's port, or the external broker. */
  mqttUrl: string;
  token: string;
  stop(): Promise<void>;
}

export interface TestAppOptions {
  database?: DatabaseKind | Config["database"];
  /** An external broker URL; the embedded broker (on a free port) when omitted. */
  externalBroker?: string;
  /** Instances in one share group split the ingest; by default each app has a group of its own. */
  shareGroup?: string;
  mqttClientId?: string;
  tls?: boolean;
  env?: Record<string, string>;
  /** Apps that share state (instances of one deployment, a restart) share a prefix; by default each app has its own keyspace. */
  redisPrefix?: string;
  /** The embedded broker's port (a restart on the same port); a free one by default. */
  mqttPort?: number;
}

/** Starts the whole server on free ports against the real services; stopped after the file's tests. */
export async function startApp(options: TestAppOptions = {}): Promise<TestApp> {
  const token = `test-admin-${randomBytes(16).toString("hex")}`;
  const base = loadConfig({ REDIS_URL, ADMIN_TOKEN: token, LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? "silent", ...options.env });
  const database =
    typeof options.database === "object" ? options.database : await freshDatabase(options.database ?? DEFAULT_DATABASE);
  const broker: BrokerConfig = options.externalBroker
    ? { kind: "external", url: options.externalBroker, username: undefined, password: undefined, shareGroup: options.shareGroup ?? uniq("grp"), tlsInsecure: false }
    : {
        kind: "embedded",
        host: "127.0.0.1",
        port: options.mqttPort ?? 0,
        tlsPort: options.tls ? 0 : null,
        tlsCertFile: undefined,
        tlsKeyFile: undefined,
      };
  const config: Config = {
    ...base,
    httpPort: 0,
    httpHost: "127.0.0.1",
    broker,
    database,
    dataDir: tempDir("test"),
    redisPrefix: options.redisPrefix ?? `${uniq("t")}:`,
    mqttClientId: options.mqttClientId,
  };
  const app = new App(config, createLogger(config.logLevel));
  await app.start();
  const stop = () => app.stop();
  onTeardown(stop);
  const { http, mqtt } = app.address;
  return {
    app,
    config,
    httpUrl: `http://127.0.0.1:${http}`,
    wsUrl: `ws://127.0.0.1:${http}/graphql`,
    mqttUrl: options.externalBroker ?? `mqtt://127.0.0.1:${mqtt}`,
    token,
    stop,
  };
}

export type GqlResult<T> = ExecutionResult<T> & { status: number };

/** GraphQL over HTTP with a typed document, as a dashboard would call it. */
export async function gql<T, V>(
  t: Pick<TestApp, "httpUrl" | "token">,
  doc: TypedDocumentNode<T, V>,
  variables: V,
  authorization: string | null = `Bearer ${t.token}`,
): Promise<GqlResult<T>> {
  const res = await fetch(`${t.httpUrl}/graphql`, {
    method: "POST",
    headers: { "content-type": "application/json", ...(authorization ? { authorization } : {}) },
    body: JSON.stringify({ query: print(doc), variables }),
  });
  return { ...((await res.json()) as ExecutionResult<T>), status: res.status };
}

/** Like {@link gql}, but fails the test on any GraphQL error. */
export async function gqlOk<T, V>(t: Pick<TestApp, "httpUrl" | "token">, doc: TypedDocumentNode<T, V>, variables: V): Promise<T> {
  const r = await gql(t, doc, variables);
  if (r.errors?.length || !r.data) throw new Error(`GraphQL errors: ${JSON.stringify(r.errors)}`);
  return r.data;
}

/** The app behind each client, so that {@link subscribe} can wait for the server to take a subscription. */
const appOf = new WeakMap<Client, Partial<TestApp>>();

let redis: Redis | undefined;
function testRedis(): Redis {
  if (!redis) {
    const r = (redis = new Redis(REDIS_URL));
    onTeardown(() => {
      redis = undefined;
      return r.quit();
    });
  }
  return redis;
}

export function wsClient(t: Pick<TestApp, "wsUrl" | "token"> & Partial<TestApp>, authorization: string | null = `Bearer ${t.token}`): Client {
  const client = createClient({
    url: t.wsUrl,
    webSocketImpl: WebSocket,
    connectionParams: authorization ? { authorization } : {},
    retryAttempts: 0,
    lazy: false,
    onNonLazyError: () => undefined,
  });
  onTeardown(() => client.dispose());
  appOf.set(client, t);
  return client;
}

/** A graphql-ws subscription whose results land in an inbox; resolves once the server has taken it. */
export async function subscribe<T, V>(client: Client, doc: TypedDocumentNode<T, V>, variables: V) {
  const results = new Inbox<ExecutionResult<T>>();
  const errors = new Inbox<unknown>();
  const t = appOf.get(client);
  const productName = (variables as { productName?: unknown }).productName;
  const watchersBefore = typeof productName === "string" ? (t?.app?.progressFeed.watching.get(productName) ?? 0) : 0;
  const stop = client.subscribe<T>(
    { query: print(doc), variables: variables as Record<string, unknown> },
    { next: (r) => results.push(r as ExecutionResult<T>), error: (e) => errors.push(e), complete: () => undefined },
  );
  onTeardown(stop);
  // Taken once the server watches for this subscriber and its Redis subscription is live (or it has answered already).
  if (t?.app && t.config && typeof productName === "string") {
    const { app, config } = t;
    const channel = redisKeys(config.redisPrefix).progressChannel(productName);
    await eventually(async () => {
      if (results.pending.length > 0 || errors.pending.length > 0) return;
      if ((app.progressFeed.watching.get(productName) ?? 0) <= watchersBefore) throw new Error("subscription not taken yet");
      const [, listeners] = (await testRedis().pubsub("NUMSUB", channel)) as [string, number];
      if (listeners < 1) throw new Error("Redis subscription not live yet");
    }, 5_000);
  }
  return { results, errors, stop };
}

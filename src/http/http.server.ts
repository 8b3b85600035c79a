import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { ApolloServer } from "@apollo/server";
import { expressMiddleware } from "@as-integrations/express5";
import { ApolloServerPluginCacheControlDisabled } from "@apollo/server/plugin/disabled";
import { ApolloServerPluginDrainHttpServer } from "@apollo/server/plugin/drainHttpServer";
import cors from "cors";
import express, { type NextFunction, type Request, type Response } from "express";
import type { GraphQLSchema } from "graphql";
import { GraphQLError } from "graphql";
import { useServer } from "graphql-ws/use/ws";
import { WebSocketServer } from "ws";
import { bearerToken, type Principal } from "../auth/principal.js";
import type { TokenService } from "../auth/token.service.js";
import type { EmqxAuthConfig, Limits } from "../config/config.js";
import type { DeviceService } from "../devices/device.service.js";
import type { ArtifactService } from "../firmware/artifact.service.js";
import { ErrorCode } from "../errors.js";
import { listen } from "../listen.js";
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";
import type { RolloutFeed } from "../rollouts/rollout.feed.js";
import type { RolloutService } from "../rollouts/rollout.service.js";
import type { OtaService } from "../ota/ota.service.js";
import type { ProgressFeed } from "../ota/progress.feed.js";
import type { Context, SubscriptionContext } from "./context.js";
import { dashboard } from "./dashboard.js";
import { jsonErrorHandler, maskError, notFound, sendError } from "./errors.js";
import { bodyErrorOf, LeanGraphql } from "./graphql.lean.js";
import { armorRules, listItemsPlugin, wsOperationGate, type OperationRequest } from "./graphql.limits.js";
import { refusals } from "./refusals.js";
import { emqxAuthRoutes } from "./emqx.routes.js";
import { continuesItself, firmwareRoutes } from "./firmware.routes.js";
import { restRoutes } from "./rest.routes.js";
import { serialisedOnce, sharedDocuments, sharedSubscribe, type FormatResult } from "./shared.subscribe.js";
import { WsCloseCode, WsConnections } from "./ws.connections.js";

export interface HttpDeps {
  tokens: TokenService;
  devices: DeviceService;
  ota: OtaService;
  progressFeed: ProgressFeed;
  rolloutFeed: RolloutFeed;
  rollouts: RolloutService;
  artifacts: ArtifactService;
  metrics: Metrics;
  log: Logger;
  corsOrigins: readonly string[];
  limits: Limits;
  /** Each dependency's readiness check; /readyz answers 503 naming those that fail. */
  readiness: Record<string, () => Promise<void>>;
  /** FIRMWARE_ACCEL_REDIRECT: firmware downloads sent by the proxy in front from this internal location. */
  firmwareAccelRedirect?: string;
  /** EMQX's HTTP authentication and authorization (EMQX_AUTH_SECRET); absent: not served. */
  emqx?: EmqxAuthConfig;
  /** The built web dashboard served at `/`; default web/dist. */
  dashboardDir?: string;
}

const READINESS_TIMEOUT_MS = 2000;

/** What this server keeps per graphql-ws connection (`ctx.extra`, beside graphql-ws' `socket`). */
type WsExtra = { principal?: Principal };

/** One HTTP server: GraphQL over HTTP and graphql-ws at /graphql, REST, health and metrics. */
export class HttpServer {
  #server: Server | undefined;
  #apollo: ApolloServer<Context> | undefined;
  #lean: LeanGraphql | undefined;
  #wsCleanup: { dispose(): Promise<void> | void } | undefined;
  #sweep: NodeJS.Timeout | undefined;
  #unsubscribeRevoked: (() => void) | undefined;

  constructor(private readonly deps: HttpDeps) {}

  get port(): number {
    return (this.#server?.address() as AddressInfo).port;
  }

  async start(schema: GraphQLSchema, port: number, host: string): Promise<void> {
    const { tokens, log, metrics, limits } = this.deps;
    const refuse = refusals(metrics, log, limits.refusedLogIntervalMs);
    const app = express();
    app.disable("x-powered-by");
    const origins = this.deps.corsOrigins;
    if (origins.length > 0) app.use(cors({ origin: origins.includes("*") ? "*" : [...origins], maxAge: 600 }));
    // Queries the lean path answers skip Express (graphql.lean.ts, take); everything else is the app's.
    let lean: LeanGraphql | undefined;
    const server = createServer((req, res) => {
      if (!lean?.take(req, res, fastPath)) app(req, res);
    });
    const fastPath = { verify: (token: string | undefined) => tokens.verify(token), bodyLimit: limits.httpBodyBytes, cors: origins.length > 0, fallback: app };
    // Bounded by silence rather than by duration: a 1 GiB upload on a slow link is fine, a stalled one is not.
    server.requestTimeout = 0;
    server.timeout = limits.httpIdleTimeoutMs;
    server.on("checkContinue", (req, res) => {
      if (!continuesItself(req)) res.writeContinue();
      app(req, res);
    });
    const onInternal = (err: unknown) => log.error({ err }, "unexpected error in a GraphQL operation");

    /** Every surface authenticates the same way; the token is checked before any body is read. */
    const authenticate = async (req: Request, res: Response, next: NextFunction) => {
      const principal = await tokens.verify(bearerToken(req.headers.authorization));
      if (!principal) return sendError(res, ErrorCode.UNAUTHENTICATED, "missing or invalid API token (Authorization: Bearer <token>)");
      res.locals.principal = principal;
      next();
    };

    this.#startWs(schema, server, refuse);

    // Validated queries that need nothing of Apollo's pipeline skip it (graphql.lean.ts); Apollo answers the rest.
    lean = new LeanGraphql(schema, limits.graphqlMaxListItems);
    this.#lean = lean;
    const apollo = new ApolloServer<Context>({
      schema,
      includeStacktraceInErrorResponses: false,
      // main.ts owns the signals and stops components in order; Apollo's own handler would race it.
      stopOnTerminationSignals: false,
      // Stated although they are Apollo 5's defaults: a batch is refused (400), and so are requests a browser could send cross-site without a preflight.
      allowBatchedHttpRequests: false,
      csrfPrevention: true,
      parseOptions: { maxTokens: limits.graphqlMaxTokens },
      validationRules: armorRules(limits, (rule) => refuse("graphql", rule)),
      formatError: (formatted, error) => maskError(formatted, error, onInternal),
      plugins: [
        ApolloServerPluginDrainHttpServer({ httpServer: server }),
        // Cache hints are unused here, and the plugin wraps every field resolver: a list of 1,000 progress records pays for it 11,000 times.
        ApolloServerPluginCacheControlDisabled(),
        listItemsPlugin<Context>(limits.graphqlMaxListItems, (rule) => refuse("graphql", rule)),
        lean.plugin(),
      ],
    });
    await apollo.start();
    this.#apollo = apollo;

    app.get("/healthz", (_req, res) => void res.json({ status: "ok" }));
    app.get("/readyz", async (_req, res) => {
      const checks = await Promise.all(
        Object.entries(this.deps.readiness).map(async ([name, check]) => {
          try {
            await withTimeout(check(), READINESS_TIMEOUT_MS);
            return [name, "ok"] as const;
          } catch (err) {
            // The reason stays in the log: an error text can carry hosts, users or paths.
            log.warn({ err, dependency: name }, "readiness check failed");
            return [name, "failed"] as const;
          }
        }),
      );
      const ready = checks.every(([, v]) => v === "ok");
      res.status(ready ? 200 : 503).json({ status: ready ? "ready" : "not ready", checks: Object.fromEntries(checks) });
    });
    app.get("/metrics", async (_req, res) => {
      res.type(metrics.registry.contentType).send(await metrics.registry.metrics());
    });

    app.use(
      "/graphql",
      authenticate,
      // A body the path ahead of Express could not read or parse: answered as express.json() answers it.
      (req: Request, _res: Response, next: NextFunction) => next(bodyErrorOf(req)),
      express.json({ limit: limits.httpBodyBytes }),
      // Apollo answers a body that is missing or of another content type (CSRF prevention, "POST body missing"), as JSON; it only needs `req.body` defined.
      (req: Request, _res: Response, next: NextFunction) => {
        if (!("body" in req)) (req as { body?: unknown }).body = undefined;
        next();
      },
      lean.middleware,
      expressMiddleware(apollo, { context: async ({ res }) => ({ principal: res.locals.principal as Principal }) }),
    );
    app.use(firmwareRoutes(this.deps.artifacts, authenticate, { metrics, log, refuse, maxBytes: limits.firmwareMaxBytes, accelRedirect: this.deps.firmwareAccelRedirect }));
    app.use(restRoutes(this.deps.devices, this.deps.ota, authenticate, limits.httpBodyBytes));
    // Before the dashboard and the 404: EMQX reads any answer but a 200 allow/deny as "no match".
    if (this.deps.emqx) app.use(emqxAuthRoutes({ devices: this.deps.devices, metrics, log, limits, ...this.deps.emqx }));
    app.use(dashboard(this.deps.dashboardDir));
    app.use(notFound);
    app.use(jsonErrorHandler(limits.httpBodyBytes, log, (reason) => refuse("http", reason)));

    await listen(server, host, port, "PORT", (err) => log.error({ err: err.message }, "http listener error"));
    this.#server = server;
    log.info({ port: this.port }, "http listening");
  }

  /** graphql-ws on /graphql: the HTTP limits, and per-connection and per-token ones. */
  #startWs(schema: GraphQLSchema, server: Server, refuse: ReturnType<typeof refusals>): void {
    const { tokens, log, limits } = this.deps;
    const onInternal = (err: unknown) => log.error({ err }, "unexpected error in a GraphQL operation");
    // ws refuses a larger frame from its header (close 1009), before reading it: before authentication too.
    // No compression (ws' default, stated): pushed subscriptions write whole plain frames (shared.subscribe.ts, rawSocketOf).
    const wss = new WebSocketServer({ server, path: "/graphql", maxPayload: limits.wsMaxPayloadBytes, perMessageDeflate: false });
    wss.on("connection", (socket) =>
      // After graphql-ws has added its own listener, which prints each error's stack on stderr: a flood of
      // bad frames must not be a flood of stacks. ws closes the socket itself on these (1009 for a large frame).
      queueMicrotask(() => {
        socket.removeAllListeners("error");
        socket.on("error", (err: Error & { code?: string }) => refuse("ws", err.code === "WS_ERR_UNSUPPORTED_MESSAGE_LENGTH" ? "frame_too_large" : "bad_frame"));
      }),
    );
    const connections = new WsConnections(limits.wsMaxConnectionsPerToken);
    const refuseWs = (rule: string) => refuse("ws", rule);
    const shared = sharedDocuments({ maxTokens: limits.graphqlMaxTokens, rules: armorRules(limits, refuseWs) });
    const gate = wsOperationGate(limits.graphqlMaxListItems, schema, shared.parse, shared.validate, refuseWs);
    const format: FormatResult = (result) => (result.errors ? { ...result, errors: result.errors.map((e) => maskError(e.toJSON(), e, onInternal)) } : result);
    // An event is executed once per distinct query; pushed to the subscribers of the progress feed in one loop.
    const delivery = sharedSubscribe({ format });
    // A result shared by many subscribers that graphql-ws delivers itself is serialised once, not once per subscriber.
    const once = serialisedOnce();
    this.#wsCleanup = useServer<Record<string, unknown>, WsExtra>(
      {
        schema,
        // Close reasons never echo an error's text, whatever NODE_ENV says.
        isProd: true,
        connectionInitWaitTimeout: limits.wsInitTimeoutMs,
        subscribe: delivery.subscribe,
        onConnect: async (ctx) => {
          const socket = ctx.extra.socket;
          let principal: Principal | null;
          try {
            principal = await tokens.verify(bearerToken(ctx.connectionParams?.authorization));
          } catch (err) {
            // The token store is unreachable: say so without internals (graphql-ws would print the error and may echo it).
            log.error({ err }, "could not check the API token of a WebSocket connection");
            socket.close(WsCloseCode.TokenUnchecked, "the API token could not be checked: try again later");
            return false;
          }
          if (!principal) {
            socket.close(WsCloseCode.Unauthorized, "Unauthorized: missing or invalid API token");
            return false;
          }
          if (!connections.add(principal.tokenId, socket)) {
            refuse("ws", "connections_per_token");
            socket.close(WsCloseCode.TooManyConnections, `this API token already has ${limits.wsMaxConnectionsPerToken} connections`);
            return false;
          }
          ctx.extra.principal = principal;
          // Nothing reads the upgrade request later; holding it would cost every connection kilobytes.
          Reflect.deleteProperty(ctx.extra, "request");
          return true;
        },
        onClose: (ctx) => {
          const principal = ctx.extra.principal;
          if (principal) connections.remove(principal.tokenId, ctx.extra.socket);
        },
        onSubscribe: (ctx, id, payload) => {
          shared.onSubscribe(ctx, id, payload);
          // graphql-ws has already entered this one in ctx.subscriptions.
          if (Object.keys(ctx.subscriptions).length > limits.wsMaxSubscriptionsPerConnection) {
            refuse("ws", "subscriptions_per_connection");
            return [
              new GraphQLError(`at most ${limits.wsMaxSubscriptionsPerConnection} operations at once per connection`, {
                extensions: { code: ErrorCode.LIMIT_EXCEEDED },
              }),
            ];
          }
          return gate(payload as OperationRequest);
        },
        context: (ctx): SubscriptionContext => ({
          principal: ctx.extra.principal as Principal,
          progressFeed: this.deps.progressFeed,
          rolloutFeed: this.deps.rolloutFeed,
          rollouts: this.deps.rollouts,
        }),
        // graphql-ws keeps the subscription (ids, complete, errors, limits); its `next` messages are then the stream's to send.
        onOperation: (ctx, id, _payload, _args, result) => delivery.pushed(result, ctx.extra.socket, id),
        onNext: (ctx, _id, _payload, _args, result) => {
          once.wrap(ctx.extra.socket);
          return once.payload(format(result));
        },
        onError: (_ctx, _id, _payload, errors) => errors.map((e) => maskError(e.toJSON(), e, onInternal)),
      },
      wss,
    );

    // Revoked here: closed now. Revoked on another instance, or expired: closed by the next sweep.
    this.#unsubscribeRevoked = tokens.onRevoked((tokenId) => connections.closeToken(tokenId, "API token revoked"));
    this.#sweep = setInterval(() => {
      const ids = connections.tokenIds;
      if (ids.length === 0) return;
      tokens.stillValid(ids).then(
        (valid) => {
          for (const id of ids) if (!valid.has(id)) connections.closeToken(id, "API token revoked or expired");
        },
        // A database blip must not drop every dashboard: they are checked again next time.
        (err: unknown) => log.warn({ err }, "could not re-check the tokens of live WebSocket connections"),
      );
    }, limits.tokenCacheTtlMs);
    this.#sweep.unref();
  }

  /** Stops accepting, lets requests in flight finish, closes subscriptions. */
  async stop(): Promise<void> {
    clearInterval(this.#sweep);
    this.#unsubscribeRevoked?.();
    this.#unsubscribeRevoked = undefined;
    const apollo = this.#apollo;
    this.#apollo = undefined;
    this.#lean?.close();
    await this.#wsCleanup?.dispose();
    this.#wsCleanup = undefined;
    if (apollo) await apollo.stop(); // the drain plugin closes the HTTP server
    this.#server = undefined;
  }
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms);
    p.then(resolve, reject).finally(() => clearTimeout(timer));
  });
}

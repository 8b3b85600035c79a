import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { ApolloServer } from "@apollo/server";
import { expressMiddleware } from "@as-integrations/express5";
import { ApolloServerPluginCacheControlDisabled } from "@apollo/server/plugin/disabled";
import { ApolloServerPluginDrainHttpServer } from "@apollo/server/plugin/drainHttpServer";
import cors from "cors";
import express, { type NextFunction, type Request, type Response } from "express";
import { GraphQLError, type GraphQLSchema } from "graphql";
import { useServer } from "graphql-ws/use/ws";
import { WebSocketServer } from "ws";
import { bearerToken, type Principal } from "../auth/principal.js";
import { listen } from "../listen.js";
import type { Limits } from "../config/config.js";
import type { TokenService } from "../auth/token.service.js";
import type { DeviceService } from "../devices/device.service.js";
import { ErrorCode } from "../errors.js";
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";
import type { SubscriptionContext } from "../ota/ota.resolver.js";
import type { OtaService } from "../ota/ota.service.js";
import type { ProgressFeed } from "../ota/progress.feed.js";
import type { Context } from "./context.js";
import { maskError } from "./errors.js";
import { restRoutes } from "./rest.routes.js";
import { sharedDocuments, sharedSubscribe } from "./shared.subscribe.js";

export interface HttpDeps {
  tokens: TokenService;
  devices: DeviceService;
  ota: OtaService;
  progressFeed: ProgressFeed;
  metrics: Metrics;
  log: Logger;
  corsOrigins: readonly string[];
  limits: Limits;
  /** Each dependency's readiness check; /readyz answers 503 naming those that fail. */
  readiness: Record<string, () => Promise<void>>;
}

const unauthenticated = () =>
  new GraphQLError("missing or invalid API token (Authorization: Bearer <token>)", {
    extensions: { code: ErrorCode.UNAUTHENTICATED, http: { status: 401 } },
  });

/** One HTTP server: GraphQL over HTTP and graphql-ws at /graphql, REST, health and metrics. */
export class HttpServer {
  #server: Server | undefined;
  #apollo: ApolloServer<Context> | undefined;
  #wsCleanup: { dispose(): Promise<void> | void } | undefined;

  constructor(private readonly deps: HttpDeps) {}

  get port(): number {
    return (this.#server?.address() as AddressInfo).port;
  }

  async start(schema: GraphQLSchema, port: number, host: string): Promise<void> {
    const { tokens, log, metrics } = this.deps;
    const app = express();
    app.disable("x-powered-by");
    const origins = this.deps.corsOrigins;
    if (origins.length > 0) app.use(cors({ origin: origins.includes("*") ? "*" : [...origins], maxAge: 600 }));
    const server = createServer(app);
    const onInternal = (err: unknown) => log.error({ err }, "unexpected error in a GraphQL operation");

    const wss = new WebSocketServer({ server, path: "/graphql" });
    this.#wsCleanup = useServer<Record<string, unknown>, { principal?: Principal }>(
      {
        schema,
        ...sharedDocuments(),
        subscribe: sharedSubscribe(),
        onConnect: async (ctx) => {
          const principal = await tokens.verify(bearerToken(ctx.connectionParams?.authorization));
          if (!principal) {
            ctx.extra.socket.close(4401, "Unauthorized: missing or invalid API token");
            return false;
          }
          ctx.extra.principal = principal;
          // Nothing reads the upgrade request later; holding it would cost every connection kilobytes.
          Reflect.deleteProperty(ctx.extra, "request");
          return true;
        },
        context: (ctx): SubscriptionContext => ({
          principal: ctx.extra.principal as Principal,
          progressFeed: this.deps.progressFeed,
        }),
        onNext: (_ctx, _id, _payload, _args, result) =>
          result.errors ? { ...result, errors: result.errors.map((e) => maskError(e.toJSON(), e, onInternal)) } : result,
        onError: (_ctx, _id, _payload, errors) => errors.map((e) => maskError(e.toJSON(), e, onInternal)),
      },
      wss,
    );

    const apollo = new ApolloServer<Context>({
      schema,
      includeStacktraceInErrorResponses: false,
      // main.ts owns the signals and stops components in order; Apollo's own handler would race it.
      stopOnTerminationSignals: false,
      formatError: (formatted, error) => maskError(formatted, error, onInternal),
      plugins: [
        ApolloServerPluginDrainHttpServer({ httpServer: server }),
        // Cache hints are unused here, and the plugin wraps every field resolver: a list of 1,000 progress records pays for it 11,000 times.
        ApolloServerPluginCacheControlDisabled(),
      ],
    });
    await apollo.start();
    this.#apollo = apollo;

    app.get("/healthz", (_req, res) => void res.json({ status: "ok" }));
    app.get("/readyz", async (_req, res) => {
      const checks = await Promise.all(
        Object.entries(this.deps.readiness).map(async ([name, check]) => {
          try {
            await withTimeout(check(), 2000);
            return [name, "ok"] as const;
          } catch (err) {
            return [name, (err as Error).message || "failed"] as const;
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
      express.json({ limit: "1mb" }),
      expressMiddleware(apollo, {
        context: async ({ req }) => {
          const principal = await tokens.verify(bearerToken(req.headers.authorization));
          if (!principal) throw unauthenticated();
          return { principal };
        },
      }),
    );

    const requireToken = async (req: Request, res: Response, next: NextFunction) => {
      if (await tokens.verify(bearerToken(req.headers.authorization))) return next();
      res.status(401).type("text/plain").send("missing or invalid API token");
    };
    app.use(requireToken, restRoutes(this.deps.devices, this.deps.ota, log));

    await listen(server, host, port, "PORT", (err) => log.error({ err: err.message }, "http listener error"));
    this.#server = server;
    log.info({ port: this.port }, "http listening");
  }

  /** Stops accepting, lets requests in flight finish, closes subscriptions. */
  async stop(): Promise<void> {
    const apollo = this.#apollo;
    this.#apollo = undefined;
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

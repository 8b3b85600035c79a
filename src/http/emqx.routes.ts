import { createHash, timingSafeEqual } from "node:crypto";
import express, { type NextFunction, type Request, type Response, type Router } from "express";
import { LRUCache } from "lru-cache";
import { z } from "zod";
import { Refusals } from "../broker/refusals.js";
import type { EmqxAuthConfig, Limits } from "../config/config.js";
import type { DeviceService } from "../devices/device.service.js";
import type { Logger } from "../logger.js";
import { upTo } from "../lru.js";
import type { Metrics } from "../metrics.js";
import { authorizedPublish, canSubscribe, clientIdMatches, parseUsername, type DeviceIdentity } from "../protocol/acl.js";
import { serverMayPublish, serverMaySubscribe } from "../protocol/server.acl.js";

/** Where EMQX's HTTP authenticator posts (README.md, "EMQX"). */
export const EMQX_AUTHN_PATH = "/emqx/authn";
/** Where EMQX's HTTP authorizer posts. */
export const EMQX_AUTHZ_PATH = "/emqx/authz";
/** The header EMQX sends (the authenticator's and authorizer's `headers`), holding EMQX_AUTH_SECRET. */
export const EMQX_SECRET_HEADER = "x-emqx-auth-secret";

export interface EmqxAuthDeps extends EmqxAuthConfig {
  devices: Pick<DeviceService, "authenticate" | "find">;
  metrics: Metrics;
  log: Logger;
  limits: Pick<Limits, "httpBodyBytes" | "refusedLogIntervalMs" | "emqxAuthMaxPending">;
  /** How long a device's standing is remembered (default {@link STANDING_TTL_MS}; tests shorten it). */
  standingTtlMs?: number;
}

/**
 * How long the authorizer remembers whether a device is registered and not
 * suspended: a suspension or deletion reaches a device still connected to
 * EMQX by its next publish or subscribe after at most this (plus EMQX's own
 * authorization cache), at one registry read per device per interval.
 */
const STANDING_TTL_MS = 5_000;
const STANDING_CACHE_SIZE = 100_000;

/** Characters of a client id, username or topic that a log line keeps. */
const LOGGED_CHARS = 200;

export type DenyReason =
  /** The caller did not send EMQX_AUTH_SECRET: nothing else was looked at. */
  | "unauthenticated"
  /** Not the body the README's templates render (or not JSON, or too large, or not POST). */
  | "bad_request"
  /** EMQX_AUTH_MAX_PENDING authentication calls are being answered already. */
  | "busy"
  | "bad_username"
  | "client_id"
  | "bad_credentials"
  | "suspended"
  /** The device is no longer registered (authorization of a connection made before its deletion). */
  | "unknown_device"
  | "not_allowed"
  | "retain"
  | "registry_unavailable"
  | "internal";

type Endpoint = "authn" | "authz";

export type Denied = { result: "deny"; reason: DenyReason; message: string };
export type Verdict = { result: "allow" } | Denied;

const deny = (reason: DenyReason, message: string): Denied => ({ result: "deny", reason, message });
const ALLOW: Verdict = { result: "allow" };

/**
 * EMQX renders every placeholder as a JSON string (emqx_auth_template,
 * `render_deep_for_json`; an unset one as ""): `"qos": "1"`, `"retain": "false"`.
 * JSON numbers and booleans are taken too. Other fields are ignored.
 */
const flag = z.union([z.boolean(), z.enum(["true", "false"]).transform((v) => v === "true")]);
const qos = z.union([z.literal(0), z.literal(1), z.literal(2), z.enum(["0", "1", "2"]).transform(Number)]);
const authnBody = z.object({
  clientid: z.string().min(1),
  username: z.string(),
  password: z.string(),
  peerhost: z.string().optional(),
});
const authzBody = z.object({
  clientid: z.string().min(1),
  username: z.string(),
  action: z.enum(["publish", "subscribe"]),
  topic: z.string().min(1),
  qos: qos.optional(),
  retain: flag.optional(),
  peerhost: z.string().optional(),
});
type AuthnBody = z.infer<typeof authnBody>;
type AuthzBody = z.infer<typeof authzBody>;

const sha256 = (s: string) => createHash("sha256").update(s, "utf8").digest();
/** Compared as digests: equal lengths for timingSafeEqual, and no early exit on the first differing byte. */
const sameSecret = (given: unknown, expected: Buffer) => typeof given === "string" && timingSafeEqual(sha256(given), expected);
const clip = (s: string | undefined) => (s === undefined || s.length <= LOGGED_CHARS ? s : `${s.slice(0, LOGGED_CHARS)}…`);

function problemsOf(error: z.ZodError): string {
  return error.issues.map((i) => `${i.path.join(".") || "body"}: ${i.message}`).join("; ");
}

/** Whether a registered device may still use its connection: looked up in the registry, remembered briefly. */
type Standing = "active" | "suspended" | "unknown_device";

/**
 * The endpoints EMQX 5's HTTP authenticator and HTTP authorizer call,
 * deciding with the registry and the protocol's access rules, the same
 * functions the embedded broker uses (src/protocol/acl.ts, DeviceService.authenticate).
 *
 * Every answer is HTTP 200 with a JSON `result` of `allow` or `deny`, never
 * `ignore` and never 204: EMQX's authorizer takes 204 as allow and any other
 * status as "no match" (emqx_authz_http `handle_response`), which falls
 * through to the next source and, past the last, to `authorization.no_match`
 * (`allow` in many EMQX 5 installations). So a request without the shared secret, a malformed
 * one, one too large, an unexpected method, an overload, an outage and a
 * crash here all answer deny: nothing that goes wrong can grant access.
 * `reason` and `message` are for people reading the answer; EMQX ignores them.
 *
 * The shared secret is checked before the body is read, in constant time; a
 * caller without it learns nothing (every answer is the same deny), so the
 * endpoints are no password oracle for the network.
 */
export function emqxAuthRoutes(deps: EmqxAuthDeps): Router {
  const { devices, metrics, log, limits } = deps;
  if (deps.secret.length < 32) throw new Error("the EMQX auth endpoints need a secret of at least 32 characters (EMQX_AUTH_SECRET)");
  if (deps.serverUsername?.includes("/")) throw new Error("MQTT_USERNAME must not be of the device form <product>/<device>");
  const secret = sha256(deps.secret);
  // The server's own client is admitted only when both of its credentials are configured.
  const server =
    deps.serverUsername !== undefined && deps.serverPassword !== undefined
      ? { username: deps.serverUsername, password: sha256(deps.serverPassword) }
      : undefined;
  const throttle = new Refusals(metrics, log, limits.refusedLogIntervalMs);
  let pending = 0;

  const standing = new LRUCache<string, Standing>({
    ...upTo(STANDING_CACHE_SIZE),
    ttl: deps.standingTtlMs ?? STANDING_TTL_MS,
    // A registry outage keeps the last known standing; with none, `authorize` decides.
    allowStaleOnFetchRejection: true,
    fetchMethod: async (key) => {
      const [productName, deviceName] = key.split("/") as [string, string];
      try {
        const device = await devices.find(productName, deviceName);
        return !device ? "unknown_device" : device.suspended ? "suspended" : "active";
      } catch (err) {
        if (throttle.shouldLog("emqx:registry")) log.warn({ err }, "EMQX authorization: registry unavailable, device standing unknown");
        throw err;
      }
    },
  });

  /** Counted always, logged at most once per interval per endpoint, reason and device (or caller). */
  function refused(endpoint: Endpoint, verdict: Denied, key: string, details: Record<string, unknown>): void {
    metrics.refused.inc({ kind: `emqx_${endpoint}`, reason: verdict.reason });
    if (throttle.shouldLog(`emqx:${endpoint}:${verdict.reason}:${key}`)) {
      log.warn({ endpoint, reason: verdict.reason, message: verdict.message, ...details }, "EMQX auth call denied");
    }
  }

  async function authenticate(body: AuthnBody): Promise<Verdict> {
    if (server && body.username === server.username) {
      return sameSecret(body.password, server.password) ? ALLOW : deny("bad_credentials", "bad username or password");
    }
    // The embedded broker's login (embedded.broker.ts #login), rule for rule: username, password present, client id, secret.
    const id = parseUsername(body.username);
    if (!id.ok || body.password === "") return deny("bad_username", "username must be <product>/<device>, with the device secret as password");
    if (!clientIdMatches(body.clientid, id.value)) return deny("client_id", "client id must be <product>/<device> or <product>/<device>/<suffix>");
    let result;
    try {
      result = await devices.authenticate(id.value.productName, id.value.deviceName, body.password);
    } catch (err) {
      if (throttle.shouldLog("emqx:authn:registry")) log.error({ err, clientId: clip(body.clientid) }, "EMQX authentication: registry unavailable");
      return deny("registry_unavailable", "the device registry is unavailable; try again later");
    }
    switch (result) {
      case "ok":
        return ALLOW;
      case "suspended":
        return deny("suspended", "device suspended");
      case "bad_credentials":
        return deny("bad_credentials", "bad username or password");
      default: {
        const never: never = result;
        return never;
      }
    }
  }

  async function authorize(body: AuthzBody): Promise<Verdict> {
    if (body.action === "publish" && body.retain === undefined) {
      // Unknown is not "not retained": the template must say (README.md, "EMQX").
      return deny("bad_request", 'retain: required for publish (add "retain": "${retain}" to the body)');
    }
    const retain = body.retain ?? false;
    if (server && body.username === server.username) {
      const ok = body.action === "publish" ? serverMayPublish(body.topic, retain) : serverMaySubscribe(body.topic);
      return ok ? ALLOW : deny(retain ? "retain" : "not_allowed", `the server's client may not ${body.action} ${clip(body.topic)}`);
    }
    const id = parseUsername(body.username);
    if (!id.ok) return deny("bad_username", "username must be <product>/<device>");
    if (!clientIdMatches(body.clientid, id.value)) return deny("client_id", "client id must be <product>/<device> or <product>/<device>/<suffix>");
    const rule = deviceRule(id.value, body.action, body.topic, retain);
    if (rule.result === "deny") return rule;
    const key = `${id.value.productName}/${id.value.deviceName}`;
    const now = await standing.fetch(key);
    switch (now) {
      case "active":
        return ALLOW;
      case "suspended":
        return deny("suspended", "device suspended");
      case "unknown_device":
        return deny("unknown_device", "device not registered");
      case undefined:
        // The registry is down and this device's standing was never read: it authenticated when it connected, and the
        // request is within its own rules. Denying would drop its reports for good (EMQX acknowledges a denied publish).
        return ALLOW;
      default: {
        const never: never = now;
        return never;
      }
    }
  }

  const router = express.Router();
  const json = express.json({ limit: limits.httpBodyBytes });

  /** Before any body is read: a caller without the secret gets the same deny whatever it sends. */
  const secretGate = (endpoint: Endpoint) => (req: Request, res: Response, next: NextFunction) => {
    res.locals.emqxEndpoint = endpoint;
    if (sameSecret(req.get(EMQX_SECRET_HEADER), secret)) return next();
    const verdict = deny("unauthenticated", `missing or wrong ${EMQX_SECRET_HEADER} header`);
    refused(endpoint, verdict, `addr:${req.socket.remoteAddress}`, { remoteAddress: req.socket.remoteAddress });
    send(res, endpoint, verdict);
  };

  router.post(EMQX_AUTHN_PATH, secretGate("authn"), async (req, res, next) => {
    if (pending >= limits.emqxAuthMaxPending) {
      const verdict = deny("busy", `${limits.emqxAuthMaxPending} authentication calls in progress; try again later`);
      refused("authn", verdict, "busy", {});
      return send(res, "authn", verdict);
    }
    pending += 1;
    try {
      await new Promise<void>((resolve, reject) => json(req, res, (err?: unknown) => (err ? reject(err) : resolve())));
      const body = authnBody.safeParse(req.body);
      if (!body.success) {
        const verdict = deny("bad_request", `${problemsOf(body.error)} (Content-Type: application/json; README.md, "EMQX")`);
        refused("authn", verdict, "bad_request", {});
        return send(res, "authn", verdict);
      }
      const verdict = await authenticate(body.data);
      if (verdict.result === "deny") {
        const id = parseUsername(body.data.username);
        const key = id.ok ? `${id.value.productName}/${id.value.deviceName}` : `client:${clip(body.data.clientid)}`;
        refused("authn", verdict, key, { clientId: clip(body.data.clientid), username: clip(body.data.username), peerhost: body.data.peerhost });
      }
      send(res, "authn", verdict);
    } catch (err) {
      next(err);
    } finally {
      pending -= 1;
    }
  });

  router.post(EMQX_AUTHZ_PATH, secretGate("authz"), json, async (req, res) => {
    const body = authzBody.safeParse(req.body);
    if (!body.success) {
      const verdict = deny("bad_request", `${problemsOf(body.error)} (Content-Type: application/json; README.md, "EMQX")`);
      refused("authz", verdict, "bad_request", {});
      return send(res, "authz", verdict);
    }
    const verdict = await authorize(body.data);
    if (verdict.result === "deny") {
      const id = parseUsername(body.data.username);
      const key = id.ok ? `${id.value.productName}/${id.value.deviceName}` : `client:${clip(body.data.clientid)}`;
      refused("authz", verdict, key, {
        clientId: clip(body.data.clientid),
        username: clip(body.data.username),
        action: body.data.action,
        topic: clip(body.data.topic),
        peerhost: body.data.peerhost,
      });
    }
    send(res, "authz", verdict);
  });

  // EMQX configured with GET, or a typo'd method: a 404 would read as "no match" there, which may allow.
  for (const [path, endpoint] of [
    [EMQX_AUTHN_PATH, "authn"],
    [EMQX_AUTHZ_PATH, "authz"],
  ] as const) {
    router.all(path, secretGate(endpoint), (req, res) => {
      const verdict = deny("bad_request", `method ${req.method} not supported: EMQX must POST a JSON body (README.md, "EMQX")`);
      refused(endpoint, verdict, "method", { method: req.method });
      send(res, endpoint, verdict);
    });
  }

  // Errors of these routes (a body that is not JSON, too large, a bug) are answered here as deny, never by the
  // server's JSON error handler: its 4xx/5xx would read as "no match" in EMQX.
  router.use((err: unknown, req: Request, res: Response, next: NextFunction) => {
    const endpoint = res.locals.emqxEndpoint as Endpoint | undefined;
    if (endpoint === undefined) return next(err);
    if (res.headersSent) {
      log.error({ err }, "EMQX auth call failed after its answer started");
      return void res.end();
    }
    const type = (err as { type?: unknown }).type;
    let verdict: Denied;
    if (type === "entity.too.large") verdict = deny("bad_request", `request body larger than ${limits.httpBodyBytes} bytes`);
    else if (type === "entity.parse.failed") verdict = deny("bad_request", "request body is not valid JSON");
    else if (typeof type === "string") verdict = deny("bad_request", "request body could not be read");
    else {
      log.error({ err, endpoint }, "EMQX auth call failed");
      verdict = deny("internal", "internal error");
    }
    refused(endpoint, verdict, typeof type === "string" ? type : "internal", {});
    send(res, endpoint, verdict);
  });
  return router;
}

/**
 * A device's request under PROTOCOL.md's access rules, as the embedded broker
 * applies them: publishes within the device contract on its own topics,
 * subscriptions within its tags' and its own command filters, no retained
 * publish. The embedded broker takes a retained publish with the flag cleared;
 * EMQX cannot clear it, and kept the message would outlive every later check
 * (a suspension, a deletion), so here it is denied.
 */
export function deviceRule(id: DeviceIdentity, action: "publish" | "subscribe", topic: string, retain: boolean): Verdict {
  if (action === "subscribe") return canSubscribe(id, topic) ? ALLOW : deny("not_allowed", `may not subscribe to ${clip(topic)}`);
  if (authorizedPublish(id, topic) === null) return deny("not_allowed", `may not publish to ${clip(topic)}`);
  return retain ? deny("retain", "devices may not publish retained messages") : ALLOW;
}

function send(res: Response, endpoint: Endpoint, verdict: Verdict): void {
  // EMQX caches answers itself (authorization.cache); nothing in between should.
  res.status(200).set("cache-control", "no-store");
  res.json(endpoint === "authn" ? { ...verdict, is_superuser: false } : verdict);
}

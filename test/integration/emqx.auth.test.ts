/**
 * EMQX's HTTP authentication and authorization endpoints (src/http/emqx.routes.ts; README.md, "EMQX"),
 * against a real server: the registry on PostgreSQL (or PGlite), Redis.
 *
 * EMQX itself cannot be installed on this machine (it is not in Debian, and its packages and images are
 * not reachable from here), so no EMQX calls these endpoints in this test. The calls are made here as
 * EMQX 5 makes them (apps/emqx_auth_http, emqx_auth_http_utils): POST, `content-type: application/json`
 * plus EMQX's default `accept`/`cache-control` headers and the configured secret header, and a body
 * rendered from the README's templates, every placeholder as a JSON string (an unset one as "").
 * What EMQX does with an answer is its code's: 200 + `result` decides; 204 means allow; any other status is
 * "ignore"/"no match", which may allow. So every answer here must be 200 with allow or deny.
 */
import { randomBytes } from "node:crypto";
import { Agent, request } from "node:http";
import { beforeAll, describe, expect, it } from "vitest";
import { EMQX_AUTHN_PATH, EMQX_AUTHZ_PATH, EMQX_SECRET_HEADER } from "../../src/http/emqx.routes.js";
import { newObjectId } from "../../src/protocol/object-id.js";
import { startApp, type TestApp } from "../helpers/app.js";
import { metric } from "../helpers/metrics.js";
import { uniq } from "../helpers/services.js";
import { onTeardown } from "../helpers/teardown.js";
import { eventually } from "../helpers/wait.js";

const SECRET = randomBytes(32).toString("hex");
const SERVER = { username: "iothub-ota-server", password: randomBytes(16).toString("base64url") };
const BODY_LIMIT = 4096;
const MAX_PENDING = 4;

/** The body templates of README.md, "EMQX" (the authenticator's and the authorizer's `body`). */
const AUTHN_TEMPLATE = { clientid: "${clientid}", username: "${username}", password: "${password}", peerhost: "${peerhost}" };
const AUTHZ_TEMPLATE = {
  clientid: "${clientid}",
  username: "${username}",
  action: "${action}",
  topic: "${topic}",
  qos: "${qos}",
  retain: "${retain}",
  peerhost: "${peerhost}",
};
/** The headers EMQX sends by default (emqx_auth_http_utils `default_headers`), plus the secret. */
const EMQX_HEADERS = {
  "content-type": "application/json",
  accept: "application/json",
  "cache-control": "no-cache",
  connection: "keep-alive",
  "keep-alive": "timeout=30, max=1000",
};

/** EMQX keeps a pool of connections (pool_size, default 8) and reuses them. */
const agent = new Agent({ keepAlive: true, maxSockets: 8 });

/** node:http rather than fetch: undici refuses EMQX's `connection`/`keep-alive` headers. */
function post(url: string, method: string, headers: Record<string, string>, body: string): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method, headers: { ...headers, "content-length": String(Buffer.byteLength(body)) }, agent }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString("utf8") }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(body);
  });
}

/** As emqx_auth_template renders a JSON body: each `${name}` replaced by the value as a string, "" when unset. */
function render(template: Record<string, string>, vars: Record<string, string | number | boolean | undefined>): string {
  const out: Record<string, string> = {};
  for (const [key, value] of Object.entries(template)) {
    out[key] = value.replace(/\$\{([a-z_]+)\}/g, (_, name: string) => (vars[name] === undefined ? "" : String(vars[name])));
  }
  return JSON.stringify(out);
}

interface Answer {
  status: number;
  body: { result?: string; is_superuser?: boolean; reason?: string; message?: string };
}

describe("EMQX HTTP authentication and authorization", () => {
  let t: TestApp;
  let base: string;
  let productName: string;
  const devices: Record<string, string> = {};

  async function call(path: string, body: string, headers: Record<string, string> = { ...EMQX_HEADERS, [EMQX_SECRET_HEADER]: SECRET }, method = "POST"): Promise<Answer> {
    const { status, text } = await post(`${base}${path}`, method, headers, body);
    let parsed: Answer["body"] = {};
    try {
      parsed = JSON.parse(text) as Answer["body"];
    } catch {
      parsed = { message: `not JSON: ${text.slice(0, 100)}` };
    }
    return { status, body: parsed };
  }

  const authn = (vars: { clientid: string; username: string; password?: string }) =>
    call(EMQX_AUTHN_PATH, render(AUTHN_TEMPLATE, { peerhost: "127.0.0.1", ...vars }));
  const authz = (vars: { clientid: string; username: string; action: "publish" | "subscribe"; topic: string; qos?: number; retain?: boolean }) =>
    call(EMQX_AUTHZ_PATH, render(AUTHZ_TEMPLATE, { peerhost: "127.0.0.1", qos: 1, retain: false, ...vars }));

  /** What EMQX makes of an answer: only 200 + allow grants; every answer here must be 200. */
  function expectAllowed(a: Answer): void {
    expect(a).toMatchObject({ status: 200, body: { result: "allow" } });
  }
  function expectDenied(a: Answer, reason?: string): void {
    expect(a.status).toBe(200);
    expect(a.body.result).toBe("deny");
    if (reason) expect(a.body.reason).toBe(reason);
  }

  async function register(deviceName: string, tags: string[] = []): Promise<string> {
    const { secret } = await t.app.devices.register({ productName, deviceName, tags });
    devices[deviceName] = secret;
    return secret;
  }
  const as = (deviceName: string, suffix?: string) => ({
    username: `${productName}/${deviceName}`,
    clientid: suffix === undefined ? `${productName}/${deviceName}` : `${productName}/${deviceName}/${suffix}`,
  });

  beforeAll(async () => {
    onTeardown(() => agent.destroy());
    t = await startApp({
      env: {
        EMQX_AUTH_SECRET: SECRET,
        MQTT_USERNAME: SERVER.username,
        MQTT_PASSWORD: SERVER.password,
        HTTP_BODY_LIMIT_BYTES: String(BODY_LIMIT),
        EMQX_AUTH_MAX_PENDING: String(MAX_PENDING),
      },
    });
    base = t.httpUrl;
    productName = uniq("emqx");
    await register("d1", ["blue"]);
    await register("d2");
  });

  describe("authentication", () => {
    it("allows a registered device with its secret, under its own client ids, never as superuser", async () => {
      const secret = devices.d1 as string;
      for (const suffix of [undefined, "sdk", "ota-1"]) {
        const a = await authn({ ...as("d1", suffix), password: secret });
        expectAllowed(a);
        expect(a.body.is_superuser).toBe(false);
      }
    });

    it("denies a wrong, empty or other device's password, and an unknown device, with one answer", async () => {
      const before = await metric(t, "iothub_ota_refused_total", { kind: "emqx_authn", reason: "bad_credentials" });
      expectDenied(await authn({ ...as("d1"), password: "not-the-secret" }), "bad_credentials");
      expectDenied(await authn({ ...as("d1"), password: devices.d2 as string }), "bad_credentials");
      expectDenied(await authn({ ...as("ghost"), password: devices.d1 as string }), "bad_credentials");
      expectDenied(await authn({ ...as("d1"), password: "" }), "bad_username");
      expectDenied(await authn({ ...as("d1") }), "bad_username"); // no password at all: EMQX renders ""
      expect(await metric(t, "iothub_ota_refused_total", { kind: "emqx_authn", reason: "bad_credentials" })).toBe(before + 3);
    });

    it("denies a client id that is not the device's own (PROTOCOL.md: <product>/<device>[/<suffix>])", async () => {
      const password = devices.d1 as string;
      const username = `${productName}/d1`;
      for (const clientid of [`${productName}/d2`, `${productName}/d1x`, `${productName}/d1/`, `${productName}/d1/a/b`, `${productName}/d1/#`, "d1", "other/d1"]) {
        expectDenied(await authn({ username, clientid, password }), "client_id");
      }
      // Another device's username with d1's client id and secret: still not d1.
      expectDenied(await authn({ username: `${productName}/d2`, clientid: `${productName}/d1`, password }), "client_id");
      for (const username of ["d1", `${productName}/d1/x`, `${productName}/+`, `/${productName}/d1`, ""]) {
        expectDenied(await authn({ username, clientid: `${productName}/d1`, password }), "bad_username");
      }
    });

    it("denies a suspended device, and allows it again once resumed", async () => {
      const secret = await register("sus");
      expectAllowed(await authn({ ...as("sus"), password: secret }));
      await t.app.devices.setSuspended(productName, "sus", true);
      expectDenied(await authn({ ...as("sus"), password: secret }), "suspended");
      await t.app.devices.setSuspended(productName, "sus", false);
      expectAllowed(await authn({ ...as("sus"), password: secret }));
    });

    it("denies a deleted device, whose secret was verified before", async () => {
      const secret = await register("del");
      expectAllowed(await authn({ ...as("del"), password: secret }));
      expect(await t.app.devices.delete(productName, "del")).toBe(true);
      expectDenied(await authn({ ...as("del"), password: secret }), "bad_credentials");
    });

    it("allows the server's own client with MQTT_USERNAME and MQTT_PASSWORD, under any client id, not as superuser", async () => {
      for (const clientid of ["iothub-ota-1a2b3c", "ota-instance-2"]) {
        const a = await authn({ username: SERVER.username, clientid, password: SERVER.password });
        expectAllowed(a);
        expect(a.body.is_superuser).toBe(false);
      }
      expectDenied(await authn({ username: SERVER.username, clientid: "x", password: `${SERVER.password}x` }), "bad_credentials");
      expectDenied(await authn({ username: SERVER.username, clientid: "x", password: "" }), "bad_credentials");
      expectDenied(await authn({ username: SERVER.username, clientid: "x", password: devices.d1 as string }), "bad_credentials");
    });
  });

  describe("authorization of a device", () => {
    const id = () => newObjectId();

    it("allows publishing the device contract on its own topics", async () => {
      const me = as("d1", "sdk");
      const p = productName;
      for (const topic of [
        `update_ota_status/${p}/d1/${id()}`,
        `update_status/${p}/d1/${id()}`,
        `get/${p}/d1/$tags/${id()}`,
        `upload_data/${p}/d1/sample/${id()}`,
        `cmd_resp/${p}/d1/$ota_upgrade/${id()}/${id()}`,
        `rpc_resp/${p}/d1/reboot/${id()}/${id()}`,
        `m2m/${p}/d2/d1/${id()}`,
      ]) {
        expectAllowed(await authz({ ...me, action: "publish", topic }));
      }
    });

    it("denies publishing another device's topics, commands, and anything outside the contract", async () => {
      const me = as("d1");
      const p = productName;
      for (const topic of [
        `update_ota_status/${p}/d2/${id()}`,
        `update_status/${p}/d2/${id()}`,
        `get/${p}/d2/$tags/${id()}`,
        `m2m/${p}/d1/d2/${id()}`, // as another sender
        `update_status/other-product/d1/${id()}`,
        `cmd/${p}/d1/$ota_upgrade/plain/${id()}`, // forging a command to itself
        `cmd/${p}/d2/$ota_upgrade/plain/${id()}`,
        `tags/${p}/blue/cmd/$ota_upgrade/plain/${id()}`,
        `update_status/${p}/d1`,
        `$SYS/brokers`,
        "anything",
      ]) {
        expectDenied(await authz({ ...me, action: "publish", topic }), "not_allowed");
      }
    });

    it("denies a retained publish, even on its own topic, and a publish whose retain flag is not rendered", async () => {
      const me = as("d1");
      const topic = `update_status/${productName}/d1/${id()}`;
      expectDenied(await authz({ ...me, action: "publish", topic, retain: true }), "retain");
      const noRetain = render({ ...AUTHZ_TEMPLATE, retain: "" }, { ...me, action: "publish", topic, qos: 1 }).replace(',"retain":""', "");
      expectDenied(await call(EMQX_AUTHZ_PATH, noRetain), "bad_request");
      expectAllowed(await authz({ ...me, action: "publish", topic, retain: false }));
    });

    it("allows subscribing to its own command filters and its product's tags, and denies wider or other filters", async () => {
      const me = as("d1");
      const p = productName;
      for (const topic of [
        `tags/${p}/blue/cmd/+/+/+/#`,
        `tags/${p}/+/cmd/+/+/+/#`,
        `tags/${p}/green/cmd/$set_tags/plain/+`,
        `cmd/${p}/d1/+/+/+/#`,
        `rpc/${p}/d1/+/+/+/#`,
        `m2m/${p}/d1/+/+`,
      ]) {
        expectAllowed(await authz({ ...me, action: "subscribe", topic }));
      }
      for (const topic of [
        "#",
        "+/#",
        `$SYS/#`,
        `tags/${p}/#`,
        `tags/${p}/+/cmd/#`,
        `tags/${p}/blue/cmd/+/+/#`,
        `tags/+/blue/cmd/+/+/+/#`,
        `tags/other-product/blue/cmd/+/+/+/#`,
        `cmd/${p}/d2/+/+/+/#`,
        `cmd/${p}/+/+/+/+/#`,
        `cmd/${p}/d1/#`,
        `update_status/${p}/d2/+`,
        `update_ota_status/+/+/+`,
        `m2m/${p}/+/+/+`,
        `$share/g/tags/${p}/+/cmd/+/+/+/#`,
      ]) {
        expectDenied(await authz({ ...me, action: "subscribe", topic }), "not_allowed");
      }
    });

    it("denies any request whose client id is not the username's device", async () => {
      const topic = `update_status/${productName}/d1/${id()}`;
      expectDenied(await authz({ username: `${productName}/d1`, clientid: `${productName}/d2`, action: "publish", topic }), "client_id");
      expectDenied(await authz({ username: `${productName}/d2`, clientid: `${productName}/d1`, action: "publish", topic }), "client_id");
      expectDenied(await authz({ username: "", clientid: `${productName}/d1`, action: "publish", topic }), "bad_username");
    });

    it("denies a suspended device still connected, by its next publish, and a deleted one", async () => {
      const secret = await register("live");
      expectAllowed(await authn({ ...as("live"), password: secret }));
      const topic = () => `update_status/${productName}/live/${newObjectId()}`;
      expectAllowed(await authz({ ...as("live"), action: "publish", topic: topic() }));
      await t.app.devices.setSuspended(productName, "live", true);
      // The standing is remembered for a moment (5 s): one registry read per device per interval.
      await eventually(async () => expectDenied(await authz({ ...as("live"), action: "publish", topic: topic() }), "suspended"), 15_000);
      expectDenied(await authz({ ...as("live"), action: "subscribe", topic: `tags/${productName}/+/cmd/+/+/+/#` }), "suspended");
      await t.app.devices.setSuspended(productName, "live", false);
      await eventually(async () => expectAllowed(await authz({ ...as("live"), action: "publish", topic: topic() })), 15_000);
      expect(await t.app.devices.delete(productName, "live")).toBe(true);
      await eventually(async () => expectDenied(await authz({ ...as("live"), action: "publish", topic: topic() }), "unknown_device"), 15_000);
    });
  });

  describe("authorization of the server's own client", () => {
    const server = { username: SERVER.username, clientid: "iothub-ota-1a2b3c" };

    it("allows its ingest subscriptions, shared or not, and its commands", async () => {
      for (const topic of ["update_ota_status/+/+/+", "update_status/+/+/+", "get/+/+/+/+", "$share/iothub-ota/update_status/+/+/+"]) {
        expectAllowed(await authz({ ...server, action: "subscribe", topic }));
      }
      for (const topic of [`cmd/${productName}/d1/$ota_upgrade/plain/${newObjectId()}`, `tags/${productName}/blue/cmd/$set_tags/plain/${newObjectId()}/1999999999`]) {
        expectAllowed(await authz({ ...server, action: "publish", topic }));
      }
    });

    it("denies it anything else: other filters, device topics, retained commands", async () => {
      for (const topic of ["#", "$SYS/#", "cmd/+/+/+/+/+/#", "upload_data/+/+/+/+", "$share/g/#"]) {
        expectDenied(await authz({ ...server, action: "subscribe", topic }), "not_allowed");
      }
      for (const topic of [`update_status/${productName}/d1/${newObjectId()}`, `cmd/${productName}/d1/x`, "anything"]) {
        expectDenied(await authz({ ...server, action: "publish", topic }), "not_allowed");
      }
      const command = `cmd/${productName}/d1/$ota_upgrade/plain/${newObjectId()}`;
      expectDenied(await authz({ ...server, action: "publish", topic: command, retain: true }), "retain");
    });
  });

  describe("the shared secret", () => {
    it("denies every call without it or with a wrong one, whatever the credentials: no password oracle", async () => {
      const before = await metric(t, "iothub_ota_refused_total", { kind: "emqx_authn", reason: "unauthenticated" });
      const good = render(AUTHN_TEMPLATE, { ...as("d1"), password: devices.d1 as string, peerhost: "10.0.0.9" });
      const bad = render(AUTHN_TEMPLATE, { ...as("d1"), password: "wrong", peerhost: "10.0.0.9" });
      const headerSets = [EMQX_HEADERS, { ...EMQX_HEADERS, [EMQX_SECRET_HEADER]: "" }, { ...EMQX_HEADERS, [EMQX_SECRET_HEADER]: `${SECRET}x` }, { ...EMQX_HEADERS, [EMQX_SECRET_HEADER]: SECRET.slice(1) }, { ...EMQX_HEADERS, authorization: `Bearer ${SECRET}` }];
      for (const headers of headerSets) {
        const right = await call(EMQX_AUTHN_PATH, good, headers);
        const wrong = await call(EMQX_AUTHN_PATH, bad, headers);
        expectDenied(right, "unauthenticated");
        // One answer for right and wrong credentials: the caller learns nothing about them.
        expect(right).toEqual(wrong);
        const z = render(AUTHZ_TEMPLATE, { ...as("d1"), action: "publish", topic: `update_status/${productName}/d1/${newObjectId()}`, qos: 1, retain: false });
        expectDenied(await call(EMQX_AUTHZ_PATH, z, headers), "unauthenticated");
      }
      expect(await metric(t, "iothub_ota_refused_total", { kind: "emqx_authn", reason: "unauthenticated" })).toBe(before + 2 * headerSets.length);
    });
  });

  describe("malformed calls", () => {
    const withSecret = (contentType = "application/json") => ({ ...EMQX_HEADERS, "content-type": contentType, [EMQX_SECRET_HEADER]: SECRET });
    const authzGood = () => ({ ...as("d1"), action: "publish", topic: `update_status/${productName}/d1/${newObjectId()}`, qos: "1", retain: "false" });
    const authnGood = () => ({ ...as("d1"), password: devices.d1 as string });

    it("are denied with 200, never allowed and never answered with a status EMQX would read as ignore", async () => {
      const before = await metric(t, "iothub_ota_refused_total", { kind: "emqx_authz", reason: "bad_request" });
      const cases: [string, string, string][] = [
        ["not JSON", "{not json", "application/json"],
        ["a JSON array", JSON.stringify([authzGood()]), "application/json"],
        ["a JSON string", JSON.stringify("allow"), "application/json"],
        ["null", "null", "application/json"],
        ["an empty body", "", "application/json"],
        ["form-encoded", new URLSearchParams(authzGood()).toString(), "application/x-www-form-urlencoded"],
        ["text", JSON.stringify(authzGood()), "text/plain"],
        ["no topic", JSON.stringify({ ...authzGood(), topic: "" }), "application/json"],
        ["no client id", JSON.stringify({ ...authzGood(), clientid: "" }), "application/json"],
        ["another action", JSON.stringify({ ...authzGood(), action: "all" }), "application/json"],
        ["a bad qos", JSON.stringify({ ...authzGood(), qos: "3" }), "application/json"],
        ["a bad retain", JSON.stringify({ ...authzGood(), retain: "yes" }), "application/json"],
        ["a number as username", JSON.stringify({ ...authzGood(), username: 42 }), "application/json"],
        ["too large", JSON.stringify({ ...authzGood(), peerhost: "x".repeat(BODY_LIMIT) }), "application/json"],
      ];
      for (const [what, body, contentType] of cases) {
        const a = await call(EMQX_AUTHZ_PATH, body, withSecret(contentType));
        expect({ what, status: a.status, result: a.body.result, reason: a.body.reason }).toEqual({ what, status: 200, result: "deny", reason: "bad_request" });
        const n = await call(EMQX_AUTHN_PATH, body.replace(/"action":"[^"]*",?/, ""), withSecret(contentType));
        expect({ what, status: n.status, result: n.body.result }).toEqual({ what, status: 200, result: "deny" });
      }
      expect(await metric(t, "iothub_ota_refused_total", { kind: "emqx_authz", reason: "bad_request" })).toBe(before + cases.length);
      // An authentication body without its password field; a password that is not a string.
      expectDenied(await call(EMQX_AUTHN_PATH, JSON.stringify({ ...as("d1") }), withSecret()), "bad_request");
      expectDenied(await call(EMQX_AUTHN_PATH, JSON.stringify({ ...authnGood(), password: [devices.d1] }), withSecret()), "bad_request");
      // The server is still answering as before.
      expectAllowed(await call(EMQX_AUTHZ_PATH, JSON.stringify(authzGood()), withSecret()));
      expectAllowed(await call(EMQX_AUTHN_PATH, JSON.stringify(authnGood()), withSecret()));
    });

    it("are denied, not 404, when EMQX is set to another method", async () => {
      for (const method of ["GET", "PUT", "DELETE", "PATCH"]) {
        for (const path of [EMQX_AUTHN_PATH, EMQX_AUTHZ_PATH]) {
          expectDenied(await call(path, JSON.stringify(authnGood()), withSecret(), method), "bad_request");
        }
      }
    });

    it("take JSON numbers and booleans as EMQX placeholders' values too", async () => {
      expectAllowed(await call(EMQX_AUTHZ_PATH, JSON.stringify({ ...authzGood(), qos: 1, retain: false }), withSecret()));
      expectDenied(await call(EMQX_AUTHZ_PATH, JSON.stringify({ ...authzGood(), qos: 1, retain: true }), withSecret()), "retain");
    });
  });

  it(`denies authentication calls past EMQX_AUTH_MAX_PENDING (${MAX_PENDING}) at once, and allows the next ones`, async () => {
    // Wrong secrets of a registered device: each is an scrypt check (tens of ms), none is remembered.
    const answers = await Promise.all(Array.from({ length: 40 }, (_, i) => authn({ ...as("d2"), password: `wrong-${i}` })));
    for (const a of answers) expectDenied(a);
    const reasons = new Set(answers.map((a) => a.body.reason));
    expect(reasons).toEqual(new Set(["bad_credentials", "busy"]));
    expectAllowed(await authn({ ...as("d2"), password: devices.d2 as string }));
  });
});

import { randomBytes } from "node:crypto";
import { connect } from "node:net";
import { print } from "graphql";
import { beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import {
  ApiTokensDocument,
  CreateApiTokenDocument,
  DeleteDeviceDocument,
  DeviceDocument,
  OtaProgressChangedDocument,
  RegisterDeviceDocument,
  ResumeDeviceDocument,
  RevokeApiTokenDocument,
  SendOtaDocument,
  SetDeviceTagsDocument,
  SuspendDeviceDocument,
} from "../../src/client/generated/graphql.js";
import { gql, gqlOk, startApp, wsClient, type TestApp } from "../helpers/app.js";
import { firmware } from "../helpers/fixtures.js";
import { uniq } from "../helpers/services.js";
import { Inbox } from "../helpers/wait.js";

interface Answer {
  status: number;
  type: string;
  text: string;
  json: { errors?: { message: string; extensions?: { code?: string; field?: string } }[]; data?: unknown } | undefined;
}

/** An HTTP exchange as an attacker sends it: any method, headers and body. */
async function send(t: TestApp, path: string, init: RequestInit & { token?: string | null } = {}): Promise<Answer> {
  const { token = t.token, headers, ...rest } = init;
  const res = await fetch(`${t.httpUrl}${path}`, {
    method: "POST",
    ...rest,
    headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(headers as Record<string, string>) },
  });
  const text = await res.text();
  let json: Answer["json"];
  try {
    json = JSON.parse(text) as Answer["json"];
  } catch {
    json = undefined;
  }
  return { status: res.status, type: res.headers.get("content-type") ?? "", text, json };
}

const postJson = (t: TestApp, body: unknown, token?: string | null) =>
  send(t, "/graphql", { headers: { "content-type": "application/json" }, body: typeof body === "string" ? body : JSON.stringify(body), token });

/** A clear refusal: this status, a JSON body whose first error has this code, and nothing of the server's insides. */
function expectRefused(a: Answer, status: number, code: string): void {
  expect(a.status, a.text.slice(0, 300)).toBe(status);
  expect(a.type).toContain("application/json");
  expect(a.json?.errors?.[0]?.extensions?.code, a.text.slice(0, 300)).toBe(code);
  expect(a.text).not.toMatch(/node_modules|\/work\/|\bat .+\(|stacktrace|<html/i);
}

/** The server answers another request promptly, and says it is ready. */
async function expectHealthy(t: TestApp): Promise<void> {
  const started = performance.now();
  const r = await gql(t, DeviceDocument, { productName: "p", deviceName: "d" });
  expect(r.status).toBe(200);
  expect(performance.now() - started).toBeLessThan(1000);
  expect((await fetch(`${t.httpUrl}/readyz`)).status).toBe(200);
}

/** A raw graphql-ws socket: the close code and reason it gets, and when. */
function rawWs(t: TestApp) {
  const socket = new WebSocket(t.wsUrl, "graphql-transport-ws");
  const opened = performance.now();
  const closed = new Promise<{ code: number; reason: string; afterMs: number }>((resolve) =>
    socket.on("close", (code, reason) => resolve({ code, reason: reason.toString(), afterMs: performance.now() - opened })),
  );
  socket.on("error", () => undefined);
  return { socket, closed, open: new Promise<void>((resolve) => socket.once("open", () => resolve())) };
}

const INIT_TIMEOUT_MS = 400;

describe("the API under abuse", () => {
  let t: TestApp;
  let productName: string;
  let readOnly: string;

  beforeAll(async () => {
    t = await startApp({ env: { WS_INIT_TIMEOUT_MS: String(INIT_TIMEOUT_MS) } });
    productName = uniq("abuse");
    await gqlOk(t, RegisterDeviceDocument, { input: { productName, deviceName: "d1", tags: ["a"] } });
    readOnly = (await gqlOk(t, CreateApiTokenDocument, { input: { name: "ro", access: "READ" } })).createApiToken.token;
  });

  describe("oversized and malformed requests", () => {
    it("refuses a 10 MB query with 413 before reading it, and stays responsive", async () => {
      const query = `{ ${"__typename ".repeat(1_000_000)}}`;
      expectRefused(await postJson(t, { query }), 413, "PAYLOAD_TOO_LARGE");
      // Without a token it is refused before any body is read.
      expectRefused(await postJson(t, { query }, null), 401, "UNAUTHENTICATED");
      await expectHealthy(t);
    });

    it("answers a body that does not parse with JSON and no internals, with or without a token", async () => {
      expectRefused(await postJson(t, "{"), 400, "BAD_REQUEST");
      expectRefused(await postJson(t, "{", null), 401, "UNAUTHENTICATED");
      const rest = await send(t, `/ota/${productName}/d1`, { headers: { "content-type": "application/json" }, body: "{" });
      expectRefused(rest, 400, "BAD_REQUEST");
      const charset = await send(t, `/ota/${productName}/d1`, { headers: { "content-type": "application/json; charset=klingon" }, body: "{}" });
      expectRefused(charset, 415, "BAD_REQUEST");
      await expectHealthy(t);
    });

    it.each(["GET", "PUT", "DELETE", "PATCH", "POST"])("answers %s on an unknown route with a JSON 404", async (method) => {
      expectRefused(await send(t, "/nope/../etc", { method }), 404, "NOT_FOUND");
      expectRefused(await send(t, "/ota", { method, token: null }), 404, "NOT_FOUND");
    });

    it("refuses a batch of 100 operations with a clear 400", async () => {
      const batch = Array.from({ length: 100 }, () => ({ query: "{ __typename }" }));
      const a = await postJson(t, batch);
      expectRefused(a, 400, "BAD_REQUEST");
      expect(a.json?.errors?.[0]?.message).toMatch(/batch/i);
      await expectHealthy(t);
    });

    it("refuses a text/plain POST (CSRF prevention) and a GET query without a preflight header", async () => {
      const plain = await send(t, "/graphql", { headers: { "content-type": "text/plain" }, body: JSON.stringify({ query: "{ __typename }" }) });
      expectRefused(plain, 400, "BAD_REQUEST");
      expect(plain.json?.errors?.[0]?.message).toContain("CSRF");
      const get = await send(t, `/graphql?query=${encodeURIComponent("{ __typename }")}`, { method: "GET" });
      expectRefused(get, 400, "BAD_REQUEST");
    });
  });

  describe("expensive queries", () => {
    it("refuses deep nesting", async () => {
      let selection = "name";
      for (let i = 0; i < 12; i++) selection = `ofType { ${selection} }`;
      const a = await postJson(t, { query: `{ __type(name: "Query") { fields { type { ${selection} } } } }` });
      expectRefused(a, 400, "GRAPHQL_VALIDATION_FAILED");
      expect(a.json?.errors?.[0]?.message).toContain("depth");
    });

    it("refuses an alias bomb (1,000 aliases of otaProgresses with 500 names each) at once, read-only token or not", async () => {
      const names = Array.from({ length: 500 }, (_, i) => `d${i}`);
      const fields = Array.from({ length: 1000 }, (_, i) => `a${i}: otaProgresses(productName: "${productName}", deviceNames: $n) { deviceName progress }`);
      const query = `query Bomb($n: [String!]!) { ${fields.join(" ")} }`;
      const started = performance.now();
      const a = await postJson(t, { query, variables: { n: names } }, readOnly);
      expect(a.status).toBe(400);
      expect(["GRAPHQL_PARSE_FAILED", "GRAPHQL_VALIDATION_FAILED"]).toContain(a.json?.errors?.[0]?.extensions?.code);
      expect(performance.now() - started).toBeLessThan(1000);
      // Under the token limit, the alias limit itself refuses it.
      const sixteen = `query Bomb($n: [String!]!) { ${fields.slice(0, 16).join(" ")} }`;
      const b = await postJson(t, { query: sixteen, variables: { n: names } }, readOnly);
      expectRefused(b, 400, "GRAPHQL_VALIDATION_FAILED");
      expect(b.json?.errors?.[0]?.message).toContain("Aliases limit");
      await expectHealthy(t);
    });

    it("refuses a directive bomb", async () => {
      const fields = Array.from({ length: 11 }, (_, i) => `f${i}: __typename @include(if: true)`);
      const a = await postJson(t, { query: `{ ${fields.join(" ")} }` });
      expectRefused(a, 400, "GRAPHQL_VALIDATION_FAILED");
      expect(a.json?.errors?.[0]?.message).toContain("Directives limit");
      await expectHealthy(t);
    });

    it("applies the same limits over graphql-ws, keeping the connection", async () => {
      const client = wsClient(t);
      const errors = new Inbox<unknown>();
      const run = (query: string) => client.subscribe({ query }, { next: () => undefined, error: (e) => errors.push(e), complete: () => undefined });
      run(`{ ${Array.from({ length: 11 }, (_, i) => `f${i}: __typename @include(if: true)`).join(" ")} }`);
      expect(JSON.stringify(await errors.next())).toMatch(/Directives limit.*GRAPHQL_VALIDATION_FAILED/);
      run(`{ ${"__typename ".repeat(3000)}}`);
      expect(JSON.stringify(await errors.next())).toMatch(/tokens.*GRAPHQL_PARSE_FAILED/);
      // Still usable.
      const data = new Inbox<unknown>();
      client.subscribe({ query: "{ __typename }" }, { next: (r) => data.push(r), error: (e) => errors.push(e), complete: () => undefined });
      expect(await data.next()).toEqual({ data: { __typename: "Query" } });
    });
  });

  describe("graphql-ws connections", () => {
    it("closes a connection that never initialises after the init timeout", async () => {
      const { closed } = rawWs(t);
      const { code, afterMs } = await closed;
      expect(code).toBe(4408);
      expect(afterMs).toBeGreaterThanOrEqual(INIT_TIMEOUT_MS - 50);
      expect(afterMs).toBeLessThan(INIT_TIMEOUT_MS + 1500);
      await expectHealthy(t);
    });

    it("closes a connection that sends a 20 MB frame from its header, without buffering it", async () => {
      // A raw socket, so that the test's own memory stays flat: the frame is announced, then streamed from one small chunk.
      const port = Number(new URL(t.httpUrl).port);
      const socket = connect(port, "127.0.0.1");
      socket.on("error", () => undefined);
      const incoming: Buffer[] = [];
      const upgraded = new Promise<void>((resolve) =>
        socket.on("data", (d) => {
          incoming.push(d);
          if (Buffer.concat(incoming).includes("\r\n\r\n")) resolve();
        }),
      );
      const ended = new Promise<void>((resolve) => socket.on("close", () => resolve()));
      socket.write(
        `GET /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
          `Sec-WebSocket-Key: ${randomBytes(16).toString("base64")}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: graphql-transport-ws\r\n\r\n`,
      );
      await upgraded;
      expect(Buffer.concat(incoming).toString()).toMatch(/^HTTP\/1.1 101/);
      incoming.length = 0;
      const size = 20 * 1024 * 1024;
      const header = Buffer.alloc(14);
      header[0] = 0x81; // FIN, text
      header[1] = 0x80 | 127; // masked, 64-bit length
      header.writeBigUInt64BE(BigInt(size), 2);
      // Mask key 0: the payload goes as is.
      const peak = { growth: 0 };
      const before = process.memoryUsage().arrayBuffers;
      const sampler = setInterval(() => (peak.growth = Math.max(peak.growth, process.memoryUsage().arrayBuffers - before)), 5);
      socket.write(header);
      const chunk = Buffer.alloc(64 * 1024, 0x61);
      let sent = 0;
      while (sent < size && !socket.destroyed && socket.writable) {
        if (!socket.write(chunk)) await Promise.race([new Promise((r) => socket.once("drain", r)), ended]);
        sent += chunk.length;
      }
      await ended;
      clearInterval(sampler);
      // The close frame: 0x88, length, then the code 1009 (message too big).
      const close = Buffer.concat(incoming);
      expect(close[0]).toBe(0x88);
      expect(close.readUInt16BE(2)).toBe(1009);
      expect(peak.growth).toBeLessThan(8 * 1024 * 1024);
      await expectHealthy(t);
    });
  });

  describe("firmware URLs", () => {
    it.each([
      ["ftp", "ftp://fw.example/a.bin"],
      ["file", "file:///etc/passwd"],
      ["javascript", "javascript:alert(1)"],
      ["CR LF", "https://fw.example/a.bin\r\nX-Injected: 1"],
      ["a TAB", "https://fw.ex\tample/a.bin"],
      ["a NUL", "https://fw.example/a.bin\u0000.txt"],
      ["a C1 control", "https://fw.example/\u0085a.bin"],
      ["a leading control", "\u0001https://fw.example/a.bin"],
    ])("refuses a %s URL on GraphQL and REST", async (_name, url) => {
      const r = await gql(t, SendOtaDocument, { input: { productName, deviceName: "d1", firmware: { ...firmware, url } } });
      expect(r.errors?.[0]?.extensions).toMatchObject({ code: "BAD_USER_INPUT", field: "firmware.url" });
      const rest = await send(t, `/ota/${productName}/d1`, { headers: { "content-type": "application/json" }, body: JSON.stringify({ ...firmware, url }) });
      expectRefused(rest, 400, "BAD_USER_INPUT");
    });
  });

  describe("tokens that may not", () => {
    const graphqlWrites = () =>
      [
        ["sendOta", SendOtaDocument, { input: { productName, deviceName: "d1", firmware } }],
        ["setDeviceTags", SetDeviceTagsDocument, { productName, deviceName: "d1", tags: ["evil"] }],
        ["suspendDevice", SuspendDeviceDocument, { productName, deviceName: "d1" }],
        ["resumeDevice", ResumeDeviceDocument, { productName, deviceName: "d1" }],
        ["registerDevice", RegisterDeviceDocument, { input: { productName, deviceName: "d2" } }],
        ["deleteDevice", DeleteDeviceDocument, { productName, deviceName: "d1" }],
        ["createApiToken", CreateApiTokenDocument, { input: { name: "escalate", access: "ADMIN" } }],
        ["apiTokens", ApiTokensDocument, {}],
        ["revokeApiToken", RevokeApiTokenDocument, { id: "00000000-0000-0000-0000-000000000000" }],
      ] as const;

    it("refuse every write and admin operation of a read-only token, on GraphQL and REST, and change nothing", async () => {
      for (const [name, doc, variables] of graphqlWrites()) {
        const r = await gql({ httpUrl: t.httpUrl, token: readOnly }, doc as never, variables as never);
        expect(r.errors?.[0]?.extensions?.code, name).toBe("FORBIDDEN");
        expect(r.data ?? null, name).toBeNull();
      }
      const ota = await send(t, `/ota/${productName}/d1`, { token: readOnly, headers: { "content-type": "application/json" }, body: JSON.stringify(firmware) });
      expectRefused(ota, 403, "FORBIDDEN");
      const register = await send(t, "/devices", { token: readOnly, headers: { "content-type": "application/json" }, body: JSON.stringify({ product_name: productName }) });
      expectRefused(register, 403, "FORBIDDEN");
      const { device } = await gqlOk(t, DeviceDocument, { productName, deviceName: "d1" });
      expect(device).toMatchObject({ tags: ["a"], suspended: false });
      expect((await gqlOk(t, DeviceDocument, { productName, deviceName: "d2" })).device).toBeNull();
      // Reading is what it may do.
      expect((await gql({ httpUrl: t.httpUrl, token: readOnly }, DeviceDocument, { productName, deviceName: "d1" })).data?.device?.deviceName).toBe("d1");
      expect((await send(t, `/ota/${productName}/d1`, { method: "GET", token: readOnly })).status).toBe(200);
      await expectHealthy(t);
    });

    it("refuse a token limited to product A reading or subscribing to product B", async () => {
      const a = uniq("prodA");
      await gqlOk(t, RegisterDeviceDocument, { input: { productName: a, deviceName: "d1" } });
      const onlyA = (await gqlOk(t, CreateApiTokenDocument, { input: { name: "a", access: "ADMIN", products: [a] } })).createApiToken.token;
      const asA = { httpUrl: t.httpUrl, token: onlyA };
      expect((await gql(asA, DeviceDocument, { productName: a, deviceName: "d1" })).data?.device?.deviceName).toBe("d1");
      const read = await gql(asA, DeviceDocument, { productName, deviceName: "d1" });
      expect(read.errors?.[0]?.extensions?.code).toBe("FORBIDDEN");
      expectRefused(await send(t, `/ota/${productName}/d1`, { method: "GET", token: onlyA }), 403, "FORBIDDEN");
      expectRefused(await send(t, `/devices/${productName}/d1`, { method: "GET", token: onlyA }), 403, "FORBIDDEN");
      expect((await gql(asA, ApiTokensDocument, {})).errors?.[0]?.extensions?.code).toBe("FORBIDDEN");

      const client = wsClient({ wsUrl: t.wsUrl, token: onlyA });
      const errors = new Inbox<unknown>();
      const results = new Inbox<{ errors?: { extensions?: { code?: string } }[] }>();
      client.subscribe(
        { query: print(OtaProgressChangedDocument), variables: { productName } },
        { next: (r) => results.push(r as never), error: (e) => errors.push(e), complete: () => undefined },
      );
      const refused = await results.next();
      expect(refused.errors?.[0]?.extensions?.code).toBe("FORBIDDEN");
      expect(t.app.progressFeed.watching.has(productName)).toBe(false);
      await expectHealthy(t);
    });
  });
});

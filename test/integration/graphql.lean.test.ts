import { connect as netConnect } from "node:net";
import { print } from "graphql";
import type { TypedDocumentNode } from "@graphql-typed-document-node/core";
import { Redis } from "ioredis";
import { beforeAll, describe, expect, it } from "vitest";
import {
  CreateApiTokenDocument,
  DeviceDetailDocument,
  OtaProgressDocument,
  OtaProgressesDocument,
  RegisterDeviceDocument,
} from "../../src/client/generated/graphql.js";
import { redisKeys } from "../../src/storage/progress.redis.js";
import { gqlOk, startApp, type TestApp } from "../helpers/app.js";
import { REDIS_URL, uniq } from "../helpers/services.js";
import { onTeardown } from "../helpers/teardown.js";

/** One POST as a client sends it, answered as text: status, content type, body. */
async function post(t: TestApp, doc: TypedDocumentNode<unknown, never> | string, variables: object, headers: Record<string, string> = {}, token = t.token, extra: object = {}) {
  const res = await fetch(`${t.httpUrl}/graphql`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${token}`, ...headers },
    body: JSON.stringify({ query: typeof doc === "string" ? doc : print(doc), variables, ...extra }),
  });
  // Express's res.send (Apollo's integration) adds an ETag; the lean path does not: it tells which one answered.
  return { status: res.status, type: res.headers.get("content-type"), body: await res.text(), byApollo: res.headers.has("etag") };
}

describe("GraphQL queries Apollo has validated before", () => {
  let t: TestApp;
  let productName: string;
  const deviceNames = ["d0", "d1", "d2"];

  beforeAll(async () => {
    t = await startApp();
    productName = uniq("lean");
    for (const deviceName of deviceNames) await gqlOk(t, RegisterDeviceDocument, { input: { productName, deviceName, tags: ["x"] } });
    const redis = new Redis(REDIS_URL);
    onTeardown(() => redis.quit());
    const keys = redisKeys(t.config.redisPrefix);
    // Stored records as ingest writes them; d2 has none.
    for (const [i, deviceName] of deviceNames.slice(0, 2).entries()) {
      const record = {
        productName,
        deviceName,
        version: "2.0",
        type: "firmware",
        progress: i === 0 ? 40 : -2,
        desc: "download",
        messageId: `m${i}`,
        receivedAt: 1_700_000_000_000 + i,
        raw: { version: "2.0", type: "firmware", progress: i === 0 ? 40 : -2, desc: "download", extra: { nested: [1, "two", null] } },
        ...(i === 0 ? { state: "DOWNLOADING", failureReason: null } : { state: "FAILED", failureReason: "MD5_MISMATCH" }),
      };
      await redis.set(keys.progress(productName, deviceName), JSON.stringify(record));
    }
  });

  it("are answered without Apollo's pipeline, with exactly Apollo's answer", async () => {
    const cases: [TypedDocumentNode<unknown, never> | string, object][] = [
      [OtaProgressesDocument as TypedDocumentNode<unknown, never>, { productName, deviceNames }],
      [OtaProgressDocument as TypedDocumentNode<unknown, never>, { productName, deviceName: "d1" }],
      [OtaProgressDocument as TypedDocumentNode<unknown, never>, { productName, deviceName: "d2" }],
      // Nested objects and field resolvers: graphql-js executes it, still without Apollo.
      [DeviceDetailDocument as TypedDocumentNode<unknown, never>, { productName, deviceName: "d0" }],
      [`query A($p: String!) { one: otaProgress(productName: $p, deviceName: "d0") { __typename s: state progress } two: otaProgress(productName: $p, deviceName: "d1") { ... on OtaProgress { raw receivedAt } } }`, { p: productName }],
    ];
    for (const [doc, variables] of cases) {
      // Any `extensions` are Apollo's to read: the same request with none is the lean path's.
      const first = await post(t, doc, variables, {}, t.token, { extensions: {} });
      const again = await post(t, doc, variables);
      expect(first.byApollo).toBe(true);
      expect(again.byApollo).toBe(false);
      expect(again).toEqual({ ...first, byApollo: false });
      expect(first.status).toBe(200);
      expect(JSON.parse(first.body).errors).toBeUndefined();
    }
  });

  it("are left to Apollo when the client asks for another media type, sends extensions or a batch", async () => {
    const doc = OtaProgressDocument as TypedDocumentNode<unknown, never>;
    const vars = { productName, deviceName: "d0" };
    await post(t, doc, vars);
    expect((await post(t, doc, vars)).byApollo).toBe(false);
    const graphqlJson = await post(t, doc, vars, { accept: "application/graphql-response+json" });
    expect(graphqlJson).toMatchObject({ byApollo: true, type: "application/graphql-response+json; charset=utf-8" });
    const persisted = await post(t, doc, vars, {}, t.token, { extensions: { persistedQuery: { version: 1, sha256Hash: "0".repeat(64) } } });
    expect(persisted).toMatchObject({ status: 400, byApollo: true });
    const batch = await fetch(`${t.httpUrl}/graphql`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${t.token}` },
      body: JSON.stringify([{ query: print(doc), variables: vars }]),
    });
    expect(batch.status).toBe(400);
  });

  it("still refuse per request what the rules and the caller's scopes refuse", async () => {
    const doc = OtaProgressDocument as TypedDocumentNode<unknown, never>;
    await post(t, doc, { productName, deviceName: "d0" });
    // Validated once, by the admin: another product's token is still refused on this product.
    const { createApiToken } = await gqlOk(t, CreateApiTokenDocument, { input: { name: "other", access: "READ", products: [uniq("other")] } });
    const forbidden = await post(t, doc, { productName, deviceName: "d0" }, {}, createApiToken.token);
    expect(forbidden.byApollo).toBe(true);
    expect(JSON.parse(forbidden.body).errors[0].extensions.code).toBe("FORBIDDEN");
    expect(JSON.parse(forbidden.body).data).toEqual({ otaProgress: null });
    // The same through graphql-js (nested field resolvers): its errors are Apollo's to answer, masked.
    const detail = DeviceDetailDocument as TypedDocumentNode<unknown, never>;
    await post(t, detail, { productName, deviceName: "d0" });
    const forbiddenDetail = await post(t, detail, { productName, deviceName: "d0" }, {}, createApiToken.token);
    expect(forbiddenDetail.byApollo).toBe(true);
    expect(JSON.parse(forbiddenDetail.body).errors[0].extensions.code).toBe("FORBIDDEN");
    // Arguments the resolver refuses, and variables that do not coerce: Apollo's errors and statuses.
    const badName = await post(t, doc, { productName, deviceName: "a/b" });
    expect(badName.byApollo).toBe(true);
    expect(JSON.parse(badName.body).errors[0].extensions.code).toBe("BAD_USER_INPUT");
    const badVariable = await post(t, doc, { productName, deviceName: 7 });
    expect(badVariable).toMatchObject({ status: 400, byApollo: true });
    expect(JSON.parse(badVariable.body).errors[0].extensions.code).toBe("BAD_USER_INPUT");
    // The list-items limit depends on the variables: over it, refused although the text is known (each list alone is allowed).
    const two = `query Two($p: String!, $a: [String!]!, $b: [String!]!) { a: otaProgresses(productName: $p, deviceNames: $a) { deviceName } b: otaProgresses(productName: $p, deviceNames: $b) { deviceName } }`;
    const names = (n: number) => Array.from({ length: n }, (_, i) => `n${i}`);
    expect((await post(t, two, { p: productName, a: names(2), b: names(2) })).status).toBe(200);
    expect(await post(t, two, { p: productName, a: names(2), b: names(2) })).toMatchObject({ status: 200, byApollo: false });
    const over = await post(t, two, { p: productName, a: names(6_000), b: names(4_001) });
    expect(over).toMatchObject({ status: 400, byApollo: true });
    expect(JSON.parse(over.body).errors[0].extensions.code).toBe("GRAPHQL_VALIDATION_FAILED");
  });

  it("ahead of Express, answer a body that does not parse, a refused token and a cut body as Express does", async () => {
    const query = print(OtaProgressDocument);
    await post(t, query, { productName, deviceName: "d0" });
    // The same bytes sent chunked (no Content-Length) are Express's alone: the answers must be the same.
    const send = async (body: string, token: string, chunked: boolean) => {
      const res = await fetch(`${t.httpUrl}/graphql`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
        body: chunked ? new Blob([body]).stream() : body,
        ...(chunked ? { duplex: "half" } : {}),
      } as RequestInit);
      return { status: res.status, type: res.headers.get("content-type"), body: await res.text() };
    };
    const broken = `{"query": ${JSON.stringify(query)}, "variables": {`;
    const direct = await send(broken, t.token, false);
    expect(direct.status).toBe(400);
    expect(JSON.parse(direct.body).errors[0].extensions.code).toBe("BAD_REQUEST");
    expect(direct).toEqual(await send(broken, t.token, true));
    const good = JSON.stringify({ query, variables: { productName, deviceName: "d0" } });
    const refused = await send(good, "not-a-token", false);
    expect(refused.status).toBe(401);
    expect(refused).toEqual(await send(good, "not-a-token", true));

    // A body shorter than its Content-Length, then the connection closed: nothing answered, nothing broken.
    await new Promise<void>((resolve, reject) => {
      const socket = netConnect(Number(new URL(t.httpUrl).port), "127.0.0.1", () => {
        socket.end(`POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer ${t.token}\r\nContent-Length: 500\r\n\r\n{"query":`);
      });
      socket.on("error", reject);
      socket.on("close", () => resolve());
      socket.resume();
    });
    expect(await post(t, query, { productName, deviceName: "d0" })).toMatchObject({ status: 200, byApollo: false });
  });
});

import { parse, print } from "graphql";
import type { TypedDocumentNode } from "@graphql-typed-document-node/core";
import { beforeAll, describe, expect, it } from "vitest";
import { OtaProgressesDocument, RegisterDeviceDocument } from "../../src/client/generated/graphql.js";
import { gql, gqlOk, startApp, wsClient, type TestApp } from "../helpers/app.js";
import { OwnRedis } from "../helpers/processes.js";
import { uniq } from "../helpers/services.js";
import { eventually, Inbox } from "../helpers/wait.js";

const TwoLists = parse(`query Two($productName: String!, $a: [String!]!, $b: [String!]!) {
  a: otaProgresses(productName: $productName, deviceNames: $a) { deviceName }
  b: otaProgresses(productName: $productName, deviceNames: $b) { deviceName }
}`) as TypedDocumentNode<unknown, { productName: string; a: string[]; b: string[] }>;

const names = (n: number) => Array.from({ length: n }, (_, i) => `d${i}`);

describe("API limits", () => {
  let t: TestApp;
  let productName: string;

  beforeAll(async () => {
    // Frames large enough for 10,000 names (the default 64 KiB holds about 8,000).
    t = await startApp({ env: { WS_MAX_SUBSCRIPTIONS_PER_CONNECTION: "3", WS_MAX_CONNECTIONS_PER_TOKEN: "2", WS_MAX_PAYLOAD_BYTES: "1048576" } });
    productName = uniq("lim");
    await gqlOk(t, RegisterDeviceDocument, { input: { productName, deviceName: "d1" } });
  });

  it("answer one otaProgresses of 10,000 names, and refuse 10,001 names spread over aliases", async () => {
    const one = await gql(t, OtaProgressesDocument, { productName, deviceNames: names(10_000) });
    expect(one.errors).toBeUndefined();
    expect(one.data?.otaProgresses).toHaveLength(10_000);
    const split = await gql(t, TwoLists, { productName, a: names(5_000), b: names(5_000) });
    expect(split.errors).toBeUndefined();
    const over = await gql(t, TwoLists, { productName, a: names(10_000), b: names(1) });
    expect(over.status).toBe(400);
    expect(over.errors?.[0]?.extensions?.code).toBe("GRAPHQL_VALIDATION_FAILED");
    expect(over.errors?.[0]?.message).toContain("10001 list items");
    expect(over.data ?? null).toBeNull();
  });

  it("refuse graphql-ws operations over the list-items limit too", async () => {
    const client = wsClient(t);
    const errors = new Inbox<unknown>();
    client.subscribe({ query: print(TwoLists), variables: { productName, a: names(10_000), b: names(1) } }, {
      next: () => undefined,
      error: (e) => errors.push(e),
      complete: () => undefined,
    });
    expect(JSON.stringify(await errors.next())).toMatch(/10001 list items.*GRAPHQL_VALIDATION_FAILED/);
  });

  it("refuse a subscription past the per-connection limit, keeping the connection and the others", async () => {
    const client = wsClient(t);
    const errors = new Inbox<unknown>();
    const query = `subscription { otaProgressChanged(productName: "${productName}") { deviceName } }`;
    for (let i = 0; i < 3; i++) client.subscribe({ query }, { next: () => undefined, error: (e) => errors.push(e), complete: () => undefined });
    await eventually(() => expect(t.app.progressFeed.watching.get(productName)).toBe(3));
    client.subscribe({ query }, { next: () => undefined, error: (e) => errors.push(e), complete: () => undefined });
    expect(JSON.stringify(await errors.next())).toMatch(/at most 3 operations.*LIMIT_EXCEEDED/);
    expect(t.app.progressFeed.watching.get(productName)).toBe(3);
    await client.dispose();
    await eventually(() => expect(t.app.progressFeed.watching.has(productName)).toBe(false));
  });

  it("close a token's connection past the per-token limit with 1013, and take one again when another closes", async () => {
    const { token } = await t.app.tokens.create({ name: "ws", access: "read" });
    const open = async () => {
      const client = wsClient({ wsUrl: t.wsUrl, token });
      const outcome = new Promise<string | number>((resolve) => {
        client.on("connected", () => resolve("connected"));
        client.on("closed", (e) => resolve((e as { code: number }).code));
      });
      return { client, outcome: await outcome };
    };
    const first = await open();
    const second = await open();
    expect([first.outcome, second.outcome]).toEqual(["connected", "connected"]);
    expect((await open()).outcome).toBe(1013);
    await first.client.dispose();
    await eventually(async () => expect((await open()).outcome).toBe("connected"));
  });
});

describe("/readyz", () => {
  it("names the dependency that failed and nothing of its error", async () => {
    const redis = await OwnRedis.start();
    const t = await startApp({ env: { REDIS_URL: redis.url, REDIS_COMMAND_TIMEOUT_MS: "500" } });
    expect((await fetch(`${t.httpUrl}/readyz`)).status).toBe(200);
    await redis.stop();
    const res = await fetch(`${t.httpUrl}/readyz`);
    expect(res.status).toBe(503);
    expect(await res.json()).toEqual({ status: "not ready", checks: { redis: "failed", database: "ok", broker: "ok" } });
    await redis.resume();
    await eventually(async () => expect((await fetch(`${t.httpUrl}/readyz`)).status).toBe(200), 15_000);
  });
});

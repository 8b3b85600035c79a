import { print } from "graphql";
import { createClient } from "graphql-ws";
import { beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import {
  ApiTokensDocument,
  CreateApiTokenDocument,
  DeleteDeviceDocument,
  DeviceDocument,
  OtaProgressChangedDocument,
  RegisterDeviceDocument,
  RevokeApiTokenDocument,
  SetDeviceTagsDocument,
  SuspendDeviceDocument,
  type ApiAccess,
} from "../../src/client/generated/graphql.js";
import { gql, gqlOk, startApp, wsClient, type TestApp } from "../helpers/app.js";
import { DATABASE_URL, freshDatabase, uniq } from "../helpers/services.js";
import { onTeardown } from "../helpers/teardown.js";
import { eventually } from "../helpers/wait.js";

/** A graphql-ws client of this token, subscribed to a product; resolves with how the connection ended. */
async function liveSubscriber(t: Pick<TestApp, "wsUrl">, token: string, productName: string) {
  const client = wsClient({ wsUrl: t.wsUrl, token });
  const closed = new Promise<{ code: number; reason: string }>((resolve) => client.on("closed", (e) => resolve(e as { code: number; reason: string })));
  const connected = new Promise<void>((resolve) => client.on("connected", () => resolve()));
  client.subscribe({ query: print(OtaProgressChangedDocument), variables: { productName } }, { next: () => undefined, error: () => undefined, complete: () => undefined });
  await connected;
  return { closed };
}

describe("API tokens", () => {
  let t: TestApp;
  let productName: string;

  const create = async (access: ApiAccess, products?: string[], expiresAt?: string) =>
    (await gqlOk(t, CreateApiTokenDocument, { input: { name: uniq("tok"), access, products, expiresAt } })).createApiToken;
  const as = (token: string) => ({ httpUrl: t.httpUrl, token });

  beforeAll(async () => {
    t = await startApp();
    productName = uniq("auth");
    await gqlOk(t, RegisterDeviceDocument, { input: { productName, deviceName: "d1" } });
  });

  it("let a write token send, tag and suspend, but not register, delete or manage tokens", async () => {
    const { token } = await create("WRITE");
    expect((await gql(as(token), SetDeviceTagsDocument, { productName, deviceName: "d1", tags: ["x"] })).data?.setDeviceTags.tags).toEqual(["x"]);
    expect((await gql(as(token), SuspendDeviceDocument, { productName, deviceName: "d1" })).data?.suspendDevice.suspended).toBe(true);
    await t.app.devices.setSuspended(productName, "d1", false);
    for (const r of [
      await gql(as(token), RegisterDeviceDocument, { input: { productName, deviceName: "nope" } }),
      await gql(as(token), DeleteDeviceDocument, { productName, deviceName: "d1" }),
      await gql(as(token), ApiTokensDocument, {}),
    ]) {
      expect(r.errors?.[0]?.extensions?.code).toBe("FORBIDDEN");
    }
    const rest = await fetch(`${t.httpUrl}/devices`, {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify({ product_name: productName }),
    });
    expect(rest.status).toBe(403);
  });

  it("let an admin token of some products register there only, and not manage tokens", async () => {
    const mine = uniq("mine");
    const { token } = await create("ADMIN", [mine]);
    expect((await gql(as(token), RegisterDeviceDocument, { input: { productName: mine, deviceName: "a" } })).data?.registerDevice.device.deviceName).toBe("a");
    expect((await gql(as(token), RegisterDeviceDocument, { input: { productName, deviceName: "b" } })).errors?.[0]?.extensions?.code).toBe("FORBIDDEN");
    const escalate = await gql(as(token), CreateApiTokenDocument, { input: { name: "x", access: "ADMIN" } });
    expect(escalate.errors?.[0]?.extensions?.code).toBe("FORBIDDEN");
  });

  it("are listed without their secret, and validated", async () => {
    const created = await create("READ", [productName, productName]);
    expect(created.apiToken).toMatchObject({ access: "READ", products: [productName], revokedAt: null, expiresAt: null });
    const { apiTokens } = await gqlOk(t, ApiTokensDocument, {});
    expect(apiTokens.find((k) => k.id === created.apiToken.id)).toEqual(created.apiToken);
    expect(JSON.stringify(apiTokens)).not.toContain(created.token);
    const past = await gql(t, CreateApiTokenDocument, { input: { name: "old", access: "READ", expiresAt: new Date(Date.now() - 1000).toISOString() } });
    expect(past.errors?.[0]?.extensions).toMatchObject({ code: "BAD_USER_INPUT", field: "expiresAt" });
    const badProduct = await gql(t, CreateApiTokenDocument, { input: { name: "p", access: "READ", products: ["a/b"] } });
    expect(badProduct.errors?.[0]?.extensions).toMatchObject({ code: "BAD_USER_INPUT", field: "products" });
  });

  it("once revoked, are refused at once and their live WebSocket connections are closed with 4401", async () => {
    const { token, apiToken } = await create("READ");
    expect((await gql(as(token), DeviceDocument, { productName, deviceName: "d1" })).status).toBe(200);
    const subscriber = await liveSubscriber(t, token, productName);
    expect((await gqlOk(t, RevokeApiTokenDocument, { id: apiToken.id })).revokeApiToken).toBe(true);
    const revokedAt = Date.now();
    expect(await subscriber.closed).toMatchObject({ code: 4401, reason: "API token revoked" });
    // At once on this instance, not at the next sweep of live connections.
    expect(Date.now() - revokedAt).toBeLessThan(1000);
    const after = await gql(as(token), DeviceDocument, { productName, deviceName: "d1" });
    expect(after.status).toBe(401);
    expect((await fetch(`${t.httpUrl}/ota/${productName}/d1`, { headers: { authorization: `Bearer ${token}` } })).status).toBe(401);
    expect((await gqlOk(t, RevokeApiTokenDocument, { id: apiToken.id })).revokeApiToken).toBe(false);
    const { apiTokens } = await gqlOk(t, ApiTokensDocument, {});
    expect(apiTokens.find((k) => k.id === apiToken.id)?.revokedAt).not.toBeNull();
  });

  it("are refused once expired, and their live connections closed", async () => {
    const { token } = await create("READ", undefined, new Date(Date.now() + 1500).toISOString());
    expect((await gql(as(token), DeviceDocument, { productName, deviceName: "d1" })).status).toBe(200);
    const subscriber = await liveSubscriber(t, token, productName);
    await eventually(async () => expect((await gql(as(token), DeviceDocument, { productName, deviceName: "d1" })).status).toBe(401), 5_000);
    expect((await subscriber.closed).code).toBe(4401);
  });

  describe.runIf(DATABASE_URL)("on two instances of one deployment", () => {
    it("a token revoked on one is refused by the other within the cache TTL, its connections there closed", async () => {
      const database = await freshDatabase("postgres");
      const one = await startApp({ database });
      const two = await startApp({ database });
      const { createApiToken } = await gqlOk(one, CreateApiTokenDocument, { input: { name: "shared", access: "READ" } });
      const onTwo = { httpUrl: two.httpUrl, token: createApiToken.token };
      expect((await gql(onTwo, DeviceDocument, { productName, deviceName: "d1" })).status).toBe(200);
      const subscriber = await liveSubscriber(two, createApiToken.token, productName);
      await gqlOk(one, RevokeApiTokenDocument, { id: createApiToken.apiToken.id });
      const revokedAt = Date.now();
      expect((await subscriber.closed).code).toBe(4401);
      await eventually(async () => expect((await gql(onTwo, DeviceDocument, { productName, deviceName: "d1" })).status).toBe(401), 7_000);
      expect(Date.now() - revokedAt).toBeLessThan(7_000);
    });
  });
});

describe("a WebSocket connection whose token cannot be checked", () => {
  it("is closed with 1013 (Try Again Later, which graphql-ws clients retry) and a reason that carries no internals", async () => {
    const t = await startApp();
    const { token } = (await gqlOk(t, CreateApiTokenDocument, { input: { name: uniq("tok"), access: "READ" } })).createApiToken;
    // The token store is gone (a database outage): the check itself fails.
    await t.app.database.stop();
    let restarted = false;
    onTeardown(() => (restarted ? undefined : t.app.database.start()));
    const client = wsClient({ wsUrl: t.wsUrl, token });
    const closed = await new Promise<{ code: number; reason: string }>((resolve) => client.on("closed", (e) => resolve(e as { code: number; reason: string })));
    expect(closed).toMatchObject({ code: 1013, reason: "the API token could not be checked: try again later" });
    expect((await fetch(`${t.httpUrl}/healthz`)).status).toBe(200);

    // graphql-ws' own client, retrying as a dashboard's does, is in once the store is back (4500 it took for fatal).
    const closes: number[] = [];
    const retrying = createClient({
      url: t.wsUrl,
      webSocketImpl: WebSocket,
      connectionParams: { authorization: `Bearer ${token}` },
      lazy: false,
      retryAttempts: 20,
      retryWait: () => new Promise((resolve) => setTimeout(resolve, 200)),
      onNonLazyError: () => undefined,
      on: { closed: (e) => closes.push((e as { code: number }).code) },
    });
    onTeardown(() => retrying.dispose());
    const connected = new Promise<void>((resolve) => retrying.on("connected", () => resolve()));
    await eventually(() => expect(closes.length).toBeGreaterThanOrEqual(2), 10_000);
    expect(new Set(closes)).toEqual(new Set([1013]));
    restarted = true;
    await t.app.database.start();
    await connected;
  });
});

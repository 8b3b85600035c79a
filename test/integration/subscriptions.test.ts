import { beforeAll, describe, expect, it } from "vitest";
import { parse, print, type ExecutionResult } from "graphql";
import WebSocket from "ws";
import type { TypedDocumentNode } from "@graphql-typed-document-node/core";
import {
  CreateApiTokenDocument,
  OtaProgressChangedDocument,
  OtaProgressDocument,
  type OtaProgressChangedSubscription,
  RegisterDeviceDocument,
  RevokeApiTokenDocument,
} from "../../src/client/generated/graphql.js";
import { gqlOk, startApp, subscribe, wsClient, type TestApp } from "../helpers/app.js";
import { TestDevice } from "../helpers/device.js";
import { metric } from "../helpers/metrics.js";
import { uniq } from "../helpers/services.js";
import { onTeardown } from "../helpers/teardown.js";
import { eventually, Inbox } from "../helpers/wait.js";

// A second selection of the same subscription, to check that shared execution keeps answers apart.
const Narrow = parse(`subscription Narrow($productName: String!) { otaProgressChanged(productName: $productName) { deviceName progress } }`) as TypedDocumentNode<
  { otaProgressChanged: { deviceName: string; progress: number } },
  { productName: string }
>;

describe("subscriptions shared by many clients", () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startApp();
  });

  it("give each subscriber its own selection and filter, though an event is executed once per query", async () => {
    const productName = uniq("fan");
    const [a, b] = await Promise.all(
      ["a", "b"].map(async (deviceName) => {
        const { registerDevice } = await gqlOk(t, RegisterDeviceDocument, { input: { productName, deviceName } });
        return TestDevice.connect(t.mqttUrl, productName, deviceName, registerDevice.secret);
      }),
    );
    const everything = await subscribe(wsClient(t), OtaProgressChangedDocument, { productName });
    const everythingToo = await subscribe(wsClient(t), OtaProgressChangedDocument, { productName });
    const onlyB = await subscribe(wsClient(t), OtaProgressChangedDocument, { productName, deviceName: "b" });
    const narrow = await subscribe(wsClient(t), Narrow, { productName });

    await a!.reportProgress({ version: "2", type: "firmware", progress: 10 });
    await b!.reportProgress({ version: "2", type: "firmware", progress: 20 });

    for (const s of [everything, everythingToo]) {
      const got = [(await s.results.next()).data!.otaProgressChanged, (await s.results.next()).data!.otaProgressChanged];
      expect(got.map((p) => [p.deviceName, p.progress, p.state])).toEqual([
        ["a", 10, "DOWNLOADING"],
        ["b", 20, "DOWNLOADING"],
      ]);
    }
    expect((await onlyB.results.next()).data!.otaProgressChanged).toMatchObject({ deviceName: "b", progress: 20 });
    expect(onlyB.results.pending).toEqual([]);
    const n1 = (await narrow.results.next()).data!.otaProgressChanged;
    const n2 = (await narrow.results.next()).data!.otaProgressChanged;
    expect([n1, n2]).toEqual([
      { deviceName: "a", progress: 10 },
      { deviceName: "b", progress: 20 },
    ]);

    // One shared source for the product; it goes when its last subscriber does.
    expect(t.app.progressFeed.watching.get(productName)).toBe(4);
    for (const s of [everything, everythingToo, onlyB, narrow]) s.stop();
    await eventually(() => expect(t.app.progressFeed.watching.has(productName)).toBe(false));
  });

  it("answers a subscription with a bad query or arguments with an error, not a crash", async () => {
    const s = await subscribe(wsClient(t), OtaProgressChangedDocument, { productName: "bad/name" });
    // The resolver refused the arguments: graphql-ws sends that as a result carrying errors.
    const refused = await s.results.next();
    expect(refused.errors?.[0]?.extensions?.code).toBe("BAD_USER_INPUT");
    const broken = parse(`subscription { otaProgressChanged(productName: "p") { nope } }`) as TypedDocumentNode<unknown, Record<string, never>>;
    const s2 = await subscribe(wsClient(t), broken, {});
    expect(JSON.stringify(await s2.errors.next())).toContain("nope");
  });
});

describe("subscribers that do not keep up, or fail", () => {
  it("keep a frozen subscriber's queue bounded: the latest report per device, counted, and the API stays responsive", async () => {
    const t = await startApp({ env: { SUBSCRIBER_QUEUE_MAX: "8" } });
    const productName = uniq("frozen");
    const devices = await Promise.all(
      Array.from({ length: 12 }, async (_, i) => {
        const { registerDevice } = await gqlOk(t, RegisterDeviceDocument, { input: { productName, deviceName: `d${i}` } });
        return TestDevice.connect(t.mqttUrl, productName, `d${i}`, registerDevice.secret);
      }),
    );
    // A subscriber that stops reading: its socket is paused, so the kernel buffers fill and sends block.
    const frozen = new WebSocket(t.wsUrl, "graphql-transport-ws");
    onTeardown(() => frozen.terminate());
    await new Promise((resolve) => frozen.once("open", resolve));
    frozen.send(JSON.stringify({ type: "connection_init", payload: { authorization: `Bearer ${t.token}` } }));
    await new Promise((resolve) => frozen.once("message", resolve));
    frozen.send(JSON.stringify({ id: "1", type: "subscribe", payload: { query: print(OtaProgressChangedDocument), variables: { productName } } }));
    await eventually(() => expect(t.app.progressFeed.watching.get(productName)).toBe(1));
    (frozen as unknown as { _socket: { pause(): void } })._socket.pause();

    // Each report carries 30 KB the device added: a few hundred fill any socket buffer.
    const padding = "x".repeat(30_000);
    for (let progress = 0; progress < 40; progress++) {
      await Promise.all(devices.map((d) => d.reportProgress({ version: "2", type: "firmware", progress, padding })));
    }
    await eventually(async () => expect(await metric(t, "iothub_ota_subscriber_overflow_total")).toBeGreaterThan(0), 20_000);
    expect(t.app.progressFeed.backlog).toBeLessThanOrEqual(8);
    const started = Date.now();
    await gqlOk(t, OtaProgressDocument, { productName, deviceName: "d0" });
    expect(Date.now() - started).toBeLessThan(2_000);
  });

  it("do not stay registered when their stream fails", async () => {
    const t = await startApp();
    const productName = uniq("failing");
    const { registerDevice } = await gqlOk(t, RegisterDeviceDocument, { input: { productName, deviceName: "d" } });
    const device = await TestDevice.connect(t.mqttUrl, productName, "d", registerDevice.secret);
    const byTag = await subscribe(wsClient(t), OtaProgressChangedDocument, { productName, tag: "beta" });
    expect(t.app.progressFeed.watching.get(productName)).toBe(1);

    // Tag membership is read from the database: with it gone, the subscriber's next step fails.
    await t.app.database.stop();
    onTeardown(() => t.app.database.start());
    await device.reportProgress({ version: "2", type: "firmware", progress: 5 });
    await byTag.errors.next();
    await eventually(() => expect(t.app.progressFeed.watching.has(productName)).toBe(false));
  });
});

interface WsMessage {
  id?: string;
  type: string;
  payload?: { data?: { otaProgressChanged: { deviceName: string; progress: number } } };
}

/** A graphql-transport-ws connection of the test's own: every message as it comes, and its socket to pause. */
async function rawConnection(t: TestApp, token = t.token) {
  const socket = new WebSocket(t.wsUrl, "graphql-transport-ws");
  onTeardown(() => socket.terminate());
  const messages = new Inbox<WsMessage>();
  const closed = new Promise<{ code: number; reason: string }>((resolve) => socket.on("close", (code, reason) => resolve({ code, reason: reason.toString() })));
  socket.on("message", (data) => messages.push(JSON.parse(String(data)) as WsMessage));
  await new Promise((resolve) => socket.once("open", resolve));
  socket.send(JSON.stringify({ type: "connection_init", payload: { authorization: `Bearer ${token}` } }));
  await messages.next((m) => m.type === "connection_ack");
  const raw = (socket as unknown as { _socket: { pause(): void; resume(): void } })._socket;
  return {
    messages,
    closed,
    subscribe: (id: string, productName: string, query = print(OtaProgressChangedDocument)) =>
      socket.send(JSON.stringify({ id, type: "subscribe", payload: { query, variables: { productName } } })),
    complete: (id: string) => socket.send(JSON.stringify({ id, type: "complete" })),
    /** Stops reading: the kernel's buffers fill, then the server's sends stay in user space. */
    pause: () => raw.pause(),
    resume: () => raw.resume(),
  };
}

async function devices(t: TestApp, productName: string, n: number): Promise<TestDevice[]> {
  return Promise.all(
    Array.from({ length: n }, async (_, i) => {
      const { registerDevice } = await gqlOk(t, RegisterDeviceDocument, { input: { productName, deviceName: `d${i}` } });
      return TestDevice.connect(t.mqttUrl, productName, `d${i}`, registerDevice.secret);
    }),
  );
}

/** Every device reports `rounds` times, each report carrying 30 KB: a few hundred fill any socket's buffers. */
async function flood(all: TestDevice[], rounds: number): Promise<void> {
  const padding = "x".repeat(30_000);
  for (let progress = 0; progress < rounds; progress++) {
    await Promise.all(all.map((d) => d.reportProgress({ version: "2", type: "firmware", progress, padding })));
  }
}

/** Waits until a subscriber has the last report of every device (a slow one's older reports may have been dropped). */
async function lastOfEach(results: Inbox<ExecutionResult<OtaProgressChangedSubscription>>, devices: number, progress: number) {
  const seen = new Set<string>();
  while (seen.size < devices) {
    const p = (await results.next(() => true, 20_000)).data?.otaProgressChanged;
    if (p?.progress === progress) seen.add(p.deviceName);
  }
}

/** A subscriber that keeps up (graphql-ws' client) and one that has stopped reading (id "frozen"), on a server with this bound. */
async function besideFrozen(name: string, queueMax: number, deviceCount: number) {
  const t = await startApp({ env: { SUBSCRIBER_QUEUE_MAX: String(queueMax) } });
  const productName = uniq(name);
  const all = await devices(t, productName, deviceCount);
  const fast = await subscribe(wsClient(t), OtaProgressChangedDocument, { productName });
  const frozen = await rawConnection(t);
  frozen.subscribe("frozen", productName);
  await eventually(() => expect(t.app.progressFeed.watching.get(productName)).toBe(2));
  frozen.pause();
  return { t, productName, all, fast, frozen };
}

/**
 * The same once 8 devices have sent 60 reports each and the one that keeps up has every device's last. The bound is 8,
 * no fewer than the devices: a batch of reports dealt at once then never exceeds it for a subscriber that keeps up.
 */
async function frozenBehind(name: string) {
  const behind = await besideFrozen(name, 8, 8);
  await flood(behind.all, 60);
  await lastOfEach(behind.fast.results, 8, 59);
  return behind;
}

const step = (m: WsMessage) => {
  const p = m.payload?.data?.otaProgressChanged;
  return `${p?.deviceName}:${p?.progress}`;
};

describe("reports pushed to many subscribers", () => {
  it("reach a subscriber that falls behind in the order the others get them, none lost below the queue bound", async () => {
    const { t, all, fast, frozen: slow } = await besideFrozen("order", 1000, 12);

    const flooding = flood(all, 40);
    // It did fall behind: reports waited for it in the feed, not only in socket buffers.
    await eventually(() => expect(t.app.progressFeed.backlog).toBeGreaterThan(0), 20_000);
    await flooding;
    const fastSteps: string[] = [];
    for (let i = 0; i < 480; i++) {
      const { deviceName, progress } = (await fast.results.next()).data!.otaProgressChanged;
      fastSteps.push(`${deviceName}:${progress}`);
    }
    slow.resume();
    const slowSteps: string[] = [];
    for (let i = 0; i < 480; i++) slowSteps.push(step(await slow.messages.next((m) => m.id === "frozen", 20_000)));
    expect(slowSteps).toEqual(fastSteps);
    expect(await metric(t, "iothub_ota_subscriber_overflow_total")).toBe(0);
  });

  it("hold a frozen subscriber's backlog in the feed at its bound, not in its socket: it gets the latest per device when it reads again", async () => {
    const { t, frozen } = await frozenBehind("frozen");
    // Everything is dealt (the fast one has it all): the frozen one's reports wait in the feed, bounded, and nowhere else grows.
    expect(t.app.progressFeed.backlog).toBe(8);
    expect(await metric(t, "iothub_ota_subscriber_overflow_total")).toBeGreaterThan(0);

    frozen.resume();
    // What waited is the last report of each device.
    const latest = new Set<string>();
    while (latest.size < 8) {
      const s = step(await frozen.messages.next((m) => m.id === "frozen", 20_000));
      if (s.endsWith(":59")) latest.add(s);
    }
    await eventually(() => expect(t.app.progressFeed.backlog).toBe(0));
  });

  it("send nothing more to a subscriber that unsubscribes while its reports wait, and forget it", async () => {
    const { t, productName, all, frozen: leaving } = await frozenBehind("leaving");
    expect(t.app.progressFeed.backlog).toBe(8);

    // Unsubscribed with reports waiting for it (a paused reader still writes).
    leaving.complete("frozen");
    await eventually(() => expect(t.app.progressFeed.watching.get(productName)).toBe(1));
    expect(t.app.progressFeed.backlog).toBe(0);
    // A second subscription on the same connection, after the first: it would get each report after the first did.
    leaving.subscribe("after", productName);
    await eventually(() => expect(t.app.progressFeed.watching.get(productName)).toBe(2));
    leaving.resume();
    await all[0]!.reportProgress({ version: "2", type: "firmware", progress: 100 });
    await leaving.messages.next((m) => m.id === "after" && step(m) === "d0:100", 20_000);
    expect(leaving.messages.pending.filter((m) => m.id === "frozen" && step(m) === "d0:100")).toEqual([]);
    // The connection itself is fine.
    leaving.complete("after");
    await eventually(() => expect(t.app.progressFeed.watching.get(productName)).toBe(1));
  });

  it("arrive whole whatever their size: frames with 7-, 16- and 64-bit lengths", async () => {
    const t = await startApp({ env: { MAX_PAYLOAD_BYTES: "100000" } });
    const productName = uniq("sizes");
    const [d] = await devices(t, productName, 1);
    const c = await rawConnection(t);
    c.subscribe("1", productName, print(Narrow));
    c.subscribe("full", productName);
    await eventually(() => expect(t.app.progressFeed.watching.get(productName)).toBe(2));
    for (const padding of ["", "x".repeat(1_000), "y".repeat(70_000)]) {
      await d!.reportProgress({ version: "2", type: "firmware", progress: padding.length % 100, padding });
      const short = await c.messages.next((m) => m.id === "1");
      // The narrow selection under the id "1" is a message of under 126 bytes.
      expect(JSON.stringify(short).length).toBeLessThan(126);
      expect(short.payload?.data?.otaProgressChanged).toEqual({ deviceName: "d0", progress: padding.length % 100 });
      const full = (await c.messages.next((m) => m.id === "full")) as unknown as { payload: { data: { otaProgressChanged: { raw: { padding: string } } } } };
      expect(full.payload.data.otaProgressChanged.raw.padding).toBe(padding);
    }
  });

  it("close a subscriber whose token is revoked while reports stream to it with 4401, and forget it", async () => {
    const t = await startApp();
    const productName = uniq("revoked");
    const all = await devices(t, productName, 4);
    const { createApiToken } = await gqlOk(t, CreateApiTokenDocument, { input: { name: uniq("tok"), access: "READ" } });
    const admin = await subscribe(wsClient(t), OtaProgressChangedDocument, { productName });
    const reader = await rawConnection(t, createApiToken.token);
    reader.subscribe("r", productName);
    await eventually(() => expect(t.app.progressFeed.watching.get(productName)).toBe(2));

    let streaming = true;
    const reporting = (async () => {
      for (let progress = 0; streaming; progress = (progress + 1) % 100) {
        await Promise.all(all.map((d) => d.reportProgress({ version: "2", type: "firmware", progress })));
      }
    })();
    await reader.messages.next((m) => m.id === "r");
    await gqlOk(t, RevokeApiTokenDocument, { id: createApiToken.apiToken.id });
    expect(await reader.closed).toMatchObject({ code: 4401, reason: "API token revoked" });
    await eventually(() => expect(t.app.progressFeed.watching.get(productName)).toBe(1));
    // The others are still served.
    const before = admin.results.pending.length;
    await eventually(() => expect(admin.results.pending.length).toBeGreaterThan(before + 4));
    streaming = false;
    await reporting;
  });
});

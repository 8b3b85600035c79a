import { beforeAll, describe, expect, it } from "vitest";
import { parse, print } from "graphql";
import type { TypedDocumentNode } from "@graphql-typed-document-node/core";
import type { Client } from "graphql-ws";
import WebSocket from "ws";
import {
  CreateApiTokenDocument,
  OtaProgressBatchesDocument,
  OtaProgressChangedDocument,
  RegisterDeviceDocument,
  type OtaProgressBatchesSubscription,
  type OtaProgressBatchesSubscriptionVariables,
} from "../../src/client/generated/graphql.js";
import { gqlOk, startApp, subscribe, wsClient, type TestApp } from "../helpers/app.js";
import { TestDevice } from "../helpers/device.js";
import { createRollout, firmwareFile, rolloutInput } from "../helpers/rollout.js";
import { uniq } from "../helpers/services.js";
import { onTeardown } from "../helpers/teardown.js";
import { eventually, Inbox } from "../helpers/wait.js";

type Batch = OtaProgressBatchesSubscription["otaProgressBatches"];

async function device(t: TestApp, productName: string, deviceName: string, tags: string[] = []): Promise<TestDevice> {
  const { registerDevice } = await gqlOk(t, RegisterDeviceDocument, { input: { productName, deviceName, tags } });
  return TestDevice.connect(t.mqttUrl, productName, deviceName, registerDevice.secret);
}

/**
 * The product's feed made live first (the `subscribe` helper waits for its Redis subscription),
 * so that batch subscribers joining it miss nothing.
 */
async function liveProduct(t: TestApp, productName: string): Promise<void> {
  await subscribe(wsClient(t), OtaProgressChangedDocument, { productName });
}

/** A batch subscription whose batches land in an inbox with the time each arrived. */
async function batches(t: TestApp, variables: OtaProgressBatchesSubscriptionVariables, client: Client = wsClient(t)) {
  const got = new Inbox<{ at: number; batch: Batch }>();
  const errors = new Inbox<unknown>();
  const before = t.app.progressFeed.watching.get(variables.productName) ?? 0;
  const stop = client.subscribe<OtaProgressBatchesSubscription>(
    { query: print(OtaProgressBatchesDocument), variables },
    {
      next: (r) => (r.data ? got.push({ at: Date.now(), batch: r.data.otaProgressBatches }) : errors.push(r.errors)),
      error: (e) => errors.push(e),
      complete: () => undefined,
    },
  );
  onTeardown(stop);
  return { got, errors, stop, joined: () => eventually(() => expect(t.app.progressFeed.watching.get(variables.productName) ?? 0).toBeGreaterThan(before)) };
}

/** Takes batches until `done` says the last expected report is in, and returns them all. */
async function until(inbox: Inbox<{ at: number; batch: Batch }>, done: (all: Batch[]) => boolean, ms = 15_000) {
  const all: { at: number; batch: Batch }[] = [];
  while (!done(all.map((b) => b.batch))) all.push(await inbox.next(() => true, ms));
  return all;
}

const latestOf = (all: Batch[]) => {
  const latest = new Map<string, number>();
  for (const b of all) for (const r of b.reports) latest.set(r.deviceName, r.progress);
  return latest;
};

describe("otaProgressBatches", () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startApp();
  });

  it("delivers the latest report of each device once per chosen interval, counting the reports it replaced", async () => {
    const productName = uniq("batch");
    const [a, b] = [await device(t, productName, "a"), await device(t, productName, "b")];
    await liveProduct(t, productName);
    const s = await batches(t, { productName, intervalMs: 400 });
    await s.joined();

    for (const progress of [10, 20, 30]) await a.reportProgress({ version: "2", type: "firmware", progress });
    await b.reportProgress({ version: "2", type: "firmware", progress: 5 });
    const all = await until(s.got, (got) => latestOf(got).get("a") === 30 && latestOf(got).get("b") === 5);

    // Every report is either in a batch or counted as replaced; a batch holds each device once.
    const sent = all.reduce((n, { batch }) => n + batch.reports.length + batch.coalesced, 0);
    expect(sent).toBe(4);
    expect(all.reduce((n, { batch }) => n + batch.dropped, 0)).toBe(0);
    for (const { batch } of all) expect(new Set(batch.reports.map((r) => r.deviceName)).size).toBe(batch.reports.length);
    // Batches leave on the interval's ticks: never two within one interval.
    for (let i = 1; i < all.length; i++) expect(all[i]!.at - all[i - 1]!.at).toBeGreaterThanOrEqual(350);
    expect(all[0]!.batch.reports[0]).toMatchObject({ productName, state: "DOWNLOADING", raw: { version: "2", type: "firmware" } });
  });

  it("sends nothing on an interval with no report", async () => {
    const productName = uniq("quiet");
    const a = await device(t, productName, "a");
    await liveProduct(t, productName);
    const s = await batches(t, { productName, intervalMs: 100 });
    await s.joined();
    await a.reportProgress({ version: "2", type: "firmware", progress: 1 });
    await s.got.next();
    // Ten intervals without a report.
    await new Promise((r) => setTimeout(r, 1_000));
    expect(s.got.pending).toEqual([]);
  });

  it("keeps a flood to one report per device per batch, the rest counted as coalesced", async () => {
    const productName = uniq("flood");
    const devices = await Promise.all(["d0", "d1", "d2"].map((name) => device(t, productName, name)));
    await liveProduct(t, productName);
    const s = await batches(t, { productName, intervalMs: 1_000 });
    await s.joined();

    const reports = 40;
    await Promise.all(
      devices.map(async (d) => {
        for (let progress = 0; progress < reports; progress++) await d.reportProgress({ version: "2", type: "firmware", progress });
      }),
    );
    const all = await until(s.got, (got) => [...latestOf(got).values()].filter((p) => p === reports - 1).length === 3);
    for (const { batch } of all) expect(batch.reports.length).toBeLessThanOrEqual(devices.length);
    const coalesced = all.reduce((n, { batch }) => n + batch.coalesced, 0);
    const delivered = all.reduce((n, { batch }) => n + batch.reports.length, 0);
    expect(delivered + coalesced).toBe(devices.length * reports);
    // 120 reports in a few intervals: most were replaced before their batch left.
    expect(coalesced).toBeGreaterThan(delivered);
  });

  it("refuses an interval under 100 ms with BAD_USER_INPUT, watching nothing", async () => {
    const productName = uniq("fast");
    const s = await batches(t, { productName, intervalMs: 99 });
    const errors = (await s.errors.next()) as { extensions?: { code?: string }; message: string }[];
    expect(errors[0]?.extensions?.code).toBe("BAD_USER_INPUT");
    expect(errors[0]?.message).toContain("intervalMs");
    expect(t.app.progressFeed.watching.has(productName)).toBe(false);
  });

  it("keeps to the tag it was given", async () => {
    const productName = uniq("tagged");
    const beta = await device(t, productName, "beta-1", ["beta"]);
    const other = await device(t, productName, "other-1");
    await liveProduct(t, productName);
    const s = await batches(t, { productName, tag: "beta", intervalMs: 200 });
    await s.joined();

    await other.reportProgress({ version: "2", type: "firmware", progress: 50 });
    await beta.reportProgress({ version: "2", type: "firmware", progress: 10 });
    await beta.reportProgress({ version: "2", type: "firmware", progress: 60 });
    const all = await until(s.got, (got) => latestOf(got).get("beta-1") === 60);
    expect(new Set(all.flatMap(({ batch }) => batch.reports.map((r) => r.deviceName)))).toEqual(new Set(["beta-1"]));
  });

  it("keeps to the devices it names, within the tag", async () => {
    const productName = uniq("named");
    const [a, b, c] = [await device(t, productName, "a", ["beta"]), await device(t, productName, "b", ["beta"]), await device(t, productName, "c")];
    await liveProduct(t, productName);
    const named = await batches(t, { productName, deviceNames: ["a", "c", "not-registered"], intervalMs: 200 });
    const tagged = await batches(t, { productName, tag: "beta", deviceNames: ["a", "c"], intervalMs: 200 });
    await named.joined();
    await tagged.joined();

    await b.reportProgress({ version: "2", type: "firmware", progress: 50 });
    await a.reportProgress({ version: "2", type: "firmware", progress: 10 });
    await c.reportProgress({ version: "2", type: "firmware", progress: 20 });
    await a.reportProgress({ version: "2", type: "firmware", progress: 60 });
    const all = await until(named.got, (got) => latestOf(got).get("a") === 60 && latestOf(got).get("c") === 20);
    expect(new Set(all.flatMap(({ batch }) => batch.reports.map((r) => r.deviceName)))).toEqual(new Set(["a", "c"]));
    const inTag = await until(tagged.got, (got) => latestOf(got).get("a") === 60);
    expect(new Set(inTag.flatMap(({ batch }) => batch.reports.map((r) => r.deviceName)))).toEqual(new Set(["a"]));
  });

  it("refuses deviceNames that are empty, more than 1,000, or not names, with BAD_USER_INPUT, watching nothing", async () => {
    const productName = uniq("names");
    const cases: [string[], string][] = [
      [[], "got 0"],
      [Array.from({ length: 1001 }, (_, i) => `d${i}`), "got 1001"],
      [["ok", "not a name"], "[1]: deviceName must be"],
    ];
    for (const [deviceNames, says] of cases) {
      const s = await batches(t, { productName, deviceNames, intervalMs: 200 });
      const errors = (await s.errors.next()) as { extensions?: { code?: string }; message: string }[];
      expect(errors[0]?.extensions?.code).toBe("BAD_USER_INPUT");
      expect(errors[0]?.message).toContain("deviceNames");
      expect(errors[0]?.message).toContain(says);
    }
    expect(t.app.progressFeed.watching.has(productName)).toBe(false);
  });

  it("keeps to a rollout's devices and version, filtering before it coalesces", async () => {
    const fw = await firmwareFile();
    const productName = uniq("ro-batch");
    const member = await device(t, productName, "member", ["beta"]);
    const outsider = await device(t, productName, "outsider", ["outsider"]);
    // Scheduled far ahead: its executions exist, nothing is sent.
    const rollout = await createRollout(t, rolloutInput(productName, fw, { policy: { startAt: new Date(Date.now() + 3_600_000).toISOString() } }));
    await liveProduct(t, productName);
    const s = await batches(t, { productName, rolloutId: rollout.id, intervalMs: 300 });
    await s.joined();

    await outsider.reportProgress({ version: "2.0", type: "firmware", progress: 40 });
    await member.reportProgress({ version: "2.0", type: "firmware", progress: 30 });
    // Another version: not the rollout's, so it must not replace the report above.
    await member.reportProgress({ version: "1.9", type: "firmware", progress: 90 });
    await member.reportProgress({ version: "2.0", type: "firmware", progress: 70 });
    const all = await until(s.got, (got) => latestOf(got).get("member") === 70);
    const reports = all.flatMap(({ batch }) => batch.reports);
    expect(reports.every((r) => r.deviceName === "member" && r.version === "2.0")).toBe(true);
    expect(reports.map((r) => r.progress)).not.toContain(90);
  }, 30_000);

  it("answers FORBIDDEN for a product the token may not read, and serves the products it may", async () => {
    const allowed = uniq("mine");
    const other = uniq("theirs");
    const { createApiToken } = await gqlOk(t, CreateApiTokenDocument, { input: { name: uniq("tok"), access: "READ", products: [allowed] } });
    const limited = wsClient({ wsUrl: t.wsUrl, token: createApiToken.token });
    const refused = await batches(t, { productName: other }, limited);
    const errors = (await refused.errors.next()) as { extensions?: { code?: string } }[];
    expect(errors[0]?.extensions?.code).toBe("FORBIDDEN");
    expect(t.app.progressFeed.watching.has(other)).toBe(false);

    const a = await device(t, allowed, "a");
    await liveProduct(t, allowed);
    const served = await batches(t, { productName: allowed, intervalMs: 100 }, limited);
    await served.joined();
    await a.reportProgress({ version: "2", type: "firmware", progress: 3 });
    expect((await served.got.next()).batch.reports.map((r) => [r.deviceName, r.progress])).toEqual([["a", 3]]);
  });

  it("stops watching when the subscriber leaves", async () => {
    const productName = uniq("leave");
    const s = await batches(t, { productName, intervalMs: 100 });
    await s.joined();
    s.stop();
    await eventually(() => expect(t.app.progressFeed.watching.has(productName)).toBe(false));
  });
});

// A second selection of the same subscription: its results are executed and serialised apart.
const Narrow = parse(`subscription Narrow($productName: String!) { otaProgressChanged(productName: $productName) { deviceName progress } }`) as TypedDocumentNode<
  unknown,
  { productName: string }
>;

describe("one event delivered to many subscribers of one query", () => {
  it("gives every subscriber a complete message of its own selection under its own id", async () => {
    const t = await startApp();
    const productName = uniq("fanout");
    const a = await device(t, productName, "a");
    await liveProduct(t, productName);

    // Raw graphql-ws sockets, so that the very frames the server sent are read: 20 connections,
    // each with three subscriptions (the full selection twice, the narrow one once).
    const full = print(OtaProgressChangedDocument);
    const narrow = print(Narrow);
    const sockets = await Promise.all(
      Array.from({ length: 20 }, async (_, i) => {
        const socket = new WebSocket(t.wsUrl, "graphql-transport-ws");
        onTeardown(() => socket.terminate());
        const frames: string[] = [];
        await new Promise((resolve) => socket.once("open", resolve));
        socket.send(JSON.stringify({ type: "connection_init", payload: { authorization: `Bearer ${t.token}` } }));
        await new Promise((resolve) => socket.once("message", resolve));
        socket.on("message", (data) => frames.push(String(data)));
        const ids = { full1: `f-${i}`, full2: `g-${i}-${"x".repeat(i)}`, narrow: `n-${i}` };
        socket.send(JSON.stringify({ id: ids.full1, type: "subscribe", payload: { query: full, variables: { productName } } }));
        socket.send(JSON.stringify({ id: ids.full2, type: "subscribe", payload: { query: full, variables: { productName } } }));
        socket.send(JSON.stringify({ id: ids.narrow, type: "subscribe", payload: { query: narrow, variables: { productName } } }));
        return { frames, ids };
      }),
    );
    await eventually(() => expect(t.app.progressFeed.watching.get(productName)).toBe(1 + 20 * 3));

    await a.reportProgress({ version: "2", type: "firmware", progress: 10, desc: 'quote " and \u00e9' });
    await a.reportProgress({ version: "2", type: "firmware", progress: 20 });
    await eventually(() => expect(sockets.every((s) => s.frames.length === 6)).toBe(true));

    for (const { frames, ids } of sockets) {
      const messages = frames.map((f) => JSON.parse(f) as { id: string; type: string; payload: { data: { otaProgressChanged: Record<string, unknown> } } });
      expect(messages.every((m) => m.type === "next")).toBe(true);
      for (const id of Object.values(ids)) {
        const mine = messages.filter((m) => m.id === id).map((m) => m.payload.data.otaProgressChanged);
        expect(mine.map((p) => p.progress)).toEqual([10, 20]);
        if (id === ids.narrow) expect(mine[0]).toEqual({ deviceName: "a", progress: 10 });
        else expect(mine[0]).toMatchObject({ productName, deviceName: "a", progress: 10, desc: 'quote " and \u00e9', raw: { version: "2", progress: 10 } });
      }
      // The same report to the same selection: the same bytes after the id.
      const byReport = frames.filter((f) => f.includes(`"id":"${ids.full1}"`)).map((f) => f.slice(f.indexOf('"type"')));
      expect(frames.filter((f) => f.includes(`"id":"${ids.full2}"`)).map((f) => f.slice(f.indexOf('"type"')))).toEqual(byReport);
    }
  });
});

import { beforeAll, describe, expect, it } from "vitest";
import { parse, print } from "graphql";
import WebSocket from "ws";
import type { TypedDocumentNode } from "@graphql-typed-document-node/core";
import { OtaProgressChangedDocument, OtaProgressDocument, RegisterDeviceDocument } from "../../src/client/generated/graphql.js";
import { gqlOk, startApp, subscribe, wsClient, type TestApp } from "../helpers/app.js";
import { TestDevice } from "../helpers/device.js";
import { metric } from "../helpers/metrics.js";
import { uniq } from "../helpers/services.js";
import { onTeardown } from "../helpers/teardown.js";
import { eventually } from "../helpers/wait.js";

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

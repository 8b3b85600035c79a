import { describe, expect, it } from "vitest";
import { OtaProgressDocument, RegisterDeviceDocument, SendOtaDocument } from "../../src/client/generated/graphql.js";
import { gql, gqlOk, startApp } from "../helpers/app.js";
import { TestDevice } from "../helpers/device.js";
import { OwnMosquitto } from "../helpers/processes.js";
import { onTeardown } from "../helpers/teardown.js";
import { uniq } from "../helpers/services.js";
import { eventually } from "../helpers/wait.js";
import { firmware } from "../helpers/fixtures.js";


describe("when the external broker goes away", () => {
  it("reports not ready, refuses commands clearly, and recovers when the broker is back", async () => {
    const broker = await OwnMosquitto.start();
    onTeardown(() => broker.stop());
    const t = await startApp({ externalBroker: broker.url });
    const productName = uniq("outage");
    const { registerDevice } = await gqlOk(t, RegisterDeviceDocument, { input: { productName } });
    const { deviceName } = registerDevice.device;
    expect((await fetch(`${t.httpUrl}/readyz`)).status).toBe(200);

    await broker.stop();
    const body = await eventually(async () => {
      const res = await fetch(`${t.httpUrl}/readyz`);
      expect(res.status).toBe(503);
      return (await res.json()) as { checks: Record<string, string> };
    });
    expect(body.checks).toMatchObject({ redis: "ok", database: "ok" });
    expect(body.checks.broker).not.toBe("ok");
    const refused = await gql(t, SendOtaDocument, { input: { productName, deviceName, firmware } });
    expect(refused.errors?.[0]?.extensions?.code).toBe("BROKER_UNAVAILABLE");

    await broker.resume();
    await eventually(async () => expect((await fetch(`${t.httpUrl}/readyz`)).status).toBe(200), 15_000);
    // The server's client subscribed again: ingest works.
    const dev = await TestDevice.connect(broker.url, productName, deviceName, "");
    await dev.reportProgress({ version: "2", type: "firmware", progress: 12 });
    await eventually(async () =>
      expect((await gqlOk(t, OtaProgressDocument, { productName, deviceName })).otaProgress?.progress).toBe(12),
    );
  });
});

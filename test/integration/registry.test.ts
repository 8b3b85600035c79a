import { eq } from "drizzle-orm";
import { beforeAll, describe, expect, it } from "vitest";
import { DevicesDocument, type DevicesQuery } from "../../src/client/generated/graphql.js";
import { gql, gqlOk, startApp, type TestApp } from "../helpers/app.js";
import { DATABASE_KINDS, uniq } from "../helpers/services.js";
import { devices as devicesTable } from "../../src/storage/schema.js";
import { verifySecret } from "../../src/devices/secret.js";

describe.each(DATABASE_KINDS)("the device registry on %s", (database) => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startApp({ database });
  });

  it("keeps only a salted scrypt hash of the secret", async () => {
    const productName = uniq("reg");
    const a = await t.app.devices.register({ productName, deviceName: "a" });
    const b = await t.app.devices.register({ productName, deviceName: "b" });
    const rows = await t.app.database.db.select().from(devicesTable).where(eq(devicesTable.productName, productName));
    const hashes = rows.map((r) => r.secretHash);
    expect(hashes).toHaveLength(2);
    for (const h of hashes) {
      expect(h).toMatch(/^scrypt\$16384\$8\$1\$/);
      expect(h).not.toContain(a.secret);
      expect(h).not.toContain(b.secret);
    }
    const aRow = rows.find((r) => r.deviceName === "a")!;
    expect(await verifySecret(a.secret, aRow.secretHash)).toBe(true);
    expect(await verifySecret(b.secret, aRow.secretHash)).toBe(false);
    expect(await t.app.devices.authenticate(productName, "a", a.secret)).toBe("ok");
    expect(await t.app.devices.authenticate(productName, "a", b.secret)).toBe("bad_credentials");
  });

  it("pages through devices by cursor, optionally by tag", async () => {
    const productName = uniq("reg");
    for (let i = 0; i < 7; i++) {
      await t.app.devices.register({ productName, deviceName: `dev-${i}`, tags: i % 2 === 0 ? ["even"] : ["odd"] });
    }
    const seen: string[] = [];
    let after: string | null = null;
    for (let page = 0; page < 10; page++) {
      const page: DevicesQuery = await gqlOk(t, DevicesDocument, { productName, first: 3, after });
      seen.push(...page.devices.edges.map((e) => e.node.deviceName));
      if (!page.devices.pageInfo.hasNextPage) break;
      after = page.devices.pageInfo.endCursor ?? null;
    }
    expect(seen).toEqual(["dev-0", "dev-1", "dev-2", "dev-3", "dev-4", "dev-5", "dev-6"]);
    const { devices: even } = await gqlOk(t, DevicesDocument, { productName, tag: "even", first: 10 });
    expect(even.edges.map((e) => e.node.deviceName)).toEqual(["dev-0", "dev-2", "dev-4", "dev-6"]);
    expect(even.pageInfo.hasNextPage).toBe(false);
    const bad = await gql(t, DevicesDocument, { productName, first: 0 });
    expect(bad.errors?.[0]?.extensions).toMatchObject({ code: "BAD_USER_INPUT", field: "first" });
    const badCursor = await gql(t, DevicesDocument, { productName, after: "!!!" });
    expect(badCursor.errors?.[0]?.extensions).toMatchObject({ code: "BAD_USER_INPUT", field: "after" });
  });

  it("bumps tagsVersion on every tag change", async () => {
    const productName = uniq("reg");
    await t.app.devices.register({ productName, deviceName: "d", tags: ["x"] });
    const once = await t.app.devices.setTags(productName, "d", ["y", "y", "z"]);
    expect(once).toMatchObject({ tags: ["y", "z"], tagsVersion: 2 });
    expect((await t.app.devices.setTags(productName, "d", [])).tagsVersion).toBe(3);
  });

  it("stores the status received last, whatever the device's clock says", async () => {
    const productName = uniq("reg");
    await t.app.devices.register({ productName, deviceName: "d" });
    const at = Date.now();
    expect(await t.app.devices.applyStatus(productName, "d", { firmware_ver: "2" }, { at: at + 5, seq: 0 })).toBe(true);
    // Received earlier (a late redelivery of an older receipt) does not replace it.
    expect(await t.app.devices.applyStatus(productName, "d", { firmware_ver: "1" }, { at: at + 1, seq: 0 })).toBe(false);
    expect(await t.app.devices.applyStatus(productName, "d", { firmware_ver: "3" }, { at: at + 9, seq: 0 })).toBe(true);
    expect((await t.app.devices.get(productName, "d")).firmwareVersion).toBe("3");
    expect(await t.app.devices.applyStatus(productName, "ghost", { firmware_ver: "3" }, { at: at + 9, seq: 1 })).toBe(false);
  });
});

import { sql } from "drizzle-orm";
import { Redis } from "ioredis";
import { describe, expect, it } from "vitest";
import { OtaProgressDocument } from "../../src/client/generated/graphql.js";
import { gql, startApp } from "../helpers/app.js";
import { OwnRedis } from "../helpers/processes.js";
import { DATABASE_URL } from "../helpers/services.js";
import { onTeardown } from "../helpers/teardown.js";

describe("a dependency that stops answering", () => {
  it.skipIf(!DATABASE_URL)("fails a PostgreSQL statement after DB_STATEMENT_TIMEOUT_MS instead of waiting for it", async () => {
    const t = await startApp({ database: "postgres", env: { DB_STATEMENT_TIMEOUT_MS: "300" } });
    const started = Date.now();
    await expect(t.app.database.db.execute(sql`select pg_sleep(3)`)).rejects.toMatchObject({
      cause: { message: expect.stringMatching(/statement timeout/) },
    });
    expect(Date.now() - started).toBeLessThan(2_500);
  });

  it("fails a request after REDIS_COMMAND_TIMEOUT_MS while Redis is stalled, and serves again when it answers", async () => {
    const redis = await OwnRedis.start();
    const t = await startApp({ env: { REDIS_URL: redis.url, REDIS_COMMAND_TIMEOUT_MS: "300" } });
    const admin = new Redis(redis.url);
    onTeardown(() => admin.quit());
    // Every other client's commands wait for 2 s.
    await admin.call("CLIENT", "PAUSE", "2000", "ALL");
    const started = Date.now();
    const stalled = await gql(t, OtaProgressDocument, { productName: "p", deviceName: "d" });
    expect(Date.now() - started).toBeLessThan(1_500);
    expect(stalled.errors?.[0]?.extensions?.code).toBe("INTERNAL_SERVER_ERROR");
    await expect.poll(async () => (await gql(t, OtaProgressDocument, { productName: "p", deviceName: "d" })).data?.otaProgress, { timeout: 5_000 }).toBeNull();
  });
});

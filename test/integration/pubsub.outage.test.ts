import { print } from "graphql";
import { describe, expect, it } from "vitest";
import { OtaProgressChangedDocument } from "../../src/client/generated/graphql.js";
import { startApp, wsClient } from "../helpers/app.js";
import { OwnRedis } from "../helpers/processes.js";
import { uniq } from "../helpers/services.js";
import { eventually, sleep } from "../helpers/wait.js";

describe("a subscription that ends while Redis is down", () => {
  it("leaves no unhandled rejection behind (the library's UNSUBSCRIBE fails), and the server stops cleanly", async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on("unhandledRejection", onUnhandled);
    try {
      const redis = await OwnRedis.start();
      const t = await startApp({ env: { REDIS_URL: redis.url, REDIS_COMMAND_TIMEOUT_MS: "300" } });
      const productName = uniq("out");
      const client = wsClient(t);
      const stop = client.subscribe({ query: print(OtaProgressChangedDocument), variables: { productName } }, { next: () => undefined, error: () => undefined, complete: () => undefined });
      await eventually(() => expect(t.app.progressFeed.watching.get(productName) ?? 0).toBeGreaterThan(0));
      await redis.stop();
      // The last watcher leaves: graphql-redis-subscriptions sends UNSUBSCRIBE without awaiting it, into the offline queue.
      stop();
      await eventually(() => expect(t.app.progressFeed.watching.get(productName) ?? 0).toBe(0));
      // Stopping closes the connection: what was queued is rejected ("Connection is closed.").
      await t.stop();
      await sleep(200);
      expect(unhandled.map(String)).toEqual([]);
    } finally {
      process.off("unhandledRejection", onUnhandled);
    }
  }, 60_000);
});

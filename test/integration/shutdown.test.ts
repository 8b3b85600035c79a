import { spawn } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { Redis } from "ioredis";
import { describe, expect, it } from "vitest";
import { RegisterDeviceDocument } from "../../src/client/generated/graphql.js";
import { deviceLiveKey } from "../../src/broker/sessions.js";
import { RedisPresence } from "../../src/storage/presence.redis.js";
import { redisKeys } from "../../src/storage/progress.redis.js";
import { gqlOk } from "../helpers/app.js";
import { TestDevice } from "../helpers/device.js";
import { BIN, ServerProcess, serverEnv } from "../helpers/processes.js";
import { DATABASE_URL, freshDatabase, REDIS_URL, uniq } from "../helpers/services.js";
import { onTeardown } from "../helpers/teardown.js";
import { eventually } from "../helpers/wait.js";

/** Enough connections that some closes are still being written when Redis would go. */
const DEVICES = 30;

/** The server's log lines at WARN (40) or above, and any that carries a stack. */
function complaints(logs: string): string[] {
  return logs
    .split("\n")
    .filter((line) => line.trim() !== "")
    .filter((line) => {
      try {
        const entry = JSON.parse(line) as { level?: number };
        return (entry.level ?? 0) >= 40 || line.includes('"stack"');
      } catch {
        return true; // not pino's: a stack trace or a warning printed by Node
      }
    });
}

describe("a server process stopped with devices connected", () => {
  it.each(["SIGTERM", "SIGINT"] as const)(
    "on %s exits 0 with nothing at WARN or above in its log, and leaves its devices offline (their disconnection recorded) and their sessions' live marks released",
    async (signal) => {
      // Quiet (WARN): logging each component's stop would slow the stop enough to hide the race with Redis' close.
      const { env, token, prefix, mqttPort } = await serverEnv("stop");
      const database = DATABASE_URL ? { DATABASE_URL: ((await freshDatabase("postgres")) as { url: string }).url } : {};
      const server = await ServerProcess.start({ ...env, ...database });
      onTeardown(() => server.process.kill("SIGKILL"));
      const api = { httpUrl: server.httpUrl, token };
      const productName = uniq("stop");
      const devices = await Promise.all(
        Array.from({ length: DEVICES }, async () => {
          const { device, secret } = (await gqlOk(api, RegisterDeviceDocument, { input: { productName } })).registerDevice;
          const dev = await TestDevice.connect(`mqtt://127.0.0.1:${mqttPort}`, productName, device.deviceName, secret);
          onTeardown(() => dev.client.endAsync(true));
          return dev;
        }),
      );
      const names = devices.map((d) => d.deviceName);
      const redis = new Redis(REDIS_URL);
      onTeardown(() => redis.quit());
      const presence = new RedisPresence(redis, redisKeys(prefix));
      await eventually(async () => expect(await presence.countOnline(productName)).toBe(DEVICES));
      const live = () => Promise.all(names.map((deviceName) => redis.hlen(`${prefix}${deviceLiveKey({ productName, deviceName })}`)));
      expect(await live()).toEqual(names.map(() => 1));

      const exited = new Promise<number | null>((resolve) => server.process.once("exit", (code) => resolve(code)));
      const stoppedAt = Date.now();
      server.process.kill(signal);
      expect(await exited).toBe(0);

      expect(complaints(server.logs)).toEqual([]);
      expect(await presence.online(productName, names)).toEqual(names.map(() => false));
      expect(await presence.countOnline(productName)).toBe(0);
      // Each device's disconnection is recorded whole: its entry gone (above) and the time it went.
      const seen = await presence.seen(productName, names);
      expect(seen.filter((s) => s.disconnectedAt === null || s.disconnectedAt < stoppedAt)).toEqual([]);
      expect(await live()).toEqual(names.map(() => 0));
    },
    60_000,
  );
});

describe("a server process whose Redis fails a device's subscription lookup", () => {
  it("keeps running and serving, and the device connected (its automatic subscriptions looked up none)", async () => {
    const { env, token, prefix, mqttPort } = await serverEnv("retained");
    const server = await ServerProcess.start(env);
    onTeardown(() => server.process.kill("SIGKILL"));
    // aedes looks up retained messages for every SUBSCRIBE and pipes that stream with no error listener: a Redis
    // error there (here WRONGTYPE, as a dying Redis gives MaxRetriesPerRequestError) was an unhandled 'error' event.
    const redis = new Redis(REDIS_URL);
    onTeardown(() => redis.quit());
    await redis.set(`${prefix}retained`, "not a hash");
    const api = { httpUrl: server.httpUrl, token };
    const productName = uniq("retained");
    const { device, secret } = (await gqlOk(api, RegisterDeviceDocument, { input: { productName } })).registerDevice;
    const dev = await TestDevice.connect(`mqtt://127.0.0.1:${mqttPort}`, productName, device.deviceName, secret);
    onTeardown(() => dev.client.end(true));
    await new Promise((r) => setTimeout(r, 1_000));
    expect(server.process.exitCode, server.logs).toBeNull();
    expect(server.logs).not.toMatch(/Unhandled 'error' event/);
    expect((await fetch(`${server.httpUrl}/healthz`)).status).toBe(200);
    await dev.reportProgress({ version: "2", type: "firmware", progress: 5 });
  });
});

/** Pids of processes whose command line holds `needle`. */
function processesWith(needle: string): number[] {
  return readdirSync("/proc")
    .filter((d) => /^\d+$/.test(d))
    .filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(needle);
      } catch {
        return false; // gone meanwhile
      }
    })
    .map(Number);
}

describe("a server process killed during its first start on PGlite", () => {
  it("leaves no process making the database behind", async () => {
    // Spawned as is (ServerProcess.start waits for it to be ready), on PGlite: no DATABASE_URL.
    const { env, dataDir } = await serverEnv("first-start");
    const server = spawn(process.execPath, [BIN, "serve"], { env, stdio: "ignore" });
    onTeardown(() => server.kill("SIGKILL"));
    // The database is made by a child of the server's, named by its folder.
    const makers = await eventually(() => {
      const found = processesWith(`${dataDir}/pglite`).filter((pid) => pid !== server.pid);
      expect(found.length).toBeGreaterThan(0);
      return found;
    }, 30_000);
    server.kill("SIGKILL");
    await eventually(() => expect(processesWith(`${dataDir}/pglite`).filter((pid) => makers.includes(pid))).toEqual([]), 5_000);
    // It gave up rather than finishing on its own (PG_VERSION is written last): the next start makes the database.
    await new Promise((r) => setTimeout(r, 3_000));
    expect(existsSync(`${dataDir}/pglite/PG_VERSION`)).toBe(false);
  });
});

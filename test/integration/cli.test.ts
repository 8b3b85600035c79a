import { execFile, spawnSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import { BIN, freePort, ServerProcess } from "../helpers/processes.js";
import { REDIS_URL } from "../helpers/services.js";
import { onTeardown, tempDir } from "../helpers/teardown.js";

describe("the command line", () => {
  it("refuses a bad setting, naming the variable", () => {
    const r = spawnSync(process.execPath, [BIN, "serve"], { env: { ...process.env, MQTT_PORT: "99999" }, encoding: "utf8" });
    expect(r.status).toBe(2);
    expect(r.stderr).toContain("MQTT_PORT");
  });

  it("creates a token, serves with it, and stops cleanly on SIGTERM", async () => {
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      DATA_DIR: tempDir("cli"),
      REDIS_URL,
      MQTT_PORT: String(await freePort()),
      MQTTS_PORT: "0",
      HOST: "127.0.0.1",
      MQTT_HOST: "127.0.0.1",
      LOG_LEVEL: "info",
      // As in production: libraries that act differently under test (Apollo's own signal handlers) must not hide a hang.
      NODE_ENV: "production",
    };
    delete env.DATABASE_URL;
    delete env.ADMIN_TOKEN;
    const created = spawnSync(process.execPath, [BIN, "token", "create", "--name", "ci", "--access", "admin"], { env, encoding: "utf8" });
    expect(created.status).toBe(0);
    const token = created.stdout.trim();
    expect(token).toMatch(/^iot_[A-Za-z0-9_-]{43}$/);

    const server = await ServerProcess.start(env);
    onTeardown(() => server.process.kill("SIGKILL"));
    const base = server.httpUrl;
    // A token already existed, so none was printed at start.
    expect(server.logs).not.toContain("shown only this once");
    // PGlite is single-process: a second opener is refused instead of corrupting it.
    const beside = spawnSync(process.execPath, [BIN, "token", "create"], { env, encoding: "utf8" });
    expect(beside.status).toBe(2);
    expect(beside.stderr).toContain("in use by process");

    const query = JSON.stringify({ query: "{ devices(productName: \"p\") { pageInfo { hasNextPage } } }" });
    const headers = { "content-type": "application/json" };
    const ok = await fetch(`${base}/graphql`, { method: "POST", headers: { ...headers, authorization: `Bearer ${token}` }, body: query });
    expect(ok.status).toBe(200);
    const refused = await fetch(`${base}/graphql`, { method: "POST", headers: { ...headers, authorization: "Bearer iot_nope" }, body: query });
    expect(refused.status).toBe(401);

    // Beside the running server, tokens are managed through its API. (Not spawnSync: a blocked event loop misses the server closing idle keep-alive sockets.)
    const cli = (...args: string[]) =>
      new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
        const child = execFile(process.execPath, [BIN, "token", ...args, "--url", `${base}/graphql`, "--token", token], { env }, (_err, stdout, stderr) =>
          resolve({ status: child.exitCode, stdout, stderr }),
        );
      });
    const made = await cli("create", "--name", "dash", "--access", "read", "--products", "p,q", "--expires-in", "30d");
    expect(made.status, made.stderr).toBe(0);
    const dashToken = made.stdout.trim();
    const info = JSON.parse(made.stderr) as { id: string; access: string; products: string[]; expiresAt: string };
    expect(info).toMatchObject({ access: "read", products: ["p", "q"] });
    expect(Date.parse(info.expiresAt) - Date.now()).toBeGreaterThan(29 * 86_400_000);
    const asDash = await fetch(`${base}/graphql`, { method: "POST", headers: { ...headers, authorization: `Bearer ${dashToken}` }, body: query });
    expect(asDash.status).toBe(200);
    const listed = await cli("list");
    expect(listed.status, listed.stderr).toBe(0);
    expect((JSON.parse(listed.stdout) as { id: string }[]).map((k) => k.id)).toContain(info.id);
    expect(listed.stdout).not.toContain(dashToken);
    expect((await cli("revoke", info.id)).status).toBe(0);
    const revoked = await fetch(`${base}/graphql`, { method: "POST", headers: { ...headers, authorization: `Bearer ${dashToken}` }, body: query });
    expect(revoked.status).toBe(401);
    const again = await cli("revoke", info.id);
    expect(again.status).toBe(2);
    expect(again.stderr).toContain("already revoked");
    const badFlag = await cli("create", "--access", "root");
    expect(badFlag.status).toBe(2);
    expect(badFlag.stderr).toContain("--access");

    expect(await server.stop()).toBe(0);
    expect(server.logs).toContain("shutting down");
  }, 90_000);
});

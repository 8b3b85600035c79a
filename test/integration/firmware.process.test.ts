import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { readdir, stat } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { FirmwaresDocument } from "../../src/client/generated/graphql.js";
import { DirectoryArtifactStore } from "../../src/firmware/artifact.store.js";
import { gqlOk } from "../helpers/app.js";
import { randomFile, upload } from "../helpers/firmware.js";
import { freePort, ServerProcess } from "../helpers/processes.js";
import { DATABASE_URL, freshDatabase, REDIS_URL, uniq } from "../helpers/services.js";
import { onTeardown, tempDir } from "../helpers/teardown.js";
import { eventually, sleep } from "../helpers/wait.js";

/** A server process of its own: the memory measured is the server's alone. */
async function server() {
  const token = `test-admin-${randomBytes(16).toString("hex")}`;
  const dataDir = tempDir("fwp");
  const database = DATABASE_URL ? { DATABASE_URL: ((await freshDatabase("postgres")) as { url: string }).url } : {};
  const env = {
    PATH: process.env.PATH,
    REDIS_URL,
    REDIS_PREFIX: `${uniq("fwp")}:`,
    ADMIN_TOKEN: token,
    LOG_LEVEL: "warn",
    PORT: String(await freePort()),
    MQTT_PORT: "0",
    MQTTS_PORT: "0",
    DATA_DIR: dataDir,
    ...database,
  };
  const start = async () => {
    const s = await ServerProcess.start(env);
    onTeardown(() => s.process.kill("SIGKILL"));
    return s;
  };
  return { token, dataDir, start, incoming: join(dataDir, "firmware", ".incoming") };
}

const rssOf = (pid: number) => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1]) * 1024;

describe("firmware uploads to a server process", () => {
  it("stores a 100 MB upload as it streams: its digests are md5sum's and sha256sum's, and the server's memory does not grow by its size", async () => {
    const file = await randomFile(100 * 1024 * 1024);
    const s = await server();
    const p = await s.start();
    const api = { httpUrl: p.httpUrl, token: s.token };
    const productName = uniq("big");
    // Warmed up: the code paths of an upload are loaded before the baseline.
    expect((await upload(api, productName, "0.1", randomBytes(1 << 20))).status).toBe(201);
    const pid = p.process.pid as number;
    const before = rssOf(pid);
    let peak = before;
    const sampler = setInterval(() => (peak = Math.max(peak, rssOf(pid))), 20);
    let r;
    try {
      r = await upload(api, productName, "1.0", { path: file.path });
    } finally {
      clearInterval(sampler);
    }
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    expect(r.body).toMatchObject({ size: file.size, md5: file.md5, sha256: file.sha256 });
    const grew = peak - before;
    console.log(`100 MiB upload: server RSS ${(before / 2 ** 20).toFixed(0)} -> peak ${(peak / 2 ** 20).toFixed(0)} MiB`);
    // Buffers freed but not yet collected account for some 30 MiB whatever the size (V8 collects external memory in
    // steps); the file held whole would be all of it.
    expect(grew).toBeLessThan(file.size / 2);
    expect((await stat(join(s.dataDir, "firmware", r.body.id))).size).toBe(file.size);
  }, 120_000);

  it("leaves no artifact when killed mid-upload, and takes the upload again once restarted", async () => {
    const s = await server();
    let p = await s.start();
    const api = { httpUrl: p.httpUrl, token: s.token };
    const productName = uniq("crash");
    // An upload that trickles: the server is killed while it is being received.
    let sent = 0;
    const trickle = new ReadableStream({
      async pull(c) {
        await sleep(10);
        c.enqueue(randomBytes(256 * 1024));
        sent += 256 * 1024;
        if (sent >= 64 * 1024 * 1024) c.close();
      },
    });
    const cut = fetch(`${p.httpUrl}/firmware/${productName}/1.0`, {
      method: "PUT",
      headers: { authorization: `Bearer ${s.token}` },
      body: trickle,
      duplex: "half",
    } as RequestInit).catch((err: unknown) => err);
    await eventually(async () => {
      const [half] = await readdir(s.incoming);
      expect(half).toBeDefined();
      expect((await stat(join(s.incoming, half as string))).size).toBeGreaterThan(1 << 20);
    });
    p.process.kill("SIGKILL");
    expect(await cut).toBeInstanceOf(Error);

    p = await s.start();
    const restarted = { httpUrl: p.httpUrl, token: s.token };
    expect((await gqlOk(restarted, FirmwaresDocument, { productName })).firmwares.nodes).toEqual([]);
    // The half received bytes are out of sight, beside no artifact: only the key and the incoming folder.
    expect((await readdir(join(s.dataDir, "firmware"))).sort()).toEqual([".incoming", "url.key"]);
    const again = await upload(restarted, productName, "1.0", randomBytes(1 << 20));
    expect(again.status).toBe(201);
    await p.stop();
    // What a crash left is removed by a start once it is old enough never to be an upload under way.
    expect((await new DirectoryArtifactStore(join(s.dataDir, "firmware")).start(Date.now() + 2 * 3600_000)).removed).toBe(1);
    expect(await readdir(s.incoming)).toEqual([]);
  }, 120_000);
});

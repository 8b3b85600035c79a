import { execFile, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { freePort } from "../helpers/processes.js";
import { DATABASE_URL, freshDatabase, REDIS_URL, uniq } from "../helpers/services.js";
import { onTeardown, tempDir } from "../helpers/teardown.js";
import { eventually } from "../helpers/wait.js";

const run = promisify(execFile);
const root = new URL("../../", import.meta.url).pathname;

/**
 * The package as `npm pack` makes it, installed in an empty folder and run as
 * a user runs it: the build (dist/, web/dist/) and the migrations come from
 * the package, not from this clone. `npm test` has built both first.
 */
describe("the npm package", () => {
  it("installs in an empty folder and serves: migrations, the dashboard and --help from the package", async () => {
    for (const built of ["dist/main.js", "web/dist/index.html"]) {
      if (!existsSync(join(root, built))) throw new Error(`${built} is missing: run npm test (it builds), or npm run build && npm run build:web`);
    }
    const dir = tempDir("pack");
    await mkdir(dir, { recursive: true });
    const { stdout } = await run("npm", ["pack", "--ignore-scripts", "--pack-destination", dir, "--silent"], { cwd: root });
    const tarball = join(dir, stdout.trim().split("\n").at(-1) as string);
    const { stdout: listing } = await run("tar", ["tzf", tarball]);
    const files = listing.split("\n");
    for (const f of ["package/bin/iothub-ota.js", "package/dist/main.js", "package/drizzle/0000_init.sql", "package/web/dist/index.html", "package/README.md"]) {
      expect(files, f).toContain(f);
    }
    expect(files.some((f) => f.startsWith("package/src/") || f.startsWith("package/test/"))).toBe(false);

    const app = join(dir, "app");
    await mkdir(app);
    await writeFile(join(app, "package.json"), JSON.stringify({ name: "ota-user", private: true }));
    // From npm's cache where it has the packages (npm ci filled it): no download when it can be helped.
    await run("npm", ["install", tarball, "--omit=dev", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error"], { cwd: app, timeout: 150_000 });
    const bin = join(app, "node_modules", ".bin", "iothub-ota");
    const { version } = JSON.parse(await readFile(join(root, "package.json"), "utf8")) as { version: string };
    expect((await run(bin, ["--version"])).stdout.trim()).toBe(version);
    expect((await run(bin, ["serve", "--help"])).stdout).toContain("FIRMWARE_MAX_BYTES");

    const port = await freePort();
    const token = `pkg-admin-${uniq("t")}`;
    const database = DATABASE_URL ? { DATABASE_URL: ((await freshDatabase("postgres")) as { url: string }).url } : {};
    const server = spawn(bin, ["serve"], {
      cwd: app,
      env: { PATH: process.env.PATH, PORT: String(port), HOST: "127.0.0.1", MQTT_PORT: "0", MQTTS_PORT: "0", REDIS_URL, REDIS_PREFIX: `${uniq("pkg")}:`, ADMIN_TOKEN: token, DATA_DIR: join(app, "data"), LOG_LEVEL: "warn", ...database },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let logs = "";
    server.stdout.on("data", (d) => (logs += d));
    server.stderr.on("data", (d) => (logs += d));
    onTeardown(() => void server.kill("SIGKILL"));
    const base = `http://127.0.0.1:${port}`;
    await eventually(async () => expect((await fetch(`${base}/readyz`)).status, logs).toBe(200), 30_000);
    const res = await fetch(`${base}/graphql`, {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify({ query: "{ products firmwares(productName: \"p\") { nodes { id } } }" }),
    });
    // The schema and the tables of the latest migration are there.
    expect(await res.json()).toEqual({ data: { products: [], firmwares: { nodes: [] } } });
    const page = await fetch(`${base}/`);
    expect(page.status).toBe(200);
    expect(await page.text()).toContain('<div id="root">');
    const exited = new Promise<number | null>((r) => server.once("exit", r));
    server.kill("SIGTERM");
    expect(await exited).toBe(0);
  }, 240_000);
});

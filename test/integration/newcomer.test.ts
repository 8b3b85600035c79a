import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { beforeAll, describe, expect, it } from "vitest";
import { DevicesDocument, OtaProgressDocument, RegisterDeviceDocument, SendOtaDocument } from "../../src/client/generated/graphql.js";
import { localAddresses } from "../../src/config/config.js";
import { NO_FAULTS, seededRandom } from "../../src/sim/faults.js";
import { FirmwareServer } from "../../src/sim/firmware.server.js";
import { Fleet, registerDevices } from "../../src/sim/sim.fleet.js";
import { gql, gqlOk, startApp, type TestApp } from "../helpers/app.js";
import { TestDevice } from "../helpers/device.js";
import { BIN, freePort, OwnMosquitto, ServerProcess } from "../helpers/processes.js";
import { DATABASE_URL, freshDatabase, REDIS_URL, uniq } from "../helpers/services.js";
import { onTeardown, tempDir } from "../helpers/teardown.js";
import { eventually } from "../helpers/wait.js";

/** The traps a new user fell into (issue 10), each shown gone. */

const ROOT = new URL("../../", import.meta.url).pathname;

/** `node <args>` in a process of its own, its output collected; killed after the file's tests if still running. */
function run(args: string[], env: Record<string, string>, cwd = ROOT) {
  const child = spawn(process.execPath, args, { cwd, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  onTeardown(() => (child.exitCode === null && child.signalCode === null ? child.kill("SIGKILL") : undefined));
  const out = { stdout: "", stderr: "", firstOutput: undefined as number | undefined };
  const collect = (d: Buffer, to: "stdout" | "stderr") => {
    out.firstOutput ??= performance.now();
    out[to] += d.toString();
  };
  child.stdout.on("data", (d: Buffer) => collect(d, "stdout"));
  child.stderr.on("data", (d: Buffer) => collect(d, "stderr"));
  const exited = new Promise<number | null>((r) => child.once("close", (code) => r(code)));
  return { child, out, exited };
}

/**
 * `iothub-ota simulate` as a user runs it: its exit code, its output, and the
 * time from its first line (once it has started: Node's own start, slow on a
 * loaded machine, left out) to its exit.
 */
async function simulate(args: string[], env: Record<string, string> = {}) {
  const { out, exited } = run([BIN, "simulate", ...args], env);
  const code = await exited;
  return { code, stdout: out.stdout, stderr: out.stderr, ms: performance.now() - (out.firstOutput ?? performance.now()) };
}

const behaviour = {
  step: 25,
  paceMs: 0,
  installMs: 50,
  offlineMs: 100,
  faults: NO_FAULTS,
  random: seededRandom(3),
  rejectUnauthorized: true,
  reconnectMinMs: 200,
  reconnectMaxMs: 1000,
};

describe("sendOta says whom it reaches", () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startApp();
  });

  it("counts the registered devices a tag reaches, and warns when that is nobody", async () => {
    const productName = uniq("reach");
    await t.app.devices.register({ productName, deviceName: "a", tags: ["beta"] });
    await t.app.devices.register({ productName, deviceName: "b", tags: ["beta"] });
    await t.app.devices.register({ productName, deviceName: "c", tags: ["beta"] });
    await t.app.devices.setSuspended(productName, "c", true);
    const firmware = { url: "http://127.0.0.1:1/fw.bin", version: "2.0", size: 10, md5: "0".repeat(32), type: "firmware" };
    const beta = (await gqlOk(t, SendOtaDocument, { input: { productName, tag: "beta", firmware } })).sendOta;
    expect(beta).toMatchObject({ targeted: 2, warning: null });
    const nobody = (await gqlOk(t, SendOtaDocument, { input: { productName, tag: "nobody", firmware } })).sendOta;
    expect(nobody.targeted).toBe(0);
    expect(nobody.warning).toMatch(/tag nobody.*reaches nobody/);
    expect(nobody.requestId).toMatch(/^[0-9a-f]{24}$/);
    const one = (await gqlOk(t, SendOtaDocument, { input: { productName, deviceName: "a", firmware } })).sendOta;
    expect(one).toMatchObject({ targeted: 1, warning: null });
  });
});

describe("errors that say what to do", () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startApp();
  });
  const rest = (path: string, init: RequestInit = {}) =>
    fetch(`${t.httpUrl}${path}`, { ...init, headers: { authorization: `Bearer ${t.token}`, "content-type": "application/json", ...(init.headers ?? {}) } });

  it("answers unknown paths and methods in JSON", async () => {
    for (const [path, method] of [["/nope", "GET"], ["/ota", "DELETE"], ["/metrics/x", "POST"]] as const) {
      const res = await rest(path, { method });
      expect(res.status, path).toBe(404);
      expect(res.headers.get("content-type"), path).toMatch(/application\/json/);
      expect(((await res.json()) as { errors: { extensions: { code: string } }[] }).errors[0]?.extensions.code).toBe("NOT_FOUND");
    }
  });

  it("names every REST field at fault by its IotHub name, not only the first", async () => {
    const devices = await rest("/devices", { method: "POST", body: JSON.stringify({ product_name: "a b", device_name: "c/d", tags: ["ok", "x y"] }) });
    expect(devices.status).toBe(400);
    const body = (await devices.json()) as { errors: { message: string; extensions: { code: string; field: string } }[] };
    expect(body.errors.map((e) => e.extensions.field)).toEqual(["product_name", "device_name", "tags"]);
    expect(body.errors.every((e) => e.extensions.code === "BAD_USER_INPUT" && e.message.startsWith(`${e.extensions.field}: `))).toBe(true);

    const productName = uniq("rest");
    await t.app.devices.register({ productName, deviceName: "d" });
    const ota = await rest(`/ota/${productName}/d`, { method: "POST", body: JSON.stringify({ url: "ftp://x", size: -1, md5: "nope", version: "2.0", type: "" }) });
    expect(ota.status).toBe(400);
    const fields = ((await ota.json()) as typeof body).errors.map((e) => e.extensions.field);
    expect(fields).toEqual(["url", "size", "md5", "type"]);
  });

  it("a server without Redis says which URL and which setting, once, without a stack", async () => {
    const port = await freePort();
    const r = await ServerProcess.start({ ...process.env, REDIS_URL: `redis://127.0.0.1:${port}`, MQTT_PORT: "0", MQTTS_PORT: "0", DATA_DIR: tempDir("nored") }).then(
      () => "started",
      (err: Error) => err.message,
    );
    expect(r).toContain(`could not connect to Redis at redis://127.0.0.1:${port}`);
    expect(r).toContain("REDIS_URL");
    expect(r.match(/could not connect to Redis/g)).toHaveLength(1);
    expect(r).not.toMatch(/\n\s+at /);
  });
});

describe("the first token", () => {
  it("is created and printed only once the server serves: a failed first start loses nothing", async () => {
    const dataDir = tempDir("boot");
    const blocker = createServer();
    await new Promise<void>((r) => blocker.listen(0, "127.0.0.1", r));
    const taken = (blocker.address() as { port: number }).port;
    const env = { ...process.env, REDIS_URL, REDIS_PREFIX: `${uniq("boot")}:`, DATA_DIR: dataDir, MQTTS_PORT: "0", ADMIN_TOKEN: "", DATABASE_URL: "" };
    const failed = await ServerProcess.start({ ...env, MQTT_PORT: String(taken) }).then(
      () => "started",
      (err: Error) => err.message,
    );
    await new Promise((r) => blocker.close(r));
    expect(failed).toContain(`port ${taken} on 127.0.0.1 is already in use: set MQTT_PORT`);
    expect(failed.match(/already in use/g)).toHaveLength(1);
    expect(failed).not.toContain("shown only this once");

    const server = await ServerProcess.start({ ...env, MQTT_PORT: String(await freePort()) });
    onTeardown(() => server.stop().then(() => undefined));
    const token = await eventually(() => {
      const m = /shown only this once:\s+(\S+)/.exec(server.logs);
      expect(m).not.toBeNull();
      return m![1]!;
    });
    expect(server.logs).toContain("npx iothub-ota token create");
    const res = await fetch(`${server.httpUrl}/graphql`, {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify({ query: "{ apiTokens { name } }" }),
    });
    expect(await res.json()).toEqual({ data: { apiTokens: [{ name: "bootstrap" }] } });

    // A clean stop says what it closed, and that it exits.
    expect(await server.stop()).toBe(0);
    const stopped = [...server.logs.matchAll(/"component":"([^"]+)","msg":"stopped"/g)].map((m) => m[1]);
    expect(stopped).toEqual(["bootstrap token", "http", "rollout scheduler", "broker", "rollout signals", "firmware store", "redis", "database"]);
    expect(server.logs).toContain("stopped: exiting");
    // Three server starts on the built-in database.
  }, 60_000);
});

describe("the simulator", () => {
  it("defaults to the ports the server reads", () => {
    expect(localAddresses({})).toMatchObject({ api: "http://127.0.0.1:4000/graphql", mqtt: "mqtt://127.0.0.1:1883" });
    expect(localAddresses({ PORT: "4100", MQTT_PORT: "11883", MQTTS_PORT: "18883" })).toEqual({
      server: "http://127.0.0.1:4100",
      api: "http://127.0.0.1:4100/graphql",
      mqtt: "mqtt://127.0.0.1:11883",
      mqtts: "mqtts://127.0.0.1:18883",
    });
    expect(localAddresses({ MQTT_PORT: "0", MQTTS_PORT: "18883" }).mqtt).toBe("mqtts://127.0.0.1:18883");
    expect(() => localAddresses({ MQTT_PORT: "x" })).toThrow(/MQTT_PORT/);
  });

  it("as a command, checks its flags before registering anything, and names the API it could not reach (on PORT)", async () => {
    const port = await freePort();
    const flag = await simulate(["--token", "x", "--fail-download", "200"], { PORT: String(port) });
    expect(flag.code).not.toBe(0);
    expect(flag.stderr).toContain("--fail-download must be a percentage 0..100");
    expect(flag.stderr).not.toContain("registering");
    const down = await simulate(["--token", "x", "-n", "1"], { PORT: String(port) });
    expect(down.code).not.toBe(0);
    expect(down.stderr).toContain(`cannot reach http://127.0.0.1:${port}/graphql`);
  });

  it("says why TLS devices could not connect (the self-signed certificate, and the flag)", async () => {
    const t = await startApp({ tls: true });
    const credentials = await registerDevices(`${t.httpUrl}/graphql`, t.token, uniq("tls"), 2, []);
    const fleet = new Fleet(credentials, { mqttUrl: `mqtts://127.0.0.1:${t.app.address.mqtts}`, initialVersion: "1.0", connectConcurrency: 2, behaviour });
    onTeardown(() => fleet.stop());
    await fleet.connectAll();
    const summary = fleet.summary();
    expect(summary.connected).toBe(0);
    expect(summary.kbPerDevice).toBeNull();
    const [reason, count] = Object.entries(summary.connectFailures)[0] ?? [];
    expect(count).toBe(2);
    expect(reason).toMatch(/self-signed.*--insecure/);
  });

  it("reconnects after a server restart and completes an upgrade sent while it was away", async () => {
    const database = DATABASE_URL ? await freshDatabase("postgres") : { kind: "pglite" as const, dataDir: tempDir("restart") };
    const redisPrefix = `${uniq("restart")}:`;
    const mqttPort = await freePort();
    const first = await startApp({ database, redisPrefix, mqttPort });
    const fw = new FirmwareServer(32 * 1024);
    await fw.start();
    onTeardown(() => fw.stop());
    const productName = uniq("back");
    const credentials = await registerDevices(`${first.httpUrl}/graphql`, first.token, productName, 3, ["beta"]);
    const fleet = new Fleet(credentials, { mqttUrl: first.mqttUrl, initialVersion: "1.0", connectConcurrency: 3, behaviour });
    onTeardown(() => fleet.stop());
    await fleet.connectAll();
    expect(await fleet.tagsAnswered(5000)).toBe(true);
    await first.stop();
    await eventually(() => expect(fleet.summary().connected).toBe(0));

    const second = await startApp({ database, redisPrefix, mqttPort });
    const firmware = { ...fw.file, version: "2.0", type: "firmware" };
    const { sendOta } = await gqlOk(second, SendOtaDocument, { input: { productName, tag: "beta", firmware } });
    expect(sendOta.targeted).toBe(3);
    await eventually(() => expect(fleet.summary().connected).toBe(3), 20_000);
    await eventually(async () => {
      for (const { deviceName } of credentials) {
        const r = await gql(second, OtaProgressDocument, { productName, deviceName });
        expect(r.data?.otaProgress?.state).toBe("SUCCEEDED");
      }
    }, 20_000);
    // The server stores the status before it acknowledges it; a device marks itself done on the acknowledgement.
    await eventually(() => expect(fleet.summary().states.succeeded).toBe(3));
  });
});

describe("simulate, the command, against a running server", () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startApp();
  });
  const api = (app: TestApp) => ["--api", `${app.httpUrl}/graphql`, "--token", app.token];
  const deviceNames = async (productName: string) =>
    (await gqlOk(t, DevicesDocument, { productName, first: 100 })).devices.edges.map((e) => e.node.deviceName).sort();

  it("warns, naming the broker and the setting, when the broker its devices reach never answers $tags; --exit-after-ms counts from the start", async () => {
    const broker = await OwnMosquitto.start(); // a broker that is not this server's, as the Mosquitto a newcomer had on 1883
    onTeardown(() => broker.stop());
    const run = await simulate([...api(t), "--mqtt", broker.url, "--product", uniq("other"), "-n", "2", "--exit-after-ms", "7000", "--cleanup"]);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stderr).toContain(`connected 2/2 devices to ${broker.url}`);
    expect(run.stderr).toContain(
      `warning: ${broker.url} did not answer the devices' $tags requests within 5 s: is it this server's broker? (the server's MQTT_PORT, or --mqtt)`,
    );
    // From the start of the run: counted after connecting and the 5 s wait, this took 12 s and more.
    expect(run.ms).toBeLessThan(7000 + 2000);
  });

  it("exits non-zero with the reason when no device could connect (nothing listening, a self-signed certificate)", async () => {
    const tls = await startApp({ tls: true });
    const closed = `mqtt://127.0.0.1:${await freePort()}`;
    const productName = uniq("refused");
    // --exit-after-ms only bounds a run that would otherwise go on.
    const [refused, selfSigned] = await Promise.all([
      simulate([...api(t), "--mqtt", closed, "--product", productName, "-n", "2", "--cleanup", "--exit-after-ms", "3000"]),
      simulate([...api(tls), "--mqtt", `mqtts://127.0.0.1:${tls.app.address.mqtts}`, "--product", uniq("tls"), "-n", "1", "--exit-after-ms", "3000"]),
    ]);
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toContain(`2 not connected: ${closed}: nothing listens there: is the server running, on this MQTT_PORT (or MQTTS_PORT)?`);
    expect(refused.stderr).toContain(`no device could connect to ${closed}`);
    expect(refused.stdout).toBe("");
    // --cleanup holds on that way out too.
    expect(refused.stderr).toContain("deleted the 2 devices this run registered");
    expect(await deviceNames(productName)).toEqual([]);
    expect(selfSigned.code).not.toBe(0);
    expect(selfSigned.stderr).toMatch(/1 not connected: mqtts:.*self-signed.*add --insecure to accept it/);
    expect(selfSigned.stderr).toContain("no device could connect to mqtts://");
  });

  it("--cleanup deletes the devices the run registered, and only those", async () => {
    const productName = uniq("clean");
    await gqlOk(t, RegisterDeviceDocument, { input: { productName, deviceName: "keep", tags: ["beta"] } });
    const file = tempDir("creds"); // a file: removed after the tests as a folder would be
    const run = await simulate([...api(t), "--mqtt", t.mqttUrl, "--product", productName, "--tags", "beta", "-n", "5", "--cleanup", "--save-credentials", file, "--exit-after-ms", "1000"]);
    expect(run.code, run.stderr).toBe(0);
    const registered = (JSON.parse(readFileSync(file, "utf8")) as { deviceName: string }[]).map((c) => c.deviceName);
    expect(new Set(registered).size).toBe(5);
    expect(run.stderr).toContain("connected 5/5 devices");
    expect(run.stderr).toContain("deleted the 5 devices this run registered");
    expect(await deviceNames(productName)).toEqual(["keep"]);
    expect(run.stderr).not.toContain("warning");
    // Five devices' memory is lost in the process's own: not reported (it read 10173.3 KB per device for three).
    expect(JSON.parse(run.stdout)).toMatchObject({ connected: 5, kbPerDevice: null });
  });
});

describe("the README's live-progress snippet", () => {
  /** The README's JavaScript block that prints a close reason, saved as watch.mjs in a folder of the clone, as the README says; returns the folder. */
  function watchScript(port: number): string {
    const readme = readFileSync(`${ROOT}README.md`, "utf8");
    const block = [...readme.matchAll(/```js\n([\s\S]*?)```/g)].map((m) => m[1]!).find((b) => b.includes("e.reason"));
    expect(block, "a ```js block of README.md printing e.reason").toBeDefined();
    // The one change: the test server's port for the README's 4000.
    expect(block).toContain('"ws://localhost:4000/graphql"');
    mkdirSync(`${ROOT}test-output`, { recursive: true });
    const dir = mkdtempSync(`${ROOT}test-output/readme-`);
    onTeardown(() => rmSync(dir, { recursive: true, force: true }));
    writeFileSync(`${dir}/watch.mjs`, block!.replace('"ws://localhost:4000/graphql"', `"ws://localhost:${port}/graphql"`));
    return dir;
  }

  /** `node watch.mjs`, in its folder, in a shell where IOTHUB_OTA_TOKEN is exported. */
  const node = (dir: string, token: string) => run(["watch.mjs"], { IOTHUB_OTA_TOKEN: token }, dir);

  it("runs as written: progress events printed, and a refused token's close reason on the first line", async () => {
    const t = await startApp();
    const dir = watchScript(Number(new URL(t.httpUrl).port));
    const { registerDevice } = await gqlOk(t, RegisterDeviceDocument, { input: { productName: "demo", deviceName: "dev-1", tags: ["beta"] } });
    const device = await TestDevice.connect(t.mqttUrl, "demo", "dev-1", registerDevice.secret);

    const watch = node(dir, t.token);
    const gaveUp = watch.exited.then((code) => Promise.reject(new Error(`watch.mjs exited with ${code}:\n${watch.out.stderr}`)));
    gaveUp.catch(() => undefined); // it exits when killed below, after the race
    await Promise.race([eventually(() => expect(t.app.progressFeed.watching.get("demo")).toBe(1), 15_000), gaveUp]);
    await device.reportProgress({ version: "1.1", type: "firmware", progress: 10 });
    await eventually(() => expect(watch.out.stdout).toMatch(/otaProgressChanged: \{[^}]*deviceName: 'dev-1',\s+progress: 10,\s+state: 'DOWNLOADING'/));
    expect(watch.out.stderr).toBe("");
    watch.child.kill();
    await watch.exited;

    const refused = node(dir, "iot_not-a-token");
    expect(await refused.exited).toBe(1);
    expect(refused.out.stderr.split("\n")[0]).toMatch(/^closed 4401: Unauthorized\b/);
    expect(refused.out.stdout).toBe("");
  });
});

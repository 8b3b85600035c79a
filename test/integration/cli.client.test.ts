import { execFile, spawn } from "node:child_process";
import { connect, createServer, type AddressInfo, type Socket } from "node:net";
import type { Command } from "commander";
import { Redis } from "ioredis";
import { beforeAll, describe, expect, it } from "vitest";
import { CancelRolloutDocument, CreateApiTokenDocument, RegisterDeviceDocument, RevokeApiTokenDocument } from "../../src/client/generated/graphql.js";
import { createProgram } from "../../src/cli/program.js";
import { redisKeys } from "../../src/storage/progress.redis.js";
import type { FirmwareServer } from "../../src/sim/firmware.server.js";
import { gqlOk, startApp, type TestApp } from "../helpers/app.js";
import { BIN, freePort, ServerProcess } from "../helpers/processes.js";
import { createRollout, firmwareFile, rolloutInput, sha256Of, simFleet, type Api } from "../helpers/rollout.js";
import { DATABASE_URL, REDIS_URL, uniq } from "../helpers/services.js";
import { onTeardown, tempDir } from "../helpers/teardown.js";
import { eventually } from "../helpers/wait.js";

const CWD = new URL("../..", import.meta.url).pathname;
const ANSI = /\x1b\[/;

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** `iothub-ota <args>` in a process of its own, as a script runs it (stdout and stderr are pipes: not a terminal). */
function cli(t: Pick<TestApp, "httpUrl" | "token">, args: string[], o: { token?: string | null; stdin?: string } = {}): Promise<Run> {
  const env: NodeJS.ProcessEnv = { ...process.env, IOTHUB_OTA_SERVER: t.httpUrl };
  if (o.token === null) delete env.IOTHUB_OTA_TOKEN;
  else env.IOTHUB_OTA_TOKEN = o.token ?? t.token;
  return new Promise((resolve) => {
    const child = execFile(process.execPath, [BIN, ...args], { cwd: CWD, env }, (_err, stdout, stderr) => resolve({ status: child.exitCode, stdout, stderr }));
    if (o.stdin !== undefined) child.stdin?.end(o.stdin);
  });
}

/** A long-running command (a watch): its output so far, and its exit. */
function started(t: Api, args: string[], token = t.token) {
  const child = spawn(process.execPath, [BIN, ...args], {
    cwd: CWD,
    env: { ...process.env, IOTHUB_OTA_SERVER: t.httpUrl, IOTHUB_OTA_TOKEN: token },
    stdio: ["ignore", "pipe", "pipe"],
  });
  onTeardown(() => child.kill("SIGKILL"));
  const out = { stdout: "", stderr: "" };
  child.stdout.on("data", (d) => (out.stdout += d));
  child.stderr.on("data", (d) => (out.stderr += d));
  const exited = new Promise<Run>((resolve) => child.on("close", (status) => resolve({ status, ...out })));
  return { child, out, exited };
}

/** The program and every command under it, each with its path of names (the program's is []). */
function commandsOf(c: Command, path: string[] = []): { path: string[]; command: Command }[] {
  return [{ path, command: c }, ...c.commands.flatMap((sub) => commandsOf(sub, [...path, sub.name()]))];
}

/** What `--help` prints for the command, as a process off a terminal prints it (80 columns). */
function helpOf(c: Command): string {
  let out = "";
  c.configureOutput({ writeOut: (s) => (out += s), getOutHelpWidth: () => 80 });
  c.outputHelp();
  return out;
}

/** The lines of a help's Example: block. */
const exampleLines = (help: string) => (/\nExample:\n((?: {2}.*\n)+)/.exec(help)?.[1] ?? "").split("\n").map((l) => l.trim());

const jsonOf = <T>(r: Run): T => {
  expect(r.status, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as T;
};
const jsonLines = <T>(s: string): T[] =>
  s
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l) as T);

describe("the client commands against a running server", () => {
  let t: TestApp;
  let fw: FirmwareServer;
  let redis: Redis;

  beforeAll(async () => {
    t = await startApp({ env: { ROLLOUT_TICK_MS: "100" } });
    fw = await firmwareFile();
    redis = new Redis(REDIS_URL);
    onTeardown(() => redis.quit());
  });

  /** Firmware flags of the served file, as an operator passes them. */
  const firmwareArgs = (version: string) => ["--version", version, "--url", fw.file.url, "--size", String(fw.file.size), "--md5", fw.file.md5];

  it("registers, lists, shows, tags, suspends, resumes and deletes devices, every --json answer parsed", async () => {
    const p = uniq("cli");
    const [registered, other] = await Promise.all([
      cli(t, ["devices", "register", "dev-a", "--product", p, "--tags", "beta,eu", "--json"]),
      cli(t, ["devices", "register", "--product", p]),
    ]);
    const r = jsonOf<{ secret: string; device: { deviceName: string; tags: string[] } }>(registered);
    expect(r.device).toMatchObject({ deviceName: "dev-a", tags: ["beta", "eu"] });
    expect(r.secret.length).toBeGreaterThan(10);
    expect(other.status, other.stderr).toBe(0);
    expect(other.stdout).toMatch(/^secret:\s+\S+/m);
    // What is known of a device just registered: its secret is new, so it has not connected.
    expect(other.stdout).toMatch(/^state:\s+offline \(not connected yet\)$/m);
    const otherName = new RegExp(`^device:\\s+${p}/(\\S+)$`, "m").exec(other.stdout)?.[1] ?? "(no device line)";

    const [listed, tagged, suspended, otherTagged] = await Promise.all([
      cli(t, ["devices", "list", "--product", p, "--json"]),
      cli(t, ["devices", "tag", "dev-a", "--product", p, "--tags", "gamma", "--json"]),
      cli(t, ["devices", "suspend", "dev-a", "--product", p, "--json"]),
      cli(t, ["devices", "tag", otherName, "--product", p, "--tags", "x"]),
    ]);
    // A mutation's answer does not say whether the device is connected: no state line rather than a guess.
    expect(otherTagged.status, otherTagged.stderr).toBe(0);
    expect(otherTagged.stdout).toMatch(/^tags:\s+x$/m);
    expect(otherTagged.stdout).not.toMatch(/^state:/m);
    const page = jsonOf<{ devices: { deviceName: string }[]; pageInfo: { hasNextPage: boolean } }>(listed);
    expect(page.devices.map((d) => d.deviceName)).toContain("dev-a");
    expect(page.devices).toHaveLength(2);
    expect(jsonOf<{ tags: string[]; tagsVersion: number }>(tagged)).toMatchObject({ tags: ["gamma"], tagsVersion: 2 });
    expect(jsonOf(suspended)).toMatchObject({ suspended: true });

    const [table, shown] = await Promise.all([cli(t, ["devices", "list", "--product", p, "--tag", "gamma"]), cli(t, ["devices", "show", "dev-a", "--product", p, "--json"])]);
    expect(jsonOf(shown)).toMatchObject({ deviceName: "dev-a", suspended: true, tags: ["gamma"], executions: [] });
    expect(table.status, table.stderr).toBe(0);
    const [header, row, ...rest] = table.stdout.trimEnd().split("\n");
    expect(header).toMatch(/^DEVICE\s+TAGS\s+FIRMWARE\s+STATE/);
    expect(row).toMatch(/^dev-a\s+gamma\s+-\s+suspended/);
    expect(rest).toEqual([]);
    // Columns line up: each header starts where its cells do.
    expect(row?.indexOf("suspended")).toBe(header?.indexOf("STATE"));
    const bySuspended = jsonOf<{ devices: { deviceName: string }[] }>(await cli(t, ["devices", "list", "--product", p, "--state", "suspended", "--json"]));
    expect(bySuspended.devices.map((d) => d.deviceName)).toEqual(["dev-a"]);
    const badState = await cli(t, ["devices", "list", "--product", p, "--state", "asleep"]);
    expect(badState.status).toBe(2);
    expect(badState.stderr).toContain("--state must be online, offline or suspended");

    expect(jsonOf(await cli(t, ["devices", "resume", "dev-a", "--product", p, "--json"]))).toMatchObject({ suspended: false });
    expect(jsonOf(await cli(t, ["devices", "delete", "dev-a", "--product", p, "--json"]))).toMatchObject({ deleted: true });
    const gone = await cli(t, ["devices", "show", "dev-a", "--product", p]);
    expect(gone.status).toBe(2);
    expect(gone.stderr).toBe(`error DEVICE_NOT_FOUND: no device ${p}/dev-a\n`);
  }, 40_000);

  it("sends an upgrade to a tag, and progress watch off a terminal prints one plain line per report until Ctrl-C", async () => {
    const { productName } = await simFleet(t, { count: 3, tags: ["beta"] });
    const watch = started(t, ["progress", "watch", "--product", productName, "--tag", "beta"]);
    // The watch is live once the server watches the product for it and its Redis subscription is up.
    const channel = redisKeys(t.config.redisPrefix).progressChannel(productName);
    await eventually(async () => {
      expect(t.app.progressFeed.watching.get(productName) ?? 0).toBeGreaterThan(0);
      const [, listeners] = (await redis.pubsub("NUMSUB", channel)) as [string, number];
      expect(listeners).toBeGreaterThan(0);
    }, 15_000);

    const sent = jsonOf<{ requestId: string; topic: string; targeted: number }>(
      await cli(t, ["ota", "send", "--product", productName, "--tag", "beta", ...firmwareArgs("2.0"), "--ttl", "10m", "--json"]),
    );
    expect(sent).toMatchObject({ targeted: 3 });
    expect(sent.topic).toContain(productName);
    await eventually(() => {
      const done = watch.out.stdout.split("\n").filter((l) => / SUCCEEDED 100% 2\.0$/.test(l));
      expect(done).toHaveLength(3);
    }, 20_000);
    const lines = watch.out.stdout.trimEnd().split("\n");
    expect(lines.length).toBeGreaterThan(3);
    for (const l of lines) expect(l).toMatch(/^\S+Z \S+ (DOWNLOADING|DOWNLOADED|SUCCEEDED|FAILED) -?\d+% 2\.0/);
    expect(watch.out.stdout).not.toMatch(ANSI);
    watch.child.kill("SIGINT");
    expect((await watch.exited).status).toBe(0);
  }, 40_000);

  it("previews and creates a rollout from flags, and rollout watch follows it to COMPLETED and exits 0", async () => {
    const { productName } = await simFleet(t, { count: 4, tags: ["beta"] });
    const flags = ["--product", productName, "--tag", "beta", ...firmwareArgs("2.0"), "--sha256", sha256Of(fw.file.url), "--wave", "1", "--wave", "100%", "--timeout", "30s"];
    const [previewRun, previewText] = await Promise.all([cli(t, ["rollout", "preview", ...flags, "--json"]), cli(t, ["rollout", "preview", ...flags, "--timeout", "150m"])]);
    const preview = jsonOf<{ targeted: number; eligible: number; waves: { size: number }[] }>(previewRun);
    expect(preview).toMatchObject({ targeted: 4, eligible: 4 });
    expect(preview.waves.map((w) => w.size)).toEqual([1, 3]);
    // Durations as people read them, not a count of seconds.
    expect(previewText.stdout).toMatch(/^time:\s+at least 0 s, at most 5 h$/m);
    expect(previewText.stdout).toMatch(/^WAVE +DEVICES\n +1 +1\n +2 +3$/m);

    const created = await cli(t, ["rollout", "create", ...flags, "--name", "cli canary", "--quiet"]);
    expect(created.status, created.stderr).toBe(0);
    const id = created.stdout.trim();
    expect(id).toMatch(/^\S+$/);

    const watched = await cli(t, ["rollout", "watch", id]);
    expect(watched.status, watched.stderr + watched.stdout).toBe(0);
    const lines = watched.stdout.trimEnd().split("\n");
    expect(lines.at(-1)).toBe("COMPLETED: 4 succeeded, 0 skipped");
    expect(lines.length).toBeGreaterThan(1);
    for (const l of lines.slice(0, -1)) expect(l).toMatch(/^\S+Z (RUNNING|COMPLETED) wave \d \d\/4 ended: succeeded \d, failed 0, timed out 0, /);
    expect(watched.stdout).not.toMatch(ANSI);

    // Watched again after the end: the state as it ended, once, and the same verdict.
    const [again, listed, shownRun] = await Promise.all([
      cli(t, ["rollout", "watch", id, "--json"]),
      cli(t, ["rollout", "list", "--product", productName]),
      cli(t, ["rollout", "show", id, "--executions", "--json"]),
    ]);
    expect(again.status, again.stderr).toBe(0);
    const docs = jsonLines<{ state: string; counts: { succeeded: number } }>(again.stdout);
    expect(docs).toHaveLength(1);
    expect(docs[0]).toMatchObject({ state: "COMPLETED", counts: { succeeded: 4 } });
    // SUCCEEDED FAILED SKIPPED CANCELED TOTAL after the bar.
    expect(listed.stdout).toMatch(new RegExp(`^${id}\\s+cli canary\\s+COMPLETED\\s+tag beta\\s+2\\.0\\s+\\[#{10}\\]\\s+4\\s+0\\s+0\\s+0\\s+4\\s`, "m"));
    const shown = jsonOf<{ executions: { state: string; wave: number; deviceName: string }[] }>(shownRun);
    expect(shown.executions.map((e) => e.state)).toEqual(["SUCCEEDED", "SUCCEEDED", "SUCCEEDED", "SUCCEEDED"]);
    // Waves count from 1 in devices show as in rollout show and the dashboard (the API's index is from 0).
    const canary = shown.executions.find((e) => e.wave === 0)?.deviceName ?? "(none in the first wave)";
    const [device, executionsTable] = await Promise.all([cli(t, ["devices", "show", canary, "--product", productName]), cli(t, ["rollout", "show", id, "--executions"])]);
    expect(device.stdout).toMatch(new RegExp(`^${id}\\s+1\\s+SUCCEEDED\\s`, "m"));
    expect(executionsTable.stdout).toMatch(new RegExp(`^${canary}\\s+1\\s+SUCCEEDED\\s`, "m"));
  }, 60_000);

  it("exits 4 when the rollout aborts (naming the rule) and 3 when it completes with failures; --input - takes a whole CreateRolloutInput", async () => {
    const aborting = await simFleet(t, { count: 3, tags: ["beta"], faults: { downloadError: 100 } });
    const input = rolloutInput(aborting.productName, fw, { policy: { abortRules: [{ failureClass: "DOWNLOAD_FAILED", thresholdPercent: 50, minFinished: 1 }] } });
    const created = await cli(t, ["rollout", "create", "--input", "-", "--name", "flags override the file", "--json", "--watch"], { stdin: JSON.stringify(input) });
    expect(created.status, created.stderr).toBe(4);
    const docs = jsonLines<{ name: string; state: string; abortedBy: { rule: { failureClass: string } } | null }>(created.stdout);
    expect(docs[0]).toMatchObject({ name: "flags override the file" });
    expect(docs.at(-1)).toMatchObject({ state: "ABORTED", abortedBy: { rule: { failureClass: "DOWNLOAD_FAILED" } } });

    const failing = await simFleet(t, { count: 2, tags: ["beta"], faults: { downloadError: 100 } });
    const rollout = await createRollout(t, rolloutInput(failing.productName, fw));
    const watched = await cli(t, ["rollout", "watch", rollout.id]);
    expect(watched.status, watched.stderr).toBe(3);
    expect(watched.stdout.trimEnd().split("\n").at(-1)).toBe("COMPLETED with failures: 2 failed, 0 timed out (DOWNLOAD_FAILED 2), 0 succeeded");
  }, 60_000);

  it("exits 5 when the watched rollout is canceled", async () => {
    const p = uniq("cli");
    await gqlOk(t, RegisterDeviceDocument, { input: { productName: p, deviceName: "d1", tags: ["beta"] } });
    const rollout = await createRollout(t, rolloutInput(p, fw, { policy: { startAt: new Date(Date.now() + 3_600_000).toISOString() } }));
    expect(rollout.state).toBe("SCHEDULED");
    const watch = started(t, ["rollout", "watch", rollout.id]);
    await eventually(() => expect(t.app.rolloutFeed.watching.get(rollout.id)).toBe(1), 15_000);
    const canceled = await cli(t, ["rollout", "cancel", rollout.id]);
    expect(canceled.stdout).toMatch(/^state:\s+CANCELED/m);
    const r = await watch.exited;
    expect(r.status, r.stderr).toBe(5);
    expect(r.stdout.trimEnd().split("\n").at(-1)).toBe("CANCELED: 0 succeeded, 1 canceled");
    // A canceled execution has ended but did not upgrade: its part of the bar is not drawn as done.
    const [listed, shown] = await Promise.all([cli(t, ["rollout", "list", "--product", p]), cli(t, ["rollout", "show", rollout.id])]);
    expect(listed.stdout).toMatch(new RegExp(`^${rollout.id}\\s.*\\s\\[-{10}\\]\\s+0\\s+0\\s+0\\s+1\\s+1\\s`, "m"));
    expect(listed.stdout).toMatch(/^\(# succeeded {2}x failed or timed out {2}- skipped or canceled {2}\. queued or in progress\)$/m);
    expect(shown.stdout).toMatch(/^progress:\s+\[-{30}\] {2}0\/1 succeeded, 1 skipped or canceled$/m);
    expect(`${listed.stdout}${shown.stdout}`).not.toContain("100%");
  }, 40_000);

  it("prints the API's code and message and exits 2: a bad token, a read token writing, a bad input, a refused flag", async () => {
    const p = uniq("cli");
    const { createApiToken: reader } = await gqlOk(t, CreateApiTokenDocument, { input: { name: "reader", access: "READ" } });
    const [noToken, forbidden, badInput, badFlag] = await Promise.all([
      cli(t, ["devices", "list", "--product", p], { token: "iot_wrong" }),
      cli(t, ["devices", "register", "d1", "--product", p], { token: reader.token }),
      cli(t, ["rollout", "create", "--product", p, "--tag", "beta", ...firmwareArgs("2.0"), "--sha256", "0".repeat(64), "--wave", "150%"]),
      cli(t, ["rollout", "list", "--product", p, "--state", "DONE"]),
    ]);
    expect(noToken.status).toBe(2);
    expect(noToken.stderr).toMatch(/^error UNAUTHENTICATED: /);
    expect(forbidden.status).toBe(2);
    expect(forbidden.stderr).toMatch(/^error FORBIDDEN: /);
    expect(badInput.status).toBe(2);
    expect(badInput.stderr).toMatch(/^error BAD_USER_INPUT: .*wave/i);
    expect(badFlag.status).toBe(2);
    expect(badFlag.stderr).toMatch(/^error: --state: /);
    for (const r of [noToken, forbidden, badInput, badFlag]) expect(r.stdout).toBe("");
  }, 30_000);

  it("names the URL it could not reach", async () => {
    const port = await freePort();
    const r = await cli({ httpUrl: `http://127.0.0.1:${port}`, token: t.token }, ["rollout", "list", "--product", "p"]);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain(`error: cannot reach http://127.0.0.1:${port}/graphql: `);
    expect(r.stderr).toContain("ECONNREFUSED");
  });

  it("prints a graphql-ws close code and reason first when the server closes the watch (token revoked)", async () => {
    const p = uniq("cli");
    await gqlOk(t, RegisterDeviceDocument, { input: { productName: p, deviceName: "d1", tags: ["beta"] } });
    const rollout = await createRollout(t, rolloutInput(p, fw, { policy: { startAt: new Date(Date.now() + 3_600_000).toISOString() } }));
    const { createApiToken: reader } = await gqlOk(t, CreateApiTokenDocument, { input: { name: "watcher", access: "READ" } });
    const watch = started(t, ["rollout", "watch", rollout.id], reader.token);
    await eventually(() => expect(t.app.rolloutFeed.watching.get(rollout.id)).toBe(1), 15_000);
    await gqlOk(t, RevokeApiTokenDocument, { id: reader.apiToken.id });
    const r = await watch.exited;
    expect(r.status).toBe(2);
    expect(r.stderr.split("\n")[0]).toBe("error 4401: API token revoked");
  }, 30_000);

  it("shows an example in the --help of every command and subcommand, and the exit codes in rollout watch's", async () => {
    const all = commandsOf(createProgram(async () => undefined));
    expect(all.length).toBeGreaterThan(30);
    const helps = all.map(({ path, command }) => ({ name: ["iothub-ota", ...path].join(" "), command, help: helpOf(command) }));
    // An example is a line of the Example: block that runs this very command.
    const withoutExample = helps.filter(({ name, help }) => !exampleLines(help).some((l) => new RegExp(`(^|\\s)${name}(\\s|$)`).test(l)));
    expect(withoutExample.map((h) => h.name)).toEqual([]);
    const clientCommands = helps.filter((h) => h.command.options.some((o) => o.long === "--server") && h.name.split(" ")[1] !== "token");
    expect(clientCommands.length).toBeGreaterThan(20);
    for (const h of clientCommands) expect(h.help, h.name).toContain("IOTHUB_OTA_TOKEN");
    const watchHelp = helps.find((h) => h.name === "iothub-ota rollout watch")?.help;
    expect(watchHelp).toMatch(/4\s+it was ABORTED/);
    expect(watchHelp).toMatch(/6\s+the connection to the server was lost/);
    // The tree walked is the one the command runs.
    const top = await cli(t, ["--help"]);
    expect(top.status).toBe(0);
    expect(top.stdout).toBe(helps[0]?.help);
  });

  it("never shows the token of IOTHUB_OTA_TOKEN in a --help, and lists serve's settings as the README's table has them", async () => {
    const secret = `iot_${uniq("secret")}`;
    const saved = process.env.IOTHUB_OTA_TOKEN;
    process.env.IOTHUB_OTA_TOKEN = secret;
    try {
      const leaking = commandsOf(createProgram(async () => undefined))
        .map(({ path, command }) => ({ name: path.join(" "), help: helpOf(command) }))
        .filter(({ help }) => help.includes(secret));
      expect(leaking.map((h) => h.name)).toEqual([]);
    } finally {
      if (saved === undefined) delete process.env.IOTHUB_OTA_TOKEN;
      else process.env.IOTHUB_OTA_TOKEN = saved;
    }
    const serve = helpOf(commandsOf(createProgram(async () => undefined)).find(({ path }) => path.join(" ") === "serve")!.command);
    // A setting with no default, and no Markdown left in the text.
    expect(serve).toMatch(/\n {2}ADMIN_TOKEN +accepted as an admin API token/);
    expect(serve).toMatch(/\n {2}MQTT_USERNAME, MQTT_PASSWORD +the server's credentials/);
    expect(serve).not.toMatch(/\*\*|\(default \|/);
  });

  it("takes --server on the token commands too", async () => {
    const listed = await cli(t, ["token", "list", "--server", t.httpUrl, "--token", t.token]);
    expect(listed.status, listed.stderr).toBe(0);
    expect(Array.isArray(JSON.parse(listed.stdout))).toBe(true);
  });
});

describe.skipIf(!DATABASE_URL)("the watches across a restart of their server", () => {
  it("rollout watch reconnects and reads the end it missed while away, exiting with the rollout's code, and progress watch carries on; a server gone past --reconnect-timeout exits 6", async () => {
    const fw = await firmwareFile();
    // Another instance of the deployment (the same PostgreSQL database and Redis keys), up while the watched one restarts.
    const other = await startApp({ database: "postgres", env: { ROLLOUT_TICK_MS: "100" } });
    if (other.config.database.kind !== "postgres") throw new Error("a PostgreSQL server database was asked for");
    const env = {
      PATH: process.env.PATH,
      REDIS_URL,
      REDIS_PREFIX: other.config.redisPrefix,
      ADMIN_TOKEN: other.token,
      LOG_LEVEL: "warn",
      DATABASE_URL: other.config.database.url,
      DATA_DIR: tempDir("cli-restart"),
      PORT: String(await freePort()),
      MQTT_PORT: String(await freePort()),
      MQTTS_PORT: "0",
      ROLLOUT_TICK_MS: "100",
    };
    let server = await ServerProcess.start(env);
    onTeardown(() => server.process.kill("SIGKILL"));
    const api = { httpUrl: server.httpUrl, token: other.token };
    /** A rollout of one device, scheduled an hour from now: nothing moves it but what the test does. */
    const scheduled = async () => {
      const p = uniq("cli");
      await gqlOk(other, RegisterDeviceDocument, { input: { productName: p, deviceName: "d1", tags: ["beta"] } });
      return createRollout(other, rolloutInput(p, fw, { policy: { startAt: new Date(Date.now() + 3_600_000).toISOString() } }));
    };
    const [first, second] = await Promise.all([scheduled(), scheduled()]);
    const following = (w: ReturnType<typeof started>) => eventually(() => expect(w.out.stdout).toMatch(/Z SCHEDULED wave 1 0\/1 ended: /), 15_000);

    const watch = started(api, ["rollout", "watch", first.id]);
    const progress = started(api, ["progress", "watch", "--product", first.productName]);
    await following(watch);
    await eventually(() => expect(progress.out.stderr).toContain("Ctrl-C to stop"), 15_000);
    expect(await server.stop()).toBe(0);
    await eventually(() => expect(watch.out.stderr).toMatch(/^lost the connection to ws:\/\/127\.0\.0\.1:\d+\/graphql \(1001: Going away\); reconnecting for up to 5 min$/m), 10_000);
    // Canceled through the other instance while the watch is away: no change reaches it, only what it reads on its return.
    await gqlOk(other, CancelRolloutDocument, { id: first.id });
    server = await ServerProcess.start(env);
    const r = await watch.exited;
    expect(r.status, r.stderr).toBe(5);
    expect(r.stderr).toMatch(/^reconnected to ws:\/\/127\.0\.0\.1:\d+\/graphql$/m);
    expect(r.stdout.trimEnd().split("\n").at(-1)).toBe("CANCELED: 0 succeeded, 1 canceled");
    // progress watch too: back, and still watching until Ctrl-C.
    await eventually(() => expect(progress.out.stderr).toMatch(/^lost the connection .*\n(.*\n)*reconnected to ws:/m), 15_000);
    progress.child.kill("SIGINT");
    expect((await progress.exited).status).toBe(0);

    const abandoned = started(api, ["rollout", "watch", second.id, "--reconnect-timeout", "2s"]);
    await following(abandoned);
    expect(await server.stop()).toBe(0);
    const gone = await abandoned.exited;
    expect(gone.status, gone.stderr).toBe(6);
    expect(gone.stderr.trimEnd().split("\n").at(-1)).toMatch(/^error: lost the connection to ws:\/\/127\.0\.0\.1:\d+\/graphql \(cannot reach .*ECONNREFUSED.*\) and could not reconnect within 2 s$/);
  }, 90_000);
});

/** A TCP relay to `port` whose connections open so far can be frozen: nothing passes either way, and nothing is closed (a half-open path). */
async function relay(port: number) {
  const pairs: [Socket, Socket][] = [];
  /** Until then, new connections are taken and carry nothing (a path that opens and goes silent). */
  let silentUntil = 0;
  const server = createServer((down) => {
    const up = connect(port, "127.0.0.1");
    if (Date.now() < silentUntil) down.pause();
    else down.pipe(up).pipe(down);
    const end = () => (down.destroy(), up.destroy());
    down.on("error", end).on("close", end);
    up.on("error", end).on("close", end);
    pairs.push([down, up]);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  onTeardown(() => {
    for (const [down, up] of pairs) (down.destroy(), up.destroy());
    server.close();
  });
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    freeze(): number {
      const frozen = pairs.splice(0);
      for (const [down, up] of frozen) {
        down.unpipe(up);
        up.unpipe(down);
        down.pause();
        up.pause();
      }
      return frozen.length;
    },
    /** New connections for the next `ms` open and then carry nothing either way. */
    silence(ms: number): void {
      silentUntil = Date.now() + ms;
    },
  };
}

describe("a watch whose connection goes half-open", () => {
  it("takes an unanswered ping for a lost connection, reconnects and reads the end it missed", async () => {
    const t = await startApp();
    const fw = await firmwareFile();
    const p = uniq("cli");
    await gqlOk(t, RegisterDeviceDocument, { input: { productName: p, deviceName: "d1", tags: ["beta"] } });
    const rollout = await createRollout(t, rolloutInput(p, fw, { policy: { startAt: new Date(Date.now() + 3_600_000).toISOString() } }));
    const path = await relay(Number(new URL(t.httpUrl).port));
    const watch = started({ httpUrl: path.url, token: t.token }, ["rollout", "watch", rollout.id]);
    await eventually(() => expect(watch.out.stdout).toMatch(/Z SCHEDULED wave 1 0\/1 ended: /), 15_000);
    // The first reconnection opens and then goes silent too, before its connection_ack: it is dropped in turn.
    path.silence(12_000);
    const frozenAt = Date.now();
    expect(path.freeze()).toBeGreaterThan(0);
    // Canceled while the watch's connection carries nothing: only a new connection can tell it.
    await gqlOk(t, CancelRolloutDocument, { id: rollout.id });
    const r = await watch.exited;
    // Two silent connections of about 10 s each, and a backoff.
    expect(Date.now() - frozenAt).toBeLessThan(30_000);
    expect(r.status, r.stderr).toBe(5);
    expect(r.stderr).toMatch(/^lost the connection to ws:\/\/127\.0\.0\.1:\d+\/graphql \(.*no answer to a ping within 5 s\); reconnecting for up to 5 min$/m);
    expect(r.stderr).toMatch(/^reconnected to ws:/m);
    expect(r.stdout.trimEnd().split("\n").at(-1)).toBe("CANCELED: 0 succeeded, 1 canceled");
  }, 60_000);
});

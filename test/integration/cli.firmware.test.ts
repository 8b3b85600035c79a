import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdir, writeFile } from "node:fs/promises";
import { createServer, request, type IncomingHttpHeaders } from "node:http";
import type { AddressInfo } from "node:net";
import { Transform } from "node:stream";
import { beforeAll, describe, expect, it } from "vitest";
import { CancelRolloutDocument, CreateApiTokenDocument, FirmwareDocument, RegisterDeviceDocument } from "../../src/client/generated/graphql.js";
import { gqlOk, startApp, type TestApp } from "../helpers/app.js";
import { TestDevice } from "../helpers/device.js";
import { randomFile } from "../helpers/firmware.js";
import { BIN } from "../helpers/processes.js";
import { rolloutOf } from "../helpers/rollout.js";
import { uniq } from "../helpers/services.js";
import { onTeardown, tempDir } from "../helpers/teardown.js";
import { eventually } from "../helpers/wait.js";

const CWD = new URL("../..", import.meta.url).pathname;
const ANSI = /\x1b\[/;
/** A few MiB and a partial last chunk. */
const FILE_BYTES = 4 * 1024 * 1024 + 12_345;

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

interface Artifact {
  id: string;
  productName: string;
  version: string;
  type: string;
  size: number;
  md5: string;
  sha256: string;
  createdAt: string;
}

/** `iothub-ota <args>` in a process of its own, as a script runs it (stdout and stderr are pipes: not a terminal). */
function cli(t: Pick<TestApp, "httpUrl" | "token">, args: string[], o: { token?: string; stdin?: string } = {}): Promise<Run> {
  const env: NodeJS.ProcessEnv = { ...process.env, IOTHUB_OTA_SERVER: t.httpUrl, IOTHUB_OTA_TOKEN: o.token ?? t.token };
  return new Promise((resolve) => {
    const child = execFile(process.execPath, [BIN, ...args], { cwd: CWD, env }, (_err, stdout, stderr) => resolve({ status: child.exitCode, stdout, stderr }));
    if (o.stdin !== undefined) child.stdin?.end(o.stdin);
  });
}

const jsonOf = <T>(r: Run): T => {
  expect(r.status, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as T;
};

/**
 * A loopback proxy in front of the server that records each request's
 * headers and query, and flips one byte of the body at `flipAt` (a link
 * that corrupts a transfer).
 */
async function corruptingProxy(target: string, flipAt: number) {
  const seen: { url: string; headers: IncomingHttpHeaders }[] = [];
  const server = createServer((req, res) => {
    seen.push({ url: req.url as string, headers: req.headers });
    let offset = 0;
    const flip = new Transform({
      transform(chunk: Buffer, _encoding, callback) {
        if (flipAt >= offset && flipAt < offset + chunk.length) {
          chunk = Buffer.from(chunk);
          chunk[flipAt - offset] = (chunk[flipAt - offset] as number) ^ 0xff;
        }
        offset += chunk.length;
        callback(null, chunk);
      },
    });
    const upstream = request(new URL(req.url as string, target), { method: req.method, headers: req.headers }, (answer) => {
      res.writeHead(answer.statusCode as number, answer.headers);
      answer.pipe(res);
    });
    upstream.on("error", () => res.destroy());
    req.pipe(flip).pipe(upstream);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  onTeardown(() => new Promise((resolve) => server.close(resolve)));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen };
}

describe("the firmware commands against a running server", () => {
  let t: TestApp;

  beforeAll(async () => {
    t = await startApp({ env: { ROLLOUT_TICK_MS: "100" } });
  });

  const upload = (product: string, version: string, path: string, ...more: string[]) => cli(t, ["firmware", "upload", "--product", product, "--version", version, path, ...more]);

  it("uploads a file of a few MiB with the digests of its bytes; the same bytes again are already there; other bytes under its version exit 2 with FIRMWARE_EXISTS", async () => {
    const p = uniq("fwcli");
    const file = await randomFile(FILE_BYTES);
    const run = await upload(p, "2.0", file.path, "--json");
    const created = jsonOf<Artifact & { created: boolean }>(run);
    expect(created).toMatchObject({ productName: p, version: "2.0", type: "firmware", size: file.size, md5: file.md5, sha256: file.sha256, created: true });
    // Off a terminal: a line per pass on stderr, no bar, no escape codes.
    expect(run.stderr).toBe(`hashed image.bin: ${file.size} bytes\nsent image.bin: ${file.size} bytes\n`);
    expect((await gqlOk(t, FirmwareDocument, { id: created.id })).firmware).toMatchObject({ size: file.size, md5: file.md5, sha256: file.sha256 });

    const again = await upload(p, "2.0", file.path);
    expect(again.status, again.stderr).toBe(0);
    expect(again.stdout).toMatch(new RegExp(`^firmware:\\s+${created.id}\\nstored:\\s+already`));
    expect(again.stdout).toMatch(new RegExp(`^sha256:\\s+${file.sha256}$`, "m"));
    expect(again.stdout).not.toMatch(ANSI);

    const other = await randomFile(100_000);
    const exists = await upload(p, "2.0", other.path);
    expect(exists.status).toBe(2);
    expect(exists.stderr).toMatch(/^error FIRMWARE_EXISTS: .*2\.0/m);
    expect(exists.stdout).toBe("");
    // Another type is another artifact; --quiet prints its id alone.
    const bootloader = await upload(p, "2.0", other.path, "--type", "bootloader", "--quiet");
    expect(bootloader.status, bootloader.stderr).toBe(0);
    const bootloaderId = bootloader.stdout.trim();
    expect(bootloaderId).toMatch(/^[0-9a-f-]{36}$/);

    const listed = jsonOf<{ firmwares: Artifact[]; pageInfo: { hasNextPage: boolean } }>(await cli(t, ["firmware", "list", "--product", p, "--json"]));
    expect(listed.firmwares.map((a) => [a.id, a.type])).toEqual([
      [bootloaderId, "bootloader"],
      [created.id, "firmware"],
    ]);
    const paged = jsonOf<{ firmwares: Artifact[] }>(await cli(t, ["firmware", "list", "--product", p, "--first", "1", "--all", "--json"]));
    expect(paged.firmwares.map((a) => a.id)).toEqual([bootloaderId, created.id]);
    const [table, shown] = await Promise.all([cli(t, ["firmware", "list", "--product", p, "--first", "1"]), cli(t, ["firmware", "show", created.id, "--json"])]);
    expect(table.status, table.stderr).toBe(0);
    const [header, row, ...rest] = table.stdout.trimEnd().split("\n");
    expect(header).toMatch(/^ID\s+VERSION\s+TYPE\s+SIZE\s+SHA256\s+CREATED$/);
    expect(row).toMatch(new RegExp(`^${bootloaderId}\\s+2\\.0\\s+bootloader\\s+100000\\s+${other.sha256.slice(0, 12)}\\s+\\S+Z$`));
    expect(rest).toEqual([]);
    expect(table.stderr).toMatch(/^more: --after \S+ \(or --all\)\n$/);
    expect(jsonOf(shown)).toEqual({ ...created, created: undefined });
  }, 60_000);

  it("sends the file's size as Content-Length and its digests as claims, so the server refuses bytes altered on the way and stores nothing", async () => {
    const p = uniq("fwcli");
    const file = await randomFile(FILE_BYTES);
    const proxy = await corruptingProxy(t.httpUrl, 3_000_000);
    const run = await cli({ httpUrl: proxy.url, token: t.token }, ["firmware", "upload", "--product", p, "--version", "1.0", file.path]);
    expect(run.status, run.stdout).toBe(2);
    expect(run.stderr).toMatch(/^error BAD_USER_INPUT: md5: the bytes received have md5 [0-9a-f]{32}: the upload was altered or truncated/m);
    expect(run.stdout).toBe("");
    const [put] = proxy.seen;
    expect(put?.headers["content-length"]).toBe(String(file.size));
    expect(put?.headers["transfer-encoding"]).toBeUndefined();
    const query = new URL(put?.url as string, proxy.url).searchParams;
    expect(Object.fromEntries(query)).toEqual({ type: "firmware", md5: file.md5, sha256: file.sha256 });
    expect(jsonOf<{ firmwares: Artifact[] }>(await cli(t, ["firmware", "list", "--product", p, "--json"])).firmwares).toEqual([]);
  }, 30_000);

  it("draws the upload's progress bar redrawn in place on a terminal", async () => {
    const p = uniq("fwcli");
    const file = await randomFile(FILE_BYTES);
    // script(1) gives the command a pseudo-terminal: stdout and stderr both are one.
    const quote = (s: string) => `'${s.replace(/'/g, "'\\''")}'`;
    const command = [process.execPath, BIN, "firmware", "upload", "--product", p, "--version", "3.0", file.path, "--quiet"].map(quote).join(" ");
    const run = await new Promise<Run>((resolve) => {
      const child = execFile("script", ["-qec", command, "/dev/null"], { cwd: CWD, env: { ...process.env, IOTHUB_OTA_SERVER: t.httpUrl, IOTHUB_OTA_TOKEN: t.token } }, (_err, stdout, stderr) =>
        resolve({ status: child.exitCode, stdout, stderr }),
      );
    });
    expect(run.status, run.stdout).toBe(0);
    // Each redraw goes back up over the bar (ESC[1A) and clears it (ESC[0J) before drawing it again.
    const draws = run.stdout.split("\r\x1b[1A\x1b[0J");
    // 256 KiB reads: about 17 redraws a pass of 4 MiB.
    expect(draws.length).toBeGreaterThan(20);
    expect(draws[0]).toMatch(/^hashing\s+image\.bin\s+\[\.{30}\]\s+0%\s+0 B \/ 4\.0 MiB/);
    expect(draws.some((d) => /^uploading\s+image\.bin\s+\[#{30}\] 100%\s+4\.0 MiB \/ 4\.0 MiB/.test(d))).toBe(true);
    const id = run.stdout.trimEnd().split(/\r?\n/).at(-1);
    expect((await gqlOk(t, FirmwareDocument, { id: id as string })).firmware).toMatchObject({ version: "3.0", sha256: file.sha256 });
  }, 30_000);

  it("refuses what it cannot upload before sending: no file, an empty file, no version; a read token's upload exits 2 with FORBIDDEN", async () => {
    const p = uniq("fwcli");
    const dir = tempDir("fwcli");
    await mkdir(dir, { recursive: true });
    await writeFile(`${dir}/empty.bin`, "");
    const file = await randomFile(1000);
    const { createApiToken: reader } = await gqlOk(t, CreateApiTokenDocument, { input: { name: "reader", access: "READ" } });
    const [missing, empty, noVersion, forbidden] = await Promise.all([
      upload(p, "1.0", `${dir}/nothing.bin`),
      upload(p, "1.0", `${dir}/empty.bin`),
      cli(t, ["firmware", "upload", "--product", p, file.path]),
      cli(t, ["firmware", "upload", "--product", p, "--version", "1.0", file.path], { token: reader.token }),
    ]);
    expect(missing.stderr).toMatch(/^error: cannot read .*nothing\.bin: ENOENT/);
    expect(empty.stderr).toBe(`error: ${dir}/empty.bin is empty\n`);
    expect(noVersion.stderr).toBe("error: --version: is required\n");
    expect(forbidden.stderr).toMatch(/^error FORBIDDEN: /m);
    for (const r of [missing, empty, noVersion, forbidden]) {
      expect(r.status).toBe(2);
      expect(r.stdout).toBe("");
    }
  }, 30_000);

  it("ota send --firmware-id reaches the device with the artifact's fields and a URL that serves the file's bytes", async () => {
    const p = uniq("fwcli");
    const file = await randomFile(FILE_BYTES);
    const artifact = jsonOf<Artifact>(await upload(p, "2.0", file.path, "--json"));
    const { registerDevice } = await gqlOk(t, RegisterDeviceDocument, { input: { productName: p, deviceName: "d1", tags: ["beta"] } });
    const device = await TestDevice.connect(t.mqttUrl, p, "d1", registerDevice.secret);

    const sent = jsonOf<{ requestId: string; targeted: number }>(await cli(t, ["ota", "send", "--product", p, "--device", "d1", "--firmware-id", artifact.id, "--ttl", "10m", "--json"]));
    expect(sent.requestId).toMatch(/\S/);
    expect(sent.targeted).toBe(1);
    const command = await device.nextCommand("$ota_upgrade");
    expect(command.json).toMatchObject({ version: "2.0", type: "firmware", size: file.size, md5: file.md5, sha256: file.sha256 });
    const downloaded = Buffer.from(await (await fetch(command.json.url as string)).arrayBuffer());
    expect(createHash("sha256").update(downloaded).digest("hex")).toBe(file.sha256);

    const [both, neither, partial] = await Promise.all([
      cli(t, ["ota", "send", "--product", p, "--device", "d1", "--firmware-id", artifact.id, "--url", "https://fw.example/a.bin", "--md5", file.md5]),
      cli(t, ["ota", "send", "--product", p, "--device", "d1"]),
      cli(t, ["ota", "send", "--product", p, "--device", "d1", "--version", "2.0", "--url", "https://fw.example/a.bin"]),
    ]);
    expect(both.stderr).toBe(
      "error: give --firmware-id or --version, --url, --size and --md5, not both (--url, --md5 given): an uploaded artifact's version, url, size and digests are the server's\n",
    );
    expect(neither.stderr).toBe("error: give --firmware-id <id> (an uploaded artifact) or --version, --url, --size and --md5 (a file hosted elsewhere)\n");
    expect(partial.stderr).toBe("error: missing --size, --md5 (or give --firmware-id <id>, an uploaded artifact)\n");
    for (const r of [both, neither, partial]) expect(r.status).toBe(2);
  }, 40_000);

  it("rollout preview and create take --firmware-id (or firmwareId in --input); firmware delete exits 2 with FIRMWARE_IN_USE while the rollout is active", async () => {
    const p = uniq("fwcli");
    const file = await randomFile(FILE_BYTES);
    const artifact = jsonOf<Artifact>(await upload(p, "2.0", file.path, "--json"));
    // Registered, never connected; the rollout starts in an hour: SCHEDULED, active, nobody notified.
    for (const deviceName of ["a", "b"]) await gqlOk(t, RegisterDeviceDocument, { input: { productName: p, deviceName, tags: ["beta"] } });
    const later = new Date(Date.now() + 3_600_000).toISOString();

    const preview = jsonOf<{ targeted: number; eligible: number }>(
      await cli(t, ["rollout", "preview", "--input", "-", "--json"], { stdin: JSON.stringify({ productName: p, target: { tag: "beta" }, firmwareId: artifact.id }) }),
    );
    expect(preview).toMatchObject({ targeted: 2, eligible: 2 });
    const run = await cli(t, ["rollout", "create", "--product", p, "--tag", "beta", "--firmware-id", artifact.id, "--start-at", later, "--json"]);
    const rollout = jsonOf<{ id: string; state: string; firmware: { firmwareId: string; version: string; sha256: string } }>(run);
    expect(rollout.state).toBe("SCHEDULED");
    expect(rollout.firmware).toEqual({ firmwareId: artifact.id, version: "2.0", sha256: file.sha256, url: `/firmware/download/${artifact.id}` });
    const shown = await cli(t, ["rollout", "show", rollout.id]);
    expect(shown.stdout).toMatch(new RegExp(`^firmware:\\s+2\\.0 artifact ${artifact.id}$`, "m"));

    const inUse = await cli(t, ["firmware", "delete", artifact.id]);
    expect(inUse.status).toBe(2);
    expect(inUse.stderr).toMatch(new RegExp(`^error FIRMWARE_IN_USE: .*${rollout.id}`));
    expect(inUse.stdout).toBe("");
    expect(jsonOf<Artifact>(await cli(t, ["firmware", "show", artifact.id, "--json"])).id).toBe(artifact.id);

    await gqlOk(t, CancelRolloutDocument, { id: rollout.id });
    await eventually(async () => expect((await rolloutOf(t, rollout.id)).counts.inProgress).toBe(0));
    const deleted = await cli(t, ["firmware", "delete", artifact.id]);
    expect(deleted.status, deleted.stderr).toBe(0);
    expect(deleted.stdout).toBe(`firmware ${artifact.id} deleted (${p} 2.0, firmware)\n`);
    const gone = await cli(t, ["firmware", "show", artifact.id]);
    expect(gone.status).toBe(2);
    expect(gone.stderr).toBe(`error NOT_FOUND: firmware ${artifact.id} not found\n`);

    const both = await cli(t, ["rollout", "create", "--product", p, "--tag", "beta", "--firmware-id", artifact.id, "--version", "2.0"]);
    expect(both.status).toBe(2);
    expect(both.stderr).toMatch(/^error: give --firmware-id or --version, --url, --size, --md5 and --sha256, not both \(--version given\)/);
  }, 60_000);

  it("shows an example in each firmware command's --help", async () => {
    const commands = [["firmware", "upload"], ["firmware", "list"], ["firmware", "show"], ["firmware", "delete"]];
    const helps = await Promise.all(commands.map((c) => cli(t, [...c, "--help"])));
    helps.forEach((h, i) => {
      expect(h.status).toBe(0);
      expect(h.stdout).toMatch(new RegExp(`\\nExample:\\n.*iothub-ota ${commands[i]!.join(" ")} `));
      expect(h.stdout).toContain("IOTHUB_OTA_TOKEN");
    });
    const [send, create] = await Promise.all([cli(t, ["ota", "send", "--help"]), cli(t, ["rollout", "create", "--help"])]);
    for (const h of [send, create]) expect(h.stdout).toMatch(/--firmware-id <id>/);
  });
});

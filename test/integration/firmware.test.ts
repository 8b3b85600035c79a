import { createHash, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { readdir, utimes, writeFile } from "node:fs/promises";
import { request } from "node:http";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import {
  CancelRolloutDocument,
  CreateApiTokenDocument,
  CreateRolloutDocument,
  DeleteFirmwareDocument,
  FirmwareDocument,
  FirmwaresDocument,
  RegisterDeviceDocument,
  SendOtaDocument,
} from "../../src/client/generated/graphql.js";
import type { Artifact } from "../../src/firmware/artifact.model.js";
import { gql, gqlOk, startApp, type TestApp } from "../helpers/app.js";
import { TestDevice } from "../helpers/device.js";
import { upload } from "../helpers/firmware.js";
import { metric } from "../helpers/metrics.js";
import { createRollout, rolloutIn, rolloutOf, simFleet } from "../helpers/rollout.js";
import { uniq } from "../helpers/services.js";
import { eventually } from "../helpers/wait.js";

const md5 = (b: Buffer) => createHash("md5").update(b).digest("hex");
const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");

describe("firmware artifacts", () => {
  let t: TestApp;

  beforeAll(async () => {
    t = await startApp({ env: { ROLLOUT_TICK_MS: "100" } });
  });

  /** Uploads fresh random bytes as a new artifact of the product. */
  async function stored(productName: string, version = "2.0", size = 1 << 20) {
    const bytes = randomBytes(size);
    const r = await upload(t, productName, version, bytes);
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    return { artifact: r.body, bytes };
  }

  async function token(access: "read" | "write" | "admin", products?: string[]) {
    const { createApiToken } = await gqlOk(t, CreateApiTokenDocument, { input: { name: uniq("tok"), access: access.toUpperCase() as "READ", products } });
    return createApiToken.token;
  }

  /**
   * A URL as the server puts it into a command: signed for one device (which must be registered), or by default
   * for a tag. `expiresAt` is the command's: the URL lives the grace longer.
   */
  const signed = (
    a: Pick<Artifact, "id" | "version" | "size" | "md5" | "type" | "sha256">,
    deviceName?: string,
    expiresAt = Math.floor(Date.now() / 1000) + 600,
  ) => t.app.artifacts.firmwareFor(a, deviceName ? { kind: "device", name: deviceName } : { kind: "tag", name: "beta" }, expiresAt).url;
  const grace = () => t.config.limits.firmwareUrlGraceSeconds;

  it("stores an upload with the size and digests of its bytes; the same bytes again answer it, other bytes under its version are refused", async () => {
    const productName = uniq("fw");
    const { artifact, bytes } = await stored(productName);
    expect(artifact).toMatchObject({ productName, version: "2.0", type: "firmware", size: bytes.length, md5: md5(bytes), sha256: sha256(bytes) });

    const again = await upload(t, productName, "2.0", bytes);
    expect(again.status).toBe(200);
    expect(again.body.id).toBe(artifact.id);
    const other = await upload(t, productName, "2.0", randomBytes(1000));
    expect(other.status).toBe(409);
    expect(other.body.errors?.[0]?.extensions.code).toBe("FIRMWARE_EXISTS");
    // Another type is another artifact.
    const bootloader = await upload(t, productName, "2.0", randomBytes(1000), { type: "bootloader" });
    expect(bootloader.status).toBe(201);

    const page = await gqlOk(t, FirmwaresDocument, { productName, first: 1 });
    expect(page.firmwares.nodes.map((f) => f.id)).toEqual([bootloader.body.id]);
    expect(page.firmwares.pageInfo.hasNextPage).toBe(true);
    const next = await gqlOk(t, FirmwaresDocument, { productName, first: 1, after: page.firmwares.pageInfo.endCursor });
    expect(next.firmwares.nodes.map((f) => f.id)).toEqual([artifact.id]);
    expect((await gqlOk(t, FirmwareDocument, { id: artifact.id })).firmware).toMatchObject({ sha256: artifact.sha256 });
  });

  it("takes uploads with the API's tokens: read may list, write may upload, only for its products", async () => {
    const productName = uniq("fw");
    const readOnly = await token("read");
    expect((await upload(t, productName, "1.0", randomBytes(10), { token: readOnly })).status).toBe(403);
    expect((await upload(t, productName, "1.0", randomBytes(10), { token: await token("write", [uniq("other")]) })).status).toBe(403);
    expect((await upload(t, productName, "1.0", randomBytes(10), { token: "iot_nope" })).status).toBe(401);
    expect((await upload(t, productName, "1.0", randomBytes(10), { token: await token("write", [productName]) })).status).toBe(201);
    const listed = await gql({ httpUrl: t.httpUrl, token: readOnly }, FirmwaresDocument, { productName }, `Bearer ${readOnly}`);
    expect(listed.data?.firmwares.nodes).toHaveLength(1);
  });

  it("refuses a bad upload, naming every field at fault, and stores nothing", async () => {
    const productName = uniq("fw");
    const long = await upload(t, productName, "v".repeat(65), randomBytes(10), { type: "x".repeat(65) });
    expect(long.status).toBe(400);
    expect(long.body.errors?.map((e) => e.extensions.field)).toEqual(["version", "type"]);
    const bytes = randomBytes(5000);
    const altered = await upload(t, productName, "1.0", bytes, { md5: md5(Buffer.from("other")), sha256: sha256(bytes) });
    expect(altered.status).toBe(400);
    expect(altered.body.errors?.map((e) => e.extensions.field)).toEqual(["md5"]);
    expect((await upload(t, productName, "1.0", Buffer.alloc(0))).status).toBe(400);
    // Digests that match are accepted.
    expect((await upload(t, productName, "1.1", bytes, { md5: md5(bytes), sha256: sha256(bytes).toUpperCase() })).status).toBe(201);
    expect((await gqlOk(t, FirmwaresDocument, { productName })).firmwares.nodes.map((f) => f.version)).toEqual(["1.1"]);
    // Nothing half received is left behind.
    expect(await readdir(join(t.config.dataDir, "firmware", ".incoming"))).toEqual([]);
  });

  it("refuses an artifact over FIRMWARE_MAX_BYTES, declared or streamed, and keeps nothing of it", async () => {
    const small = await startApp({ env: { FIRMWARE_MAX_BYTES: "100000" } });
    const productName = uniq("fw");
    const declared = await upload(small, productName, "1.0", randomBytes(100_001));
    expect(declared.status).toBe(413);
    expect(declared.body.errors?.[0]?.extensions.code).toBe("PAYLOAD_TOO_LARGE");
    // Without a Content-Length the bytes are counted as they come: the upload is cut.
    const chunks = new ReadableStream({
      pull(c) {
        c.enqueue(randomBytes(20_000));
      },
    });
    await fetch(`${small.httpUrl}/firmware/${productName}/1.1`, {
      method: "PUT",
      headers: { authorization: `Bearer ${small.token}` },
      body: chunks,
      duplex: "half",
    } as RequestInit).then(
      (res) => expect(res.status).toBe(413),
      () => undefined, // or reset before its answer could be read
    );
    expect((await gqlOk(small, FirmwaresDocument, { productName })).firmwares.nodes).toEqual([]);
    await eventually(async () => expect(await readdir(join(small.config.dataDir, "firmware", ".incoming"))).toEqual([]));
  });

  it("serves a signed download whole, from the middle with Range, and 304 for its ETag; streamed with its length", async () => {
    const { artifact, bytes } = await stored(uniq("fw"));
    const url = signed(artifact);
    const labels = { product: artifact.productName, version: "2.0" };
    const whole = await fetch(url);
    expect(whole.status).toBe(200);
    expect(whole.headers.get("content-length")).toBe(String(bytes.length));
    expect(whole.headers.get("etag")).toBe(`"${artifact.sha256}"`);
    expect(whole.headers.get("accept-ranges")).toBe("bytes");
    expect(Buffer.from(await whole.arrayBuffer()).equals(bytes)).toBe(true);

    // A device that lost its link at 600,000 bytes asks for the rest.
    const rest = await fetch(url, { headers: { range: "bytes=600000-", "if-range": `"${artifact.sha256}"` } });
    expect(rest.status).toBe(206);
    expect(rest.headers.get("content-range")).toBe(`bytes 600000-${bytes.length - 1}/${bytes.length}`);
    expect(rest.headers.get("content-length")).toBe(String(bytes.length - 600_000));
    expect(Buffer.from(await rest.arrayBuffer()).equals(bytes.subarray(600_000))).toBe(true);
    const head = await fetch(url, { headers: { range: "bytes=0-99" } });
    expect(Buffer.from(await head.arrayBuffer()).equals(bytes.subarray(0, 100))).toBe(true);
    // Its bytes changed since (another ETag): the whole artifact, not a range of other bytes.
    const changed = await fetch(url, { headers: { range: "bytes=10-", "if-range": '"other"' } });
    expect(changed.status).toBe(200);
    expect((await changed.arrayBuffer()).byteLength).toBe(bytes.length);
    const outside = await fetch(url, { headers: { range: `bytes=${bytes.length}-` } });
    expect(outside.status).toBe(416);
    expect(outside.headers.get("content-range")).toBe(`bytes */${bytes.length}`);
    expect((await fetch(url, { headers: { "if-none-match": `"${artifact.sha256}"` } })).status).toBe(304);
    const onlyHead = await fetch(url, { method: "HEAD" });
    expect(onlyHead.headers.get("content-length")).toBe(String(bytes.length));

    expect(await metric(t, "iothub_ota_firmware_downloads_total", { ...labels, event: "started" })).toBe(3);
    expect(await metric(t, "iothub_ota_firmware_downloads_total", { ...labels, event: "resumed" })).toBe(1);
    expect(await metric(t, "iothub_ota_firmware_downloads_total", { ...labels, event: "completed" })).toBe(3);
    expect(await metric(t, "iothub_ota_firmware_bytes_served_total", labels)).toBe(bytes.length * 3 - 600_000 + 100);
  });

  it("refuses a forged, altered, unsigned or expired download URL with 403, and a deleted artifact's with 404", async () => {
    const productName = uniq("fw");
    const { artifact } = await stored(productName, "2.0", 1000);
    for (const deviceName of ["d1", "d2"]) await gqlOk(t, RegisterDeviceDocument, { input: { productName, deviceName } });
    const url = new URL(signed(artifact, "d1"));
    const variant = (change: (q: URLSearchParams) => void) => {
      const u = new URL(url);
      change(u.searchParams);
      return u.toString();
    };
    expect((await fetch(url)).status).toBe(200);
    const sig = url.searchParams.get("sig") as string;
    const refused = [
      variant((q) => q.set("sig", `${sig.slice(0, -2)}${sig.endsWith("AA") ? "BB" : "AA"}`)),
      variant((q) => q.set("device", "d2")), // another device's
      variant((q) => q.set("expires", String(Number(q.get("expires")) + 3600))), // a longer life
      variant((q) => q.delete("sig")),
      variant((q) => q.set("sig", `${sig}=`)), // another spelling of the same signature
      variant((q) => q.set("expires", `0${q.get("expires")}`)),
      variant((q) => {
        q.delete("device");
        q.set("tag", "d1");
      }),
      signed(artifact, "d1", Math.floor(Date.now() / 1000) - grace() - 1), // expired, with a good signature
      signed({ ...artifact, id: "00000000-0000-4000-8000-000000000000" }, "d1").replace("00000000-0000-4000-8000-000000000000", artifact.id), // another artifact's
    ];
    for (const u of refused) {
      const res = await fetch(u);
      expect(res.status, u).toBe(403);
      expect(((await res.json()) as { errors: { extensions: { code: string } }[] }).errors[0]?.extensions.code).toBe("FORBIDDEN");
    }
    const expired = await fetch(signed(artifact, "d1", Math.floor(Date.now() / 1000) - grace() - 1));
    expect(await expired.text()).toContain("expired");
    expect(await metric(t, "iothub_ota_refused_total", { kind: "download", reason: "forged" })).toBeGreaterThanOrEqual(4);

    await gqlOk(t, DeleteFirmwareDocument, { id: artifact.id });
    await eventually(async () => expect((await fetch(url)).status).toBe(404));
    expect(existsSync(join(t.config.dataDir, "firmware", artifact.id))).toBe(false);
  });

  it("sendOta by firmwareId: the command carries the artifact's fields and a URL signed for its device (or tag) that lives as long as the command", async () => {
    const productName = uniq("fw");
    const { artifact, bytes } = await stored(productName);
    const { registerDevice } = await gqlOk(t, RegisterDeviceDocument, { input: { productName, deviceName: "d1", tags: ["beta"] } });
    const device = await TestDevice.connect(t.mqttUrl, productName, "d1", registerDevice.secret);
    await device.client.subscribeAsync(`tags/${productName}/beta/cmd/+/+/+/#`, { qos: 1 });

    const sent = await gqlOk(t, SendOtaDocument, { input: { productName, deviceName: "d1", firmwareId: artifact.id, ttlSeconds: 300 } });
    const command = await device.nextCommand("$ota_upgrade");
    expect(command.json).toMatchObject({ version: "2.0", type: "firmware", size: bytes.length, md5: artifact.md5, sha256: artifact.sha256 });
    const url = new URL(command.json.url as string);
    expect(url.origin).toBe(t.httpUrl);
    expect(url.searchParams.get("device")).toBe("d1");
    // It outlives the command by the grace, so that a download begun in time can resume.
    expect(Number(url.searchParams.get("expires"))).toBe((sent.sendOta.expiresAt as number) + t.config.limits.firmwareUrlGraceSeconds);
    expect(Buffer.from(await (await fetch(url)).arrayBuffer()).equals(bytes)).toBe(true);

    // Without a TTL the URL lives as long as a session keeps the command.
    await gqlOk(t, SendOtaDocument, { input: { productName, tag: "beta", firmwareId: artifact.id } });
    const byTag = new URL((await device.nextCommand("$ota_upgrade")).json.url as string);
    expect(byTag.searchParams.get("tag")).toBe("beta");
    const life = Number(byTag.searchParams.get("expires")) - Date.now() / 1000;
    expect(Math.abs(life - t.config.limits.offlineCommandTtlSeconds - t.config.limits.firmwareUrlGraceSeconds)).toBeLessThan(60);
    expect((await fetch(byTag)).status).toBe(200);

    // REST takes it as firmware_id.
    const rest = await fetch(`${t.httpUrl}/ota/${productName}/d1`, {
      method: "POST",
      headers: { authorization: `Bearer ${t.token}`, "content-type": "application/json" },
      body: JSON.stringify({ firmware_id: artifact.id }),
    });
    expect(rest.status).toBe(200);
    expect((await device.nextCommand("$ota_upgrade")).json.sha256).toBe(artifact.sha256);

    const { artifact: foreign } = await stored(uniq("fw"), "2.0", 100);
    const wrong = await gql(t, SendOtaDocument, { input: { productName, deviceName: "d1", firmwareId: foreign.id } });
    expect(wrong.errors?.[0]?.extensions).toMatchObject({ code: "BAD_USER_INPUT", field: "firmwareId" });
    const both = await gql(t, SendOtaDocument, { input: { productName, deviceName: "d1", firmwareId: artifact.id, firmware: { url: "https://x.example/a", version: "2", size: 1, md5: "0".repeat(32), type: "firmware" } } });
    expect(both.errors?.[0]?.extensions).toMatchObject({ code: "BAD_USER_INPUT", field: "firmwareId" });
  });

  it("runs a rollout by firmwareId to completion; devices that lose their link mid-download resume it with Range", async () => {
    const productName = uniq("fw");
    const { artifact } = await stored(productName, "2.0", 1 << 20);
    const { fleet } = await simFleet(t, { productName, count: 20, faults: { offline: 40 }, seed: 3 });
    const rollout = await createRollout(t, { productName, target: { tag: "beta" }, firmwareId: artifact.id });
    expect(rollout.firmware).toMatchObject({ firmwareId: artifact.id, sha256: artifact.sha256, url: `/firmware/download/${artifact.id}` });
    const done = await rolloutIn(t, rollout.id, ["COMPLETED"]);
    expect(done.counts).toMatchObject({ total: 20, succeeded: 20 });
    expect(fleet.devices.every((d) => d.firmwareVersion === "2.0")).toBe(true);
    const resumed = fleet.summary().downloadsResumed;
    expect(resumed).toBeGreaterThan(0);
    expect(await metric(t, "iothub_ota_firmware_downloads_total", { product: productName, event: "resumed" })).toBe(resumed);
    // Sent through the last byte: every device's last request; a cut one too when its bytes had all left before the cut.
    const completed = await metric(t, "iothub_ota_firmware_downloads_total", { product: productName, event: "completed" });
    expect(completed).toBeGreaterThanOrEqual(20);
    expect(completed).toBeLessThanOrEqual(20 + resumed);
  });

  it("refuses to delete an artifact a rollout uses; a rollout and a deletion at once never leave a rollout without its artifact", async () => {
    const productName = uniq("fw");
    const { artifact } = await stored(productName, "2.0", 1000);
    // Registered, never connected: their executions stay NOTIFIED.
    for (const deviceName of ["a", "b"]) await gqlOk(t, RegisterDeviceDocument, { input: { productName, deviceName, tags: ["beta"] } });
    const input = { productName, target: { tag: "beta" } };
    const rollout = await createRollout(t, { ...input, firmwareId: artifact.id });
    const refused = await gql(t, DeleteFirmwareDocument, { id: artifact.id });
    expect(refused.errors?.[0]?.extensions?.code).toBe("FIRMWARE_IN_USE");
    expect(refused.errors?.[0]?.message).toContain(rollout.id);
    await gqlOk(t, CancelRolloutDocument, { id: rollout.id });
    await eventually(async () => expect((await rolloutOf(t, rollout.id)).counts.inProgress).toBe(0));
    expect((await gqlOk(t, DeleteFirmwareDocument, { id: artifact.id })).deleteFirmware.id).toBe(artifact.id);
    const gone = await gql(t, CreateRolloutDocument, { input: { ...input, firmwareId: artifact.id } });
    expect(gone.errors?.[0]?.extensions).toMatchObject({ code: "BAD_USER_INPUT", field: "firmwareId" });

    // Raced: whichever goes first, the other sees it.
    for (let i = 0; i < 5; i++) {
      const { artifact: raced } = await stored(productName, `3.${i}`, 1000);
      const [created, deleted] = await Promise.all([
        gql(t, CreateRolloutDocument, { input: { ...input, firmwareId: raced.id } }),
        gql(t, DeleteFirmwareDocument, { id: raced.id }),
      ]);
      const exists = (await gqlOk(t, FirmwareDocument, { id: raced.id })).firmware !== null;
      if (created.data) expect(deleted.errors?.[0]?.extensions?.code, `round ${i}`).toBe("FIRMWARE_IN_USE");
      else expect(deleted.data?.deleteFirmware.id, `round ${i}`).toBe(raced.id);
      expect(exists).toBe(Boolean(created.data));
      if (created.data) await gqlOk(t, CancelRolloutDocument, { id: created.data.createRollout.id });
    }
  });

  it("answers ranges as RFC 9110 says: a suffix longer than the artifact is all of it, an invalid one is ignored", async () => {
    const { artifact, bytes } = await stored(uniq("fw"), "2.0", 1000);
    const url = signed(artifact);
    const get = (range: string) => fetch(url, { headers: { range } });
    const suffix = await get("bytes=-5000");
    expect(suffix.status).toBe(206);
    expect(suffix.headers.get("content-range")).toBe("bytes 0-999/1000");
    const last = await get("bytes=-10");
    expect(Buffer.from(await last.arrayBuffer()).equals(bytes.subarray(990))).toBe(true);
    expect((await get("bytes=5-2")).status).toBe(200);
    expect((await get("bytes=0-1,5-6")).status).toBe(200);
    expect((await get("bytes=-0")).status).toBe(416);
    const clamped = await get("bytes=990-999999999999");
    expect(clamped.headers.get("content-range")).toBe("bytes 990-999/1000");
  });

  it("refuses the URLs of a suspended or deleted device, and takes an upper-case id as the same artifact", async () => {
    const productName = uniq("fw");
    const { artifact } = await stored(productName, "2.0", 1000);
    for (const deviceName of ["a", "b"]) await gqlOk(t, RegisterDeviceDocument, { input: { productName, deviceName, tags: ["beta"] } });
    expect((await fetch(signed(artifact, "a"))).status).toBe(200);
    await t.app.devices.setSuspended(productName, "a", true);
    await eventually(async () => expect((await fetch(signed(artifact, "a"))).status).toBe(403));
    expect((await fetch(signed(artifact, "nobody"))).status).toBe(403);

    // In use by a rollout under any spelling of its id; deleted, under any spelling too.
    const rollout = await createRollout(t, { productName, target: { tag: "beta" }, firmwareId: artifact.id.toUpperCase() });
    expect(rollout.firmware.firmwareId).toBe(artifact.id);
    const upper = await gql(t, DeleteFirmwareDocument, { id: artifact.id.toUpperCase() });
    expect(upper.errors?.[0]?.extensions?.code).toBe("FIRMWARE_IN_USE");
    await gqlOk(t, CancelRolloutDocument, { id: rollout.id });
    await eventually(async () => expect((await rolloutOf(t, rollout.id)).counts.inProgress).toBe(0));
    expect((await gqlOk(t, DeleteFirmwareDocument, { id: artifact.id.toUpperCase() })).deleteFirmware.id).toBe(artifact.id);
    expect(existsSync(join(t.config.dataDir, "firmware", artifact.id))).toBe(false);
  });

  it("answers a claimed sha256 of a stored version before the body is sent, and waits for the token check before 100 Continue", async () => {
    const productName = uniq("fw");
    const { artifact, bytes } = await stored(productName, "2.0", 1000);
    // A client that waits for 100 Continue never has to send the body: the stored artifact answers.
    const early = await new Promise<{ status: number; continued: boolean; body: string }>((resolve, reject) => {
      let continued = false;
      const req = request(`${t.httpUrl}/firmware/${productName}/2.0?sha256=${artifact.sha256}`, {
        method: "PUT",
        headers: { authorization: `Bearer ${t.token}`, expect: "100-continue", "content-length": "1000000000" },
      });
      req.on("continue", () => (continued = true));
      req.on("response", (r) => {
        let body = "";
        r.on("data", (d: Buffer) => (body += d.toString()));
        r.on("end", () => resolve({ status: r.statusCode ?? 0, continued, body }));
      });
      req.on("error", reject);
      req.flushHeaders();
    });
    expect(early).toMatchObject({ status: 200, continued: false });
    expect((JSON.parse(early.body) as { id: string }).id).toBe(artifact.id);
    // One that streams it anyway gets the same answer, not a reset (the bytes are read and dropped).
    const again = await upload(t, productName, "2.0", bytes, { sha256: artifact.sha256 });
    expect(again.status).toBe(200);
    expect(again.body.id).toBe(artifact.id);
    const other = await upload(t, productName, "2.0", randomBytes(1000), { sha256: "0".repeat(64) });
    expect(other.status).toBe(409);

    const asked = await new Promise<{ status: number; continued: boolean }>((resolve, reject) => {
      let continued = false;
      const req = request(`${t.httpUrl}/firmware/${productName}/3.0`, {
        method: "PUT",
        headers: { authorization: "Bearer iot_wrong", expect: "100-continue", "content-length": "1000000" },
      });
      req.on("continue", () => (continued = true));
      req.on("response", (r) => {
        r.resume();
        resolve({ status: r.statusCode ?? 0, continued });
      });
      req.on("error", reject);
      req.flushHeaders();
    });
    expect(asked).toEqual({ status: 401, continued: false });
  });

  it("closes a download nobody reads and an upload that stalls, after HTTP_IDLE_TIMEOUT_MS; takes FIRMWARE_MAX_UPLOADS at once", async () => {
    const strict = await startApp({ env: { HTTP_IDLE_TIMEOUT_MS: "1000", FIRMWARE_MAX_UPLOADS: "1" } });
    const productName = uniq("fw");
    const bytes = randomBytes(8 << 20);
    const first = await upload(strict, productName, "1.0", bytes);
    expect(first.status).toBe(201);
    const url = strict.app.artifacts.firmwareFor(first.body, { kind: "device", name: "d" }, Math.floor(Date.now() / 1000) + 600).url;
    // A reader that stops: the server's writes stall, and the connection is closed.
    const closed = await new Promise<number>((resolve) => {
      const started = Date.now();
      const req = request(url, (r) => {
        r.pause();
        r.socket.once("close", () => resolve(Date.now() - started));
      });
      req.end();
    });
    expect(closed).toBeGreaterThanOrEqual(900);
    expect(closed).toBeLessThan(10_000);

    // An upload that sends a little, then nothing: the one upload slot is taken until the idle timeout frees it.
    let pulls = 0;
    const stalls = new ReadableStream({
      pull: (c) => (pulls++ === 0 ? c.enqueue(new Uint8Array(1000)) : new Promise(() => undefined)),
    });
    const stalled = fetch(`${strict.httpUrl}/firmware/${productName}/2.0`, {
      method: "PUT",
      headers: { authorization: `Bearer ${strict.token}` },
      body: stalls,
      duplex: "half",
    } as RequestInit).catch((err: unknown) => err);
    await eventually(async () => expect(await readdir(join(strict.config.dataDir, "firmware", ".incoming"))).toHaveLength(1));
    const busy = await upload(strict, productName, "3.0", randomBytes(10));
    expect(busy.status).toBe(429);
    expect(busy.body.errors?.[0]?.extensions.code).toBe("LIMIT_EXCEEDED");
    expect(await stalled).toBeInstanceOf(Error);
    await eventually(async () => expect(await readdir(join(strict.config.dataDir, "firmware", ".incoming"))).toEqual([]));
    expect((await upload(strict, productName, "3.0", randomBytes(10))).status).toBe(201);
  });

  it("removes at start the files a crash left without their artifact", async () => {
    const dir = join(t.config.dataDir, "firmware");
    const orphan = join(dir, "00000000-0000-4000-8000-00000000beef");
    const { artifact } = await stored(uniq("fw"), "2.0", 100);
    await writeFile(orphan, "half");
    const old = new Date(Date.now() - 2 * 3600_000);
    await utimes(orphan, old, old);
    await utimes(join(dir, artifact.id), old, old);
    await t.app.artifacts.start();
    expect(existsSync(orphan)).toBe(false);
    expect(existsSync(join(dir, artifact.id))).toBe(true);
  });

  it("leaves the bytes to the proxy in front with FIRMWARE_ACCEL_REDIRECT, once it has checked the URL", async () => {
    const offloaded = await startApp({ env: { FIRMWARE_ACCEL_REDIRECT: "/_firmware/", FIRMWARE_URL_GRACE_SECONDS: "600" } });
    const productName = uniq("fw");
    const r = await upload(offloaded, productName, "1.0", randomBytes(5000));
    const commandExpiresAt = Math.floor(Date.now() / 1000) + 60;
    const url = offloaded.app.artifacts.firmwareFor(r.body, { kind: "tag", name: "beta" }, commandExpiresAt).url;
    // With a grace, the URL outlives its command by it (by default it dies with it: the other tests).
    expect(Number(new URL(url).searchParams.get("expires"))).toBe(commandExpiresAt + 600);
    const res = await fetch(url, { headers: { range: "bytes=100-" } });
    expect(res.status).toBe(200);
    expect(res.headers.get("x-accel-redirect")).toBe(`/_firmware/${r.body.id}`);
    // The proxy's own ETag, Range and conditionals apply to what it sends: the server sets none of them.
    expect(res.headers.get("etag")).toBeNull();
    expect(res.headers.get("accept-ranges")).toBeNull();
    expect((await res.arrayBuffer()).byteLength).toBe(0);
    expect(await metric(offloaded, "iothub_ota_firmware_downloads_total", { product: productName, event: "resumed" })).toBe(1);
    // Refused as without it: the proxy is told nothing to send.
    const forged = await fetch(url.replace(/sig=[^&]+/, `sig=${"A".repeat(43)}`));
    expect(forged.status).toBe(403);
    expect(forged.headers.get("x-accel-redirect")).toBeNull();
  });
});

import { spawn, type ChildProcess } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { createReadStream, readdirSync, readFileSync } from "node:fs";
import { chmod, mkdir, open, rm, writeFile } from "node:fs/promises";
import { request as httpRequest } from "node:http";
import { availableParallelism, userInfo } from "node:os";
import { Readable } from "node:stream";
import { Worker } from "node:worker_threads";
import { Redis } from "ioredis";
import pg from "pg";
import { UrlSigner } from "../src/firmware/url.signer.js";
import { registerDevices } from "../src/sim/sim.fleet.js";
import { benchDatabase, cpuSeconds, freePort, metric, nowMs, percentile, REDIS_URL, round, sleep, startServer, TOKEN, uniq, type BenchServer } from "./lib.js";

export interface DownloadsOptions {
  devices: number;
  /** Artifact size in bytes. */
  size: number;
  rounds: number;
  /** Client threads sharing the devices. */
  clients: number;
  /** Every n-th download is hashed (md5) and compared; 1: all of them. */
  hashEvery: number;
  client: "node" | "wrk";
  /** Seconds per wrk round. */
  seconds: number;
  /** Also a bare Node file server and nginx without sendfile: where the ceiling comes from. */
  references: boolean;
  /** Also the server behind nginx with FIRMWARE_ACCEL_REDIRECT (nginx sends the bytes); default on. */
  offload?: boolean;
}

/** The internal location the offloading server redirects to (FIRMWARE_ACCEL_REDIRECT). */
const ACCEL = "/_firmware/";

const MB = 1e6;

const log = (line: string) => process.stderr.write(`[downloads bench ${new Date().toISOString().slice(11, 19)}] ${line}\n`);

/** `10MB`, `512KiB`, `1048576`: decimal units (k, M, G) or binary ones (KiB, MiB, GiB). */
export function parseSize(v: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(b|kb?|kib|mb?|mib|gb?|gib)?$/i.exec(v.trim());
  if (!m) throw new Error(`expected a size such as 10MB or 512KiB, got ${v}`);
  const unit = (m[2] ?? "b").toLowerCase();
  const factor: Record<string, number> = { b: 1, k: 1e3, kb: 1e3, kib: 1024, m: 1e6, mb: 1e6, mib: 1024 ** 2, g: 1e9, gb: 1e9, gib: 1024 ** 3 };
  const bytes = Math.round(Number(m[1]) * (factor[unit] as number));
  if (bytes < 1) throw new Error(`the size must be at least one byte, got ${v}`);
  return bytes;
}

// ---- process accounting ---------------------------------------------------------------------------

function rssKb(pid: number): number {
  try {
    const line = readFileSync(`/proc/${pid}/status`, "utf8").split("\n").find((l) => l.startsWith("VmRSS:")) ?? "";
    return Number(line.replace(/\D/g, ""));
  } catch {
    return 0; // exited
  }
}

/** A process and its children (nginx's workers): their pids, read again at every sample. */
function family(pid: number): number[] {
  const pids = [pid];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const ppid = Number(readFileSync(`/proc/${entry}/stat`, "utf8").split(") ")[1]?.split(" ")[1]);
      if (ppid === pid) pids.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

/** System (kernel) CPU seconds of a process, from /proc (stime, USER_HZ = 100). */
function sysSeconds(pid: number): number {
  try {
    return Number(readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.split(" ")[12]) / 100;
  } catch {
    return 0;
  }
}

const sysOf = (pids: number[]) => pids.reduce((s, p) => s + sysSeconds(p), 0);
const cpuOf = (pids: number[]) => pids.reduce((s, p) => s + (safeCpu(p) ?? 0), 0);
const rssOf = (pids: number[]) => pids.reduce((s, p) => s + rssKb(p), 0);

function safeCpu(pid: number): number | null {
  try {
    return cpuSeconds(pid);
  } catch {
    return null;
  }
}

/** Busy and total jiffies of the whole machine, from /proc/stat. */
function machineJiffies(): { busy: number; total: number } {
  const [, ...fields] = (readFileSync("/proc/stat", "utf8").split("\n")[0] ?? "").trim().split(/\s+/);
  const n = fields.map(Number);
  const total = n.slice(0, 8).reduce((a, b) => a + b, 0);
  return { busy: total - (n[3] ?? 0) - (n[4] ?? 0), total };
}

// ---- the servers ---------------------------------------------------------------------------------

/** What downloads are measured against: a base URL, the path and query per device, and its processes. */
interface Target {
  name: string;
  pid: number;
  /** The process and its workers, for CPU and RSS. */
  pids(): number[];
  urlFor(device: number): string;
  stop(): Promise<void>;
  /** A target of several processes (the server behind nginx): each measured apart too. */
  parts?: { label: string; pids(): number[] }[];
  /** Behind nginx: the server's own base URL (its /metrics). */
  upstream?: string;
}

function exitOf(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => (child.exitCode !== null || child.signalCode !== null ? resolve() : child.once("exit", () => resolve())));
}

async function waitForHttp(url: string, child: ChildProcess, output: () => string): Promise<void> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`exited with ${child.exitCode}:\n${output()}`);
    try {
      const res = await fetch(url, { method: "HEAD" });
      if (res.status === 200) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`${url} did not answer 200 within 15 s:\n${output()}`);
    await sleep(100);
  }
}

/** nginx from Debian's package, in the foreground (`daemon off`), with `http` as its http block; up once `probe` answers a HEAD with 200. */
async function launchNginx(name: string, dir: string, http: (port: number) => string, probe: string, workersAsUs = false): Promise<{ port: number; pid: number; stop(): Promise<void> }> {
  const port = await freePort();
  await mkdir(dir, { recursive: true });
  const conf = `${dir}/nginx.conf`;
  await writeFile(
    conf,
    `daemon off;
master_process on;
worker_processes auto;
${workersAsUs && process.getuid?.() === 0 ? `user ${userInfo().username};\n` : ""}pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  tcp_nopush on;
  keepalive_timeout 65;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  default_type application/octet-stream;
${http(port)}
}
`,
  );
  const child = spawn("nginx", ["-p", dir, "-e", `${dir}/error.log`, "-c", conf], { stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  child.stdout?.on("data", (d) => (output += d));
  child.stderr?.on("data", (d) => (output += d));
  try {
    await waitForHttp(`http://127.0.0.1:${port}${probe}`, child, () => output + readFileSync(`${dir}/error.log`, "utf8"));
  } catch (err) {
    child.kill("SIGKILL");
    throw new Error(`nginx (${name}) did not start: ${String(err)}`);
  }
  const pid = child.pid as number;
  return {
    port,
    pid,
    stop: async () => {
      // Stopped by the pid we started; QUIT lets the workers finish.
      process.kill(pid, "SIGQUIT");
      await Promise.race([exitOf(child), sleep(5000).then(() => child.kill("SIGKILL"))]);
    },
  };
}

/**
 * nginx serving the file in `root` itself, with sendfile (or without, as a
 * reference); config, logs and pid under `dir`.
 */
async function startNginx(name: string, dir: string, root: string, file: string, sendfile: boolean, query: (device: number) => string): Promise<Target> {
  const n = await launchNginx(
    name,
    dir,
    (port) => `  sendfile ${sendfile ? "on" : "off"};
  server {
    listen 127.0.0.1:${port};
    root ${root};
    location / { }
  }`,
    `/${file}`,
  );
  return { name, pid: n.pid, pids: () => family(n.pid), urlFor: (d) => `http://127.0.0.1:${n.port}/${file}?${query(d)}`, stop: n.stop };
}

/**
 * The server behind nginx, as README.md's "Behind nginx" has it: nginx passes
 * `/firmware/download/` to the server (an upstream with keepalive), the
 * server checks the URL and answers `X-Accel-Redirect: /_firmware/<id>`, and
 * nginx sends the file from the internal location aliased to DATA_DIR/firmware
 * with sendfile. The artifacts are 0600 of the server's user, so nginx's
 * workers run as that user (the bench's).
 */
async function startOffload(dir: string, server: BenchServer, firmwareDir: string, path: (device: number) => string): Promise<Target> {
  const serverPid = server.server.process.pid as number;
  const upstream = new URL(server.server.httpUrl).host;
  const n = await launchNginx(
    "offload",
    dir,
    (port) => `  sendfile on;
  upstream iothub_ota {
    server ${upstream};
    keepalive 64;
    keepalive_timeout 4s; # below Node's keepAliveTimeout (5 s): nginx never reuses a connection the server is closing
  }
  server {
    listen 127.0.0.1:${port};
    location /firmware/download/ {
      proxy_pass http://iothub_ota;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
    location ${ACCEL} {
      internal;
      alias ${firmwareDir}/;
    }
  }`,
    path(0),
    true,
  );
  const nginxPids = () => family(n.pid);
  return {
    name: "iothub-ota behind nginx (X-Accel-Redirect)",
    pid: n.pid,
    pids: () => [serverPid, ...nginxPids()],
    upstream: server.server.httpUrl,
    parts: [
      { label: "server", pids: () => [serverPid] },
      { label: "nginx", pids: nginxPids },
    ],
    urlFor: (d) => `http://127.0.0.1:${n.port}${path(d)}`,
    stop: async () => {
      await n.stop();
      await server.stop();
    },
  };
}

interface Answer {
  status: number;
  /** Header name (lower case) → every value it came with, in order. */
  headers: Record<string, string[]>;
  bytes: number;
  md5: string;
  /** The body's first 64 KiB. */
  head: Buffer;
}

/** One request with node:http, keeping repeated headers apart (fetch joins them). */
function ask(url: string, headers: Record<string, string> = {}, method = "GET"): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { method, headers, agent: false }, (res) => {
      const h: Record<string, string[]> = {};
      for (let i = 0; i < res.rawHeaders.length; i += 2) (h[(res.rawHeaders[i] as string).toLowerCase()] ??= []).push(res.rawHeaders[i + 1] as string);
      const hash = createHash("md5");
      const kept: Buffer[] = [];
      let bytes = 0;
      res.on("data", (c: Buffer) => {
        if (bytes < 65536) kept.push(c);
        bytes += c.length;
        hash.update(c);
      });
      res.on("end", () => resolve({ status: res.statusCode as number, headers: h, bytes, md5: hash.digest("hex"), head: Buffer.concat(kept).subarray(0, 65536) }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end();
  });
}

const one = (a: Answer, name: string) => a.headers[name]?.join(" | ");

/**
 * What the server behind nginx answers besides the measured downloads: a
 * forged URL refused, the internal location closed to clients, the headers
 * the client gets (against those of the server alone), a Range, and the
 * conditional requests that carry an ETag. Failures are problems; the
 * headers are notes.
 */
async function checkOffload(t: Target, productName: string, directUrl: string, path: string, size: number, digest: string): Promise<{ problems: string[]; notes: Record<string, unknown> }> {
  const problems: string[] = [];
  // What the server counted for one request: its started and resumed downloads before and after.
  const counted = async (a: () => Promise<Answer>): Promise<Answer & { counted: string }> => {
    const events = () => Promise.all(["started", "resumed"].map((event) => metric(t.upstream as string, "iothub_ota_firmware_downloads_total", { product: productName, event })));
    const [s0, r0] = await events();
    const answer = await a();
    const [s1, r1] = await events();
    return { ...answer, counted: `started +${(s1 as number) - (s0 as number)}, resumed +${(r1 as number) - (r0 as number)}` };
  };
  const url = t.urlFor(1);
  const firmwareId = new URL(url).pathname.split("/").at(-1) as string;
  const origin = new URL(url).origin;
  const bytesAt = async (start: number, end: number) => {
    const f = await open(path, "r");
    try {
      const b = Buffer.alloc(end - start + 1);
      await f.read(b, 0, b.length, start);
      return b;
    } finally {
      await f.close();
    }
  };

  const forged = await ask(url.replace(/sig=[^&]+/, `sig=${"A".repeat(43)}`));
  if (forged.status !== 403 || forged.bytes >= size || forged.headers["x-accel-redirect"]) problems.push(`forged URL through nginx: ${forged.status}, ${forged.bytes} bytes`);
  const internal = await ask(`${origin}${ACCEL}${firmwareId}`);
  if (internal.status !== 404) problems.push(`${ACCEL}${firmwareId} asked directly: ${internal.status}, not 404`);

  const direct = await ask(directUrl, {}, "HEAD");
  const full = await ask(url);
  if (full.status !== 200 || full.bytes !== size || full.md5 !== digest) problems.push(`full download through nginx: ${full.status}, ${full.bytes} bytes, md5 ${full.md5}`);
  if (full.headers["x-accel-redirect"]) problems.push("nginx passed X-Accel-Redirect on to the client");
  const nginxEtag = one(full, "etag") ?? "";
  const serverEtag = one(direct, "etag") ?? "";

  const range = await counted(() => ask(url, { range: "bytes=1000-4999" }));
  if (range.status !== 206 || one(range, "content-range") !== `bytes 1000-4999/${size}` || !range.head.equals(await bytesAt(1000, 4999))) {
    problems.push(`Range through nginx: ${range.status}, ${one(range, "content-range")}, ${range.bytes} bytes`);
  }
  const tail = await ask(url, { range: "bytes=-100" });
  const beyond = await ask(url, { range: `bytes=${size}-` });
  // A resume as a device would send it: If-Range with the ETag it was given (nginx's), or with the server's.
  const ifRangeNginx = await counted(() => ask(url, { range: "bytes=1000-", "if-range": nginxEtag }));
  const ifRangeServer = await counted(() => ask(url, { range: "bytes=1000-", "if-range": serverEtag }));
  const inmNginx = await counted(() => ask(url, { "if-none-match": nginxEtag }));
  const inmServer = await counted(() => ask(url, { "if-none-match": serverEtag }));
  const head = await counted(() => ask(url, {}, "HEAD"));
  const pick = (a: Answer) => Object.fromEntries(["content-type", "content-length", "etag", "last-modified", "accept-ranges", "cache-control", "content-range"].filter((h) => a.headers[h]).map((h) => [h, (a.headers[h] as string[]).length > 1 ? a.headers[h] : one(a, h)]));
  const brief = (a: Answer & { counted?: string }) => `${a.status}, ${a.bytes} bytes${a.headers["content-range"] ? `, ${one(a, "content-range")}` : ""}${a.counted ? `; server: ${a.counted}` : ""}`;
  return {
    problems,
    notes: {
      serverAlone: pick(direct),
      throughNginx: pick(full),
      forged: `${forged.status} (${forged.bytes} bytes)`,
      internalAskedDirectly: internal.status,
      range1000to4999: brief(range),
      suffix100: brief(tail),
      rangeBeyondEnd: brief(beyond),
      ifRangeWithNginxEtag: brief(ifRangeNginx),
      ifRangeWithServerEtag: brief(ifRangeServer),
      ifNoneMatchNginxEtag: brief(inmNginx),
      ifNoneMatchServerEtag: brief(inmServer),
      head: brief(head),
    },
  };
}

/** The floor of any Node server: a bare `http` server piping the same file (default stream options) into each response. */
async function startBareNode(path: string, query: (device: number) => string): Promise<Target> {
  const port = await freePort();
  const script = `
const http = require("node:http"), fs = require("node:fs");
const size = fs.statSync(${JSON.stringify(path)}).size;
http.createServer((req, res) => {
  res.writeHead(200, { "content-length": size, "content-type": "application/octet-stream" });
  if (req.method === "HEAD") return res.end();
  fs.createReadStream(${JSON.stringify(path)}, { highWaterMark: Number(process.env.HWM || 65536) }).pipe(res);
}).listen(${port}, "127.0.0.1");
`;
  const child = spawn(process.execPath, ["-e", script], { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, HWM: process.env.BENCH_BARE_HWM ?? "" } });
  let output = "";
  child.stdout?.on("data", (d) => (output += d));
  child.stderr?.on("data", (d) => (output += d));
  const base = `http://127.0.0.1:${port}/image.bin`;
  await waitForHttp(base, child, () => output);
  const pid = child.pid as number;
  return {
    name: "bare node (fs stream → res)",
    pid,
    pids: () => [pid],
    urlFor: (d) => `${base}?${query(d)}`,
    stop: async () => {
      child.kill("SIGTERM");
      await exitOf(child);
    },
  };
}

// ---- the load ------------------------------------------------------------------------------------

interface Job {
  url: string;
  /** The md5 to check, when this download is hashed. */
  md5?: string;
}

interface Done {
  ms: number;
  bytes: number;
  /** Reads the client got the body in. */
  chunks?: number;
  status: number;
  md5?: string;
  error?: string;
}

/**
 * A client thread: downloads all its jobs at once, each on a connection of
 * its own (as devices do), counting the bytes and hashing those asked for.
 * Plain JavaScript, evaluated: no loader needed in the thread.
 */
const WORKER = `
const http = require("node:http");
const { createHash } = require("node:crypto");
const { parentPort } = require("node:worker_threads");
const now = () => performance.timeOrigin + performance.now();
function one(job) {
  return new Promise((resolve) => {
    const started = now();
    const hash = job.md5 ? createHash("md5") : null;
    let bytes = 0, chunks = 0;
    const req = http.get(job.url, { agent: false }, (res) => {
      res.on("data", (c) => { bytes += c.length; chunks++; if (hash) hash.update(c); });
      res.on("end", () => resolve({ ms: now() - started, bytes, chunks, status: res.statusCode, md5: hash ? hash.digest("hex") : undefined }));
      res.on("error", (err) => resolve({ ms: now() - started, bytes, status: res.statusCode, error: String(err) }));
    });
    req.on("error", (err) => resolve({ ms: now() - started, bytes, status: 0, error: String(err) }));
  });
}
parentPort.on("message", async (jobs) => parentPort.postMessage(await Promise.all(jobs.map(one))));
`;

class Clients {
  readonly #workers: Worker[];

  constructor(n: number) {
    this.#workers = Array.from({ length: n }, () => new Worker(WORKER, { eval: true }));
  }

  /** Every job at once, spread over the threads; resolves when the last download ended. */
  async run(jobs: Job[]): Promise<{ wallMs: number; done: (Done & Job)[] }> {
    const parts = this.#workers.map((_, i) => jobs.filter((_, j) => j % this.#workers.length === i));
    const started = nowMs();
    const answers = await Promise.all(
      this.#workers.map(
        (w, i) =>
          new Promise<Done[]>((resolve, reject) => {
            w.once("error", reject);
            w.once("message", (m: Done[]) => {
              w.off("error", reject);
              resolve(m);
            });
            w.postMessage(parts[i]);
          }),
      ),
    );
    const wallMs = nowMs() - started;
    return { wallMs, done: answers.flatMap((a, i) => a.map((d, j) => ({ ...(parts[i]![j] as Job), ...d }))) };
  }

  async stop(): Promise<void> {
    await Promise.all(this.#workers.map((w) => w.terminate()));
  }
}

// ---- the benchmark -------------------------------------------------------------------------------

interface Tally {
  target: Target;
  idleKb: number;
  peakKb: number;
  afterKb: number;
  cpu: number;
  /** CPU of the load (this process, or wrk). */
  clientCpu: number;
  wallMs: number;
  wrkP50: number[];
  wrkP99: number[];
  /** Of `cpu`, in the kernel (copies, TCP) rather than in user space (JavaScript, V8). */
  sys: number;
  /** Body bytes moved in the measured rounds. */
  bytes: number;
  chunks: number;
  reads: number;
  rates: number[];
  times: number[];
  hashed: number;
  problems: string[];
  /** Downloads wrk completed. */
  requests: number;
  /** Per part (Target.parts), as `cpu`, `sys`, `idleKb`, `peakKb`. */
  partCpu: number[];
  partSys: number[];
  partIdleKb: number[];
  partPeakKb: number[];
}

/** Samples the RSS of every target every 50 ms; `peak` is the highest sum of each target's processes, `partPeak` of each part's. */
class RssSampler {
  readonly peak = new Map<Target, number>();
  readonly partPeak = new Map<Target, number[]>();
  #timer: NodeJS.Timeout | undefined;

  start(targets: Target[]): void {
    for (const t of targets) {
      this.peak.set(t, 0);
      this.partPeak.set(t, (t.parts ?? []).map(() => 0));
    }
    this.#timer = setInterval(() => {
      for (const t of targets) {
        this.peak.set(t, Math.max(this.peak.get(t) ?? 0, rssOf(t.pids())));
        const parts = this.partPeak.get(t) as number[];
        for (const [i, p] of (t.parts ?? []).entries()) parts[i] = Math.max(parts[i] ?? 0, rssOf(p.pids()));
      }
    }, 50);
  }

  stop(): void {
    clearInterval(this.#timer);
  }
}

/**
 * N simulated devices download one artifact at once, from the server (signed
 * URLs, its own process, database, Redis prefix and DATA_DIR), and the same
 * file from nginx in the same run, rounds interleaved: throughput, per-download
 * time, CPU and RSS of each.
 */
export async function downloadsBench(o: DownloadsOptions): Promise<{ rows: Record<string, unknown>[]; summary: Record<string, unknown> }> {
  const work = `/tmp/iothub-ota-downloads-bench-${randomBytes(4).toString("hex")}`;
  const redisPrefix = `${uniq("bench-downloads")}:`;
  const key = randomBytes(32).toString("base64url");
  const database = await benchDatabase();
  const targets: Target[] = [];
  let b: BenchServer | undefined;
  let offload: Target | undefined;
  let offloadChecks: { problems: string[]; notes: Record<string, unknown> } | undefined;
  let offloadStarted0 = 0;
  const clients = new Clients(o.clients);
  try {
    // The file, world-readable: nginx's workers run as nobody.
    await mkdir(`${work}/www`, { recursive: true });
    await chmod(work, 0o755);
    await chmod(`${work}/www`, 0o755);
    const path = `${work}/www/image.bin`;
    const md5 = createHash("md5");
    const file = await open(path, "w", 0o644);
    for (let written = 0; written < o.size; ) {
      const chunk = randomBytes(Math.min(1 << 20, o.size - written));
      md5.update(chunk);
      await file.write(chunk);
      written += chunk.length;
    }
    await file.close();
    const digest = md5.digest("hex");

    // DATA_DIR named here: the server behind nginx shares it (as instances on a shared volume do), and nginx's internal location is its firmware/.
    const dataDir = `${work}/data`;
    const serverEnv = { DATABASE_URL: database.url, REDIS_PREFIX: redisPrefix, FIRMWARE_URL_KEY: key, FIRMWARE_MAX_BYTES: String(Math.max(o.size, 1 << 20)), DATA_DIR: dataDir };
    b = await startServer(undefined, serverEnv);
    const httpUrl = b.server.httpUrl;
    const productName = uniq("dl");
    const res = await fetch(`${httpUrl}/firmware/${productName}/1.0?type=firmware`, {
      method: "PUT",
      headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/octet-stream", "content-length": String(o.size) },
      body: Readable.toWeb(createReadStream(path)) as ReadableStream,
      duplex: "half",
    } as RequestInit);
    const artifact = (await res.json()) as { id: string; size: number; md5: string };
    if (res.status !== 201 || artifact.md5 !== digest) throw new Error(`upload: ${res.status} ${JSON.stringify(artifact)}`);
    log(`uploaded ${artifact.id} (${o.size} bytes, md5 ${digest}) to ${httpUrl} (server pid ${b.server.process.pid})`);

    // The server's own signing code with the server's key: the URLs its commands would carry.
    const signer = new UrlSigner(() => Buffer.from(key, "utf8"), () => httpUrl);
    const expiresAt = Math.floor(Date.now() / 1000) + 3600;
    // Registered through the API: a download is refused unless its device is registered and active.
    const devices = await registerDevices(b.graphqlUrl, TOKEN, productName, o.devices, []);
    const signed = devices.map((d) => signer.url(artifact.id, { kind: "device", name: d.deviceName }, expiresAt));
    const query = (d: number) => (signed[d] as string).split("?")[1] as string;
    const serverPid = b.server.process.pid as number;
    targets.push({ name: "iothub-ota", pid: serverPid, pids: () => [serverPid], urlFor: (d) => signed[d] as string, stop: async () => undefined });
    targets.push(await startNginx("nginx (sendfile on)", `${work}/nginx`, `${work}/www`, "image.bin", true, query));
    if (o.offload !== false) {
      // A second server process, the same database, Redis prefix, key and DATA_DIR, with FIRMWARE_ACCEL_REDIRECT: nginx in front of it.
      const accelServer = await startServer(undefined, { ...serverEnv, FIRMWARE_ACCEL_REDIRECT: ACCEL });
      try {
        offload = await startOffload(`${work}/nginx-offload`, accelServer, `${dataDir}/firmware`, (d) => `${UrlSigner.pathOf(artifact.id)}?${query(d)}`);
      } catch (err) {
        await accelServer.stop();
        throw err;
      }
      targets.push(offload);
      log(`offload: server pid ${accelServer.server.process.pid} (${accelServer.server.httpUrl}) behind nginx pid ${offload.pid} (${new URL(offload.urlFor(0)).origin})`);
    }
    if (o.references) {
      targets.push(await startBareNode(path, query));
      targets.push(await startNginx("nginx (sendfile off)", `${work}/nginx-nosendfile`, `${work}/www`, "image.bin", false, query));
    }

    const jobs = (t: Target, round: number): Job[] =>
      Array.from({ length: o.devices }, (_, d) => ({ url: t.urlFor(d), ...((d + round) % o.hashEvery === 0 ? { md5: digest } : {}) }));

    await sleep(1000);
    const tallies = new Map<Target, Tally>();
    for (const t of targets) {
      const parts = t.parts ?? [];
      tallies.set(t, {
        target: t,
        idleKb: rssOf(t.pids()),
        peakKb: 0,
        afterKb: 0,
        cpu: 0,
        clientCpu: 0,
        wallMs: 0,
        bytes: 0,
        wrkP50: [],
        wrkP99: [],
        sys: 0,
        rates: [],
        times: [],
        chunks: 0,
        reads: 0,
        hashed: 0,
        problems: [],
        requests: 0,
        partCpu: parts.map(() => 0),
        partSys: parts.map(() => 0),
        partIdleKb: parts.map((p) => rssOf(p.pids())),
        partPeakKb: parts.map(() => 0),
      });
    }
    // Warm-up: one download each (page cache, JIT), not counted; idle RSS is read before it.
    for (const t of targets) {
      const { done } = await clients.run([{ url: t.urlFor(0), md5: digest }]);
      if (done[0]?.md5 !== digest) throw new Error(`${t.name}: warm-up download ${JSON.stringify(done[0])}`);
    }
    const wrk = o.client === "wrk" ? await wrkScript(work, targets, o.devices) : undefined;
    if (offload) {
      offloadChecks = await checkOffload(offload, productName, signed[1] as string, path, o.size, digest);
      (tallies.get(offload) as Tally).problems.push(...offloadChecks.problems);
      offloadStarted0 = await startedCount(offload, productName);
    }

    const sampler = new RssSampler();
    sampler.start(targets);
    const machine0 = machineJiffies();
    for (let r = 0; r < o.rounds; r++) {
      for (const t of targets) {
        const tally = tallies.get(t) as Tally;
        const cpu0 = cpuOf(t.pids());
        const sys0 = sysOf(t.pids());
        const partCpu0 = (t.parts ?? []).map((p) => cpuOf(p.pids()));
        const partSys0 = (t.parts ?? []).map((p) => sysOf(p.pids()));
        const client0 = cpuSeconds(process.pid);
        let rate: number;
        let wallMs: number;
        if (wrk) {
          const w = await wrk(t, o.clients, o.seconds);
          wallMs = w.durationUs / 1000;
          rate = w.bytes / MB / (wallMs / 1000);
          tally.bytes += w.bytes;
          tally.clientCpu += w.cpu;
          tally.requests += w.requests;
          tally.wrkP50.push(w.p50Us / 1000); // wrk reports percentiles per round, not each download
          tally.wrkP99.push(w.p99Us / 1000);
          if (w.errors > 0) tally.problems.push(`wrk: ${w.errors} errors in ${w.requests} requests`);
          if (w.requests === 0) tally.problems.push("wrk: no download completed; raise --seconds");
        } else {
          const run = await clients.run(jobs(t, r));
          wallMs = run.wallMs;
          rate = (o.devices * o.size) / MB / (wallMs / 1000);
          tally.bytes += o.devices * o.size;
          tally.clientCpu += cpuSeconds(process.pid) - client0;
          for (const d of run.done) {
            tally.times.push(d.ms);
            tally.chunks += d.chunks ?? 0;
            tally.reads++;
            if (d.error || d.status !== 200 || d.bytes !== o.size) tally.problems.push(`status ${d.status}, ${d.bytes} bytes${d.error ? `, ${d.error}` : ""}`);
            if (d.md5 !== undefined) {
              tally.hashed++;
              if (d.md5 !== digest) tally.problems.push(`md5 ${d.md5}, not ${digest}`);
            }
          }
        }
        tally.cpu += cpuOf(t.pids()) - cpu0;
        tally.sys += sysOf(t.pids()) - sys0;
        for (const [i, p] of (t.parts ?? []).entries()) {
          tally.partCpu[i] = (tally.partCpu[i] as number) + cpuOf(p.pids()) - (partCpu0[i] as number);
          tally.partSys[i] = (tally.partSys[i] as number) + sysOf(p.pids()) - (partSys0[i] as number);
        }
        tally.wallMs += wallMs;
        tally.rates.push(rate);
        log(`round ${r + 1}/${o.rounds} ${t.name}: ${round(rate)} MB/s over ${round(wallMs / 1000, 2)} s`);
        await sleep(300);
      }
    }
    sampler.stop();
    const machine1 = machineJiffies();
    for (const t of targets) {
      const tally = tallies.get(t) as Tally;
      tally.peakKb = sampler.peak.get(t) ?? 0;
      tally.afterKb = rssOf(t.pids());
      tally.partPeakKb = sampler.partPeak.get(t) ?? [];
    }
    // Every measured download through nginx was checked by the server first: its count of started downloads moved by as many.
    let offloadAccounting: Record<string, unknown> | undefined;
    if (offload) {
      const tally = tallies.get(offload) as Tally;
      const counted = (await startedCount(offload, productName)) - offloadStarted0;
      if (wrk) {
        // wrk counts the downloads it completed; those cut at the end of a round were checked (and counted) too.
        offloadAccounting = { serverCountedStarted: counted, wrkCompleted: tally.requests, cutAtRoundEnds: counted - tally.requests };
        if (counted < tally.requests || counted > tally.requests + o.devices * o.rounds) tally.problems.push(`the server counted ${counted} started downloads, wrk completed ${tally.requests}`);
      } else {
        offloadAccounting = { serverCountedStarted: counted, downloadsMade: o.devices * o.rounds };
        if (counted !== o.devices * o.rounds) tally.problems.push(`the server counted ${counted} started downloads, ${o.devices * o.rounds} were made`);
      }
    }

    const median = (xs: number[]) => percentile([...xs].sort((a, b) => a - b), 50);
    const reference = tallies.get(targets[1] as Target) as Tally;
    const rows = [...tallies.values()].map((t) => {
      const times = [...t.times].sort((a, b) => a - b);
      const moved = t.bytes / 1e9;
      return {
        target: t.target.name,
        "MB/s (median)": round(median(t.rates), 0),
        "MB/s (min–max)": `${round(Math.min(...t.rates), 0)}–${round(Math.max(...t.rates), 0)}`,
        "vs nginx": round(median(t.rates) / median(reference.rates), 2),
        ...(o.client === "wrk"
          ? { "p50 s": round(median(t.wrkP50) / 1000, 2), "p99 s": round(median(t.wrkP99) / 1000, 2) }
          : { "p50 s": round(percentile(times, 50) / 1000, 2), "p99 s": round(percentile(times, 99) / 1000, 2) }),
        "server CPU cores": round(t.cpu / (t.wallMs / 1000), 2),
        "server CPU s/GB": round(t.cpu / moved, 2),
        "of it kernel": `${round((100 * t.sys) / t.cpu, 0)} %`,
        "CPU s/GB by part (kernel)": t.target.parts ? t.target.parts.map((p, i) => `${p.label} ${round((t.partCpu[i] as number) / moved, 2)} (${round((100 * (t.partSys[i] as number)) / (t.partCpu[i] as number), 0)} %)`).join(" + ") : "–",
        "client CPU s/GB": round(t.clientCpu / moved, 2),
        ...(t.reads > 0 ? { "client KB/read": round((o.size * t.reads) / t.chunks / 1024, 0) } : {}),
        "RSS idle MB": round(t.idleKb / 1024, 0),
        "RSS peak−idle MB": round((t.peakKb - t.idleKb) / 1024, 0),
        "RSS after MB": round(t.afterKb / 1024, 0),
        "RSS idle / peak−idle MB by part": t.target.parts
          ? t.target.parts.map((p, i) => `${p.label} ${round((t.partIdleKb[i] as number) / 1024, 0)} / ${round(((t.partPeakKb[i] as number) - (t.partIdleKb[i] as number)) / 1024, 0)}`).join(" + ")
          : "–",
        hashed: t.hashed,
        failed: t.problems.length,
      };
    });
    const problems = [...tallies.values()].flatMap((t) => t.problems.slice(0, 3).map((p) => `${t.target.name}: ${p}`));
    const machineCores = ((machine1.busy - machine0.busy) / (machine1.total - machine0.total)) * availableParallelism();
    const summary = {
      bench: "downloads-summary",
      client: o.client,
      ratio: round(median(tallies.get(targets[0] as Target)!.rates) / median(reference.rates), 3),
      ...(offload
        ? {
            offloadRatio: round(median(tallies.get(offload)!.rates) / median(reference.rates), 3),
            offloadRatioPerRound: tallies.get(offload)!.rates.map((r, i) => round(r / (reference.rates[i] as number), 2)),
            offloadAccounting,
            offloadChecks: offloadChecks?.notes,
          }
        : {}),
      machineBusyCores: round(machineCores, 2),
      loadavg: readFileSync("/proc/loadavg", "utf8").trim(),
      problems,
    };
    return { rows, summary };
  } finally {
    await clients.stop();
    for (const t of targets.slice(1)) await t.stop().catch((err: unknown) => log(`could not stop ${t.name}: ${String(err)}`));
    await b?.stop();
    await database.drop();
    await dropRedisPrefix(redisPrefix).catch((err: unknown) => log(`could not remove the Redis keys ${redisPrefix}*: ${String(err)}`));
    await rm(work, { recursive: true, force: true });
  }
}

interface WrkResult {
  requests: number;
  bytes: number;
  errors: number;
  durationUs: number;
  p50Us: number;
  p99Us: number;
  /** wrk's own CPU seconds. */
  cpu: number;
}

/**
 * wrk (Debian's package) as the load instead: `devices` keep-alive
 * connections downloading again and again for `seconds`, each request for the
 * next device's URL. It cannot hash, so the Node client's checks stand for
 * it; its latency percentiles are per download.
 */
async function wrkScript(work: string, targets: Target[], devices: number): Promise<(t: Target, threads: number, seconds: number) => Promise<WrkResult>> {
  const scripts = new Map<Target, string>();
  for (const [i, t] of targets.entries()) {
    const paths = Array.from({ length: devices }, (_, d) => {
      const u = new URL(t.urlFor(d));
      return JSON.stringify(u.pathname + u.search); // a JSON string of URL characters is a Lua string too
    });
    const file = `${work}/wrk-${i}.lua`;
    await writeFile(
      file,
      `local paths = {${paths.join(",")}}
local i = 0
init = function(args) i = math.random(#paths) end
request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
done = function(s, latency, requests)
  local e = s.errors
  io.write(string.format('WRKJSON {"requests":%d,"bytes":%d,"errors":%d,"durationUs":%d,"p50Us":%d,"p99Us":%d}\\n',
    s.requests, s.bytes, e.connect + e.read + e.write + e.status + e.timeout, s.duration, latency:percentile(50), latency:percentile(99)))
end
`,
    );
    scripts.set(t, file);
  }
  return async (t, threads, seconds) => {
    const base = new URL(t.urlFor(0)).origin;
    const child = spawn("wrk", [`-t${threads}`, `-c${devices}`, `-d${seconds}s`, "--timeout", "120s", "-s", scripts.get(t) as string, base], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout?.on("data", (d) => (out += d));
    child.stderr?.on("data", (d) => (out += d));
    const pid = child.pid as number;
    let cpu = 0;
    // Its CPU is read while it runs (it is gone once it exited): the last reading stands.
    const timer = setInterval(() => (cpu = safeCpu(pid) ?? cpu), 100);
    await exitOf(child);
    clearInterval(timer);
    const line = out.split("\n").find((l) => l.startsWith("WRKJSON "));
    if (!line) throw new Error(`wrk printed no result:\n${out}`);
    return { ...(JSON.parse(line.slice(8)) as Omit<WrkResult, "cpu">), cpu };
  };
}

/** The offloading server's count of started downloads of the bench's product, from its /metrics. */
async function startedCount(t: Target, productName: string): Promise<number> {
  return metric(t.upstream as string, "iothub_ota_firmware_downloads_total", { product: productName, event: "started" });
}

async function dropRedisPrefix(prefix: string): Promise<void> {
  const redis = new Redis(REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 1 });
  await redis.connect();
  try {
    let cursor = "0";
    do {
      const [next, keys] = await redis.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 2000);
      cursor = next;
      if (keys.length > 0) await redis.unlink(...keys);
    } while (cursor !== "0");
  } finally {
    redis.disconnect();
  }
}

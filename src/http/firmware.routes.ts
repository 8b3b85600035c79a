import express, { type Request, type RequestHandler, type Response, type Router } from "express";
import type { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { requireAccess, type Principal } from "../auth/principal.js";
import { AppError, ErrorCode, InputProblems } from "../errors.js";
import { etagOf, type Artifact } from "../firmware/artifact.model.js";
import type { ArtifactService } from "../firmware/artifact.service.js";
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";
import { sendError } from "./errors.js";
import type { Refuse } from "./refusals.js";

/** The API's view of an artifact (GraphQL's Firmware fields). */
export function artifactView(a: Artifact) {
  return { id: a.id, productName: a.productName, version: a.version, type: a.type, size: a.size, md5: a.md5, sha256: a.sha256, createdAt: new Date(a.createdAt).toISOString() };
}

/** Reads and drops a request body of at most `maxBytes`; false (the connection destroyed) when it is larger or cut. */
async function drained(req: Request, maxBytes: number): Promise<boolean> {
  let bytes = 0;
  try {
    for await (const chunk of req) {
      bytes += (chunk as Buffer).length;
      if (bytes > maxBytes) {
        req.destroy();
        return false;
      }
    }
    return true;
  } catch {
    return false;
  }
}

/** Whether an upload failed because its client closed the connection before sending everything. */
function clientWentAway(req: Request, err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return !req.complete && !(err instanceof AppError) && (code === "ERR_STREAM_PREMATURE_CLOSE" || code === "ECONNRESET" || req.socket.destroyed);
}

/** Uploads wait for the route's `100 Continue` (sent once the token and the path are checked); every other request gets it at once. */
export function continuesItself(req: { method?: string; url?: string }): boolean {
  return req.method === "PUT" && (req.url ?? "").startsWith("/firmware/");
}

const REFUSED: Record<"malformed" | "forged" | "expired" | "device_inactive", string> = {
  malformed: "this download URL is not signed (device or tag, expires and sig are required): use the URL of an $ota_upgrade command",
  forged: "this download URL's signature is not valid",
  expired: "this download URL has expired, with its command: send the upgrade again",
  device_inactive: "this download URL's device is suspended or no longer registered",
};

/**
 * Firmware artifacts over HTTP: streaming uploads under the API's bearer
 * tokens (`PUT /firmware/<product>/<version>?type=`), and downloads for
 * devices by signed URL (`GET /firmware/download/<id>?...`), with `Range`,
 * `ETag` and `If-None-Match`. Neither is ever held whole in memory.
 */
export function firmwareRoutes(
  artifacts: ArtifactService,
  authenticate: RequestHandler,
  deps: {
    metrics: Metrics;
    log: Logger;
    refuse: Refuse;
    maxBytes: number;
    /** FIRMWARE_ACCEL_REDIRECT: downloads are checked here and sent by the proxy in front, from this internal location. */
    accelRedirect: string | undefined;
  },
): Router {
  const { metrics, log, refuse, maxBytes, accelRedirect } = deps;
  const router = express.Router();

  router.put(
    "/firmware/:productName/:version",
    (_req, res, next) => {
      // One upload per connection: a refusal closes it instead of reading (and discarding) a body of up to a gigabyte.
      res.set("Connection", "close");
      next();
    },
    authenticate,
    async (req: Request, res: Response) => {
      const { productName, version } = req.params as { productName: string; version: string };
      requireAccess(res.locals.principal as Principal, "write", productName);
      const query = req.query as Record<string, unknown>;
      const type = query.type ?? "firmware";
      const claims = { md5: query.md5, sha256: query.sha256 };
      // Everything that can be refused is refused before the first byte is read.
      const problems = artifacts.uploadProblems(productName, version, type, claims);
      if (problems.length > 0) throw new InputProblems(problems);
      const length = req.get("content-length");
      const declared = length !== undefined && /^\d+$/.test(length) ? Number(length) : undefined;
      if (declared !== undefined && declared > maxBytes) throw new AppError(ErrorCode.PAYLOAD_TOO_LARGE, `the artifact is larger than FIRMWARE_MAX_BYTES (${maxBytes} bytes)`);
      const expectsContinue = /100-continue/i.test(req.get("expect") ?? "");
      // A claimed sha256 of a stored version is answered before the body: never sent, if the client waits for 100 Continue;
      // otherwise read and dropped (not stored, not hashed), so that a client that streams it gets the answer, not a reset.
      const stored = await artifacts.storedAlready(productName, version, type as string, claims as { sha256?: string });
      if (stored) {
        if (!expectsContinue && !(await drained(req, maxBytes))) return;
        return void res.status(200).json(artifactView(stored));
      }
      // The client waits for this before sending the body (the server answers `Expect: 100-continue` here, not on arrival).
      if (expectsContinue) res.writeContinue();
      let result;
      try {
        result = await artifacts.upload(productName, version, type as string, req, claims as { md5?: string; sha256?: string }, declared);
      } catch (err) {
        if (clientWentAway(req, err)) {
          // Nothing was stored, and there is nobody to answer.
          log.info({ productName, version }, "firmware upload aborted by the client; nothing stored");
          return;
        }
        throw err;
      }
      res.status(result.created ? 201 : 200).json(artifactView(result.artifact));
    },
  );

  const download: RequestHandler = async (req, res) => {
    const id = req.params.id as string;
    const found = await artifacts.downloadable(id, req.query as Record<string, unknown>);
    if ("refused" in found) {
      refuse("download", found.refused);
      if (found.refused === "not_found") return sendError(res, ErrorCode.NOT_FOUND, `firmware ${id} not found`);
      return sendError(res, ErrorCode.FORBIDDEN, REFUSED[found.refused]);
    }
    const { artifact } = found;
    if (accelRedirect !== undefined) {
      // Checked here, sent by the proxy in front (nginx's sendfile): its ETag, Range, If-Range, If-None-Match and length.
      // Counted here by the Range asked for; bytes and completions are the proxy's to count.
      const from = /^bytes=(\d+)-/.exec(req.headers.range ?? "");
      const labels = { product: artifact.productName, version: artifact.version, type: artifact.type };
      if (req.method === "GET") metrics.firmwareDownloads.inc({ ...labels, event: from && Number(from[1]) > 0 ? "resumed" : "started" });
      return void res.set({ "X-Accel-Redirect": `${accelRedirect}${artifact.id}`, "Content-Type": "application/octet-stream", "Cache-Control": "private, no-transform" }).end();
    }
    const etag = etagOf(artifact);
    res.set({ ETag: etag, "Accept-Ranges": "bytes", "Cache-Control": "private, no-transform", "Content-Type": "application/octet-stream" });
    if (noneMatch(req.get("if-none-match"), etag)) return void res.status(304).end();
    const range = rangeOf(req, artifact.size, etag);
    if (range === "unsatisfiable") {
      res.set("Content-Range", `bytes */${artifact.size}`);
      return sendError(res, ErrorCode.BAD_REQUEST, `the range asked for is outside the artifact's ${artifact.size} bytes`, 416);
    }
    const { start, end } = range ?? { start: 0, end: artifact.size - 1 };
    const body = req.method === "HEAD" ? null : await artifacts.open(artifact, { start, end });
    if (req.method !== "HEAD" && !body) {
      // A row without its bytes: deleted just now, or DATA_DIR/firmware is not shared by the instances (logged, throttled).
      refuse("download", "file_missing_on_this_instance");
      return sendError(res, ErrorCode.NOT_FOUND, `firmware ${id} not found`);
    }
    res.status(range ? 206 : 200).set("Content-Length", String(end - start + 1));
    if (range) res.set("Content-Range", `bytes ${start}-${end}/${artifact.size}`);
    if (!body) return void res.end();
    await serve(body, res, artifact, start, end);
  };
  router.get("/firmware/download/:id", download);
  router.head("/firmware/download/:id", download);

  /** Streams the bytes and counts them: started or resumed, bytes sent, completed when the last byte went out. */
  async function serve(body: Readable, res: Response, a: Artifact, start: number, end: number) {
    const labels = { product: a.productName, version: a.version, type: a.type };
    metrics.firmwareDownloads.inc({ ...labels, event: start === 0 ? "started" : "resumed" });
    let sent = 0;
    body.on("data", (chunk: Buffer) => (sent += chunk.length));
    try {
      await pipeline(body, res);
      if (end === a.size - 1) metrics.firmwareDownloads.inc({ ...labels, event: "completed" });
    } catch (err) {
      // The device went away mid-download (it resumes with a Range): nothing to answer. Anything else (a disk error) is logged.
      if ((err as NodeJS.ErrnoException).code !== "ERR_STREAM_PREMATURE_CLOSE") log.warn({ err, firmwareId: a.id }, "a firmware download failed");
    } finally {
      metrics.firmwareBytes.inc(labels, sent);
    }
  }

  return router;
}

/**
 * Whether `If-None-Match` names these bytes (RFC 9110 §13.1.2, weak
 * comparison). Evaluated here rather than by Express's `req.fresh`, which
 * answers for caches and ignores the header beside `Cache-Control: no-cache`
 * (sent by every fetch() that asks conditionally).
 */
function noneMatch(header: string | undefined, etag: string): boolean {
  if (header === undefined) return false;
  if (header.trim() === "*") return true;
  return header.split(",").some((tag) => tag.trim().replace(/^W\//, "") === etag);
}

/**
 * The one byte range asked for (RFC 9110 §14.1.2), if any. A suffix longer
 * than the artifact is all of it; several ranges, an invalid header, or an
 * If-Range for other bytes get the whole artifact (§14.2 lets a server ignore them).
 */
function rangeOf(req: Request, size: number, etag: string): { start: number; end: number } | "unsatisfiable" | null {
  const header = req.headers.range;
  if (header === undefined) return null;
  const ifRange = req.get("if-range");
  if (ifRange !== undefined && ifRange !== etag) return null;
  const m = /^bytes=(\d{0,15})-(\d{0,15})$/.exec(header.trim());
  if (!m || (m[1] === "" && m[2] === "")) return null;
  const [first, last] = [m[1] as string, m[2] as string];
  if (first === "") {
    const suffix = Number(last);
    return suffix === 0 ? "unsatisfiable" : { start: Math.max(0, size - suffix), end: size - 1 };
  }
  const start = Number(first);
  const end = last === "" ? size - 1 : Math.min(Number(last), size - 1);
  if (last !== "" && Number(last) < start) return null;
  return start >= size ? "unsatisfiable" : { start, end };
}

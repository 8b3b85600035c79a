import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import { Transform, Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { z } from "zod";
import type { FirmwareFieldsFragment } from "../client/generated/graphql.js";
import type { ApiClient } from "./api.client.js";
import { UsageError } from "./cli.errors.js";

/** Where an upload is: reading the file for its digests, then sending it. */
export interface Transfer {
  phase: "hashing" | "uploading";
  done: number;
  total: number;
}

export interface UploadTarget {
  productName: string;
  version: string;
  type: string;
}

/** What `PUT /firmware/...` answers: the artifact as GraphQL's Firmware has it. */
const artifactAnswer = z.object({
  id: z.string(),
  productName: z.string(),
  version: z.string(),
  type: z.string(),
  size: z.number(),
  md5: z.string(),
  sha256: z.string(),
  createdAt: z.string(),
}) satisfies z.ZodType<FirmwareFieldsFragment>;

/** The file's size, refused before anything is read when it is no file or an empty one (the server stores no empty artifact). */
async function sizeOf(path: string): Promise<number> {
  let s;
  try {
    s = await stat(path);
  } catch (err) {
    throw new UsageError(`cannot read ${path}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
  if (!s.isFile()) throw new UsageError(`${path} is not a file`);
  if (s.size === 0) throw new UsageError(`${path} is empty`);
  return s.size;
}

/**
 * The file's bytes, exactly `total` of them, counted as they pass: each whole
 * percent is reported (at most 101 reports a pass, however large the file).
 * A file that shrank while read fails the stream, so the server never waits
 * for bytes that will not come; one that grew is read up to its size then.
 */
function readCounted(path: string, phase: Transfer["phase"], total: number, report: (t: Transfer) => void): Transform {
  let done = 0;
  let shown = -1;
  const file = createReadStream(path, { end: total - 1, highWaterMark: 256 * 1024 });
  const counted = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      done += chunk.length;
      const percent = Math.floor((done * 100) / total);
      if (percent !== shown) {
        shown = percent;
        report({ phase, done, total });
      }
      callback(null, chunk);
    },
    flush(callback) {
      callback(done === total ? null : new Error(`${path} changed while it was read: ${done} bytes, not ${total}`));
    },
  });
  report({ phase, done: 0, total });
  file.on("error", (err) => counted.destroy(err));
  counted.on("close", () => file.destroy());
  return file.pipe(counted);
}

/**
 * Uploads a file as an artifact, never holding it whole: a first pass
 * computes its md5 and sha256, a second streams it with its size as
 * Content-Length and the digests as the `md5`/`sha256` claims, so the server
 * refuses bytes altered or cut on the way (or a file changed in between) and
 * stores nothing. `created` is false when the same bytes were stored already.
 */
export async function uploadFile(api: ApiClient, path: string, to: UploadTarget, report: (t: Transfer) => void): Promise<{ artifact: FirmwareFieldsFragment; created: boolean }> {
  const size = await sizeOf(path);
  const md5 = createHash("md5");
  const sha256 = createHash("sha256");
  await pipeline(
    readCounted(path, "hashing", size, report),
    new Writable({
      write(chunk: Buffer, _encoding, callback) {
        md5.update(chunk);
        sha256.update(chunk);
        callback();
      },
    }),
  );
  const claims = { type: to.type, md5: md5.digest("hex"), sha256: sha256.digest("hex") };
  const { status, body } = await api.put(`firmware/${encodeURIComponent(to.productName)}/${encodeURIComponent(to.version)}`, claims, readCounted(path, "uploading", size, report), size);
  return { artifact: artifactAnswer.parse(body), created: status === 201 };
}

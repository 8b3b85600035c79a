import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdir, open } from "node:fs/promises";
import { Readable } from "node:stream";
import { promisify } from "node:util";
import type { FirmwareFieldsFragment } from "../../src/client/generated/graphql.js";
import type { TestApp } from "./app.js";
import { tempDir } from "./teardown.js";

const run = promisify(execFile);

export interface Upload {
  status: number;
  body: FirmwareFieldsFragment & { errors?: { message: string; extensions: { code: string; field?: string } }[] };
}

/** `PUT /firmware/<product>/<version>?type=`, streaming `body` (bytes, or a file by path). */
export async function upload(
  t: Pick<TestApp, "httpUrl" | "token">,
  productName: string,
  version: string,
  body: Buffer | { path: string },
  o: { type?: string; md5?: string; sha256?: string; token?: string } = {},
): Promise<Upload> {
  const query = new URLSearchParams({ type: o.type ?? "firmware", ...(o.md5 ? { md5: o.md5 } : {}), ...(o.sha256 ? { sha256: o.sha256 } : {}) });
  const stream = Buffer.isBuffer(body) ? body : (Readable.toWeb(createReadStream(body.path)) as ReadableStream);
  const res = await fetch(`${t.httpUrl}/firmware/${encodeURIComponent(productName)}/${encodeURIComponent(version)}?${query}`, {
    method: "PUT",
    headers: { authorization: `Bearer ${o.token ?? t.token}`, "content-type": "application/octet-stream" },
    body: stream,
    duplex: "half",
  } as RequestInit);
  return { status: res.status, body: (await res.json()) as Upload["body"] };
}

/** A file of random bytes written a MiB at a time (never whole in memory), with its digests as md5sum and sha256sum print them. */
export async function randomFile(bytes: number): Promise<{ path: string; size: number; md5: string; sha256: string }> {
  const dir = tempDir("fw");
  await mkdir(dir, { recursive: true });
  const path = `${dir}/image.bin`;
  const file = await open(path, "w");
  try {
    for (let written = 0; written < bytes; ) {
      const n = Math.min(1 << 20, bytes - written);
      await file.write(randomBytes(n));
      written += n;
    }
  } finally {
    await file.close();
  }
  const digest = async (tool: string) => (await run(tool, [path])).stdout.split(" ")[0] as string;
  return { path, size: bytes, md5: await digest("md5sum"), sha256: await digest("sha256sum") };
}

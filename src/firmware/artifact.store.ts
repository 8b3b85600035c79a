import { createHash, randomUUID } from "node:crypto";
import { constants, createWriteStream } from "node:fs";
import { mkdir, open, readdir, rename, rm, stat, statfs } from "node:fs/promises";
import { join } from "node:path";
import { Transform, type Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { AppError, ErrorCode } from "../errors.js";

/** What was received: the bytes' size and digests, and where they wait until kept or discarded. */
export interface Received {
  readonly size: number;
  readonly md5: string;
  readonly sha256: string;
  readonly handle: string;
}

/** An inclusive byte range, as HTTP's `Range` names it. */
export interface ByteRange {
  start: number;
  end: number;
}

/**
 * Where artifacts' bytes live. The database row is the artifact: bytes are
 * received out of sight, kept under the row's id before the row is written,
 * and removed after it is deleted, so a crash never shows a half artifact.
 */
export interface ArtifactStore {
  /** Readies the store, and removes what a crash left half received (older than an hour, at `now`). */
  start(now?: number): Promise<{ removed: number }>;
  /** Streams the bytes out of sight, hashing them as they come; refused past `maxBytes`. */
  receive(source: Readable, maxBytes: number): Promise<Received>;
  /** Makes received bytes the artifact `id`'s (atomically, and durably once it resolves). */
  keep(received: Received, id: string): Promise<void>;
  discard(received: Received): Promise<void>;
  /** The artifact's bytes (a range of them); null when they are gone. */
  open(id: string, range?: ByteRange): Promise<Readable | null>;
  remove(id: string): Promise<void>;
  /** Every kept artifact's id, and when its bytes were written (Unix ms). */
  kept(): Promise<{ id: string; modifiedAt: number }[]>;
  /** Bytes free for new artifacts. */
  freeBytes(): Promise<number>;
}

/** An artifact's file name: its id, a UUID as PostgreSQL writes it. */
const ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** Received files left by a crash are removed when this much older than now (another instance may be receiving). */
const STALE_INCOMING_MS = 60 * 60 * 1000;
/**
 * fs' own 64 KiB. Larger reads (256 KiB) made fewer system calls but held 2.5 times the memory per download and gained
 * no CPU per GB: every chunk is a new buffer, and more bytes in flight mean more of V8's full collections ("Firmware
 * downloads" in BENCHMARKS.md).
 */
const READ_CHUNK_BYTES = 64 * 1024;

/**
 * Artifacts as files in a directory (DATA_DIR/firmware by default), named by
 * id. Uploads are written under `.incoming/`, synced, then renamed into place:
 * a rename within one file system is atomic. Several instances need the
 * directory on a shared volume.
 */
export class DirectoryArtifactStore implements ArtifactStore {
  readonly #incoming: string;

  constructor(readonly dir: string) {
    this.#incoming = join(dir, ".incoming");
  }

  /** Creates the directories, and removes what a crash left half received. */
  async start(now = Date.now()): Promise<{ removed: number }> {
    await mkdir(this.#incoming, { recursive: true, mode: 0o700 });
    let removed = 0;
    for (const name of await readdir(this.#incoming)) {
      const path = join(this.#incoming, name);
      const info = await stat(path).catch(() => null);
      if (info && now - info.mtimeMs > STALE_INCOMING_MS) {
        await rm(path, { force: true });
        removed++;
      }
    }
    return { removed };
  }

  async receive(source: Readable, maxBytes: number): Promise<Received> {
    const handle = join(this.#incoming, randomUUID());
    const md5 = createHash("md5");
    const sha256 = createHash("sha256");
    let size = 0;
    const hashing = new Transform({
      transform(chunk: Buffer, _encoding, done) {
        size += chunk.length;
        if (size > maxBytes) return done(new AppError(ErrorCode.PAYLOAD_TOO_LARGE, `the artifact is larger than FIRMWARE_MAX_BYTES (${maxBytes} bytes)`));
        md5.update(chunk);
        sha256.update(chunk);
        done(null, chunk);
      },
    });
    try {
      // `flush`: synced to the disk before it is closed, so what is kept survives a power loss.
      await pipeline(source, hashing, createWriteStream(handle, { flags: "wx", mode: 0o600, flush: true }));
    } catch (err) {
      await rm(handle, { force: true });
      throw err;
    }
    return { size, md5: md5.digest("hex"), sha256: sha256.digest("hex"), handle };
  }

  async keep(received: Received, id: string): Promise<void> {
    await rename(received.handle, this.#pathOf(id));
    // The rename itself is durable once the directory is synced.
    const dir = await open(this.dir, constants.O_RDONLY);
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
  }

  async discard(received: Received): Promise<void> {
    await rm(received.handle, { force: true });
  }

  async open(id: string, range?: ByteRange): Promise<Readable | null> {
    let file;
    try {
      file = await open(this.#pathOf(id), constants.O_RDONLY);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return null;
      throw err;
    }
    // An open file stays readable if the artifact is deleted meanwhile: a download under way finishes.
    return file.createReadStream({ ...range, highWaterMark: READ_CHUNK_BYTES });
  }

  async remove(id: string): Promise<void> {
    await rm(this.#pathOf(id), { force: true });
  }

  async kept(): Promise<{ id: string; modifiedAt: number }[]> {
    const names = (await readdir(this.dir)).filter((n) => ID.test(n));
    const infos = await Promise.all(names.map(async (id) => ({ id, info: await stat(join(this.dir, id)).catch(() => null) })));
    return infos.flatMap(({ id, info }) => (info ? [{ id, modifiedAt: info.mtimeMs }] : []));
  }

  async freeBytes(): Promise<number> {
    const fs = await statfs(this.dir);
    return fs.bavail * fs.bsize;
  }

  #pathOf(id: string): string {
    // Ids are UUIDs (checked by the service): no path separators, no dot files.
    if (!ID.test(id)) throw new Error(`not an artifact id: ${id}`);
    return join(this.dir, id);
  }
}

import { randomUUID } from "node:crypto";
import type { Readable } from "node:stream";
import { LRUCache } from "lru-cache";
import { requireName } from "../devices/device.service.js";
import { AppError, ErrorCode, InputProblems, badInput, type InputProblem } from "../errors.js";
import type { Logger } from "../logger.js";
import { shortText } from "../ota/firmware.js";
import { decodeCreatedCursor, encodeCreatedCursor, isUuid } from "../protocol/object-id.js";
import type { Artifact } from "./artifact.model.js";
import type { ArtifactRepository } from "./artifact.repository.js";
import type { ArtifactStore, Received } from "./artifact.store.js";
import { UrlSigner, type UrlCheck, type UrlSubject } from "./url.signer.js";

/** What `$ota_upgrade` carries for an artifact (PROTOCOL.md's fields, plus sha256). */
export interface ArtifactFirmware {
  url: string;
  version: string;
  size: number;
  md5: string;
  type: string;
  sha256: string;
}

/** What an upload may say about itself; each given digest is checked against the bytes received. */
export interface UploadClaims {
  md5?: string;
  sha256?: string;
}

export interface ArtifactServiceOptions {
  /** Largest artifact accepted (FIRMWARE_MAX_BYTES). */
  maxBytes: number;
  /** Uploads received at once (FIRMWARE_MAX_UPLOADS). */
  maxUploads: number;
  /** How long a download URL outlives its command (FIRMWARE_URL_GRACE_SECONDS): a download begun in time may resume. */
  urlGraceSeconds: number;
  /** Whether a device may still download (registered, not suspended): its URLs die with it. */
  deviceActive: (productName: string, deviceName: string) => Promise<boolean>;
  log: Logger;
  now?: () => number;
}

/** Disk space an upload leaves free beside its declared size, at least. */
const FREE_SPACE_MARGIN_BYTES = 64 * 1024 * 1024;
/** Files older than this with no row (a crash between rename and insert) are removed at start. */
const ORPHAN_AGE_MS = 60 * 60 * 1000;

/** Ids as PostgreSQL writes them: an upper-case UUID names the same row, and must take the same lock and file. */
const canonical = (id: string) => id.toLowerCase();

const MD5 = /^[0-9a-f]{32}$/;
const SHA256 = /^[0-9a-f]{64}$/;

/**
 * Firmware artifacts: uploads hashed as they stream, stored once per
 * (product, version, type); signed download URLs for the commands that use them.
 */
export class ArtifactService {
  readonly #now: () => number;
  /** Downloads look their artifact up on every request (a resumed one too): a few seconds of memory, deletions seen within them. */
  readonly #byId = new LRUCache<string, Artifact>({ max: 1_000, ttl: 5_000 });
  /** Devices' standing for downloads, a few seconds: a suspended device's URLs stop working within them. */
  readonly #standing = new LRUCache<string, boolean>({ max: 10_000, ttl: 5_000 });
  #uploads = 0;

  constructor(
    private readonly repo: ArtifactRepository,
    private readonly store: ArtifactStore,
    private readonly signer: UrlSigner,
    private readonly options: ArtifactServiceOptions,
  ) {
    this.#now = options.now ?? Date.now;
  }

  /** The problems of an upload's path and claims, before a byte is read. */
  uploadProblems(productName: unknown, version: unknown, type: unknown, claims: Record<string, unknown>): InputProblem[] {
    const problems: InputProblem[] = [];
    try {
      requireName("productName", productName);
    } catch (err) {
      problems.push({ field: "productName", message: (err as Error).message.replace(/^productName: /, "") });
    }
    for (const [field, value] of [["version", version], ["type", type]] as const) {
      const problem = shortText(value);
      if (problem) problems.push({ field, message: problem });
    }
    if (claims.md5 !== undefined && (typeof claims.md5 !== "string" || !MD5.test(claims.md5.toLowerCase()))) {
      problems.push({ field: "md5", message: "must be 32 hexadecimal characters" });
    }
    if (claims.sha256 !== undefined && (typeof claims.sha256 !== "string" || !SHA256.test(claims.sha256.toLowerCase()))) {
      problems.push({ field: "sha256", message: "must be 64 hexadecimal characters" });
    }
    return problems;
  }

  /**
   * Stores an upload as the artifact of (product, version, type). The same
   * bytes again answer the artifact stored (`created` false); other bytes
   * under a stored version are refused (FIRMWARE_EXISTS): a version names one image.
   */
  async upload(
    productName: string,
    version: string,
    type: string,
    source: Readable,
    claims: UploadClaims = {},
    declaredBytes?: number,
  ): Promise<{ artifact: Artifact; created: boolean }> {
    const problems = this.uploadProblems(productName, version, type, claims as Record<string, unknown>);
    if (problems.length > 0) throw new InputProblems(problems);
    const { maxBytes, maxUploads } = this.options;
    if (declaredBytes !== undefined && declaredBytes > maxBytes) throw tooLarge(maxBytes);
    if (this.#uploads >= maxUploads) throw new AppError(ErrorCode.LIMIT_EXCEEDED, `${maxUploads} firmware uploads are being received (FIRMWARE_MAX_UPLOADS): try again shortly`);
    const free = await this.store.freeBytes();
    if (free < (declaredBytes ?? 0) + FREE_SPACE_MARGIN_BYTES) {
      this.options.log.error({ free, declaredBytes }, "refused a firmware upload: the artifact store's disk is nearly full");
      throw new AppError(ErrorCode.INSUFFICIENT_STORAGE, "the server's firmware storage is nearly full: nothing was stored");
    }
    this.#uploads++;
    try {
      return await this.#store(productName, version, type, await this.store.receive(source, maxBytes), claims);
    } finally {
      this.#uploads--;
    }
  }

  /**
   * The stored artifact an upload claiming this sha256 would answer, known
   * before its body is read: null when the version is not stored (or no
   * sha256 is claimed); FIRMWARE_EXISTS when it is stored with other bytes.
   */
  async storedAlready(productName: string, version: string, type: string, claims: UploadClaims): Promise<Artifact | null> {
    if (claims.sha256 === undefined) return null;
    const existing = await this.repo.findVersion(productName, version, type);
    return existing && this.#sameOrRefuse(existing, { sha256: claims.sha256.toLowerCase(), size: existing.size });
  }

  async #store(productName: string, version: string, type: string, received: Received, claims: UploadClaims): Promise<{ artifact: Artifact; created: boolean }> {
    let kept = false;
    try {
      this.#checkClaims(received, claims);
      if (received.size === 0) throw badInput("body", "an artifact cannot be empty");
      const existing = await this.repo.findVersion(productName, version, type);
      if (existing) return { artifact: this.#sameOrRefuse(existing, received), created: false };
      const id = randomUUID();
      await this.store.keep(received, id);
      kept = true;
      const { size, md5, sha256 } = received;
      let stored;
      try {
        stored = await this.repo.insert({ id, productName, version, type, size, md5, sha256 });
      } catch (err) {
        // No row: the bytes kept under its id are nobody's.
        await this.store.remove(id);
        throw err;
      }
      if (!stored.created) {
        // Another upload of this version won the race.
        await this.store.remove(id);
        return { artifact: this.#sameOrRefuse(stored.artifact, received), created: false };
      }
      this.options.log.info({ firmwareId: id, productName, version, type, size, sha256 }, "firmware artifact stored");
      return stored;
    } finally {
      if (!kept) await this.store.discard(received);
    }
  }

  #checkClaims(received: Received, claims: UploadClaims): void {
    const problems: InputProblem[] = [];
    for (const digest of ["md5", "sha256"] as const) {
      const claimed = claims[digest]?.toLowerCase();
      if (claimed !== undefined && claimed !== received[digest]) {
        problems.push({ field: digest, message: `the bytes received have ${digest} ${received[digest]}: the upload was altered or truncated; nothing was stored` });
      }
    }
    if (problems.length > 0) throw new InputProblems(problems);
  }

  #sameOrRefuse(existing: Artifact, received: Pick<Received, "sha256" | "size">): Artifact {
    if (existing.sha256 === received.sha256 && existing.size === received.size) return existing;
    throw new AppError(
      ErrorCode.FIRMWARE_EXISTS,
      `${existing.productName} ${existing.version} (${existing.type}) is stored with other content (sha256 ${existing.sha256}): upload it under a new version, or delete the stored one first`,
    );
  }

  async find(id: string): Promise<Artifact | null> {
    return isUuid(id) ? this.repo.find(canonical(id)) : null;
  }

  /** Removes what crashes left: half received uploads, and files whose row was never written. */
  async start(): Promise<void> {
    const { removed } = await this.store.start();
    if (removed > 0) this.options.log.warn({ removed }, "removed firmware uploads a crash left half received");
    const old = (await this.store.kept()).filter((k) => this.#now() - k.modifiedAt > ORPHAN_AGE_MS).map((k) => k.id);
    if (old.length === 0) return;
    const rows = await this.repo.existing(old);
    const orphans = old.filter((id) => !rows.has(id));
    for (const id of orphans) await this.store.remove(id);
    if (orphans.length > 0) this.options.log.warn({ removed: orphans.length }, "removed firmware files a crash left without their artifact");
  }

  async list(productName: string, first: number | null, after: string | null) {
    requireName("productName", productName);
    const limit = first ?? 50;
    if (!Number.isInteger(limit) || limit < 1 || limit > 100) throw badInput("first", "must be 1..100");
    const page = await this.repo.list(productName, limit, after == null ? null : decodeCreatedCursor(after));
    return { edges: page.rows.map((a) => ({ cursor: encodeCreatedCursor(a), artifact: a })), hasNextPage: page.hasNextPage };
  }

  /** Deletes an artifact (its row first: it is gone for downloads and commands at once, then its bytes). */
  async delete(id: string): Promise<Artifact> {
    if (!isUuid(id)) throw new AppError(ErrorCode.NOT_FOUND, `firmware ${id} not found`);
    id = canonical(id);
    const { deleted, inUse } = await this.repo.deleteUnlessInUse(id);
    if (inUse.length > 0) {
      throw new AppError(ErrorCode.FIRMWARE_IN_USE, `firmware ${id} is used by rollout ${inUse.join(", ")}: cancel it and let its devices finish first`);
    }
    if (!deleted) throw new AppError(ErrorCode.NOT_FOUND, `firmware ${id} not found`);
    this.#byId.delete(id);
    await this.store.remove(id).catch((err: unknown) =>
      // Unreachable bytes without a row: nothing can serve or list them; left for an operator.
      this.options.log.error({ err, firmwareId: id }, "deleted a firmware artifact whose file could not be removed"),
    );
    this.options.log.info({ firmwareId: id, productName: deleted.productName, version: deleted.version }, "firmware artifact deleted");
    return deleted;
  }

  /** The artifact a command of `productName` names; a clear error on `field` when there is none for the product. */
  async forProduct(productName: string, id: string, field = "firmwareId"): Promise<Artifact> {
    const artifact = await this.find(id);
    if (!artifact || artifact.productName !== productName) throw badInput(field, `no firmware artifact ${id} for product ${productName}`);
    return artifact;
  }

  /**
   * The `$ota_upgrade` fields for an artifact, its URL signed for `subject`
   * until the command's `expiresAt` (Unix seconds) and the grace after it.
   */
  firmwareFor(artifact: Pick<Artifact, "id" | "version" | "size" | "md5" | "type" | "sha256">, subject: UrlSubject, expiresAt: number): ArtifactFirmware {
    const { version, size, md5, type, sha256 } = artifact;
    return { url: this.signer.url(artifact.id, subject, expiresAt + this.options.urlGraceSeconds), version, size, md5, type, sha256 };
  }

  /** Where an artifact is downloaded from, unsigned: what a rollout shows as its url. */
  downloadPath(id: string): string {
    return UrlSigner.pathOf(id);
  }

  /** The artifact a signed download URL is good for, or why it is refused. */
  async downloadable(id: string, query: Record<string, unknown>): Promise<{ artifact: Artifact; check: UrlCheck & { ok: true } } | { refused: "malformed" | "forged" | "expired" | "not_found" | "device_inactive" }> {
    // Signed as the server wrote it (lower case): another spelling of the id is another signature.
    if (!isUuid(id)) return { refused: "not_found" };
    const check = this.signer.check(id, query, Math.floor(this.#now() / 1000));
    if (!check.ok) return { refused: check.reason };
    let artifact = this.#byId.get(id);
    if (!artifact) {
      const found = await this.repo.find(id);
      if (!found) return { refused: "not_found" };
      this.#byId.set(id, (artifact = found));
    }
    if (check.subject.kind === "device" && !(await this.#active(artifact.productName, check.subject.name))) return { refused: "device_inactive" };
    return { artifact, check };
  }

  async #active(productName: string, deviceName: string): Promise<boolean> {
    const key = `${productName}/${deviceName}`;
    let active = this.#standing.get(key);
    if (active === undefined) this.#standing.set(key, (active = await this.options.deviceActive(productName, deviceName)));
    return active;
  }

  /** The artifact's bytes, or a range of them; null when they are gone. */
  open(artifact: Artifact, range?: { start: number; end: number }): Promise<Readable | null> {
    return this.store.open(artifact.id, range);
  }
}

const tooLarge = (maxBytes: number) => new AppError(ErrorCode.PAYLOAD_TOO_LARGE, `the artifact is larger than FIRMWARE_MAX_BYTES (${maxBytes} bytes)`);

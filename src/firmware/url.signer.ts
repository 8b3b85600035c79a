import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { link, open, readFile, rm } from "node:fs/promises";

/** Whom a download URL is for: one device, or the devices of a tag (a tag command is one payload for all of them). */
export type UrlSubject = { kind: "device"; name: string } | { kind: "tag"; name: string };

export type UrlCheck = { ok: true; subject: UrlSubject; expiresAt: number } | { ok: false; reason: "malformed" | "forged" | "expired" };

const EXPIRES = /^[1-9]\d{0,11}$/;
/** HMAC-SHA256 in base64url, unpadded. */
const SIG = /^[A-Za-z0-9_-]{43}$/;

/** The query parameters a signed URL carries. */
interface SignedQuery {
  device?: unknown;
  tag?: unknown;
  expires?: unknown;
  sig?: unknown;
}

/**
 * Download URLs for devices, which hold no API token: HMAC-SHA256 over the
 * artifact, the subject (device or tag) and the expiry, with a key of the
 * server's (FIRMWARE_URL_KEY). A URL is good for that artifact until it
 * expires, which is when its command expires: a leaked URL dies with it.
 */
export class UrlSigner {
  constructor(
    /** Read when a URL is made or checked: it is loaded when the server starts. */
    private readonly key: () => Buffer,
    /** Where devices reach this server, e.g. `https://ota.example.com` (PUBLIC_URL); read when a URL is made. */
    private readonly baseUrl: () => string,
  ) {}

  /** The path of an artifact's downloads, below the base URL. */
  static pathOf(firmwareId: string): string {
    return `/firmware/download/${firmwareId}`;
  }

  url(firmwareId: string, subject: UrlSubject, expiresAt: number): string {
    if (!EXPIRES.test(String(expiresAt))) throw new Error(`a download URL cannot expire at ${expiresAt}`);
    const query = new URLSearchParams({ [subject.kind]: subject.name, expires: String(expiresAt), sig: this.#mac(firmwareId, subject, expiresAt) });
    return `${this.baseUrl().replace(/\/+$/, "")}${UrlSigner.pathOf(firmwareId)}?${query}`;
  }

  check(firmwareId: string, query: SignedQuery, nowSeconds: number): UrlCheck {
    const { device, tag, expires, sig } = query;
    if ((typeof device === "string") === (typeof tag === "string") || typeof expires !== "string" || typeof sig !== "string") {
      return { ok: false, reason: "malformed" };
    }
    // One spelling per URL: no leading zeros, the signature as url() writes it (Buffer's decoding forgives padding and strays).
    if (!EXPIRES.test(expires) || !SIG.test(sig)) return { ok: false, reason: "malformed" };
    const subject: UrlSubject = typeof device === "string" ? { kind: "device", name: device } : { kind: "tag", name: tag as string };
    const expiresAt = Number(expires);
    const expected = Buffer.from(this.#mac(firmwareId, subject, expiresAt), "base64url");
    const given = Buffer.from(sig, "base64url");
    // Checked before the expiry: a forged URL is told so whatever its expiry says.
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) return { ok: false, reason: "forged" };
    if (expiresAt < nowSeconds) return { ok: false, reason: "expired" };
    return { ok: true, subject, expiresAt };
  }

  #mac(firmwareId: string, subject: UrlSubject, expiresAt: number): string {
    return createHmac("sha256", this.key()).update(`iothub-ota firmware download v1\n${firmwareId}\n${subject.kind}\n${subject.name}\n${expiresAt}`).digest("base64url");
  }
}

/**
 * The signing key: FIRMWARE_URL_KEY when set, else the one kept in `path`
 * (created at the first start, readable by this user only). Instances that
 * share the artifact directory share it; others must set FIRMWARE_URL_KEY.
 */
export async function urlKey(configured: string | undefined, path: string): Promise<Buffer> {
  if (configured !== undefined) return Buffer.from(configured, "utf8");
  // Written aside and linked into place: a crash never leaves a half key, and of instances starting at once one wins.
  const aside = `${path}.${randomBytes(8).toString("hex")}`;
  const file = await open(aside, "wx", 0o600);
  try {
    await file.writeFile(`${randomBytes(32).toString("base64url")}\n`);
    await file.sync();
  } finally {
    await file.close();
  }
  try {
    await link(aside, path);
  } catch (err) {
    // An earlier start (or another instance) made it first: that one is the key.
    if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
  } finally {
    await rm(aside, { force: true });
  }
  const key = (await readFile(path, "utf8")).trim();
  if (key.length < 32) throw new Error(`${path} holds no key of at least 32 characters: remove it to have one generated, or set FIRMWARE_URL_KEY`);
  return Buffer.from(key, "utf8");
}

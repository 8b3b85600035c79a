import { fail, ok, type Result } from "../protocol/result.js";

/** The `$ota_upgrade` payload (PROTOCOL.md). */
export interface Firmware {
  url: string;
  version: string;
  size: number;
  md5: string;
  type: string;
}

export type FirmwareField = keyof Firmware;

const SHORT = 64;

const URL_MAX = 2048;
const HTTP_URL = "must be an http or https URL";
/** C0 controls (CR, LF, TAB, NUL...), DEL and C1 controls: `new URL` strips or encodes some of them silently. */
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

/**
 * An http(s) URL for the device to download, normalised: what is sent is what
 * `new URL` understood (`href`), never the raw text. A device's HTTP client
 * reads the payload's `url` as given (PROTOCOL.md, `$ota_upgrade`), so a CR/LF
 * or a leading space that the WHATWG parser forgives could split its request
 * line or fetch something else: control characters are refused outright.
 */
export function checkFirmwareUrl(url: unknown): Result<string, "url"> {
  if (typeof url !== "string" || url.length > URL_MAX) return fail("url", HTTP_URL);
  if (CONTROL.test(url)) return fail("url", "must not contain control characters");
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return fail("url", HTTP_URL);
  }
  if ((parsed.protocol !== "http:" && parsed.protocol !== "https:") || parsed.hostname === "") return fail("url", HTTP_URL);
  // Percent-encoding can lengthen it past what the device expects.
  if (parsed.href.length > URL_MAX) return fail("url", `must be at most ${URL_MAX} characters once normalised`);
  return ok(parsed.href);
}

/** Validates a firmware description; the failure names the field at fault. */
export function checkFirmware(input: Record<string, unknown>): Result<Firmware, FirmwareField> {
  const { url, version, size, md5, type } = input;
  const checked = checkFirmwareUrl(url);
  if (!checked.ok) return checked;
  if (typeof size !== "number" || !Number.isSafeInteger(size) || size <= 0) return fail("size", "must be a positive integer");
  if (typeof md5 !== "string" || !/^[0-9a-fA-F]{32}$/.test(md5)) return fail("md5", "must be 32 hexadecimal characters");
  for (const [field, value] of [["version", version], ["type", type]] as const) {
    if (typeof value !== "string" || value.trim() === "" || value.length > SHORT || CONTROL.test(value)) {
      return fail(field, `must be a non-empty string of at most ${SHORT} characters`);
    }
  }
  return ok({ url: checked.value, version: version as string, size, md5: md5.toLowerCase(), type: type as string });
}

/** A command's TTL becomes its `<expiresAt>` topic level, in Unix seconds. */
export function checkTtl(ttlSeconds: unknown, now: number): Result<number | undefined, "ttlSeconds"> {
  if (ttlSeconds === undefined || ttlSeconds === null) return ok(undefined);
  if (typeof ttlSeconds !== "number" || !Number.isInteger(ttlSeconds) || ttlSeconds < 1 || ttlSeconds > 31_536_000) {
    return fail("ttlSeconds", "must be an integer from 1 to 31536000 (a year)");
  }
  return ok(Math.floor(now / 1000) + ttlSeconds);
}

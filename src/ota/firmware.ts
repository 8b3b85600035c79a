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

/** One field of a firmware description at fault. */
export interface FirmwareProblem {
  field: FirmwareField;
  message: string;
}

/** A version or type: what IotHub firmware compares and shows (null when fine). */
export const shortText = (value: unknown) =>
  typeof value !== "string" || value.trim() === "" || value.length > SHORT || CONTROL.test(value)
    ? `must be a non-empty string of at most ${SHORT} characters`
    : null;

/** Every field of a firmware description at fault, in the payload's order (url, size, md5, version, type). */
export function firmwareProblems(input: Record<string, unknown>): FirmwareProblem[] {
  const { url, version, size, md5, type } = input;
  const url_ = checkFirmwareUrl(url);
  const problems: [FirmwareField, string | null][] = [
    ["url", url_.ok ? null : url_.message],
    ["size", typeof size !== "number" || !Number.isSafeInteger(size) || size <= 0 ? "must be a positive integer" : null],
    ["md5", typeof md5 !== "string" || !/^[0-9a-fA-F]{32}$/.test(md5) ? "must be 32 hexadecimal characters" : null],
    ["version", shortText(version)],
    ["type", shortText(type)],
  ];
  return problems.filter((p): p is [FirmwareField, string] => p[1] !== null).map(([field, message]) => ({ field, message }));
}

/** Validates a firmware description; the failure names the (first) field at fault. */
export function checkFirmware(input: Record<string, unknown>): Result<Firmware, FirmwareField> {
  const [first] = firmwareProblems(input);
  if (first) return fail(first.field, first.message);
  const { version, size, md5, type } = input as { version: string; size: number; md5: string; type: string };
  const url = checkFirmwareUrl(input.url);
  return ok({ url: url.ok ? url.value : "", version, size, md5: md5.toLowerCase(), type });
}

/** A command's TTL becomes its `<expiresAt>` topic level, in Unix seconds. */
export function checkTtl(ttlSeconds: unknown, now: number): Result<number | undefined, "ttlSeconds"> {
  if (ttlSeconds === undefined || ttlSeconds === null) return ok(undefined);
  if (typeof ttlSeconds !== "number" || !Number.isInteger(ttlSeconds) || ttlSeconds < 1 || ttlSeconds > 31_536_000) {
    return fail("ttlSeconds", "must be an integer from 1 to 31536000 (a year)");
  }
  return ok(Math.floor(now / 1000) + ttlSeconds);
}

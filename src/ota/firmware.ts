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

/** Validates a firmware description; the failure names the field at fault. */
export function checkFirmware(input: Record<string, unknown>): Result<Firmware, FirmwareField> {
  const { url, version, size, md5, type } = input;
  if (typeof url !== "string" || url.length > 2048) return fail("url", "must be an http or https URL");
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return fail("url", "must be an http or https URL");
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") return fail("url", "must be an http or https URL");
  if (typeof size !== "number" || !Number.isSafeInteger(size) || size <= 0) return fail("size", "must be a positive integer");
  if (typeof md5 !== "string" || !/^[0-9a-fA-F]{32}$/.test(md5)) return fail("md5", "must be 32 hexadecimal characters");
  for (const [field, value] of [["version", version], ["type", type]] as const) {
    if (typeof value !== "string" || value.trim() === "" || value.length > SHORT || /[\u0000-\u001f]/.test(value)) {
      return fail(field, `must be a non-empty string of at most ${SHORT} characters`);
    }
  }
  return ok({ url, version: version as string, size, md5: md5.toLowerCase(), type: type as string });
}

/** A command's TTL becomes its `<expiresAt>` topic level, in Unix seconds. */
export function checkTtl(ttlSeconds: unknown, now: number): Result<number | undefined, "ttlSeconds"> {
  if (ttlSeconds === undefined || ttlSeconds === null) return ok(undefined);
  if (typeof ttlSeconds !== "number" || !Number.isInteger(ttlSeconds) || ttlSeconds < 1 || ttlSeconds > 31_536_000) {
    return fail("ttlSeconds", "must be an integer from 1 to 31536000 (a year)");
  }
  return ok(Math.floor(now / 1000) + ttlSeconds);
}

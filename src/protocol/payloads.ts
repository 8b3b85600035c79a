import { checkTags } from "./names.js";
import { fail, ok, type Result } from "./result.js";

export type PayloadError = "not_utf8" | "not_json" | "not_object" | "too_deep" | "bad_progress" | "bad_field" | "too_large";

export interface OtaStatusReport {
  version: string;
  type: string;
  /** 0..100 download percentage; -1..-4 failure codes (PROTOCOL.md, `update_ota_status`). */
  progress: number;
  desc: string;
  /** The whole object as sent, extra fields included. */
  raw: Record<string, unknown>;
}

export interface TagsReport {
  tags: string[];
  tagsVersion: number;
}

const SHORT = 128;

/** JSON text is UTF-8 (RFC 8259 §8.1): anything else is refused, not patched with U+FFFD. */
const UTF8 = new TextDecoder("utf-8", { fatal: true });
/** Deeper JSON is no device's report; refusing it bounds the work of every later step (storing, re-serialising). */
const MAX_DEPTH = 32;
/** A UTF-16 surrogate without its pair: JSON.parse takes it, PostgreSQL's jsonb refuses it. */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function parseObject(payload: Buffer, maxBytes: number): Result<Record<string, unknown>, PayloadError> {
  if (payload.length > maxBytes) return fail("too_large", `payload of ${payload.length} bytes exceeds ${maxBytes}`);
  let value: unknown;
  try {
    value = JSON.parse(UTF8.decode(payload));
  } catch (err) {
    return err instanceof SyntaxError ? fail("not_json", "payload is not JSON") : fail("not_utf8", "payload is not UTF-8");
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return fail("not_object", "payload is not a JSON object");
  }
  const unstorable = checkStorable(value, 1);
  if (unstorable !== null) return unstorable;
  return ok(value as Record<string, unknown>);
}

/**
 * Every report is stored (Redis, PostgreSQL jsonb) and re-sent to
 * subscribers: what could not be stored must be refused here, or it would
 * fail its store on every redelivery, forever.
 */
function checkStorable(value: unknown, depth: number): Result<never, PayloadError> | null {
  if (typeof value === "string") {
    if (value.includes("\u0000")) return fail("bad_field", "strings must not contain NUL");
    if (LONE_SURROGATE.test(value)) return fail("bad_field", "strings must be valid Unicode");
    return null;
  }
  if (typeof value !== "object" || value === null) return null;
  if (depth > MAX_DEPTH) return fail("too_deep", `payload nests deeper than ${MAX_DEPTH}`);
  for (const [key, item] of Object.entries(value)) {
    const bad = checkStorable(key, depth) ?? checkStorable(item, depth + 1);
    if (bad !== null) return bad;
  }
  return null;
}

function optionalShortString(obj: Record<string, unknown>, key: string): Result<string, PayloadError> {
  const v = obj[key];
  if (v === undefined || v === null) return ok("");
  if (typeof v !== "string" || v.length > SHORT) return fail("bad_field", `${key} must be a string of at most ${SHORT}`);
  return ok(v);
}

export function parseOtaStatus(payload: Buffer, maxBytes: number): Result<OtaStatusReport, PayloadError> {
  const obj = parseObject(payload, maxBytes);
  if (!obj.ok) return obj;
  const raw = obj.value;
  const progress = raw.progress;
  if (typeof progress !== "number" || !Number.isInteger(progress) || progress < -4 || progress > 100) {
    return fail("bad_progress", "progress must be an integer in -4..100");
  }
  const version = optionalShortString(raw, "version");
  if (!version.ok) return version;
  const type = optionalShortString(raw, "type");
  if (!type.ok) return type;
  const desc = raw.desc;
  const descText = desc === undefined || desc === null ? "" : typeof desc === "string" ? desc : JSON.stringify(desc);
  return ok({ version: version.value, type: type.value, progress, desc: descText.slice(0, 1024), raw });
}

/** `update_status`: any JSON object; `firmware_ver`, when present, must be a string. */
export function parseStatus(payload: Buffer, maxBytes: number): Result<Record<string, unknown>, PayloadError> {
  const obj = parseObject(payload, maxBytes);
  if (!obj.ok) return obj;
  const fw = obj.value.firmware_ver;
  if (fw !== undefined && typeof fw !== "string") return fail("bad_field", "firmware_ver must be a string");
  return obj;
}

/** `get/.../$tags`: what the device holds. A device with nothing stored may send `{}`. */
export function parseTagsRequest(payload: Buffer, maxBytes: number): Result<TagsReport, PayloadError> {
  const obj = parseObject(payload, maxBytes);
  if (!obj.ok) return obj;
  const { tags = [], tags_version: tagsVersion = 0 } = obj.value;
  if (!Array.isArray(tags)) return fail("bad_field", "tags must be an array");
  if (typeof tagsVersion !== "number" || !Number.isInteger(tagsVersion) || tagsVersion < 0) {
    return fail("bad_field", "tags_version must be a non-negative integer");
  }
  const checked = checkTags(tags);
  if (!checked.ok) return fail("bad_field", checked.message);
  return ok({ tags: checked.value, tagsVersion });
}

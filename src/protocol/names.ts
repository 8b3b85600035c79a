import { fail, ok, type Result } from "./result.js";

/**
 * Product names, device names and tags are topic levels (PROTOCOL.md,
 * "Identity and connection"): no `/`, `+`, `#`, NUL, no leading `$`; kept to
 * `[A-Za-z0-9_.:-]`, at most 64 characters. The character class already
 * excludes the wildcards and `$`.
 */
const NAME = /^[A-Za-z0-9_.:-]{1,64}$/;

export type NameKind = "productName" | "deviceName" | "tag";

export function isValidName(value: string): boolean {
  return NAME.test(value);
}

export function checkName(kind: NameKind, value: unknown): Result<string, "invalid_name"> {
  if (typeof value !== "string" || !NAME.test(value)) {
    return fail("invalid_name", `${kind} must be 1..64 characters of [A-Za-z0-9_.:-]`);
  }
  return ok(value);
}

/** Tags are a set: de-duplicated, each a valid name, at most 32 of them. */
export function checkTags(value: readonly unknown[]): Result<string[], "invalid_name"> {
  if (value.length > 32) return fail("invalid_name", "tags: at most 32 tags");
  for (const tag of value) {
    const r = checkName("tag", tag);
    if (!r.ok) return r;
  }
  return ok([...new Set(value as string[])]);
}

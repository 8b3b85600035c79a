import { randomBytes } from "node:crypto";
import { badInput } from "../errors.js";

/** Per process, as the BSON spec has it: 5 random bytes, and a counter starting at a random value. */
const PROCESS_UNIQUE = randomBytes(5).toString("hex");
let counter = randomBytes(3).readUIntBE(0, 3);

/**
 * A fresh 24-hex BSON ObjectId, the protocol's requestId (PROTOCOL.md,
 * "Server to device"): 4 bytes of Unix seconds, 5 per-process random bytes,
 * a 3-byte counter. Made here rather than with the `bson` package, which
 * allocates a 17 MB serialisation buffer when it is imported.
 */
export function newObjectId(now = Date.now()): string {
  counter = (counter + 1) % 0x1000000;
  const seconds = Math.floor(now / 1000) >>> 0;
  return `${seconds.toString(16).padStart(8, "0")}${PROCESS_UNIQUE}${counter.toString(16).padStart(6, "0")}`;
}

const OBJECT_ID = /^[0-9a-fA-F]{24}$/;

export function isObjectId(value: string): boolean {
  return OBJECT_ID.test(value);
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Rollouts and firmware artifacts are named by UUIDs (PostgreSQL's gen_random_uuid). */
export const isUuid = (id: string) => UUID.test(id);

/** A page cursor after a row ordered by (createdAt, id): rollouts and firmware artifacts, newest first. */
export function encodeCreatedCursor(row: { createdAt: number; id: string }): string {
  return Buffer.from(`${row.createdAt}/${row.id}`, "utf8").toString("base64url");
}

/** The row a cursor names; BAD_USER_INPUT on `after` when it is not one of {@link encodeCreatedCursor}'s. */
export function decodeCreatedCursor(cursor: string): { createdAt: number; id: string } {
  const [at, id] = Buffer.from(cursor, "base64url").toString("utf8").split("/");
  const createdAt = Number(at);
  // Within the range of a Date (±8.64e15 ms).
  if (!Number.isSafeInteger(createdAt) || Math.abs(createdAt) > 8.64e15 || id === undefined || !isUuid(id)) throw badInput("after", "not a cursor from this API");
  return { createdAt, id };
}

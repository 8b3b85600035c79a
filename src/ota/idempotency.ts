import { createHash } from "node:crypto";
import { AppError, ErrorCode, badInput } from "../errors.js";

/** What a sendOta answered, as replayed to a retry. */
export interface SentCommand {
  requestId: string;
  topic: string;
  expiresAt: number | null;
}

/**
 * What one idempotency key holds. `fingerprint` is a digest of the request
 * it was first used for: the same key with another request is refused.
 */
export type IdempotencyEntry =
  | { state: "pending"; fingerprint: string; since: number }
  | { state: "sent"; fingerprint: string; result: SentCommand }
  | { state: "unconfirmed"; fingerprint: string; requestId: string };

/** Where keys are kept (Redis, under the configured prefix), shared by every instance. */
export interface IdempotencyStore {
  /** Stores `entry` under the key unless the key holds something, atomically; returns what it held, or null when claimed. */
  claim(scope: string, key: string, entry: IdempotencyEntry, ttlSeconds: number): Promise<IdempotencyEntry | null>;
  /** Replaces what the key holds. */
  settle(scope: string, key: string, entry: IdempotencyEntry, ttlSeconds: number): Promise<void>;
  /** Forgets the key: the request had no effect, a retry may send. */
  release(scope: string, key: string): Promise<void>;
}

/** Keys are chosen by clients (a UUID is typical): printable ASCII, 1..128 characters. */
export function checkIdempotencyKey(key: unknown): string {
  if (typeof key !== "string" || !/^[\x21-\x7e]{1,128}$/.test(key)) {
    throw badInput("idempotencyKey", "must be 1..128 printable ASCII characters without spaces");
  }
  return key;
}

/** A digest of the request's meaning (canonical JSON: keys sorted), to tell a retry from a reuse. */
export function fingerprintOf(request: unknown): string {
  const canonical = (v: unknown): unknown =>
    Array.isArray(v)
      ? v.map(canonical)
      : typeof v === "object" && v !== null
        ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : 1)).map(([k, x]) => [k, canonical(x)]))
        : v;
  return createHash("sha256").update(JSON.stringify(canonical(request))).digest("base64url");
}

/**
 * What a retry gets when its key is already held: the first result, or an
 * error saying why nothing is sent again. Pure.
 */
export function replay(held: IdempotencyEntry, fingerprint: string, now: number, inFlightMs: number): SentCommand {
  if (held.fingerprint !== fingerprint) {
    throw badInput("idempotencyKey", "was already used for a different request");
  }
  switch (held.state) {
    case "sent":
      return held.result;
    case "pending":
      // Past the publish timeout the first request can no longer be running: its server stopped mid-publish.
      if (now - held.since > inFlightMs) {
        throw new AppError(
          ErrorCode.COMMAND_UNCONFIRMED,
          "the first request with this idempotency key did not finish (its server stopped); the command may have been sent; nothing was sent again",
        );
      }
      throw new AppError(ErrorCode.REQUEST_IN_PROGRESS, "a request with this idempotency key is still being processed; nothing was sent again");
    case "unconfirmed":
      throw new AppError(
        ErrorCode.COMMAND_UNCONFIRMED,
        `the first request with this idempotency key (requestId ${held.requestId}) was not confirmed by the broker and may still arrive; nothing was sent again`,
      );
    default: {
      const never: never = held;
      return never;
    }
  }
}

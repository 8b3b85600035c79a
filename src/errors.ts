/** The public error surface: every error a client sees carries one of these as `extensions.code`. */
export enum ErrorCode {
  DEVICE_NOT_FOUND = "DEVICE_NOT_FOUND",
  DEVICE_SUSPENDED = "DEVICE_SUSPENDED",
  DEVICE_EXISTS = "DEVICE_EXISTS",
  BAD_USER_INPUT = "BAD_USER_INPUT",
  /** The request itself could not be read: a body that is not JSON, a wrong content type, batched operations. */
  BAD_REQUEST = "BAD_REQUEST",
  /** No such route. */
  NOT_FOUND = "NOT_FOUND",
  /** The request body is larger than the configured limit (HTTP_BODY_LIMIT_BYTES). */
  PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE",
  /** A configured limit of the connection or the token was reached (subscriptions per connection). */
  LIMIT_EXCEEDED = "LIMIT_EXCEEDED",
  UNAUTHENTICATED = "UNAUTHENTICATED",
  /** The API token may not do this (its access level or its products). */
  FORBIDDEN = "FORBIDDEN",
  /** The MQTT broker is unreachable: the command was not sent. Safe to retry. */
  BROKER_UNAVAILABLE = "BROKER_UNAVAILABLE",
  /**
   * The command was handed to the broker, which did not confirm it in time:
   * it may still arrive. Retrying may deliver it twice (use an idempotency key).
   */
  COMMAND_UNCONFIRMED = "COMMAND_UNCONFIRMED",
  /** An earlier request with the same idempotency key is still being processed: ask again later. */
  REQUEST_IN_PROGRESS = "REQUEST_IN_PROGRESS",
  /** A firmware artifact of this product, version and type exists with other content (versions are immutable). */
  FIRMWARE_EXISTS = "FIRMWARE_EXISTS",
  /** The firmware artifact is used by a rollout that is active or has devices still upgrading. */
  FIRMWARE_IN_USE = "FIRMWARE_IN_USE",
  /** Too little disk space is left for the upload: nothing was stored. */
  INSUFFICIENT_STORAGE = "INSUFFICIENT_STORAGE",
  INTERNAL_SERVER_ERROR = "INTERNAL_SERVER_ERROR",
}

/** An error whose message is safe to show to API clients. */
export class AppError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    /** The input field at fault, for BAD_USER_INPUT. */
    readonly field?: string,
  ) {
    super(message);
    this.name = "AppError";
  }
}

export const badInput = (field: string, message: string) =>
  new AppError(ErrorCode.BAD_USER_INPUT, `${field}: ${message}`, field);

/** One input field at fault. */
export interface InputProblem {
  field: string;
  message: string;
}

/** Several input fields at fault at once: answered as one error per field (REST lists every problem, not the first). */
export class InputProblems extends AppError {
  constructor(readonly problems: readonly InputProblem[]) {
    super(ErrorCode.BAD_USER_INPUT, problems.map((p) => `${p.field}: ${p.message}`).join("; "), problems[0]?.field);
  }
}

/**
 * A start that cannot go on, whose message says what to change (a port in
 * use, a service unreachable at a configured URL): logged once, without a stack.
 */
export class StartupError extends Error {
  override name = "StartupError";
}

/** A URL as it may be logged: without its password. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password !== "") u.password = "***";
    return u.toString();
  } catch {
    return "(not a URL)";
  }
}

/** HTTP status of each code, for REST answers and GraphQL errors raised outside execution. */
export const HTTP_STATUS: Record<ErrorCode, number> = {
  [ErrorCode.DEVICE_NOT_FOUND]: 404,
  [ErrorCode.DEVICE_SUSPENDED]: 409,
  [ErrorCode.DEVICE_EXISTS]: 409,
  [ErrorCode.BAD_USER_INPUT]: 400,
  [ErrorCode.BAD_REQUEST]: 400,
  [ErrorCode.NOT_FOUND]: 404,
  [ErrorCode.PAYLOAD_TOO_LARGE]: 413,
  [ErrorCode.LIMIT_EXCEEDED]: 429,
  [ErrorCode.UNAUTHENTICATED]: 401,
  [ErrorCode.FORBIDDEN]: 403,
  [ErrorCode.BROKER_UNAVAILABLE]: 503,
  [ErrorCode.COMMAND_UNCONFIRMED]: 504,
  [ErrorCode.REQUEST_IN_PROGRESS]: 409,
  [ErrorCode.FIRMWARE_EXISTS]: 409,
  [ErrorCode.FIRMWARE_IN_USE]: 409,
  [ErrorCode.INSUFFICIENT_STORAGE]: 507,
  [ErrorCode.INTERNAL_SERVER_ERROR]: 500,
};

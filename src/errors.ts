/** The public error surface: every error a client sees carries one of these as `extensions.code`. */
export enum ErrorCode {
  DEVICE_NOT_FOUND = "DEVICE_NOT_FOUND",
  DEVICE_SUSPENDED = "DEVICE_SUSPENDED",
  DEVICE_EXISTS = "DEVICE_EXISTS",
  BAD_USER_INPUT = "BAD_USER_INPUT",
  UNAUTHENTICATED = "UNAUTHENTICATED",
  FORBIDDEN = "FORBIDDEN",
  /** The MQTT broker is unreachable: the command was not sent. Safe to retry. */
  BROKER_UNAVAILABLE = "BROKER_UNAVAILABLE",
  /**
   * The command was handed to the broker, which did not confirm it in time:
   * it may still arrive. Retrying may deliver it twice (use an idempotency key).
   */
  COMMAND_UNCONFIRMED = "COMMAND_UNCONFIRMED",
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

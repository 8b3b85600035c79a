/**
 * What the client commands exit with: a CI pipeline gates on these (README,
 * "Command line"). 1 is left to commander (an unknown command or option, a
 * missing argument) and to Node (an uncaught exception).
 */
export enum ExitCode {
  OK = 0,
  /** A refused flag, an API error, the server unreachable, a closed subscription. */
  ERROR = 2,
  /** `rollout watch`: COMPLETED, but some executions FAILED or TIMED_OUT. */
  COMPLETED_WITH_FAILURES = 3,
  ABORTED = 4,
  CANCELED = 5,
  /** A watch lost its connection to the server and could not reconnect within --reconnect-timeout. */
  DISCONNECTED = 6,
}

/** An error the API answered: its `extensions.code` and message, as the server said them. */
export class ApiError extends Error {
  constructor(
    readonly errors: { code: string; message: string }[],
    readonly status?: number,
  ) {
    super(errors.map((e) => `${e.code}: ${e.message}`).join("\n"));
    this.name = "ApiError";
  }
}

/** The server could not be reached (refused, DNS, TLS, reset): names the URL. */
export class UnreachableError extends Error {
  constructor(
    readonly url: string,
    cause: unknown,
  ) {
    super(`cannot reach ${url}: ${describeCause(cause)}`, { cause });
    this.name = "UnreachableError";
  }
}

/** The graphql-ws connection was closed by the server (4401 revoked token, 1013 too many connections or the token not checkable, ...). */
export class SocketClosedError extends Error {
  constructor(
    readonly code: number,
    readonly reason: string,
    readonly url: string,
  ) {
    super(`${code}: ${reason || "(no reason given)"}`);
    this.name = "SocketClosedError";
  }
}

/** A watch's connection was lost and did not come back in time (a server gone for good, a network cut). */
export class ConnectionLostError extends Error {
  readonly exitCode = ExitCode.DISCONNECTED;

  constructor(
    readonly url: string,
    /** What ended the last attempt. */
    readonly last: string,
    /** How long it tried; null when it was told not to (--reconnect-timeout 0). */
    tried: string | null,
  ) {
    super(`lost the connection to ${url} (${last}) and ${tried === null ? "did not try to reconnect (--reconnect-timeout 0)" : `could not reconnect within ${tried}`}`);
    this.name = "ConnectionLostError";
  }
}

/** A flag's value refused before anything is sent. */
export class UsageError extends Error {
  override name = "UsageError";
}

function describeCause(cause: unknown): string {
  // fetch wraps the socket error: "fetch failed" says nothing, its cause says ECONNREFUSED.
  const inner = cause instanceof Error && cause.cause instanceof Error ? cause.cause : cause;
  if (inner instanceof AggregateError && inner.errors.length > 0) return describeCause(inner.errors[0]);
  if (inner instanceof Error) return inner.message || inner.name;
  return String(inner);
}

/** The lines an error prints on stderr: the API's code first, so scripts and people read the same thing. */
export function errorLines(err: unknown): string[] {
  if (err instanceof ApiError) return err.errors.map((e) => `error ${e.code}: ${e.message}`);
  if (err instanceof SocketClosedError) return [`error ${err.message}`, `(the graphql-ws connection to ${err.url} was closed)`];
  if (err instanceof UnreachableError || err instanceof UsageError || err instanceof ConnectionLostError) return [`error: ${err.message}`];
  return [`error: ${err instanceof Error ? err.message : String(err)}`];
}

/** Prints the error on stderr and exits {@link ExitCode.ERROR} ({@link ExitCode.DISCONNECTED} for a watch that lost its server). */
export function fail(err: unknown): never {
  process.stderr.write(`${errorLines(err).join("\n")}\n`);
  process.exit(err instanceof ConnectionLostError ? err.exitCode : ExitCode.ERROR);
}

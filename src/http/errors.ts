import { unwrapResolverError } from "@apollo/server/errors";
import { GraphQLError, type GraphQLFormattedError } from "graphql";
import type { ErrorRequestHandler, NextFunction, Request, Response } from "express";
import { AppError, ErrorCode, HTTP_STATUS, InputProblems } from "../errors.js";
import type { Logger } from "../logger.js";

const PUBLIC_CODES = new Set<string>([
  ...Object.values(ErrorCode),
  "GRAPHQL_PARSE_FAILED",
  "GRAPHQL_VALIDATION_FAILED",
  "BAD_REQUEST",
  "PERSISTED_QUERY_NOT_FOUND",
  "PERSISTED_QUERY_NOT_SUPPORTED",
  "OPERATION_RESOLUTION_FAILURE",
]);

/**
 * The one place errors become what clients see: our own errors keep their
 * code and message, GraphQL's own request errors pass, everything else is
 * "Internal server error" (reported through `onInternal`), never a stack.
 */
export function maskError(
  formatted: GraphQLFormattedError,
  error: unknown,
  onInternal: (error: unknown) => void,
): GraphQLFormattedError {
  const original = unwrapResolverError(error);
  const base = { message: formatted.message, locations: formatted.locations, path: formatted.path };
  if (original instanceof AppError) {
    return {
      ...base,
      message: original.message,
      extensions: { code: original.code, ...(original.field ? { field: original.field } : {}) },
    };
  }
  const code = formatted.extensions?.code;
  if (typeof code === "string" && PUBLIC_CODES.has(code) && (original instanceof GraphQLError || original === error)) {
    return { ...base, extensions: { code } };
  }
  // Variables that fail coercion are the client's input at fault.
  if (original instanceof GraphQLError && !original.originalError && original.path === undefined) {
    return { ...base, extensions: { code: ErrorCode.BAD_USER_INPUT } };
  }
  onInternal(original);
  return { message: "Internal server error", locations: formatted.locations, path: formatted.path, extensions: { code: ErrorCode.INTERNAL_SERVER_ERROR } };
}

/** The body of every error answer outside GraphQL execution (REST, 404s, refused bodies): GraphQL's error shape, so one parser reads all. */
export function errorBody(code: ErrorCode, message: string) {
  return { errors: [{ message, extensions: { code } }] };
}

export function sendError(res: Response, code: ErrorCode, message: string, status = HTTP_STATUS[code]): void {
  res.status(status).json(errorBody(code, message));
}

/** What body-parser's errors (`err.type`) become: a status, a code and a message that names no internals. */
function bodyError(type: unknown, status: number, limit: number): [ErrorCode, string, number] | undefined {
  switch (type) {
    case "entity.too.large":
      return [ErrorCode.PAYLOAD_TOO_LARGE, `request body larger than ${limit} bytes`, 413];
    case "entity.parse.failed":
      return [ErrorCode.BAD_REQUEST, "request body is not valid JSON", 400];
    case "encoding.unsupported":
    case "charset.unsupported":
      return [ErrorCode.BAD_REQUEST, "request body encoding or charset not supported", 415];
    default:
      return status >= 400 && status < 500 ? [ErrorCode.BAD_REQUEST, "bad request", status] : undefined;
  }
}

/**
 * The last Express error handler: every error answer is JSON and leaks
 * nothing (no stack, no path), whatever NODE_ENV says; unexpected errors are
 * logged with their `err` and answered 500.
 */
export function jsonErrorHandler(bodyLimit: number, log: Logger, refused: (reason: string) => void): ErrorRequestHandler {
  return (err: unknown, _req: Request, res: Response, _next: NextFunction) => {
    if (res.headersSent) {
      log.error({ err }, "error after the answer started");
      return void res.end();
    }
    if (err instanceof InputProblems) {
      const errors = err.problems.map(({ field, message }) => ({ message: `${field}: ${message}`, extensions: { code: err.code, field } }));
      return void res.status(HTTP_STATUS[err.code]).json({ errors });
    }
    if (err instanceof AppError) {
      if (err.field === undefined) return sendError(res, err.code, err.message);
      return void res.status(HTTP_STATUS[err.code]).json({ errors: [{ message: err.message, extensions: { code: err.code, field: err.field } }] });
    }
    const e = err as { type?: unknown; status?: unknown; statusCode?: unknown };
    const status = typeof e.status === "number" ? e.status : typeof e.statusCode === "number" ? e.statusCode : 500;
    const known = bodyError(e.type, status, bodyLimit);
    if (known) {
      const [code, message, httpStatus] = known;
      refused(String(e.type ?? "bad_request"));
      return sendError(res, code, message, httpStatus);
    }
    log.error({ err }, "HTTP request failed");
    sendError(res, ErrorCode.INTERNAL_SERVER_ERROR, "internal server error");
  };
}

/** Any route nobody serves, any method. */
export const notFound = (_req: Request, res: Response): void => sendError(res, ErrorCode.NOT_FOUND, "no such route");

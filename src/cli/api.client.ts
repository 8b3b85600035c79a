import { Readable } from "node:stream";
import type { TypedDocumentNode } from "@graphql-typed-document-node/core";
import { print } from "graphql";
import { createClient, type Client } from "graphql-ws";
import WebSocket from "ws";
import { z } from "zod";
import { ApiError, ConnectionLostError, SocketClosedError, UnreachableError } from "./cli.errors.js";
import { Reconnection, type ReconnectPolicy } from "./reconnect.js";

export interface ServerAddress {
  /** The server's base URL, `http(s)://host:port`; the API is at `/graphql` on it. */
  server: string;
  token?: string | undefined;
}

const graphqlError = z.object({
  message: z.string(),
  extensions: z.object({ code: z.string().optional() }).passthrough().optional(),
});
const answer = z.object({
  data: z.record(z.string(), z.unknown()).nullish(),
  errors: z.array(graphqlError).optional(),
});

/** The answer of a REST route: its JSON, or the API's errors (`{"errors": [...]}`, as GraphQL shapes them). */
const errorAnswer = z.object({ errors: z.array(graphqlError).min(1) });

const toApiError = (errors: z.infer<typeof graphqlError>[], status?: number) =>
  new ApiError(errors.map((e) => ({ code: e.extensions?.code ?? "ERROR", message: e.message })), status);

const closeEvent = z.object({ code: z.number(), reason: z.string() });

/** What a graphql-ws sink's error is: GraphQL errors, a CloseEvent, or the socket's error. */
function socketError(err: unknown, url: string): Error {
  if (Array.isArray(err)) return toApiError(z.array(graphqlError).parse(err));
  const close = closeEvent.safeParse(err);
  if (close.success) {
    // 1006: the socket dropped without a close frame (the server went away, a proxy cut it): nobody closed it on purpose.
    if (close.data.code === 1006) return new UnreachableError(url, new Error("connection lost (1006)"));
    return new SocketClosedError(close.data.code, close.data.reason, url);
  }
  const message = z.object({ message: z.string() }).safeParse(err);
  return new UnreachableError(url, new Error(message.success ? message.data.message : String(err)));
}

/** How long an opening socket may wait for the upgrade, then for connection_ack. */
const ACK_TIMEOUT_MS = 10_000;
/**
 * A watch pings the server this long after its last pong, and takes a ping
 * not answered within PONG_TIMEOUT_MS for a lost connection: a connection
 * that went half-open (a NAT or proxy forgot it, a cable pulled: no FIN, no
 * RST) otherwise stays silent for good, and the watch with it.
 */
const PING_INTERVAL_MS = 5_000;
const PONG_TIMEOUT_MS = 5_000;

/**
 * The API of a running server for the client commands: GraphQL over HTTP
 * (fetch) and graphql-ws (the `ws` package), both with the token as
 * `Authorization: Bearer` (a header, and the connection_init payload the
 * server reads).
 */
export class ApiClient {
  readonly graphqlUrl: string;
  readonly wsUrl: string;
  readonly #authorization: string | undefined;
  #ws: Client | undefined;
  #reconnection: Reconnection | undefined;
  /** The connection was dropped because a ping went unanswered: that is its error, not the drop's 1006. */
  #unanswered = false;

  constructor(address: ServerAddress) {
    // The API is at graphql under the given URL, which may carry a path prefix (behind a proxy) or be the endpoint itself.
    const given = new URL(address.server);
    const base = new URL(given.pathname.endsWith("/graphql") ? given.href : `${given.href.replace(/\/$/, "")}/graphql`);
    this.graphqlUrl = base.toString();
    const ws = new URL(base);
    ws.protocol = base.protocol === "https:" ? "wss:" : "ws:";
    this.wsUrl = ws.toString();
    this.#authorization = address.token ? `Bearer ${address.token}` : undefined;
  }

  /** One operation over HTTP; its data, or an {@link ApiError} with the API's codes. */
  async request<T, V>(doc: TypedDocumentNode<T, V>, variables: V): Promise<T> {
    let res: Response;
    try {
      res = await fetch(this.graphqlUrl, {
        method: "POST",
        headers: { "content-type": "application/json", ...(this.#authorization ? { authorization: this.#authorization } : {}) },
        body: JSON.stringify({ query: print(doc), variables }),
      });
    } catch (err) {
      throw new UnreachableError(this.graphqlUrl, err);
    }
    const text = await res.text();
    let parsed: z.infer<typeof answer>;
    try {
      parsed = answer.parse(JSON.parse(text));
    } catch {
      throw new ApiError([{ code: `HTTP_${res.status}`, message: `${this.graphqlUrl} answered ${res.status}, not a GraphQL answer` }], res.status);
    }
    if (parsed.errors?.length) throw toApiError(parsed.errors, res.status);
    if (!parsed.data) throw new ApiError([{ code: `HTTP_${res.status}`, message: `${this.graphqlUrl} answered without data` }], res.status);
    return parsed.data as T;
  }

  /**
   * Streams `body` (exactly `length` bytes, sent as its Content-Length) to a
   * REST route of the server (`PUT firmware/<product>/<version>`, relative to
   * the API's URL) and answers its status and JSON; an error answer is an
   * {@link ApiError}, a failed read of `body` rejects as itself. An answer
   * before the last byte (a refusal) stops the reading of `body`.
   */
  async put(path: string, query: Record<string, string>, body: Readable, length: number): Promise<{ status: number; body: unknown }> {
    const url = new URL(path, this.graphqlUrl);
    for (const [k, v] of Object.entries(query)) url.searchParams.set(k, v);
    const where = `${url.origin}${url.pathname}`;
    let res: Response;
    let answered: string;
    try {
      res = await fetch(url, {
        method: "PUT",
        headers: { "content-type": "application/octet-stream", "content-length": String(length), ...(this.#authorization ? { authorization: this.#authorization } : {}) },
        body: Readable.toWeb(body) as ReadableStream<Uint8Array>,
        duplex: "half",
      } as RequestInit);
      answered = await res.text();
    } catch (err) {
      // The file unreadable, or changed while read: the caller's error, not the server's.
      if (body.errored) throw body.errored;
      throw new UnreachableError(where, err);
    } finally {
      body.destroy();
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(answered);
    } catch {
      throw new ApiError([{ code: `HTTP_${res.status}`, message: `${where} answered ${res.status}, not JSON` }], res.status);
    }
    if (res.status >= 400) {
      const errors = errorAnswer.safeParse(parsed);
      throw errors.success ? toApiError(errors.data.errors, res.status) : new ApiError([{ code: `HTTP_${res.status}`, message: `${where} answered ${res.status}` }], res.status);
    }
    return { status: res.status, body: parsed };
  }

  /**
   * Runs a subscription until the server completes it (resolves) or it fails
   * (rejects: GraphQL errors, a close by the server, the server gone).
   * `stop()` ends it early. With `reconnect`, a connection lost once it was
   * up is opened again and the subscription sent again (the server starts it
   * afresh: a subscription that begins with the state now, as rolloutChanged
   * does, re-reads it); given up, it rejects with a {@link ConnectionLostError}.
   * The first subscription's policy holds for the connection.
   */
  subscribe<T, V>(doc: TypedDocumentNode<T, V>, variables: V, onData: (data: T) => void, reconnect?: ReconnectPolicy): { done: Promise<void>; stop: () => void } {
    const client = this.#client(reconnect);
    let stop = () => undefined as void;
    const done = new Promise<void>((resolve, reject) => {
      stop = client.subscribe<T>(
        { query: print(doc), variables: variables as Record<string, unknown> },
        {
          next: (r) => {
            if (r.errors?.length) reject(toApiError(z.array(graphqlError).parse(r.errors)));
            else if (r.data) onData(r.data as T);
          },
          error: (err) => {
            const cause = this.#errorOf(err);
            const given = this.#reconnection;
            reject(given?.gaveUp ? new ConnectionLostError(this.wsUrl, cause.message, reconnect?.timeoutMs === 0 ? null : given.timeoutText) : cause);
          },
          complete: resolve,
        },
      );
    });
    return { done, stop: () => stop() };
  }

  /** Closes the graphql-ws connection, if one was opened. */
  async close(): Promise<void> {
    const ws = this.#ws;
    this.#ws = undefined;
    await ws?.dispose();
  }

  #errorOf(err: unknown): Error {
    return this.#unanswered ? new UnreachableError(this.wsUrl, new Error(`no answer to a ping within ${PONG_TIMEOUT_MS / 1000} s`)) : socketError(err, this.wsUrl);
  }

  #client(reconnect: ReconnectPolicy | undefined): Client {
    if (this.#ws) return this.#ws;
    const authorization = this.#authorization;
    const headers = authorization ? { authorization } : undefined;
    // graphql-ws constructs the socket itself: a subclass is how a header goes on the upgrade request.
    class AuthorizedWebSocket extends WebSocket {
      constructor(url: string, protocols?: string | string[]) {
        super(url, protocols, { headers, handshakeTimeout: ACK_TIMEOUT_MS });
      }
    }
    const reconnection = reconnect && new Reconnection(reconnect, this.wsUrl);
    this.#reconnection = reconnection;
    let socket: WebSocket | undefined;
    let pongWait: NodeJS.Timeout | undefined;
    const awaitAnswer = () => {
      clearTimeout(pongWait);
      pongWait = setTimeout(() => {
        this.#unanswered = true;
        // At once, as a drop: a close handshake on a silent connection would wait for ws' 30 s close timeout.
        socket?.terminate();
      }, PONG_TIMEOUT_MS);
    };
    this.#ws = createClient({
      url: this.wsUrl,
      webSocketImpl: AuthorizedWebSocket,
      connectionParams: headers ?? {},
      lazy: true,
      // Without a policy a lost connection is the command's error. With one, the policy bounds the time, not the count.
      retryAttempts: reconnection ? Number.MAX_SAFE_INTEGER : 0,
      shouldRetry: (err) => {
        const retry = reconnection?.shouldRetry(closeEvent.safeParse(err).data?.code, this.#errorOf(err).message) ?? false;
        // Not retried, the subscription's error says why.
        if (retry) this.#unanswered = false;
        return retry;
      },
      retryWait: (retries) => reconnection?.wait(retries) ?? Promise.resolve(),
      // A server that takes the socket and never answers connection_init is as good as gone.
      connectionAckWaitTimeout: ACK_TIMEOUT_MS,
      keepAlive: PING_INTERVAL_MS,
      on: {
        // The socket from its opening: graphql-ws pings from then on, before connection_ack.
        opened: (s) => {
          socket = s as WebSocket;
          this.#unanswered = false;
        },
        connected: () => reconnection?.connected(),
        ping: (received) => {
          if (!received) awaitAnswer();
        },
        // Anything received while a pong is awaited shows the path alive (a pong may queue behind a burst): wait anew.
        message: (m) => {
          if (pongWait === undefined) return;
          if (m.type === "pong") {
            clearTimeout(pongWait);
            pongWait = undefined;
          } else awaitAnswer();
        },
        closed: () => {
          clearTimeout(pongWait);
          pongWait = undefined;
        },
      },
    });
    return this.#ws;
  }
}

/** A page of one of the API's connections. */
export interface Page<N> {
  nodes: N[];
  pageInfo: { hasNextPage: boolean; endCursor: string | null };
}

/** A connection read from `after`: one page, or with `all` each page to the last; their nodes and the last page's pageInfo. */
export async function pagesOf<N>(page: (after: string | null) => Promise<Page<N>>, o: { after?: string | null | undefined; all?: boolean | undefined }): Promise<Page<N>> {
  const nodes: N[] = [];
  let after = o.after ?? null;
  for (;;) {
    const p = await page(after);
    nodes.push(...p.nodes);
    if (!o.all || !p.pageInfo.hasNextPage) return { nodes, pageInfo: p.pageInfo };
    after = p.pageInfo.endCursor;
  }
}

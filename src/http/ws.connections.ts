import type { WebSocket } from "ws";

/**
 * Close codes of graphql-ws connections, beside graphql-ws' own (4400 bad
 * message, 4406 subprotocol, 4408 no `connection_init` within
 * WS_INIT_TIMEOUT_MS, 4409 duplicate subscription id, 4429 second init,
 * 4500 internal) and ws' 1009 (a frame larger than WS_MAX_PAYLOAD_BYTES).
 */
export enum WsCloseCode {
  /** No valid API token at `connection_init`, or the token was revoked or expired while connected. graphql-ws clients do not retry it. */
  Unauthorized = 4401,
  /** The token already holds WS_MAX_CONNECTIONS_PER_TOKEN connections on this instance (RFC 6455: Try Again Later). */
  TooManyConnections = 1013,
  /**
   * The server could not check the token (its store is down): RFC 6455's
   * Try Again Later, which graphql-ws clients retry (its 4500 they take for
   * fatal: a dashboard or a watch would stop for a database failover). The
   * reason never carries internals.
   */
  TokenUnchecked = 1013,
}

/** Live graphql-ws connections by API token: the per-token limit, and closing a token's connections. */
export class WsConnections {
  readonly #byToken = new Map<string, Set<WebSocket>>();

  constructor(private readonly maxPerToken: number) {}

  /** Counts the connection against its token; false (and not counted) when the token is at its limit. */
  add(tokenId: string, socket: WebSocket): boolean {
    let sockets = this.#byToken.get(tokenId);
    if (!sockets) this.#byToken.set(tokenId, (sockets = new Set()));
    if (sockets.size >= this.maxPerToken) return false;
    sockets.add(socket);
    return true;
  }

  remove(tokenId: string, socket: WebSocket): void {
    const sockets = this.#byToken.get(tokenId);
    if (!sockets?.delete(socket) || sockets.size > 0) return;
    this.#byToken.delete(tokenId);
  }

  /** Closes every connection of the token (it was revoked or has expired). */
  closeToken(tokenId: string, reason: string): void {
    for (const socket of this.#byToken.get(tokenId) ?? []) socket.close(WsCloseCode.Unauthorized, reason);
  }

  get tokenIds(): string[] {
    return [...this.#byToken.keys()];
  }
}

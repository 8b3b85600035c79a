import { createClient as createWsClient, type Client as WsClient } from "graphql-ws";
import { Client, cacheExchange, fetchExchange, subscriptionExchange, type CombinedError } from "urql";

/** The API on the origin that served the dashboard: GraphQL over HTTP and graphql-ws on the same path. */
const GRAPHQL_PATH = "/graphql";

function wsUrl(): string {
  const url = new URL(GRAPHQL_PATH, window.location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.toString();
}

/** graphql-ws close codes after which a reconnect cannot succeed (the server's WsCloseCode). */
const FINAL_CLOSE_CODES = new Set([4401, 4403, 4400, 4406, 4409, 4429]);

export interface Api {
  client: Client;
  dispose(): void;
}

/**
 * One urql client per token: every HTTP request carries `Authorization: Bearer`,
 * the WebSocket its connectionParams. Subscriptions share one lazy connection that
 * reconnects after a network drop (not after the server refused the token).
 */
export function createApi(token: string): Api {
  const authorization = `Bearer ${token}`;
  const ws: WsClient = createWsClient({
    url: wsUrl(),
    connectionParams: { authorization },
    lazy: true,
    lazyCloseTimeout: 3_000,
    retryAttempts: 20,
    shouldRetry: (event) => !(event instanceof CloseEvent && FINAL_CLOSE_CODES.has(event.code)),
  });
  const client = new Client({
    url: GRAPHQL_PATH,
    // Apollo's CSRF prevention refuses GET queries without a preflight header; POST it is.
    preferGetMethod: false,
    fetchOptions: () => ({ headers: { authorization } }),
    exchanges: [
      cacheExchange,
      fetchExchange,
      subscriptionExchange({
        forwardSubscription(request) {
          const operation = { ...request, query: request.query ?? "" };
          return {
            subscribe(sink) {
              const unsubscribe = ws.subscribe(operation, sink);
              return { unsubscribe };
            },
          };
        },
      }),
    ],
  });
  return { client, dispose: () => void ws.dispose() };
}

/** One error as the API said it: its `extensions.code` and message. */
export interface ApiProblem {
  code: string;
  message: string;
  /** BAD_USER_INPUT: the argument at fault. */
  field?: string;
}

/** What went wrong, in the API's own words: GraphQL errors with their codes, or the network failure. */
export function problemsOf(error: CombinedError): ApiProblem[] {
  if (error.graphQLErrors.length > 0) {
    return error.graphQLErrors.map((e) => ({
      code: typeof e.extensions?.code === "string" ? e.extensions.code : "ERROR",
      message: e.message,
      ...(typeof e.extensions?.field === "string" ? { field: e.extensions.field } : {}),
    }));
  }
  const network = error.networkError;
  // graphql-ws hands over the CloseEvent: its code and reason are the server's answer.
  const close = (network as unknown) instanceof CloseEvent ? (network as unknown as CloseEvent) : null;
  if (close) return [{ code: `WEBSOCKET_CLOSED_${close.code}`, message: close.reason || "the live connection was closed" }];
  return [{ code: "NETWORK_ERROR", message: network?.message || error.message }];
}

export const isUnauthenticated = (error: CombinedError | undefined) =>
  !!error && problemsOf(error).some((p) => p.code === "UNAUTHENTICATED" || p.code === "WEBSOCKET_CLOSED_4401");

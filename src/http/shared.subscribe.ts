import { randomBytes } from "node:crypto";
import {
  createSourceEventStream,
  execute,
  parse,
  specifiedRules,
  validate,
  type ValidationRule,
  type DocumentNode,
  type ExecutionArgs,
  type ExecutionResult,
  type GraphQLError,
} from "graphql";
import { LRUCache } from "lru-cache";
import type { WebSocket } from "ws";
import { upTo } from "../lru.js";
import type { Context } from "./context.js";

type Result = ExecutionResult | Promise<ExecutionResult>;

function isAsyncIterable(value: unknown): value is AsyncIterable<unknown> {
  return typeof value === "object" && value !== null && Symbol.asyncIterator in value;
}

const MAX_DOCUMENTS = 1000;

/**
 * Parsing and validation that every subscriber sending the same query
 * shares: a parsed document (its AST and token list) is kilobytes, which
 * 10,000 dashboards would otherwise each hold for as long as they watch.
 */
export function sharedDocuments(options: { maxTokens?: number; rules?: readonly ValidationRule[] } = {}) {
  const rules = [...specifiedRules, ...(options.rules ?? [])];
  const documents = new LRUCache<string, { text: string; document: DocumentNode }>(upTo(MAX_DOCUMENTS));
  const validated = new WeakMap<DocumentNode, readonly GraphQLError[]>();
  return {
    /** graphql-ws keeps each subscribe message for the subscription's life: let it hold the shared text. */
    onSubscribe: (_ctx: unknown, _id: string, payload: { query: string }): void => {
      const known = documents.get(payload.query);
      if (known) payload.query = known.text;
    },
    parse: (source: Parameters<typeof parse>[0]): DocumentNode => {
      const text = typeof source === "string" ? source : source.body;
      let known = documents.get(text);
      if (!known) {
        known = { text, document: parse(source, { maxTokens: options.maxTokens }) };
        documents.set(text, known);
      }
      return known.document;
    },
    validate: (schema: Parameters<typeof validate>[0], document: DocumentNode): readonly GraphQLError[] => {
      let errors = validated.get(document);
      if (!errors) validated.set(document, (errors = validate(schema, document, rules)));
      return errors;
    },
  };
}

/**
 * graphql's `subscribe`, but an event is executed once for all subscribers
 * that asked the same thing: the same document, variables and scopes. Every
 * instance delivers each event object to all its subscribers of the product
 * (one Redis subscription, one parse), so 10,000 dashboards watching a
 * product cost one execution per report instead of 10,000; they then share
 * the result object, which {@link serialisedOnce} serialises once.
 */
export function sharedSubscribe() {
  const documentIds = new WeakMap<DocumentNode, number>();
  // Every subscriber of a query holds its key for as long as it watches: one copy of each.
  const keys = new LRUCache<string, string>(upTo(MAX_DOCUMENTS));
  let nextDocumentId = 0;
  return async (args: ExecutionArgs): Promise<AsyncGenerator<ExecutionResult> | ExecutionResult> => {
    const source = await createSourceEventStream(args);
    if (!isAsyncIterable(source)) return source;
    const scopes = (args.contextValue as Context | undefined)?.principal.scopes.join(",") ?? "";
    let documentId = documentIds.get(args.document);
    if (documentId === undefined) documentIds.set(args.document, (documentId = nextDocumentId++));
    const made = `${documentId}|${args.operationName ?? ""}|${JSON.stringify(args.variableValues ?? {})}|${scopes}`;
    let key = keys.get(made);
    if (key === undefined) keys.set(made, (key = made));
    return new SharedStream(source[Symbol.asyncIterator](), args, key);
  };
}

/**
 * One subscriber's stream of shared results. A class, not an object of
 * closures: 10,000 subscribers hold one each.
 */
class SharedStream implements AsyncGenerator<ExecutionResult> {
  constructor(
    private readonly iterator: AsyncIterator<unknown>,
    private readonly args: ExecutionArgs,
    private readonly key: string,
  ) {}

  async next(): Promise<IteratorResult<ExecutionResult, undefined>> {
    const step = await this.iterator.next();
    return step.done ? { done: true, value: undefined } : { done: false, value: await this.#executeOnce(step.value) };
  }

  async return(): Promise<IteratorResult<ExecutionResult, undefined>> {
    await this.iterator.return?.();
    return { done: true, value: undefined };
  }

  async throw(err: unknown): Promise<IteratorResult<ExecutionResult, undefined>> {
    await this.iterator.return?.();
    throw err;
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  #executeOnce(event: unknown): Result {
    if (typeof event !== "object" || event === null || !Object.isExtensible(event)) return execute({ ...this.args, rootValue: event });
    const held = event as { [RESULTS]?: Map<string, Result> };
    let forEvent = held[RESULTS];
    if (!forEvent) Object.defineProperty(event, RESULTS, { value: (forEvent = new Map()) });
    let result = forEvent.get(this.key);
    if (!result) forEvent.set(this.key, (result = execute({ ...this.args, rootValue: event })));
    return result;
  }
}

/**
 * Where a result keeps its stand-in, and an event its results: a hidden
 * property rather than a WeakMap, whose entries (one per report, thousands a
 * second) cost V8's collector more than the serialisation saved for a
 * single subscriber. Not enumerable: spreads and JSON do not see it.
 */
const STAND_IN = Symbol("iothub-ota.standIn");
const RESULTS = Symbol("iothub-ota.results");

/** A result's place in graphql-ws' message: its JSON, made once, and a marker in its stead. */
class StandIn {
  #json: string | undefined;

  constructor(
    private readonly result: object,
    private readonly marker: string,
    private readonly hand: (json: string) => void,
  ) {}

  toJSON(): string {
    this.hand((this.#json ??= JSON.stringify(this.result)));
    return this.marker;
  }
}

/**
 * Delivery of one execution result to many graphql-ws subscribers with one
 * `JSON.stringify` of it. graphql-ws 6 sends every `next` as
 * `JSON.stringify({ id, type: "next", payload })` per subscriber, so a
 * result shared by 10,000 subscribers ({@link sharedSubscribe}) would be
 * serialised 10,000 times. Here {@link payload} (for `onNext`) hands
 * graphql-ws a stand-in whose `toJSON` gives a marker string and leaves the
 * result's JSON, made once per result, in a slot; {@link wrap}ped sockets
 * splice that JSON in place of the marker, the only per-subscriber work being
 * the message's short head (`{"id":…,"type":"next","payload":`).
 *
 * This rests on graphql-ws' ws adapter calling the socket's `send` in the
 * same synchronous step as its stringify (`use/ws.js`: `send(data)` →
 * `socket.send(data, cb)` inside the Promise executor), so nothing can run
 * between a `toJSON` and the `send` it belongs to. The marker carries a
 * random nonce: no device-sent text can spell it.
 */
export function serialisedOnce() {
  const marker = `\u0000iothub-ota-shared:${randomBytes(12).toString("hex")}`;
  const tail = `"payload":${JSON.stringify(marker)}}`;
  /** The JSON of the payload whose marker was stringified last, until its socket takes it. */
  let slot: string | undefined;
  const wrapped = new WeakSet<WebSocket>();

  function splice(data: unknown): unknown {
    if (typeof data !== "string" || slot === undefined || !data.endsWith(tail)) return data;
    const json = slot;
    slot = undefined;
    return `${data.slice(0, data.length - tail.length)}"payload":${json}}`;
  }

  return {
    /** Makes the socket splice shared payloads into its messages (once per socket). */
    wrap(socket: WebSocket): void {
      if (wrapped.has(socket)) return;
      wrapped.add(socket);
      const send = socket.send.bind(socket) as (data: unknown, ...rest: unknown[]) => void;
      (socket as { send: (data: unknown, ...rest: unknown[]) => void }).send = (data, ...rest) => send(splice(data), ...rest);
    },
    /**
     * What `onNext` returns for `result`: the same stand-in for every
     * subscriber given the same result object, serialised on first use.
     */
    payload(result: object): object {
      const held = result as { [STAND_IN]?: StandIn };
      let standIn = held[STAND_IN];
      if (!standIn) {
        standIn = new StandIn(result, marker, (json) => (slot = json));
        Object.defineProperty(result, STAND_IN, { value: standIn });
      }
      return standIn;
    },
  };
}

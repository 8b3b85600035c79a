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
 * product cost one execution per report instead of 10,000.
 */
export function sharedSubscribe() {
  const results = new WeakMap<object, Map<string, Result>>();
  const documentIds = new WeakMap<DocumentNode, number>();
  let nextDocumentId = 0;
  return async (args: ExecutionArgs): Promise<AsyncGenerator<ExecutionResult> | ExecutionResult> => {
    const source = await createSourceEventStream(args);
    if (!isAsyncIterable(source)) return source;
    const scopes = (args.contextValue as Context | undefined)?.principal.scopes.join(",") ?? "";
    let documentId = documentIds.get(args.document);
    if (documentId === undefined) documentIds.set(args.document, (documentId = nextDocumentId++));
    const key = `${documentId}|${args.operationName ?? ""}|${JSON.stringify(args.variableValues ?? {})}|${scopes}`;
    const iterator = source[Symbol.asyncIterator]();
    const executeOnce = (event: unknown): Result => {
      if (typeof event !== "object" || event === null) return execute({ ...args, rootValue: event });
      let forEvent = results.get(event);
      if (!forEvent) results.set(event, (forEvent = new Map()));
      let result = forEvent.get(key);
      if (!result) forEvent.set(key, (result = execute({ ...args, rootValue: event })));
      return result;
    };
    const mapped: AsyncGenerator<ExecutionResult> = {
      async next() {
        const step = await iterator.next();
        return step.done ? { done: true, value: undefined } : { done: false, value: await executeOnce(step.value) };
      },
      async return() {
        await iterator.return?.();
        return { done: true, value: undefined };
      },
      async throw(err: unknown) {
        await iterator.return?.();
        throw err;
      },
      [Symbol.asyncIterator]() {
        return mapped;
      },
    };
    return mapped;
  };
}

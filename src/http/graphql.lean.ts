import type { IncomingMessage, ServerResponse } from "node:http";
import type { ApolloServerPlugin } from "@apollo/server";
import type { NextFunction, Request, Response } from "express";
import {
  execute,
  getArgumentValues,
  getNamedType,
  getNullableType,
  getOperationAST,
  getVariableValues,
  isLeafType,
  isListType,
  isNonNullType,
  isObjectType,
  Kind,
  type DocumentNode,
  type ExecutionResult,
  type FieldNode,
  type FragmentDefinitionNode,
  type GraphQLField,
  type GraphQLLeafType,
  type GraphQLObjectType,
  type GraphQLOutputType,
  type GraphQLResolveInfo,
  type GraphQLSchema,
  type OperationDefinitionNode,
  type SelectionSetNode,
} from "graphql";
import { LRUCache } from "lru-cache";
import { bearerToken, type Principal } from "../auth/principal.js";
import type { Context } from "./context.js";
import { listItemsCounter } from "./graphql.limits.js";

/**
 * GraphQL over HTTP without Apollo's request pipeline, for the requests that
 * need none of it: a POST of one JSON operation (no batch, no extensions, no
 * persisted query), a query, answered as `application/json`, whose document
 * Apollo has already parsed and validated (its rules: the specified ones,
 * Armor's, no introspection in production), and that runs without an error.
 * Everything else, including every refusal and every error, is Apollo's
 * (`next()`), so the limits, the status codes and the error masking stay
 * Apollo's alone. A query that failed here is run again by Apollo: a read,
 * so running it twice changes nothing.
 *
 * Measured (BENCHMARKS.md, "Queries (issue 9)"): Apollo's pipeline, its
 * HTTP integration and graphql-js' execution of every leaf field were most
 * of a single read's and of a 1,000-record read's CPU.
 */

/**
 * Characters of query text kept with their documents: by size, not count, so
 * that valid queries made large with long literals cannot fill the memory
 * (Apollo's own document store is bounded the same way). A text longer than
 * this is never kept: Apollo answers it every time.
 */
const MAX_TEXT_CHARS = 2_000_000;

interface Prepared {
  document: DocumentNode;
  fragments: Record<string, FragmentDefinitionNode>;
  /**
   * Per operation of the document, by the name asked (`=<name>`, "" for none):
   * the query it is (null: a mutation or subscription), its plan (null:
   * graphql-js executes it) and its list-items count.
   */
  operations: Map<string, { operation: OperationDefinitionNode | null; plan: Plan | null; listItems: (variables: Record<string, unknown>) => number }>;
}

/** A response key of a leaf selection: the field's value, serialised by its scalar or enum. */
interface LeafField {
  key: string;
  /** The property the default resolver reads; undefined: `__typename`. */
  name: string | undefined;
  type: GraphQLLeafType | undefined;
  nonNull: boolean;
}

/** A root field whose value is an object (or a list of them) of leaf fields the default resolver reads. */
interface RootField {
  key: string;
  field: GraphQLField<unknown, unknown>;
  node: FieldNode;
  /** Outer non-null, list, item non-null. */
  nonNull: boolean;
  list: boolean;
  itemNonNull: boolean;
  object: GraphQLObjectType;
  leaves: LeafField[];
}

interface Plan {
  operation: OperationDefinitionNode;
  roots: RootField[];
}

/** Thrown inside a plan: what graphql-js would answer with an error; Apollo answers it instead. */
const BAIL = Symbol("bail to Apollo");

const hasDirectives = (node: { directives?: readonly unknown[] }) => (node.directives?.length ?? 0) > 0;

/**
 * The fields a selection set asks for, fragments spread, by response key; null
 * when it has what a plan does not handle (directives, such as @skip and
 * @include, type conditions on another type, a key asked twice).
 */
function collect(selectionSet: SelectionSetNode, type: GraphQLObjectType, fragments: Record<string, FragmentDefinitionNode>, into = new Map<string, FieldNode>(), seen = new Set<string>()): Map<string, FieldNode> | null {
  for (const s of selectionSet.selections) {
    if (hasDirectives(s)) return null;
    switch (s.kind) {
      case Kind.FIELD: {
        const key = s.alias?.value ?? s.name.value;
        if (into.has(key)) return null;
        into.set(key, s);
        break;
      }
      case Kind.INLINE_FRAGMENT:
        if (s.typeCondition && s.typeCondition.name.value !== type.name) return null;
        if (!collect(s.selectionSet, type, fragments, into, seen)) return null;
        break;
      case Kind.FRAGMENT_SPREAD: {
        const fragment = fragments[s.name.value];
        if (!fragment || seen.has(s.name.value) || hasDirectives(fragment) || fragment.typeCondition.name.value !== type.name) return null;
        seen.add(s.name.value);
        if (!collect(fragment.selectionSet, type, fragments, into, seen)) return null;
        break;
      }
      default: {
        const never: never = s;
        return never;
      }
    }
  }
  return into;
}

/** The plan of an operation, or null when graphql-js must execute it. */
function planOf(schema: GraphQLSchema, operation: OperationDefinitionNode, fragments: Record<string, FragmentDefinitionNode>): Plan | null {
  const query = schema.getQueryType();
  if (operation.operation !== "query" || !query || hasDirectives(operation)) return null;
  const selected = collect(operation.selectionSet, query, fragments);
  if (!selected) return null;
  const roots: RootField[] = [];
  for (const [key, node] of selected) {
    const field = query.getFields()[node.name.value];
    // A root field needs its resolver (ours); `__typename` and introspection go to graphql-js.
    if (!field?.resolve || !node.selectionSet) return null;
    let type: GraphQLOutputType = field.type;
    const nonNull = isNonNullType(type);
    type = getNullableType(type);
    const list = isListType(type);
    let itemNonNull = false;
    if (isListType(type)) {
      itemNonNull = isNonNullType(type.ofType);
      type = getNullableType(type.ofType);
    }
    if (!isObjectType(type) || type.isTypeOf) return null;
    const object = type;
    const leafNodes = collect(node.selectionSet, object, fragments);
    if (!leafNodes) return null;
    const leaves: LeafField[] = [];
    for (const [leafKey, leaf] of leafNodes) {
      if (leaf.selectionSet || (leaf.arguments?.length ?? 0) > 0) return null;
      if (leaf.name.value === "__typename") {
        leaves.push({ key: leafKey, name: undefined, type: undefined, nonNull: true });
        continue;
      }
      const def = object.getFields()[leaf.name.value];
      // A field with a resolver of its own (type-graphql's, a field resolver) is graphql-js' to run.
      if (!def || def.resolve || def.args.length > 0) return null;
      const named = getNamedType(def.type);
      if (!isLeafType(named) || isListType(getNullableType(def.type))) return null;
      leaves.push({ key: leafKey, name: def.name, type: named, nonNull: isNonNullType(def.type) });
    }
    roots.push({ key, field, node, nonNull, list, itemNonNull, object, leaves });
  }
  return { operation, roots };
}

/** One object of leaf fields, as graphql-js' default resolver and `serialize` would complete it. */
function completeObject(root: RootField, value: unknown): Record<string, unknown> {
  if (typeof value !== "object") throw BAIL;
  const source = value as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  for (const leaf of root.leaves) {
    if (leaf.name === undefined) {
      out[leaf.key] = root.object.name;
      continue;
    }
    const v = source[leaf.name];
    if (v === null || v === undefined || typeof v === "function") {
      // A function is a resolver graphql-js would call; null on a non-null field is an error: both graphql-js'.
      if (leaf.nonNull || typeof v === "function") throw BAIL;
      out[leaf.key] = null;
      continue;
    }
    const serialized = (leaf.type as GraphQLLeafType).serialize(v);
    if (serialized === null || serialized === undefined) throw BAIL;
    out[leaf.key] = serialized;
  }
  return out;
}

function completeRoot(root: RootField, value: unknown): unknown {
  if (value === null || value === undefined) {
    if (root.nonNull) throw BAIL;
    return null;
  }
  if (!root.list) return completeObject(root, value);
  if (!Array.isArray(value)) throw BAIL;
  const out = new Array<unknown>(value.length);
  for (let i = 0; i < value.length; i++) {
    const item: unknown = value[i];
    if (item === null || item === undefined) {
      if (root.itemNonNull) throw BAIL;
      out[i] = null;
    } else out[i] = completeObject(root, item);
  }
  return out;
}

async function runPlan(schema: GraphQLSchema, prepared: Prepared, plan: Plan, variables: Record<string, unknown>, context: Context): Promise<ExecutionResult | undefined> {
  const coerced = getVariableValues(schema, plan.operation.variableDefinitions ?? [], variables);
  if (coerced.errors) return undefined;
  const query = schema.getQueryType() as GraphQLObjectType;
  const data: Record<string, unknown> = {};
  try {
    await Promise.all(
      plan.roots.map(async (root) => {
        const args = getArgumentValues(root.field, root.node, coerced.coerced);
        const info: GraphQLResolveInfo = {
          fieldName: root.field.name,
          fieldNodes: [root.node],
          returnType: root.field.type,
          parentType: query,
          path: { prev: undefined, key: root.key, typename: query.name },
          schema,
          fragments: prepared.fragments,
          rootValue: undefined,
          operation: plan.operation,
          variableValues: coerced.coerced,
        };
        data[root.key] = completeRoot(root, await root.field.resolve!(undefined, args, context, info));
      }),
    );
  } catch {
    // A resolver's error or one of completion: Apollo runs it again and answers the error its way.
    return undefined;
  }
  // graphql-js answers root fields in the order asked.
  const ordered: Record<string, unknown> = {};
  for (const root of plan.roots) ordered[root.key] = data[root.key];
  return { data: ordered };
}

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

/** An Accept header Apollo answers with `application/json`: none, `*\/*`, or `application/json` alone. */
const JSON_ONLY = /^\s*(?:application\/json|\*\/\*)\s*(?:;[^,]*)?$/i;

export class LeanGraphql {
  readonly #prepared = new LRUCache<string, Prepared>({ maxSize: MAX_TEXT_CHARS, sizeCalculation: (_prepared, text) => text.length + 1 });
  #open = true;

  constructor(
    private readonly schema: GraphQLSchema,
    /** GRAPHQL_MAX_LIST_ITEMS: over it, Apollo refuses the operation (and counts the refusal). */
    private readonly maxListItems: number,
  ) {}

  /** Apollo: remembers each query text once Apollo has parsed and validated it. */
  plugin(): ApolloServerPlugin<Context> {
    return {
      requestDidStart: async () => ({
        didResolveOperation: async ({ source, document }) => {
          if (this.#prepared.has(source)) return;
          const fragments: Record<string, FragmentDefinitionNode> = {};
          for (const d of document.definitions) if (d.kind === Kind.FRAGMENT_DEFINITION) fragments[d.name.value] = d;
          this.#prepared.set(source, { document, fragments, operations: new Map() });
        },
      }),
    };
  }

  /** Stops answering: Apollo, stopping, answers what still arrives. */
  close(): void {
    this.#open = false;
  }

  /** Express, after authentication and `express.json()`; `next()` hands the request to Apollo. */
  readonly middleware = (req: Request, res: Response, next: NextFunction): void => {
    if ((req as Tried)[TRIED]) return next();
    this.answer(req.method, req.body, req.headers.accept, res.locals.principal as Principal, res).then(
      (answered) => void (answered || next()),
      () => next(),
    );
  };

  /**
   * Answers the request if it is a query this path may answer and it runs
   * without an error; resolves false otherwise, having written nothing, for
   * Apollo to answer it.
   */
  async answer(method: string | undefined, body: unknown, accept: string | undefined, principal: Principal, res: ServerResponse): Promise<boolean> {
    if (
      !this.#open ||
      method !== "POST" ||
      !isRecord(body) ||
      typeof body.query !== "string" ||
      body.extensions !== undefined ||
      (body.variables != null && !isRecord(body.variables)) ||
      (body.operationName != null && typeof body.operationName !== "string") ||
      (accept !== undefined && !JSON_ONLY.test(accept))
    ) {
      return false;
    }
    const prepared = this.#prepared.get(body.query);
    if (!prepared) return false;
    const operationName = (body.operationName as string | null | undefined) ?? undefined;
    const variables = (body.variables as Record<string, unknown> | null | undefined) ?? {};
    const opKey = operationName === undefined ? "" : `=${operationName}`;
    let compiled = prepared.operations.get(opKey);
    if (!compiled) {
      const operation = getOperationAST(prepared.document, operationName);
      // A name the document does not have is not remembered: names asked are the client's, operations are the document's.
      if (!operation) return false;
      const query = operation?.operation === "query" ? operation : null;
      compiled = {
        operation: query,
        plan: query && planOf(this.schema, query, prepared.fragments),
        listItems: listItemsCounter(this.schema, prepared.document, operationName),
      };
      prepared.operations.set(opKey, compiled);
    }
    const { operation, plan } = compiled;
    // A mutation or subscription: Apollo's.
    if (!operation) return false;
    // The list-items limit depends on the variables: checked on every request, refused by Apollo.
    if (compiled.listItems(variables) > this.maxListItems) return false;
    const context: Context = { principal };
    const result = plan
      ? await runPlan(this.schema, prepared, plan, variables, context)
      : await execute({ schema: this.schema, document: prepared.document, operationName, variableValues: variables, contextValue: context });
    if (!result || result.errors || result.data == null) return false;
    // Apollo's body for a result without errors (its field order: errors, data, extensions), and its content type.
    // Encoded once: Buffer.byteLength and then end(text) would walk a 300 KB answer twice.
    const bytes = Buffer.from(`${JSON.stringify({ data: result.data })}\n`);
    res.statusCode = 200;
    res.setHeader("content-type", "application/json; charset=utf-8");
    res.setHeader("content-length", bytes.length);
    res.end(bytes);
    return true;
  }

  /**
   * `POST /graphql` ahead of Express, for the requests the lean path is
   * made for: a JSON body of a known length, a bearer token. It checks the
   * token, reads and parses the body itself (what `authenticate` and
   * `express.json()` do) and answers; anything it does not answer goes to
   * `fallback` (the Express app) as it would have: before the body is read
   * when the token is refused, with `req.body` set (read already: body-parser
   * leaves it) or the parse error to raise ({@link bodyErrorOf}) after.
   * Returns false, having done nothing, for every other request.
   */
  take(req: IncomingMessage, res: ServerResponse, deps: FastPathDeps): boolean {
    const { headers } = req;
    const length = Number(headers["content-length"]);
    if (
      !this.#open ||
      req.method !== "POST" ||
      req.url !== "/graphql" ||
      !JSON_BODY.test(headers["content-type"] ?? "") ||
      !(length > 0 && length <= deps.bodyLimit) ||
      headers["transfer-encoding"] !== undefined ||
      headers.expect !== undefined ||
      // A browser's cross-origin request: Express adds the CORS headers (CORS_ORIGINS).
      (deps.cors && headers.origin !== undefined)
    ) {
      return false;
    }
    (req as Tried)[TRIED] = true;
    void (async () => {
      // Refused, or not checkable now (the database is down): Express checks it again and answers, before reading the body.
      const principal = await deps.verify(bearerToken(headers.authorization)).catch(() => null);
      if (!principal) return deps.fallback(req, res);
      const text = await readBody(req, length);
      let body: unknown;
      try {
        body = JSON.parse(text);
      } catch (err) {
        (req as Tried)[BODY_ERROR] = Object.assign(err as Error, { type: "entity.parse.failed", status: 400 });
        return deps.fallback(req, res);
      }
      if (!(await this.answer(req.method, body, headers.accept, principal, res).catch(() => false))) {
        (req as { body?: unknown }).body = body;
        deps.fallback(req, res);
      }
    })().catch((err: unknown) => {
      // The body could not be read (the client went away, or sent another length than it said): Express answers it.
      (req as Tried)[BODY_ERROR] = err;
      deps.fallback(req, res);
    });
    return true;
  }
}

/** What the path ahead of Express needs of the server. */
export interface FastPathDeps {
  verify(token: string | undefined): Promise<Principal | null>;
  bodyLimit: number;
  /** CORS_ORIGINS is set. */
  cors: boolean;
  fallback(req: IncomingMessage, res: ServerResponse): void;
}

const TRIED = Symbol("lean path tried");
const BODY_ERROR = Symbol("body error");
type Tried = { [TRIED]?: boolean; [BODY_ERROR]?: unknown };

/** For the Express chain: the error reading the body raised on the path ahead of Express, raised again there. */
export function bodyErrorOf(req: IncomingMessage): unknown {
  return (req as Tried)[BODY_ERROR];
}

/** `application/json`, in UTF-8 (said or not). */
const JSON_BODY = /^application\/json\s*(?:;\s*charset=utf-8\s*)?$/i;

/** The body, of exactly `length` bytes (Content-Length), as UTF-8 text. */
function readBody(req: IncomingMessage, length: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let received = 0;
    req.on("data", (chunk: Buffer) => {
      received += chunk.length;
      if (received <= length) chunks.push(chunk);
    });
    req.once("end", () => {
      if (received !== length) reject(Object.assign(new Error("request size did not match content length"), { type: "request.size.invalid", status: 400 }));
      else resolve(chunks.length === 1 ? chunks[0]!.toString("utf8") : Buffer.concat(chunks, length).toString("utf8"));
    });
    req.once("error", reject);
    // The client went away before the whole body (after "end", a settled promise ignores it).
    req.once("close", () => reject(Object.assign(new Error("request aborted"), { type: "request.aborted", status: 400 })));
  });
}

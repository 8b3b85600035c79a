import type { ApolloServerPlugin } from "@apollo/server";
import { costLimitRule } from "@escape.tech/graphql-armor-cost-limit";
import { maxAliasesRule } from "@escape.tech/graphql-armor-max-aliases";
import { maxDepthRule } from "@escape.tech/graphql-armor-max-depth";
import { maxDirectivesRule } from "@escape.tech/graphql-armor-max-directives";
import {
  getArgumentValues,
  getNamedType,
  getOperationAST,
  GraphQLError,
  isInterfaceType,
  isObjectType,
  Kind,
  type DocumentNode,
  type ExecutionArgs,
  type FieldNode,
  type FragmentDefinitionNode,
  type GraphQLCompositeType,
  type GraphQLField,
  type GraphQLSchema,
  type SelectionSetNode,
  type ValidationContext,
  type ValidationRule,
} from "graphql";
import type { Limits } from "../config/config.js";

/**
 * List items one operation may ask for in all: the lengths of its list
 * arguments (`otaProgresses(deviceNames)`, tags) and its page sizes (`first`),
 * summed over every field, aliases and fragments included. One
 * `otaProgresses` of 10,000 names is allowed; the same list under two aliases
 * is not (GRAPHQL_MAX_LIST_ITEMS).
 */

const PARSE_FAILED = "GRAPHQL_PARSE_FAILED";
const VALIDATION_FAILED = "GRAPHQL_VALIDATION_FAILED";

type Refused = (rule: string) => void;

/**
 * GraphQL Armor's validation rules with the configured limits: depth, aliases,
 * directives and cost. A breach is reported as a validation error (the
 * operation is not run) rather than thrown out of `validate`.
 */
export function armorRules(limits: Limits, refused: Refused): ValidationRule[] {
  const reporting = (rule: string) => ({
    propagateOnRejection: false,
    onReject: [
      (ctx: ValidationContext | null, err: GraphQLError) => {
        refused(rule);
        ctx?.reportError(err);
      },
    ],
  });
  return [
    maxDepthRule({ n: limits.graphqlMaxDepth, ...reporting("depth") }),
    maxAliasesRule({ n: limits.graphqlMaxAliases, ...reporting("aliases") }),
    maxDirectivesRule({ n: limits.graphqlMaxDirectives, ...reporting("directives") }),
    costLimitRule({ maxCost: limits.graphqlMaxCost, ...reporting("cost") }),
  ] as ValidationRule[];
}

/** Sums the lengths of the arrays in an argument value (lists nested in input objects too). */
function itemsIn(value: unknown): number {
  if (Array.isArray(value)) return value.length + value.reduce((n: number, v) => n + (typeof v === "object" ? itemsIn(v) : 0), 0);
  if (typeof value === "object" && value !== null) return Object.values(value).reduce((n: number, v) => n + itemsIn(v), 0);
  return 0;
}

/** A selection set as the list-items count needs it: the fields that take arguments, nested sets, fragment spreads. */
interface Counted {
  sites: { field: GraphQLField<unknown, unknown>; node: FieldNode }[];
  children: Counted[];
  spreads: string[];
}

/**
 * The list items an operation asks for (see {@link GRAPHQL_MAX_LIST_ITEMS}),
 * as a function of its variables: what Armor's cost rule cannot see, as it
 * costs only literal `first`/`last`. The document is walked once here; each
 * call only reads the arguments of the fields that take some. Pure; each
 * fragment is costed once per call (memoised), so nested spreads cannot make
 * this slow.
 */
export function listItemsCounter(schema: GraphQLSchema, document: DocumentNode, operationName: string | null | undefined): (variables: Record<string, unknown> | null | undefined) => number {
  const operation = getOperationAST(document, operationName);
  const root = operation && schema.getRootType(operation.operation);
  if (!operation || !root) return () => 0;
  const fragmentNodes = new Map<string, FragmentDefinitionNode>();
  for (const d of document.definitions) if (d.kind === Kind.FRAGMENT_DEFINITION) fragmentNodes.set(d.name.value, d);
  const fragments = new Map<string, Counted | null>();

  const compile = (selectionSet: SelectionSetNode, parent: GraphQLCompositeType): Counted => {
    const counted: Counted = { sites: [], children: [], spreads: [] };
    for (const selection of selectionSet.selections) {
      switch (selection.kind) {
        case Kind.FIELD: {
          if (!isObjectType(parent) && !isInterfaceType(parent)) break;
          const field = parent.getFields()[selection.name.value];
          if (!field) break;
          // Defaults count too: a field with arguments is read even when the query gives none.
          if (field.args.length > 0) counted.sites.push({ field, node: selection });
          const named = getNamedType(field.type);
          if (selection.selectionSet && (isObjectType(named) || isInterfaceType(named))) counted.children.push(compile(selection.selectionSet, named));
          break;
        }
        case Kind.INLINE_FRAGMENT: {
          const type = selection.typeCondition ? schema.getType(selection.typeCondition.name.value) : parent;
          if (type && (isObjectType(type) || isInterfaceType(type))) counted.children.push(compile(selection.selectionSet, type));
          break;
        }
        case Kind.FRAGMENT_SPREAD: {
          const name = selection.name.value;
          if (!fragments.has(name)) {
            fragments.set(name, null); // a cycle (refused by validation anyway) costs nothing more
            const fragment = fragmentNodes.get(name);
            const type = fragment && schema.getType(fragment.typeCondition.name.value);
            fragments.set(name, fragment && type && (isObjectType(type) || isInterfaceType(type)) ? compile(fragment.selectionSet, type) : null);
          }
          counted.spreads.push(name);
          break;
        }
        default: {
          const never: never = selection;
          return never;
        }
      }
    }
    return counted;
  };
  const compiled = compile(operation.selectionSet, root);

  return (variables) => {
    const vars = variables ?? {};
    const fragmentCost = new Map<string, number>();
    const count = (c: Counted): number => {
      let total = 0;
      for (const { field, node } of c.sites) {
        try {
          const args = getArgumentValues(field, node, vars);
          for (const [name, value] of Object.entries(args)) {
            total += (name === "first" || name === "last") && typeof value === "number" ? Math.max(value, 0) : itemsIn(value);
          }
        } catch {
          // Arguments that do not coerce fail the operation when it runs, with a clear error; nothing to cost.
        }
      }
      for (const child of c.children) total += count(child);
      for (const name of c.spreads) {
        let cost = fragmentCost.get(name);
        if (cost === undefined) {
          fragmentCost.set(name, 0);
          const fragment = fragments.get(name);
          cost = fragment ? count(fragment) : 0;
          fragmentCost.set(name, cost);
        }
        total += cost;
      }
      return total;
    };
    return count(compiled);
  };
}

/** {@link listItemsCounter} for one request. */
export function listItems(schema: GraphQLSchema, document: DocumentNode, operationName: string | null | undefined, variables: Record<string, unknown> | null | undefined): number {
  return listItemsCounter(schema, document, operationName)(variables);
}

/** The error for an operation over `max` list items, or undefined. */
export function listItemsError(
  max: number,
  schema: GraphQLSchema,
  document: DocumentNode,
  operationName: string | null | undefined,
  variables: Record<string, unknown> | null | undefined,
): GraphQLError | undefined {
  const items = listItems(schema, document, operationName, variables);
  if (items <= max) return undefined;
  return new GraphQLError(`Query asks for ${items} list items in all (list arguments and page sizes); the limit is ${max}.`, {
    extensions: { code: VALIDATION_FAILED, http: { status: 400 } },
  });
}

/** Apollo Server: the list-items limit, once the operation and its variables are known. */
export function listItemsPlugin<T extends object>(max: number, refused: Refused): ApolloServerPlugin<T> {
  return {
    async requestDidStart() {
      return {
        async didResolveOperation({ schema, document, operationName, request }) {
          const err = listItemsError(max, schema, document, operationName, request.variables);
          if (err) {
            refused("list_items");
            throw err;
          }
        },
      };
    },
  };
}

const requestError = (code: string, message: string) => new GraphQLError(message, { extensions: { code } });

export interface OperationRequest {
  query: string;
  operationName?: string | null;
  variables?: Record<string, unknown> | null;
}

/**
 * graphql-ws: the same limits as over HTTP, applied before anything runs.
 * `parse` and `validate` are the server's shared, cached ones, made with the
 * token limit and {@link armorRules}; this returns the arguments to execute
 * with, or the errors to answer (graphql-ws sends them and keeps the connection).
 */
export function wsOperationGate(
  maxListItems: number,
  schema: GraphQLSchema,
  parse: (text: string) => DocumentNode,
  validate: (schema: GraphQLSchema, document: DocumentNode) => readonly GraphQLError[],
  refused: Refused,
) {
  return (request: OperationRequest): ExecutionArgs | readonly GraphQLError[] => {
    if (typeof request.query !== "string") return [requestError("BAD_REQUEST", "query must be a string")];
    let document: DocumentNode;
    try {
      document = parse(request.query);
    } catch (err) {
      // Syntax errors, and the token limit (graphql's own maxTokens).
      if (err instanceof GraphQLError) return [requestError(PARSE_FAILED, err.message)];
      throw err;
    }
    const invalid = validate(schema, document);
    if (invalid.length > 0) {
      return invalid.map((e) => new GraphQLError(e.message, { nodes: e.nodes, extensions: { code: VALIDATION_FAILED } }));
    }
    const tooMany = listItemsError(maxListItems, schema, document, request.operationName, request.variables);
    if (tooMany) {
      refused("list_items");
      return [tooMany];
    }
    return { schema, document, operationName: request.operationName, variableValues: request.variables };
  };
}

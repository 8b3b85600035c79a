import { Field, ObjectType, type ClassType } from "type-graphql";

@ObjectType()
export class PageInfo {
  @Field(() => Boolean)
  hasNextPage!: boolean;

  @Field(() => String, { nullable: true })
  endCursor!: string | null;
}

/** A page of `T`, as every list of the API answers it. */
export interface Connection<T> {
  edges: { cursor: string; node: T }[];
  nodes: T[];
  pageInfo: PageInfo;
}

/**
 * The one connection shape of the API, `<name>Connection` with `<name>Edge`s
 * (cursor pagination), for a node type.
 */
export function connectionOf<T extends object>(node: ClassType<T>, name: string): ClassType<Connection<T>> {
  @ObjectType(`${name}Edge`)
  class Edge {
    @Field(() => String)
    cursor!: string;

    @Field(() => node)
    node!: T;
  }

  @ObjectType(`${name}Connection`)
  class Page implements Connection<T> {
    @Field(() => [Edge])
    edges!: Edge[];

    @Field(() => [node])
    nodes!: T[];

    @Field(() => PageInfo)
    pageInfo!: PageInfo;
  }
  return Page;
}

/** A connection from the nodes of one page, each edge's cursor from `cursorOf`. */
export function toConnection<T>(
  nodes: T[],
  cursorOf: (node: T, i: number) => string,
  hasNextPage: boolean,
  /** Where the next page starts when it is not after the last node (a filtered scan that stopped short). */
  endCursor?: string | null,
): Connection<T> {
  const edges = nodes.map((node, i) => ({ cursor: cursorOf(node, i), node }));
  return { edges, nodes, pageInfo: { hasNextPage, endCursor: endCursor ?? edges.at(-1)?.cursor ?? null } };
}

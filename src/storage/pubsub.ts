import { RedisPubSub } from "graphql-redis-subscriptions";
import type { Redis } from "ioredis";
import type { PubSub } from "type-graphql";

/**
 * type-graphql's PubSub over Redis pub/sub, so a subscriber on any instance
 * sees events published by every instance: one Redis subscription per
 * channel per instance, however many clients listen to it. Progress events
 * are published by the ingest Lua script; this side mostly listens.
 */
export class RedisPubSubAdapter implements PubSub {
  readonly #pubsub: RedisPubSub;

  constructor(publisher: Redis, subscriber: Redis) {
    this.#pubsub = new RedisPubSub({ publisher, subscriber });
  }

  /** The promise is for callers that must know of a failure; type-graphql's callers ignore it. */
  // PubSub types publish as void, but type-graphql only subscribes (src/http/schema.ts): this app's one
  // publisher, rollout.signals.ts, holds the adapter's own type, takes the promise and catches it.
  // eslint-disable-next-line @typescript-eslint/no-misused-promises
  publish(routingKey: string, payload: unknown): Promise<void> {
    return this.#pubsub.publish(routingKey, payload);
  }

  subscribe<T>(routingKey: string): AsyncIterableIterator<T> {
    return this.#pubsub.asyncIterableIterator<T>(routingKey) as AsyncIterableIterator<T>;
  }
}

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
    this.#pubsub = new RedisPubSub({ publisher, subscriber: withHandledUnsubscribe(subscriber) });
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

/**
 * graphql-redis-subscriptions sends UNSUBSCRIBE and PUNSUBSCRIBE when the last
 * listener of a channel leaves, without awaiting them. With Redis down they
 * wait in ioredis' offline queue and are rejected later (retries exhausted,
 * or "Connection is closed." when the server stops): unhandled, a rejection
 * ends the process. Their failure is harmless (a connection that is gone has
 * no subscriptions), so it is handled here.
 */
function withHandledUnsubscribe(subscriber: Redis): Redis {
  for (const method of ["unsubscribe", "punsubscribe"] as const) {
    const original = subscriber[method].bind(subscriber) as (...args: unknown[]) => Promise<unknown>;
    Object.defineProperty(subscriber, method, {
      configurable: true,
      value: (...args: unknown[]) => {
        const sent = original(...args);
        sent.catch(() => undefined);
        return sent;
      },
    });
  }
  return subscriber;
}

import type { RolloutSignals } from "../rollouts/rollout.service.js";
import type { RedisPubSubAdapter } from "./pubsub.js";

/** What goes over the wire: a rollout moved (its counts or state). */
export interface RolloutSignal {
  id: string;
  productName: string;
}

/** One publish per rollout per this interval at most, the last change always sent: subscribers recount anyway. */
const THROTTLE_MS = 100;

/**
 * Rollout changes over Redis pub/sub, so every instance's subscribers and
 * ingest hear of changes made anywhere. A rollout moving with every device
 * report publishes at most once per {@link THROTTLE_MS}, always after its
 * latest change.
 */
export class RedisRolloutSignals implements RolloutSignals {
  readonly #pending = new Map<string, { productName: string; timer: NodeJS.Timeout }>();
  readonly #last = new Map<string, number>();

  constructor(
    private readonly pubsub: RedisPubSubAdapter,
    readonly channel: string,
    /** A lost signal costs subscribers a recount until the next one; logged, not thrown. */
    private readonly onError: (err: unknown) => void,
  ) {}

  changed(id: string, productName: string): void {
    if (this.#pending.has(id)) return;
    const wait = Math.max(0, (this.#last.get(id) ?? 0) + THROTTLE_MS - Date.now());
    const timer = setTimeout(() => {
      this.#pending.delete(id);
      this.#last.set(id, Date.now());
      if (this.#last.size > 10_000) this.#last.clear();
      this.#publish(id, productName);
    }, wait);
    timer.unref();
    this.#pending.set(id, { productName, timer });
  }

  /** Every instance's signals, this one's included. */
  events(): AsyncIterableIterator<RolloutSignal> {
    return this.pubsub.subscribe<RolloutSignal>(this.channel);
  }

  #publish(id: string, productName: string): void {
    this.pubsub.publish(this.channel, { id, productName } satisfies RolloutSignal).catch(this.onError);
  }

  /** Sends what is pending now (at stop). */
  flush(): void {
    for (const [id, { productName, timer }] of this.#pending) {
      clearTimeout(timer);
      this.#publish(id, productName);
    }
    this.#pending.clear();
  }
}

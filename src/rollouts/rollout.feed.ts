import { IN_PROGRESS, type ExecutionCounts, type Rollout } from "./rollout.model.js";

/** What `rolloutChanged` pushes: the rollout with its counts, as read after a change. */
export interface RolloutSnapshot {
  rollout: Rollout;
  counts: ExecutionCounts;
}

export interface RolloutFeedOptions {
  /** Reads the rollout and its counts now; null when it is gone. */
  load(id: string): Promise<RolloutSnapshot | null>;
  /** At most one recount per rollout per this interval, however fast its devices report. */
  coalesceMs: number;
  onError(err: unknown): void;
}

interface Watcher {
  /** The latest snapshot not yet taken by this watcher. */
  pending: RolloutSnapshot | undefined;
  wake: (() => void) | undefined;
  closed: boolean;
}

interface Hub {
  watchers: Set<Watcher>;
  /** The last snapshot sent, as JSON: an unchanged recount sends nothing. */
  last: string | undefined;
  timer: NodeJS.Timeout | undefined;
  loading: boolean;
  dirty: boolean;
}

/** A rollout is over for its watchers once it ended and no device of it is still on its way. */
export function settled(s: RolloutSnapshot): boolean {
  const busy = IN_PROGRESS.reduce((n, state) => n + s.counts.byState[state], 0) + s.counts.byState.QUEUED;
  return ["COMPLETED", "ABORTED", "CANCELED"].includes(s.rollout.state) && busy === 0;
}

/**
 * Live rollout counts for subscribers. Every instance hears every rollout
 * change ({@link signal}); for a rollout someone watches here, a change
 * schedules one recount within `coalesceMs`, and a change during the recount
 * schedules another, so the last snapshot sent is always read after the last
 * change: watchers end on the true counts. A slow watcher holds one snapshot,
 * the newest. The stream completes once the rollout has {@link settled}.
 */
export class RolloutFeed {
  readonly #hubs = new Map<string, Hub>();

  constructor(private readonly options: RolloutFeedOptions) {}

  /** Rollouts watched on this instance, with their watcher counts (tests, diagnostics). */
  get watching(): ReadonlyMap<string, number> {
    return new Map([...this.#hubs].map(([id, hub]) => [id, hub.watchers.size]));
  }

  /** A rollout changed somewhere. */
  signal(id: string): void {
    const hub = this.#hubs.get(id);
    if (!hub) return;
    if (hub.loading) {
      hub.dirty = true;
      return;
    }
    if (hub.timer === undefined) hub.timer = setTimeout(() => void this.#recount(id, hub).catch((err: unknown) => this.options.onError(err)), this.options.coalesceMs);
  }

  /** Starts with the snapshot now, then each change (coalesced). */
  watch(id: string, first: RolloutSnapshot): AsyncIterableIterator<RolloutSnapshot> {
    let hub = this.#hubs.get(id);
    if (!hub) {
      hub = { watchers: new Set(), last: JSON.stringify(first), timer: undefined, loading: false, dirty: false };
      this.#hubs.set(id, hub);
    }
    const watcher: Watcher = { pending: first, wake: undefined, closed: false };
    hub.watchers.add(watcher);
    const thisHub = hub;
    let done = false;
    const iterator: AsyncIterableIterator<RolloutSnapshot> = {
      next: async () => {
        for (;;) {
          if (watcher.closed || done) return { done: true, value: undefined };
          const snapshot = watcher.pending;
          if (snapshot !== undefined) {
            watcher.pending = undefined;
            if (settled(snapshot)) done = true;
            return { done: false, value: snapshot };
          }
          await new Promise<void>((resolve) => (watcher.wake = resolve));
        }
      },
      return: async () => {
        this.#leave(id, thisHub, watcher);
        return { done: true, value: undefined };
      },
      [Symbol.asyncIterator]() {
        return iterator;
      },
    };
    // A change between the caller's read and joining would be missed: recount once.
    this.signal(id);
    return iterator;
  }

  stop(): void {
    for (const [id, hub] of this.#hubs) for (const w of hub.watchers) this.#leave(id, hub, w);
  }

  #leave(id: string, hub: Hub, watcher: Watcher): void {
    watcher.closed = true;
    watcher.wake?.();
    hub.watchers.delete(watcher);
    if (hub.watchers.size === 0 && this.#hubs.get(id) === hub) {
      clearTimeout(hub.timer);
      this.#hubs.delete(id);
    }
  }

  async #recount(id: string, hub: Hub): Promise<void> {
    hub.timer = undefined;
    hub.loading = true;
    hub.dirty = false;
    try {
      const snapshot = await this.options.load(id);
      if (snapshot === null) return;
      const json = JSON.stringify(snapshot);
      if (json === hub.last) return;
      hub.last = json;
      for (const w of hub.watchers) {
        w.pending = snapshot;
        const wake = w.wake;
        w.wake = undefined;
        wake?.();
      }
    } catch (err) {
      this.options.onError(err);
      hub.dirty = true; // tried again on the next interval
    } finally {
      hub.loading = false;
      if (hub.dirty && this.#hubs.get(id) === hub) {
        hub.dirty = false;
        this.signal(id);
      }
    }
  }
}

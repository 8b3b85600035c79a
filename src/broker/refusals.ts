import { LRUCache } from "lru-cache";
import { upTo } from "../lru.js";
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";

/** What the broker refuses or drops, as counted in `refused{kind}` (see src/metrics.ts). */
export type RefusalKind = "connect" | "publish" | "subscribe" | "will" | "retain" | "packet" | "session" | "bus";

/** Devices whose last log line is remembered; past this the oldest may log again early. */
const LOG_KEYS_MAX = 10_000;

/**
 * Counts every refusal and logs it at most once per key (a device, usually)
 * per interval: a device stuck on a refused topic would otherwise write a log
 * line per message.
 */
export class Refusals {
  readonly #logged: LRUCache<string, true> | undefined;

  constructor(
    private readonly metrics: Metrics,
    private readonly log: Logger,
    intervalMs: number,
  ) {
    this.#logged = intervalMs > 0 ? new LRUCache({ ...upTo(LOG_KEYS_MAX), ttl: intervalMs }) : undefined;
  }

  refuse(kind: RefusalKind, reason: string, key: string, details: Record<string, unknown> = {}): void {
    this.metrics.refused.inc({ kind, reason });
    if (this.shouldLog(`${kind}:${key}`)) this.log.warn({ kind, reason, key, ...details }, `broker refused a ${kind}`);
  }

  /** Whether a line about `key` may be logged now (and remembers that it was). */
  shouldLog(key: string): boolean {
    const logged = this.#logged;
    if (!logged) return true;
    if (logged.has(key)) return false;
    logged.set(key, true);
    return true;
  }
}

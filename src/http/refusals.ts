import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";

export type Surface = "http" | "graphql" | "ws";
export type Refuse = (surface: Surface, reason: string) => void;

/**
 * Counts every request the API refuses for its size, shape or limits
 * (`iothub_ota_broker_refused_total{kind="http"|"graphql"|"ws", reason}`), and logs
 * each kind of refusal at most once per interval, with how many there were:
 * a flood of bad requests is not a flood of log lines.
 */
export function refusals(metrics: Metrics, log: Logger, intervalMs: number): Refuse {
  // Keyed by surface and reason, both from fixed sets in the code: bounded.
  const since = new Map<string, { at: number; count: number }>();
  return (surface, reason) => {
    metrics.refused.inc({ kind: surface, reason });
    const key = `${surface}/${reason}`;
    const now = Date.now();
    const entry = since.get(key);
    if (entry && now - entry.at < intervalMs) {
      entry.count++;
      return;
    }
    log.warn({ surface, reason, refusedSinceLastLog: entry?.count ?? 0 }, "API request refused");
    since.set(key, { at: now, count: 0 });
  };
}

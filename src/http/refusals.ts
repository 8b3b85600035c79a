import { Refusals } from "../broker/refusals.js";
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";

export type Surface = "http" | "graphql" | "ws" | "download";
export type Refuse = (surface: Surface, reason: string) => void;

/**
 * Counts every request the API refuses for its size, shape or limits
 * (`refused{kind="http"|"graphql"|"ws"|"download", reason}`), and logs each kind of
 * refusal at most once per interval (the broker's throttle): a flood of bad
 * requests is not a flood of log lines.
 */
export function refusals(metrics: Metrics, log: Logger, intervalMs: number): Refuse {
  const throttle = new Refusals(metrics, log, intervalMs);
  return (surface, reason) => {
    metrics.refused.inc({ kind: surface, reason });
    if (throttle.shouldLog(`api:${surface}:${reason}`)) log.warn({ surface, reason }, "API request refused");
  };
}

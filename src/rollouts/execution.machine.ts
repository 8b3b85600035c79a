import type { FailureReason } from "../ota/progress.model.js";
import { backoffMs, retryRuleFor } from "./rollout.policy.js";
import type { Attempt, Execution, FailureClass, RolloutPolicy, SkipReason } from "./rollout.model.js";

/** What can happen to one device's execution. */
export type ExecutionEvent =
  /** The version guards (or the registry) rule the device out. */
  | { type: "skip"; reason: SkipReason }
  /** The broker took the `$ota_upgrade` with this requestId. */
  | { type: "notified"; requestId: string }
  /** An `update_ota_status` report of the target version (PROTOCOL.md): downloading, downloaded, or a failure code. */
  | { type: "progress"; phase: "DOWNLOADING" | "DOWNLOADED" }
  | { type: "progress"; phase: "FAILED"; reason: FailureReason }
  /** An `update_status` report with `firmware_ver`. */
  | { type: "status"; firmwareVersion: string }
  /** The in-progress timeout passed with no report. */
  | { type: "timeout" }
  /** The operator canceled the rollout (or it was aborted); `withdrawn`: its queued command was taken back before delivery. */
  | { type: "cancel"; withdrawn: boolean }
  /** The operator asked to retry failed executions (and those an abort canceled before they were notified). */
  | { type: "retry" };

export type Transition = { changed: true; next: Execution } | { changed: false; why: string };

const unchanged = (why: string): Transition => ({ changed: false, why });

/**
 * The execution state machine: a pure function of (state, event, policy,
 * now). Events that do not apply in the current state leave it unchanged and
 * say why (a late report, a repeat), so callers can apply any event any
 * number of times: applying it again is a no-op.
 *
 * `targetVersion` is the rollout's firmware version: a status report equal
 * to it completes the execution; after DOWNLOADED, one equal to the version
 * the device started from is a silent rollback.
 */
export function transition(
  execution: Execution,
  event: ExecutionEvent,
  policy: Pick<RolloutPolicy, "retries" | "inProgressTimeoutSeconds">,
  targetVersion: string,
  now: number,
): Transition {
  const { state } = execution;
  switch (event.type) {
    case "skip":
      if (state !== "QUEUED") return unchanged(`a ${state} execution is not skipped`);
      return { changed: true, next: { ...execution, state: "SKIPPED", skipReason: event.reason, notBefore: null, lastEventAt: now } };

    case "notified": {
      if (state !== "QUEUED") return unchanged(`a ${state} execution is not notified`);
      const attempt: Attempt = { requestId: event.requestId, notifiedAt: now, outcome: null, endedAt: null };
      return {
        changed: true,
        next: { ...execution, state: "NOTIFIED", attempts: [...execution.attempts, attempt], notBefore: null, lastEventAt: now },
      };
    }

    case "progress": {
      if (!isRunning(state)) return unchanged(`a progress report does not move a ${state} execution`);
      if (event.phase === "FAILED") return fail(execution, event.reason, policy, now);
      // Within an attempt progress never goes backwards (a late DOWNLOADING after DOWNLOADED).
      if (event.phase === "DOWNLOADING" && state === "DOWNLOADED") return unchanged("behind the stored report");
      if (event.phase === state) {
        // A report in the same phase only shows the device is alive: written once per tenth of the timeout, not per report.
        if (now - execution.lastEventAt < (policy.inProgressTimeoutSeconds * 1000) / 10) return unchanged("the same phase, recently seen");
        return { changed: true, next: { ...execution, lastEventAt: now } };
      }
      return { changed: true, next: { ...execution, state: event.phase, lastEventAt: now } };
    }

    case "status": {
      if (!isRunning(state)) return unchanged(`a status report does not move a ${state} execution`);
      if (event.firmwareVersion === targetVersion) return { changed: true, next: end(execution, "SUCCEEDED", null, "SUCCEEDED", now) };
      // After DOWNLOADED the device installs and reboots: coming back on another version is a rollback.
      if (state === "DOWNLOADED" && (execution.fromVersion === null || event.firmwareVersion === execution.fromVersion)) {
        return fail(execution, "ROLLED_BACK", policy, now);
      }
      return unchanged("a status report of another version before the download finished");
    }

    case "timeout":
      if (!isRunning(state)) return unchanged(`a ${state} execution does not time out`);
      return fail(execution, "TIMED_OUT", policy, now);

    case "cancel":
      if (state === "QUEUED" || (event.withdrawn && isRunning(state))) {
        return { changed: true, next: end(execution, "CANCELED", null, "CANCELED", now) };
      }
      return unchanged(`a ${state} execution runs to its end`);

    case "retry":
      // A CANCELED one that was never notified (its rollout aborted before its wave) is taken up again too.
      if (state === "CANCELED" && execution.attempts.length === 0) return { changed: true, next: { ...execution, state: "QUEUED", notBefore: null, lastEventAt: now } };
      if (state !== "FAILED" && state !== "TIMED_OUT") return unchanged(`a ${state} execution is not retried`);
      return { changed: true, next: { ...execution, state: "QUEUED", failureClass: null, notBefore: null, lastEventAt: now } };

    default: {
      const never: never = event;
      return never;
    }
  }
}

function isRunning(state: Execution["state"]): state is "NOTIFIED" | "DOWNLOADING" | "DOWNLOADED" {
  switch (state) {
    case "NOTIFIED":
    case "DOWNLOADING":
    case "DOWNLOADED":
      return true;
    case "QUEUED":
    case "SUCCEEDED":
    case "FAILED":
    case "TIMED_OUT":
    case "SKIPPED":
    case "CANCELED":
      return false;
    default: {
      const never: never = state;
      return never;
    }
  }
}

/** A failed attempt: queued again after the backoff while the class's retry rule allows, else final. */
function fail(execution: Execution, failureClass: FailureClass, policy: Pick<RolloutPolicy, "retries">, now: number): Transition {
  const rule = retryRuleFor(policy.retries, failureClass);
  const tried = execution.attempts.length;
  if (rule && tried < rule.maxAttempts) {
    const retrying = end(execution, "QUEUED", null, failureClass, now);
    return { changed: true, next: { ...retrying, notBefore: now + backoffMs(rule, tried) } };
  }
  const state = failureClass === "TIMED_OUT" ? "TIMED_OUT" : "FAILED";
  return { changed: true, next: end(execution, state, failureClass, failureClass, now) };
}

/** Moves to `state` and closes the running attempt with `outcome`. */
function end(
  execution: Execution,
  state: Execution["state"],
  failureClass: FailureClass | null,
  outcome: NonNullable<Attempt["outcome"]>,
  now: number,
): Execution {
  const attempts = execution.attempts.map((a, i) =>
    i === execution.attempts.length - 1 && a.outcome === null ? { ...a, outcome, endedAt: now } : a,
  );
  return { ...execution, state, failureClass, attempts, notBefore: null, lastEventAt: now };
}

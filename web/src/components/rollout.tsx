import type { RolloutFieldsFragment } from "../../../src/client/generated/graphql.js";
import { num } from "../format.js";
import { StackedBar, type Segment } from "./ui.js";

type Counts = RolloutFieldsFragment["counts"];

/** A rollout's executions as bar segments: succeeded, failed, in progress, queued, skipped or canceled. */
export function countSegments(c: Counts): Segment[] {
  return [
    { key: "succeeded", label: "succeeded", value: c.succeeded, tone: "good" },
    { key: "failed", label: "failed or timed out", value: c.failed + c.timedOut, tone: "bad" },
    { key: "inProgress", label: "in progress", value: c.inProgress, tone: "busy" },
    { key: "queued", label: "queued", value: c.queued, tone: "queued" },
    { key: "ended", label: "skipped or canceled", value: c.skipped + c.canceled, tone: "idle" },
  ];
}

/** Finished executions: those that reached an outcome of their own (not skipped or canceled). */
export const finishedOf = (c: Counts) => c.succeeded + c.failed + c.timedOut;

export function RolloutBar({ counts }: { counts: Counts }) {
  const done = finishedOf(counts) + counts.skipped + counts.canceled;
  return (
    <div className="rollout-bar">
      <StackedBar segments={countSegments(counts)} total={counts.total} />
      <span className="rollout-bar-label">
        {num(counts.succeeded)} / {num(counts.total)} succeeded
        {counts.failed + counts.timedOut > 0 && <span className="tone-text-bad"> · {num(counts.failed + counts.timedOut)} failed</span>}
        {done < counts.total && counts.inProgress > 0 && <span className="muted"> · {num(counts.inProgress)} in progress</span>}
      </span>
    </div>
  );
}

export function targetText(t: RolloutFieldsFragment["target"]): string {
  switch (t.kind) {
    case "TAG":
      return `tag ${t.tag}`;
    case "DEVICES":
      return `${num(t.deviceNames?.length ?? 0)} devices`;
    case "PRODUCT":
      return "whole product";
    default:
      return t.kind;
  }
}

export const ACTIVE_STATES: readonly string[] = ["SCHEDULED", "RUNNING", "PAUSED"];
export const isActive = (state: string) => ACTIVE_STATES.includes(state);

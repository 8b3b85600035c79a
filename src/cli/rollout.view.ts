import type { PreviewRolloutQuery, RolloutFieldsFragment, RolloutState } from "../client/generated/graphql.js";
import { ExitCode } from "./cli.errors.js";
import { counts, duration, fields, stackedBar, table } from "./cli.output.js";

type Rollout = RolloutFieldsFragment;
type Counts = Rollout["counts"];

/** Waves as people count them, from 1 (as the dashboard does); the API's index is from 0. */
export const waveNumber = (index: number) => index + 1;

const failures = (c: Counts) => c.failed + c.timedOut;
/** Executions that will not move again, whatever their outcome. */
const ended = (c: Counts) => c.succeeded + failures(c) + c.skipped + c.canceled;

/**
 * The progress bar's parts, as the dashboard's (web/src/components/rollout.tsx):
 * succeeded, failed or timed out, and skipped or canceled apart; dots for what
 * is still to come. A canceled rollout is not a full bar.
 */
const barParts = (c: Counts): [string, number][] => [
  ["#", c.succeeded],
  ["x", failures(c)],
  ["-", c.skipped + c.canceled],
];
export const BAR_KEY = "# succeeded  x failed or timed out  - skipped or canceled  . queued or in progress";

/** The bar and what it shows, in words: `[#x--......]  1/10 succeeded, 1 failed, 2 skipped or canceled`. */
function progressText(c: Counts, width?: number): string {
  const parts = [
    `${c.succeeded}/${c.total} succeeded`,
    ...(failures(c) > 0 ? [`${failures(c)} failed`] : []),
    ...(c.skipped + c.canceled > 0 ? [`${c.skipped + c.canceled} skipped or canceled`] : []),
    ...(c.inProgress > 0 ? [`${c.inProgress} in progress`] : []),
  ];
  return `${stackedBar(barParts(c), c.total, width)}  ${parts.join(", ")}`;
}

const stateCounts = (c: Counts): [string, number][] => [
  ["succeeded", c.succeeded],
  ["failed", c.failed],
  ["timed out", c.timedOut],
  ["in progress", c.inProgress],
  ["queued", c.queued],
  ["skipped", c.skipped],
  ["canceled", c.canceled],
];

export function targetText(t: Rollout["target"]): string {
  if (t.kind === "TAG") return `tag ${t.tag}`;
  if (t.kind === "DEVICES") return `${t.deviceNames?.length ?? 0} devices`;
  return "whole product";
}

const failureText = (c: Counts) => c.byFailureClass.map((f) => `${f.failureClass} ${f.count}`).join("  ");

export function rolloutBlock(r: Rollout): string {
  const c = r.counts;
  return fields([
    ["rollout", r.id],
    ["name", r.name],
    ["product", r.productName],
    ["state", `${r.state} (wave ${waveNumber(r.openWave)} open)`],
    ["target", `${targetText(r.target)}, ${r.membership.toLowerCase()}`],
    ["firmware", `${r.firmware.version} ${r.firmware.firmwareId ? `artifact ${r.firmware.firmwareId}` : r.firmware.url}`],
    ["progress", progressText(c)],
    ["counts", counts(stateCounts(c))],
    ["failures", failureText(c) || null],
    ["aborted by", r.abortedBy?.message],
    ["created", r.createdAt],
    ["started", r.startedAt],
    ["finished", r.finishedAt],
  ]);
}

/** The rollouts as a table, and the key of its bars under it. */
export function rolloutTable(rollouts: Rollout[]): string {
  const rows = table(
    ["ID", "NAME", "STATE", "TARGET", "VERSION", "PROGRESS", "SUCCEEDED", "FAILED", "SKIPPED", "CANCELED", "TOTAL", "CREATED"],
    rollouts.map(({ counts: c, ...r }) => [r.id, r.name, r.state, targetText(r.target), r.firmware.version, stackedBar(barParts(c), c.total, 10), c.succeeded, failures(c), c.skipped, c.canceled, c.total, r.createdAt]),
  );
  return rollouts.length > 0 ? `${rows}\n(${BAR_KEY})` : rows;
}

export function previewBlock(p: PreviewRolloutQuery["previewRollout"]): string {
  const lines = [
    fields([
      ["targeted", p.targeted],
      ["eligible", p.eligible],
      ["skipped", `${p.skipped}${p.skippedByReason.length ? ` (${p.skippedByReason.map((s) => `${s.reason} ${s.count}`).join(", ")})` : ""}`],
      ["starts", p.startsAt],
      ["time", `at least ${duration(p.minimumSeconds)}, at most ${duration(p.worstCaseSeconds)}`],
    ]),
    "",
    table(["WAVE", "DEVICES"], p.waves.map((w) => [waveNumber(w.index), w.size])),
  ];
  return lines.join("\n");
}

/** What `rollout watch` redraws on a terminal. */
export function watchBlock(r: Rollout): string[] {
  const c = r.counts;
  return [
    `rollout ${r.id}${r.name ? ` ${JSON.stringify(r.name)}` : ""}  ${r.state}  wave ${waveNumber(r.openWave)}  ${r.firmware.version} to ${targetText(r.target)}`,
    progressText(c),
    counts(stateCounts(c)),
    ...(c.byFailureClass.length ? [`failures: ${failureText(c)}`] : []),
  ];
}

/** What `rollout watch` prints per change off a terminal: one line, every count, for logs and grep. */
export function watchLine(r: Rollout): string {
  const c = r.counts;
  const all = stateCounts(c).map(([k, n]) => `${k} ${n}`).join(", ");
  return `${new Date().toISOString()} ${r.state} wave ${waveNumber(r.openWave)} ${ended(c)}/${c.total} ended: ${all}`;
}

/** Ended, and nothing of it is still on its way: what makes `rolloutChanged` complete. */
export const settled = (r: Rollout) => endedState(r.state) && r.counts.inProgress === 0 && r.counts.queued === 0;

function endedState(s: RolloutState): boolean {
  switch (s) {
    case "COMPLETED":
    case "ABORTED":
    case "CANCELED":
      return true;
    case "RUNNING":
    case "PAUSED":
    case "SCHEDULED":
      return false;
    default: {
      const never: never = s;
      throw new Error(`unknown rollout state ${String(never)}`);
    }
  }
}

/** The exit code of `rollout watch` for the rollout as it ended, and the closing line that says why. */
export function outcome(r: Rollout): { code: ExitCode; line: string } {
  const c = r.counts;
  switch (r.state) {
    case "COMPLETED":
      return failures(c) === 0
        ? { code: ExitCode.OK, line: `COMPLETED: ${c.succeeded} succeeded, ${c.skipped} skipped` }
        : { code: ExitCode.COMPLETED_WITH_FAILURES, line: `COMPLETED with failures: ${c.failed} failed, ${c.timedOut} timed out (${failureText(c)}), ${c.succeeded} succeeded` };
    case "ABORTED":
      return { code: ExitCode.ABORTED, line: `ABORTED: ${r.abortedBy?.message ?? "no cause recorded"}` };
    case "CANCELED":
      return { code: ExitCode.CANCELED, line: `CANCELED: ${c.succeeded} succeeded, ${c.canceled} canceled` };
    case "RUNNING":
    case "PAUSED":
    case "SCHEDULED":
      return { code: ExitCode.ERROR, line: `error: the server ended the watch while the rollout is ${r.state}` };
    default: {
      const never: never = r.state;
      throw new Error(`unknown rollout state ${String(never)}`);
    }
  }
}

import { Link } from "wouter";
import type { ExecutionFieldsFragment } from "../../../src/client/generated/graphql.js";
import { ago, dateTime, words } from "../format.js";
import type { BatchedProgress } from "../live.js";
import { routes } from "../routes.js";
import { Badge, ProgressCell } from "./ui.js";

/** What both execution tables show: a rollout's (one row per device) and a device's (one row per rollout). */
export type ExecutionRow = Omit<ExecutionFieldsFragment, "rolloutId"> & { rolloutId?: string };

const IN_PROGRESS = new Set(["NOTIFIED", "DOWNLOADING", "DOWNLOADED"]);

export function ExecutionTable({
  rows,
  productName,
  by,
  live,
}: {
  rows: readonly ExecutionRow[];
  productName: string;
  /** "device": a rollout's table (a row per device); "rollout": a device's. */
  by: "device" | "rollout";
  /** Live reports by device name, for executions in progress. */
  live?: ReadonlyMap<string, BatchedProgress>;
}) {
  if (rows.length === 0) return <p className="muted empty">No executions.</p>;
  return (
    <div className="table-wrap">
      <table className="table" data-testid="executions">
        <thead>
          <tr>
            <th>{by === "device" ? "Device" : "Rollout"}</th>
            <th className="num">Wave</th>
            <th>State</th>
            <th>Progress</th>
            <th>Failure / skip</th>
            <th>From</th>
            <th className="num">Attempts</th>
            <th>Last event</th>
          </tr>
        </thead>
        <tbody>
          {rows.map((e) => {
            const report = live?.get(e.deviceName);
            const showLive = report && IN_PROGRESS.has(e.state);
            return (
              <tr key={`${e.rolloutId ?? ""}/${e.deviceName}`}>
                <td>
                  {by === "device" ? (
                    <Link href={routes.device(productName, e.deviceName)}>{e.deviceName}</Link>
                  ) : (
                    <Link href={routes.rollout(e.rolloutId ?? "")}>{e.rolloutId?.slice(0, 8)}…</Link>
                  )}
                </td>
                <td className="num">{e.wave + 1}</td>
                <td>
                  <Badge state={e.state} />
                </td>
                <td>{showLive ? <ProgressCell state={report.state} progress={report.progress} /> : <span className="muted">—</span>}</td>
                <td>{e.failureClass ? words(e.failureClass) : e.skipReason ? words(e.skipReason) : e.notBefore ? `retry after ${dateTime(e.notBefore)}` : ""}</td>
                <td>{e.fromVersion ?? <span className="muted">—</span>}</td>
                <td className="num">{e.attempts.length}</td>
                <td className="muted">{ago(e.lastEventAt)}</td>
              </tr>
            );
          })}
        </tbody>
      </table>
    </div>
  );
}

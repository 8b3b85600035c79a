import type { ReactNode } from "react";
import { num, words } from "../format.js";

/** A state as a coloured badge; the colour says good, bad, running or idle. */
const TONE: Record<string, string> = {
  SUCCEEDED: "good",
  COMPLETED: "good",
  ONLINE: "good",
  RUNNING: "busy",
  NOTIFIED: "busy",
  DOWNLOADING: "busy",
  DOWNLOADED: "busy",
  SCHEDULED: "idle",
  QUEUED: "idle",
  PAUSED: "warn",
  SUSPENDED: "warn",
  SKIPPED: "idle",
  CANCELED: "idle",
  OFFLINE: "idle",
  FAILED: "bad",
  TIMED_OUT: "bad",
  ABORTED: "bad",
};

export function Badge({ state, label }: { state: string; label?: string }) {
  return <span className={`badge tone-${TONE[state] ?? "idle"}`}>{label ?? words(state)}</span>;
}

export interface Segment {
  key: string;
  label: string;
  value: number;
  tone: "good" | "bad" | "busy" | "idle" | "warn" | "queued";
}

/** A stacked bar of parts of a whole (a rollout's executions by state). */
export function StackedBar({ segments, total, label }: { segments: readonly Segment[]; total: number; label?: string }) {
  return (
    <div className="stacked" role="img" aria-label={label ?? segments.map((s) => `${s.label} ${s.value}`).join(", ")}>
      {total > 0 &&
        segments
          .filter((s) => s.value > 0)
          .map((s) => (
            <span key={s.key} className={`seg tone-${s.tone}`} style={{ width: `${(s.value * 100) / total}%` }} title={`${s.label}: ${s.value}`} />
          ))}
    </div>
  );
}

/** One device's download progress (0..100), or its failure. */
export function ProgressCell({ state, progress }: { state: string | undefined; progress: number | undefined }) {
  if (!state) return <span className="muted">—</span>;
  const pct = state === "SUCCEEDED" || state === "DOWNLOADED" ? 100 : Math.max(0, Math.min(100, progress ?? 0));
  return (
    <span className="progress-cell">
      <span className="mini-bar">
        <span className={`mini-fill tone-${TONE[state] ?? "idle"}`} style={{ width: `${state === "FAILED" ? 100 : pct}%` }} />
      </span>
      <span className="mini-label">{state === "FAILED" ? `failed (${progress})` : state === "DOWNLOADING" ? `${pct} %` : words(state)}</span>
    </span>
  );
}

export function Stat({ label, value, testId, tone }: { label: string; value: ReactNode; testId?: string; tone?: string }) {
  return (
    <div className={`stat ${tone ? `tone-text-${tone}` : ""}`}>
      <div className="stat-value" data-testid={testId}>
        {value}
      </div>
      <div className="stat-label">{label}</div>
    </div>
  );
}

export function Card({ title, actions, children, className }: { title?: ReactNode; actions?: ReactNode; children: ReactNode; className?: string }) {
  return (
    <section className={`card ${className ?? ""}`}>
      {(title || actions) && (
        <header className="card-head">
          {title && <h2>{title}</h2>}
          {actions && <div className="card-actions">{actions}</div>}
        </header>
      )}
      {children}
    </section>
  );
}

export const Loading = () => <p className="muted loading">Loading…</p>;

/**
 * Forward cursor pages with a way back (the cursors seen so far, from
 * useCursorPages). Pages are the API's (`first`/`after`): nothing holds more
 * than one page at a time.
 */
export function Pager({
  pages,
  pageInfo,
  rows,
}: {
  pages: { page: number; prev: () => void; next: (endCursor: string | null | undefined) => void };
  pageInfo: { hasNextPage: boolean; endCursor?: string | null } | undefined;
  rows: number;
}) {
  return (
    <div className="pager">
      <button type="button" className="btn" disabled={pages.page === 0} onClick={pages.prev}>
        ← Previous
      </button>
      <span className="muted">
        Page {pages.page + 1} · {rows} rows
      </span>
      <button type="button" className="btn" disabled={!pageInfo?.hasNextPage} onClick={() => pages.next(pageInfo?.endCursor)}>
        Next →
      </button>
    </div>
  );
}

/** A "State: all | …" filter over an enum's values. */
export function StateFilter<S extends string>({ states, value, onChange }: { states: readonly S[]; value: S | ""; onChange: (state: S | "") => void }) {
  return (
    <label className="inline">
      State{" "}
      <select value={value} onChange={(e) => onChange(e.target.value as S | "")}>
        <option value="">all</option>
        {states.map((s) => (
          <option key={s} value={s}>
            {words(s)}
          </option>
        ))}
      </select>
    </label>
  );
}

/** A two-column table: a label and how many devices. */
export function CountTable({ rows, head, testId }: { rows: readonly { key: string; label: string; count: number }[]; head: string; testId?: string }) {
  return (
    <table className="table compact" data-testid={testId}>
      <thead>
        <tr>
          <th>{head}</th>
          <th className="num">Devices</th>
        </tr>
      </thead>
      <tbody>
        {rows.map((r) => (
          <tr key={r.key}>
            <td>{r.label}</td>
            <td className="num">{num(r.count)}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

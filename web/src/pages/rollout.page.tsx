import { useEffect, useMemo, useState } from "react";
import { Link } from "wouter";
import { useMutation, useQuery, type CombinedError } from "urql";
import {
  CancelRolloutDocument,
  DashRolloutPolicyDocument,
  PauseRolloutDocument,
  ResumeRolloutDocument,
  RetryRolloutDocument,
  RolloutExecutionsDocument,
  type ExecutionState,
  type FailureClass,
  type RolloutFieldsFragment,
} from "../../../src/client/generated/graphql.js";
import { ApiError } from "../components/errors.js";
import { ExecutionTable } from "../components/executions.js";
import { finishedOf, isActive, RolloutBar, targetText } from "../components/rollout.js";
import { Badge, Card, Loading, Pager, StackedBar, Stat, StateFilter } from "../components/ui.js";
import { ago, dateTime, duration, num, percent, words } from "../format.js";
import { useProgressBatches, useThrottledOnChange } from "../live.js";
import { useCursorPages } from "../paging.js";
import { useLiveRollout } from "../rollout.live.js";
import { rememberProduct, routes } from "../routes.js";

const PAGE_SIZE = 50;
/** While a rollout's counts move, its table page is read again at most this often (the counts above are live). */
const TABLE_REFRESH_MS = 2_000;
const EXECUTION_STATES: readonly ExecutionState[] = ["QUEUED", "NOTIFIED", "DOWNLOADING", "DOWNLOADED", "SUCCEEDED", "FAILED", "TIMED_OUT", "SKIPPED", "CANCELED"];

export function RolloutPage({ id }: { id: string }) {
  const { rollout, fetching, error, liveError, show, restart } = useLiveRollout(id);
  const productName = rollout?.productName;
  useEffect(() => {
    if (productName) rememberProduct(productName);
  }, [productName]);
  if (fetching) return <Loading />;
  if (error) return <ApiError error={error} />;
  if (!rollout) return <p className="alert alert-error">No rollout {id}.</p>;
  return (
    <>
      <RolloutHeader rollout={rollout} onChanged={(r) => (show(r), restart())} />
      {liveError && <ApiError error={liveError} />}
      {rollout.abortedBy && <AbortBanner cause={rollout.abortedBy} />}
      <Counts rollout={rollout} />
      <div className="grid-2">
        <Waves rollout={rollout} />
        <Failures rollout={rollout} />
      </div>
      <Executions rollout={rollout} />
    </>
  );
}

function RolloutHeader({ rollout, onChanged }: { rollout: RolloutFieldsFragment; onChanged: (r: RolloutFieldsFragment) => void }) {
  return (
    <div className="page-head">
      <div>
        <div className="crumbs">
          <Link href={routes.rollouts(rollout.productName)}>Rollouts of {rollout.productName}</Link>
        </div>
        <h1>
          {rollout.name || "Rollout"} <Badge state={rollout.state} />
        </h1>
        <p className="muted meta">
          <span>
            firmware <strong>{rollout.firmware.version}</strong>
          </span>
          <span>{targetText(rollout.target)}</span>
          <span>{words(rollout.membership)}</span>
          <span>created {dateTime(rollout.createdAt)}</span>
          {rollout.startedAt && <span>started {ago(rollout.startedAt)}</span>}
          {rollout.finishedAt && (
            <span>
              finished {dateTime(rollout.finishedAt)}
              {rollout.startedAt && ` (took ${duration(Math.round((Date.parse(rollout.finishedAt) - Date.parse(rollout.startedAt)) / 1000))})`}
            </span>
          )}
          <span className="mono">{rollout.id}</span>
        </p>
      </div>
      <Actions rollout={rollout} onChanged={onChanged} />
    </div>
  );
}

/** Pause, resume, cancel (confirmed in place) and retry; each shows the API's answer or error. */
function Actions({ rollout, onChanged }: { rollout: RolloutFieldsFragment; onChanged: (r: RolloutFieldsFragment) => void }) {
  const [pause, doPause] = useMutation(PauseRolloutDocument);
  const [resume, doResume] = useMutation(ResumeRolloutDocument);
  const [cancel, doCancel] = useMutation(CancelRolloutDocument);
  const [retry, doRetry] = useMutation(RetryRolloutDocument);
  const [confirmCancel, setConfirmCancel] = useState(false);
  const [retryClass, setRetryClass] = useState<FailureClass | "">("");
  const busy = pause.fetching || resume.fetching || cancel.fetching || retry.fetching;
  const error: CombinedError | undefined = pause.error ?? resume.error ?? cancel.error ?? retry.error;
  const run = async (p: Promise<{ data?: Record<string, RolloutFieldsFragment> | undefined }>) => {
    const r = await p;
    const value = r.data && Object.values(r.data)[0];
    if (value) onChanged(value);
  };
  const { state, counts } = rollout;
  const failed = counts.failed + counts.timedOut;
  const canRetry = failed > 0 || state === "ABORTED";
  return (
    <div className="actions">
      <div className="btn-row">
        {(state === "RUNNING" || state === "SCHEDULED") && (
          <button type="button" className="btn" disabled={busy} onClick={() => run(doPause({ id: rollout.id }))}>
            Pause
          </button>
        )}
        {state === "PAUSED" && (
          <button type="button" className="btn btn-primary" disabled={busy} onClick={() => run(doResume({ id: rollout.id }))}>
            Resume
          </button>
        )}
        {canRetry && (
          <span className="btn-group">
            <select aria-label="failure class to retry" value={retryClass} onChange={(e) => setRetryClass(e.target.value as FailureClass | "")}>
              <option value="">all failure classes</option>
              {counts.byFailureClass.map((f) => (
                <option key={f.failureClass} value={f.failureClass}>
                  {words(f.failureClass)} ({f.count})
                </option>
              ))}
            </select>
            <button
              type="button"
              className="btn"
              disabled={busy}
              onClick={() => run(doRetry({ id: rollout.id, failureClasses: retryClass ? [retryClass] : null }))}
            >
              Retry
            </button>
          </span>
        )}
        {isActive(state) &&
          (confirmCancel ? (
            <span className="btn-group confirm">
              <span>Cancel this rollout?</span>
              <button
                type="button"
                className="btn btn-danger"
                disabled={busy}
                onClick={() => (setConfirmCancel(false), run(doCancel({ id: rollout.id })))}
              >
                Yes, cancel it
              </button>
              <button type="button" className="btn btn-ghost" onClick={() => setConfirmCancel(false)}>
                No
              </button>
            </span>
          ) : (
            <button type="button" className="btn btn-danger-outline" disabled={busy} onClick={() => setConfirmCancel(true)}>
              Cancel…
            </button>
          ))}
      </div>
      <ApiError error={error} />
    </div>
  );
}

function AbortBanner({ cause }: { cause: NonNullable<RolloutFieldsFragment["abortedBy"]> }) {
  return (
    <div className="alert alert-abort" role="alert" data-testid="abort">
      <strong>Aborted by {cause.kind === "WAVE_GATE" ? "the wave gate" : "an abort rule"}:</strong> {cause.message}
      {cause.rule && (
        <div className="small">
          Rule: more than {cause.rule.thresholdPercent} % {words(cause.rule.failureClass)} of at least {cause.rule.minFinished} finished
          {cause.failed !== null && cause.finished !== null && ` — observed ${cause.failed} of ${cause.finished}`}
        </div>
      )}
    </div>
  );
}

function Counts({ rollout }: { rollout: RolloutFieldsFragment }) {
  const c = rollout.counts;
  return (
    <Card>
      <div className="stats">
        <Stat label="devices" value={num(c.total)} testId="count-total" />
        <Stat label="succeeded" value={num(c.succeeded)} testId="count-succeeded" tone="good" />
        <Stat label="failed" value={num(c.failed)} testId="count-failed" tone={c.failed ? "bad" : undefined} />
        <Stat label="timed out" value={num(c.timedOut)} testId="count-timedOut" tone={c.timedOut ? "bad" : undefined} />
        <Stat label="in progress" value={num(c.inProgress)} testId="count-inProgress" tone="busy" />
        <Stat label="queued" value={num(c.queued)} testId="count-queued" />
        <Stat label="skipped" value={num(c.skipped)} testId="count-skipped" />
        <Stat label="canceled" value={num(c.canceled)} testId="count-canceled" />
      </div>
      <RolloutBar counts={c} />
      <p className="muted small">
        In progress: {num(c.notified)} notified · {num(c.downloading)} downloading · {num(c.downloaded)} downloaded (installing)
      </p>
    </Card>
  );
}

/** Each wave's devices and progress, exactly, from the rollout's counts (live with them). */
function Waves({ rollout }: { rollout: RolloutFieldsFragment }) {
  const [{ data }] = useQuery({ query: DashRolloutPolicyDocument, variables: { id: rollout.id } });
  const policy = data?.rollout?.policy;
  const specs = policy?.waves ?? [];
  const waves = rollout.counts.byWave;
  return (
    <Card title="Waves">
      <table className="table compact" data-testid="waves">
        <thead>
          <tr>
            <th>Wave</th>
            <th className="num">Devices</th>
            <th>Gate</th>
            <th>State</th>
            <th style={{ width: "35%" }}>Finished</th>
          </tr>
        </thead>
        <tbody>
          {waves.map(({ wave: i, devices: size, succeeded, failed, timedOut, canceled }) => {
            const spec = specs[i];
            const done = succeeded + failed + timedOut + canceled;
            const state = isActive(rollout.state)
              ? i < rollout.openWave
                ? "passed"
                : i === rollout.openWave
                  ? "open"
                  : "waiting"
              : i <= rollout.openWave
                ? "reached"
                : "not reached";
            return (
              <tr key={i}>
                <td>
                  {i + 1}
                  <span className="muted small"> {spec ? (spec.percent !== null ? `to ${spec.percent} %` : `${spec.count} devices`) : "all"}</span>
                </td>
                <td className="num">{num(size)}</td>
                <td className="small">
                  {spec ? `${Math.round(spec.successRatio * 100)} % succeed${spec.soakSeconds ? `, soak ${duration(spec.soakSeconds)}` : ""}` : "—"}
                </td>
                <td>
                  <span className={`wave-state wave-${state.replace(" ", "-")}`}>{state}</span>
                </td>
                <td>
                  <StackedBar
                    segments={[
                      { key: "succeeded", label: "succeeded", value: succeeded, tone: "good" },
                      { key: "failed", label: "failed or timed out", value: failed + timedOut, tone: "bad" },
                      { key: "canceled", label: "canceled", value: canceled, tone: "idle" },
                    ]}
                    total={size}
                  />
                  <span className="small muted">
                    {num(done)} / {num(size)}
                  </span>
                </td>
              </tr>
            );
          })}
        </tbody>
      </table>
      {policy && (
        <p className="muted small">
          {policy.maxInProgress ? `at most ${policy.maxInProgress} in progress` : "no in-progress bound"} ·{" "}
          {policy.maxPerMinute ? `${policy.maxPerMinute}/min` : "no rate bound"} · timeout {duration(policy.inProgressTimeoutSeconds)}
          {policy.maintenanceWindow && ` · window ${policy.maintenanceWindow.start}–${policy.maintenanceWindow.end} UTC`}
          {policy.retries.length > 0 && ` · retries: ${policy.retries.map((r) => `${words(r.failureClass)} ×${r.maxAttempts}`).join(", ")}`}
        </p>
      )}
    </Card>
  );
}

function Failures({ rollout }: { rollout: RolloutFieldsFragment }) {
  const [{ data }] = useQuery({ query: DashRolloutPolicyDocument, variables: { id: rollout.id } });
  const rules = data?.rollout?.policy.abortRules ?? [];
  const finished = finishedOf(rollout.counts);
  const classes = rollout.counts.byFailureClass;
  const most = Math.max(1, ...classes.map((f) => f.count));
  return (
    <Card title="Failures by class">
      {classes.length === 0 ? (
        <p className="muted empty">No failures.</p>
      ) : (
        <table className="table compact" data-testid="failures">
          <thead>
            <tr>
              <th>Class</th>
              <th className="num">Devices</th>
              <th className="num">Of finished</th>
              <th>Abort rule</th>
              <th style={{ width: "30%" }} />
            </tr>
          </thead>
          <tbody>
            {classes.map((f) => {
              const rule = rules.find((r) => r.failureClass === f.failureClass);
              return (
                <tr key={f.failureClass}>
                  <td>{words(f.failureClass)}</td>
                  <td className="num">{num(f.count)}</td>
                  <td className="num">{percent(f.count, finished)}</td>
                  <td className="small">{rule ? `> ${rule.thresholdPercent} % of ≥ ${rule.minFinished}` : <span className="muted">none</span>}</td>
                  <td>
                    <StackedBar segments={[{ key: f.failureClass, label: f.failureClass, value: f.count, tone: "bad" }]} total={most} />
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      )}
      {rollout.counts.bySkipReason.length > 0 && (
        <p className="muted small">Skipped: {rollout.counts.bySkipReason.map((s) => `${words(s.reason)} ${s.count}`).join(" · ")}</p>
      )}
    </Card>
  );
}

/**
 * One page of executions; its in-progress rows move with the server's progress batches (the latest report of each of
 * the rollout's devices, once per interval), the page is re-read every few seconds while the rollout runs.
 */
function Executions({ rollout }: { rollout: RolloutFieldsFragment }) {
  const [state, setState] = useState<ExecutionState | "">("");
  const pages = useCursorPages();
  const [result, reexecute] = useQuery({
    query: RolloutExecutionsDocument,
    variables: { id: rollout.id, states: state ? [state] : null, first: PAGE_SIZE, after: pages.after },
  });
  const busy = isActive(rollout.state) || rollout.counts.inProgress > 0;
  // The rows move when the counts do: read the page again then, at most every few seconds, and once after the last change.
  const refresh = () => reexecute({ requestPolicy: "network-only" });
  useThrottledOnChange(JSON.stringify(rollout.counts), refresh, TABLE_REFRESH_MS);
  // A change of state (paused, ended) moves many rows at once: read them at once.
  useThrottledOnChange(rollout.state, refresh, 0);
  // One array per answer: a fresh [] on every render (no data yet) would rebuild onScreen on every render.
  const nodes = useMemo(() => result.data?.rolloutExecutions.nodes ?? [], [result.data]);
  const onScreen = useMemo(() => new Set(nodes.map((n) => n.deviceName)), [nodes]);
  const { latest } = useProgressBatches(busy ? { productName: rollout.productName, rolloutId: rollout.id } : null, onScreen);
  return (
    <Card
      title="Executions"
      actions={<StateFilter states={EXECUTION_STATES} value={state} onChange={(s) => (setState(s), pages.reset())} />}
    >
      <ApiError error={result.error} />
      {result.fetching && !result.data ? <Loading /> : <ExecutionTable rows={nodes} productName={rollout.productName} by="device" live={latest} />}
      <Pager pages={pages} rows={nodes.length} pageInfo={result.data?.rolloutExecutions.pageInfo} />
    </Card>
  );
}

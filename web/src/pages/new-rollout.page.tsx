import { useEffect, useRef, useState, type ReactNode } from "react";
import { Link, useLocation } from "wouter";
import { useClient, useMutation } from "urql";
import {
  CreateRolloutDocument,
  PreviewRolloutDocument,
  type CreateRolloutInput,
  type FailureClass,
  type PreviewRolloutQuery,
  type RolloutMembership,
} from "../../../src/client/generated/graphql.js";
import type { ApiProblem } from "../api.js";
import { ApiError, Problems } from "../components/errors.js";
import { Card, CountTable, Stat } from "../components/ui.js";
import { dateTime, duration, num, words } from "../format.js";
import { routes } from "../routes.js";
import type { CombinedError } from "urql";

const FAILURE_CLASSES: readonly FailureClass[] = ["DOWNLOAD_FAILED", "MD5_MISMATCH", "INSTALL_FAILED", "OTHER", "ROLLED_BACK", "TIMED_OUT"];

interface WaveRow {
  mode: "percent" | "count";
  value: string;
  successRatio: string;
  soakSeconds: string;
}
interface AbortRow {
  failureClass: FailureClass;
  thresholdPercent: string;
  minFinished: string;
}
interface RetryRow {
  failureClass: FailureClass;
  maxAttempts: string;
  backoffSeconds: string;
  maxBackoffSeconds: string;
}

/** The form as typed: strings until the input is built, so a half-typed number is no error yet. */
interface Form {
  name: string;
  targetKind: "tag" | "devices" | "product";
  tag: string;
  deviceNames: string;
  membership: RolloutMembership;
  version: string;
  url: string;
  size: string;
  md5: string;
  sha256: string;
  type: string;
  waves: WaveRow[];
  abortRules: AbortRow[];
  retries: RetryRow[];
  maxInProgress: string;
  maxPerMinute: string;
  inProgressTimeoutSeconds: string;
  allowDowngrade: boolean;
  allowedFromVersions: string;
  startAt: string;
  windowStart: string;
  windowEnd: string;
}

const EMPTY: Form = {
  name: "",
  targetKind: "tag",
  tag: "",
  deviceNames: "",
  membership: "SNAPSHOT",
  version: "",
  url: "",
  size: "",
  md5: "",
  sha256: "",
  type: "firmware",
  waves: [],
  abortRules: [],
  retries: [],
  maxInProgress: "",
  maxPerMinute: "",
  inProgressTimeoutSeconds: "",
  allowDowngrade: false,
  allowedFromVersions: "",
  startAt: "",
  windowStart: "",
  windowEnd: "",
};

class FormError extends Error {}

/** "" is "not set"; anything else must be a number (the API checks ranges and says which field). */
function number(value: string, label: string): number | undefined {
  if (value.trim() === "") return undefined;
  const n = Number(value);
  if (!Number.isFinite(n)) throw new FormError(`${label}: not a number`);
  return n;
}
const required = (value: string, label: string) => {
  const n = number(value, label);
  if (n === undefined) throw new FormError(`${label} is required`);
  return n;
};
const list = (value: string) =>
  value
    .split(/[\s,]+/)
    .map((s) => s.trim())
    .filter(Boolean);

/** The API's input from the form; a FormError names what is missing or not a number. */
export function toInput(product: string, f: Form): CreateRolloutInput {
  const target =
    f.targetKind === "tag" ? { tag: f.tag.trim() } : f.targetKind === "devices" ? { deviceNames: list(f.deviceNames) } : { wholeProduct: true };
  const window = f.windowStart || f.windowEnd ? { start: f.windowStart, end: f.windowEnd } : undefined;
  const fromVersions = list(f.allowedFromVersions);
  return {
    productName: product,
    ...(f.name.trim() ? { name: f.name.trim() } : {}),
    target,
    membership: f.membership,
    firmware: { version: f.version.trim(), url: f.url.trim(), size: required(f.size, "Size"), md5: f.md5.trim(), sha256: f.sha256.trim(), type: f.type.trim() },
    policy: {
      waves: f.waves.map((w, i) => ({
        [w.mode]: required(w.value, `Wave ${i + 1} ${w.mode}`),
        successRatio: number(w.successRatio, `Wave ${i + 1} success ratio`),
        soakSeconds: number(w.soakSeconds, `Wave ${i + 1} soak`),
      })),
      abortRules: f.abortRules.map((r, i) => ({
        failureClass: r.failureClass,
        thresholdPercent: required(r.thresholdPercent, `Abort rule ${i + 1} threshold`),
        minFinished: required(r.minFinished, `Abort rule ${i + 1} minimum finished`),
      })),
      retries: f.retries.map((r, i) => ({
        failureClass: r.failureClass,
        maxAttempts: required(r.maxAttempts, `Retry ${i + 1} attempts`),
        backoffSeconds: required(r.backoffSeconds, `Retry ${i + 1} backoff`),
        maxBackoffSeconds: number(r.maxBackoffSeconds, `Retry ${i + 1} maximum backoff`),
      })),
      maxInProgress: number(f.maxInProgress, "Max in progress"),
      maxPerMinute: number(f.maxPerMinute, "Max per minute"),
      inProgressTimeoutSeconds: number(f.inProgressTimeoutSeconds, "In-progress timeout"),
      allowDowngrade: f.allowDowngrade,
      ...(fromVersions.length ? { allowedFromVersions: fromVersions } : {}),
      ...(f.startAt ? { startAt: new Date(f.startAt).toISOString() } : {}),
      ...(window ? { maintenanceWindow: window } : {}),
    },
  };
}

function Field({ label, id, children, hint }: { label: string; id: string; children: ReactNode; hint?: string }) {
  return (
    <div className="field">
      <label htmlFor={id}>{label}</label>
      {children}
      {hint && <div className="hint">{hint}</div>}
    </div>
  );
}

/** A rollout's creation: the form, its dry run (previewRollout), and only then "Start rollout". */
export function NewRolloutPage({ product }: { product: string }) {
  const client = useClient();
  const [, navigate] = useLocation();
  const [form, setForm] = useState<Form>(EMPTY);
  const [preview, setPreview] = useState<{ input: CreateRolloutInput; result: PreviewRolloutQuery["previewRollout"] } | null>(null);
  const [problems, setProblems] = useState<ApiProblem[] | null>(null);
  const [apiError, setApiError] = useState<CombinedError>();
  const [previewing, setPreviewing] = useState(false);
  const [create, doCreate] = useMutation(CreateRolloutDocument);

  /** Any change invalidates the preview: what starts is always what was previewed. */
  const set = (patch: Partial<Form>) => {
    setForm((f) => ({ ...f, ...patch }));
    setPreview(null);
  };
  const text = (key: keyof Form) => ({
    id: `f-${key}`,
    value: form[key] as string,
    onChange: (e: { target: { value: string } }) => set({ [key]: e.target.value } as Partial<Form>),
  });
  const input = (key: keyof Form, label: string, hint?: string, props: Record<string, string | boolean> = {}) => (
    <Field label={label} id={`f-${key}`} hint={hint}>
      <input {...text(key)} {...props} />
    </Field>
  );
  const setRow = <K extends "waves" | "abortRules" | "retries">(key: K, i: number, patch: Partial<Form[K][number]>) =>
    set({ [key]: form[key].map((r, j) => (j === i ? { ...r, ...patch } : r)) } as Partial<Form>);
  const removeRow = (key: "waves" | "abortRules" | "retries", i: number) => set({ [key]: form[key].filter((_, j) => j !== i) } as Partial<Form>);

  const runPreview = async () => {
    setProblems(null);
    setApiError(undefined);
    let input: CreateRolloutInput;
    try {
      input = toInput(product, form);
    } catch (err) {
      if (err instanceof FormError) return setProblems([{ code: "FORM", message: err.message }]);
      throw err;
    }
    setPreviewing(true);
    try {
      const r = await client.query(PreviewRolloutDocument, { input }, { requestPolicy: "network-only" }).toPromise();
      if (r.error) setApiError(r.error);
      else if (r.data) setPreview({ input, result: r.data.previewRollout });
    } finally {
      setPreviewing(false);
    }
  };

  const start = async () => {
    if (!preview) return;
    const r = await doCreate({ input: preview.input });
    if (r.data) navigate(routes.rollout(r.data.createRollout.id));
  };

  return (
    <>
      <div className="page-head">
        <div>
          <div className="crumbs">
            <Link href={routes.rollouts(product)}>Rollouts of {product}</Link>
          </div>
          <h1>New rollout</h1>
        </div>
      </div>
      <form
        className="rollout-form"
        onSubmit={(e) => {
          e.preventDefault();
          void runPreview();
        }}
      >
        <Card title="Target">
          <div className="fields">
            {input("name", "Name", undefined, { placeholder: "e.g. 2.1 to beta" })}
            <Field label="Target" id="f-targetKind">
              <select id="f-targetKind" value={form.targetKind} onChange={(e) => set({ targetKind: e.target.value as Form["targetKind"] })}>
                <option value="tag">devices with a tag</option>
                <option value="devices">a list of devices</option>
                <option value="product">the whole product</option>
              </select>
            </Field>
            {form.targetKind === "tag" && input("tag", "Tag", undefined, { required: true })}
            {form.targetKind === "devices" && (
              <Field label="Device names" id="f-deviceNames" hint="separated by spaces, commas or lines; up to 10,000">
                <textarea {...text("deviceNames")} rows={3} required />
              </Field>
            )}
            <Field label="Membership" id="f-membership" hint="continuous: devices that match later join (runs until canceled)">
              <select id="f-membership" value={form.membership} onChange={(e) => set({ membership: e.target.value as RolloutMembership })}>
                <option value="SNAPSHOT">snapshot</option>
                <option value="CONTINUOUS">continuous</option>
              </select>
            </Field>
          </div>
        </Card>
        <Card title="Firmware">
          <div className="fields">
            {input("version", "Firmware version", undefined, { required: true, placeholder: "2.1.0" })}
            <Field label="Firmware URL" id="f-url">
              <input {...text("url")} required type="url" placeholder="https://fw.example/acme-2.1.0.bin" className="wide" />
            </Field>
            {input("size", "Size (bytes)", undefined, { required: true, inputMode: "numeric" })}
            {input("type", "Type", undefined, { required: true })}
            {input("md5", "MD5", "32 hex characters", { required: true, className: "mono wide" })}
            {input("sha256", "SHA-256", "64 hex characters", { required: true, className: "mono wide" })}
          </div>
        </Card>
        <Card
          title="Waves"
          actions={
            <button type="button" className="btn" onClick={() => set({ waves: [...form.waves, { mode: "percent", value: "", successRatio: "", soakSeconds: "" }] })}>
              Add wave
            </button>
          }
        >
          {form.waves.length === 0 && <p className="muted">One wave: every device at once (within the pacing below). The last wave always takes every device left.</p>}
          {form.waves.map((w, i) => (
            <div className="row-fields" key={i}>
              <span className="row-label">Wave {i + 1}</span>
              <select aria-label={`wave ${i + 1} kind`} value={w.mode} onChange={(e) => setRow("waves", i, { mode: e.target.value as WaveRow["mode"] })}>
                <option value="percent">cumulative %</option>
                <option value="count">devices</option>
              </select>
              <input aria-label={`wave ${i + 1} ${w.mode}`} value={w.value} onChange={(e) => setRow("waves", i, { value: e.target.value })} placeholder={w.mode === "percent" ? "10" : "50"} />
              <input aria-label={`wave ${i + 1} success ratio`} value={w.successRatio} onChange={(e) => setRow("waves", i, { successRatio: e.target.value })} placeholder="success ratio 1" />
              <input aria-label={`wave ${i + 1} soak seconds`} value={w.soakSeconds} onChange={(e) => setRow("waves", i, { soakSeconds: e.target.value })} placeholder="soak s 0" />
              <button type="button" className="btn btn-ghost" onClick={() => removeRow("waves", i)} aria-label={`remove wave ${i + 1}`}>
                ✕
              </button>
            </div>
          ))}
        </Card>
        <div className="grid-2">
          <Card
            title="Abort rules"
            actions={
              <button type="button" className="btn" onClick={() => set({ abortRules: [...form.abortRules, { failureClass: "MD5_MISMATCH", thresholdPercent: "", minFinished: "" }] })}>
                Add rule
              </button>
            }
          >
            {form.abortRules.length === 0 && <p className="muted">None: failures never stop the rollout by themselves.</p>}
            {form.abortRules.map((r, i) => (
              <div className="row-fields" key={i}>
                <select aria-label={`abort rule ${i + 1} class`} value={r.failureClass} onChange={(e) => setRow("abortRules", i, { failureClass: e.target.value as FailureClass })}>
                  {FAILURE_CLASSES.map((c) => (
                    <option key={c} value={c}>
                      {words(c)}
                    </option>
                  ))}
                </select>
                <input aria-label={`abort rule ${i + 1} threshold percent`} value={r.thresholdPercent} onChange={(e) => setRow("abortRules", i, { thresholdPercent: e.target.value })} placeholder="> %" />
                <input aria-label={`abort rule ${i + 1} minimum finished`} value={r.minFinished} onChange={(e) => setRow("abortRules", i, { minFinished: e.target.value })} placeholder="of ≥ finished" />
                <button type="button" className="btn btn-ghost" onClick={() => removeRow("abortRules", i)} aria-label={`remove abort rule ${i + 1}`}>
                  ✕
                </button>
              </div>
            ))}
          </Card>
          <Card
            title="Retries"
            actions={
              <button
                type="button"
                className="btn"
                onClick={() => set({ retries: [...form.retries, { failureClass: "DOWNLOAD_FAILED", maxAttempts: "3", backoffSeconds: "60", maxBackoffSeconds: "" }] })}
              >
                Add retry
              </button>
            }
          >
            {form.retries.length === 0 && <p className="muted">None: a failure is final until a retry from the rollout page.</p>}
            {form.retries.map((r, i) => (
              <div className="row-fields" key={i}>
                <select aria-label={`retry ${i + 1} class`} value={r.failureClass} onChange={(e) => setRow("retries", i, { failureClass: e.target.value as FailureClass })}>
                  {FAILURE_CLASSES.map((c) => (
                    <option key={c} value={c}>
                      {words(c)}
                    </option>
                  ))}
                </select>
                <input aria-label={`retry ${i + 1} attempts`} value={r.maxAttempts} onChange={(e) => setRow("retries", i, { maxAttempts: e.target.value })} placeholder="attempts" />
                <input aria-label={`retry ${i + 1} backoff seconds`} value={r.backoffSeconds} onChange={(e) => setRow("retries", i, { backoffSeconds: e.target.value })} placeholder="backoff s" />
                <input aria-label={`retry ${i + 1} max backoff seconds`} value={r.maxBackoffSeconds} onChange={(e) => setRow("retries", i, { maxBackoffSeconds: e.target.value })} placeholder="max s 3600" />
                <button type="button" className="btn btn-ghost" onClick={() => removeRow("retries", i)} aria-label={`remove retry ${i + 1}`}>
                  ✕
                </button>
              </div>
            ))}
          </Card>
        </div>
        <Card title="Pacing, guards and timing">
          <div className="fields">
            {input("maxInProgress", "Max in progress", "devices upgrading at once", { inputMode: "numeric" })}
            {input("maxPerMinute", "Max per minute", "notifications, retries included", { inputMode: "numeric" })}
            {input("inProgressTimeoutSeconds", "In-progress timeout (s)", "default 3600; also the command's TTL", { inputMode: "numeric" })}
            {input("allowedFromVersions", "Allowed from versions", "versions or ranges: 1.2.x, >=1.0.0 <2")}
            {input("startAt", "Start at", "local time; empty: now", { type: "datetime-local" })}
            {input("windowStart", "Window start (UTC)", "HH:MM", { placeholder: "01:00" })}
            {input("windowEnd", "Window end (UTC)", "HH:MM", { placeholder: "05:00" })}
            <div className="field check">
              <label>
                <input type="checkbox" checked={form.allowDowngrade} onChange={(e) => set({ allowDowngrade: e.target.checked })} /> Allow downgrade
              </label>
            </div>
          </div>
        </Card>
        <div className="form-foot">
          <button type="submit" className="btn btn-primary" disabled={previewing}>
            {previewing ? "Previewing…" : "Preview"}
          </button>
          <span className="muted">A dry run: nothing is sent until you start the rollout.</span>
        </div>
        {problems && <Problems problems={problems} />}
        <ApiError error={apiError} />
      </form>
      {preview && (
        <Preview preview={preview.result}>
          <div className="form-foot">
            <button type="button" className="btn btn-primary btn-big" disabled={create.fetching || preview.result.eligible === 0} onClick={start}>
              {create.fetching ? "Starting…" : `Start rollout to ${num(preview.result.eligible)} devices`}
            </button>
            {preview.result.eligible === 0 && <span className="muted">No device would be notified.</span>}
          </div>
          <ApiError error={create.error} />
        </Preview>
      )}
    </>
  );
}

function Preview({ preview, children }: { preview: PreviewRolloutQuery["previewRollout"]; children: ReactNode }) {
  const ref = useRef<HTMLDivElement>(null);
  useEffect(() => {
    ref.current?.scrollIntoView({ behavior: "smooth", block: "start" });
  }, [preview]);
  return (
    <div ref={ref}>
    <Card title="Preview" className="preview">
      <div className="stats" data-testid="preview">
        <Stat label="targeted" value={num(preview.targeted)} testId="preview-targeted" />
        <Stat label="eligible" value={num(preview.eligible)} testId="preview-eligible" tone="good" />
        <Stat label="skipped" value={num(preview.skipped)} testId="preview-skipped" />
        <Stat label="waves" value={preview.waves.length} />
        <Stat label="at least" value={duration(preview.minimumSeconds)} />
        <Stat label="at most" value={duration(preview.worstCaseSeconds)} />
      </div>
      <div className="grid-2">
        <div>
          <h3>Waves</h3>
          <CountTable head="Wave" rows={preview.waves.map((w) => ({ key: String(w.index), label: String(w.index + 1), count: w.size }))} />
        </div>
        <div>
          <h3>Skipped</h3>
          {preview.skippedByReason.length === 0 ? (
            <p className="muted">None.</p>
          ) : (
            <CountTable
              head="Why"
              testId="preview-skips"
              rows={preview.skippedByReason.map((r) => ({ key: r.reason, label: words(r.reason), count: r.count }))}
            />
          )}
        </div>
      </div>
      <p className="muted">
        First device notified {dateTime(preview.startsAt)}. The times are the pacing and soaks the policy implies; the devices' own upgrade time comes on top of
        the least.
      </p>
      {children}
    </Card>
    </div>
  );
}

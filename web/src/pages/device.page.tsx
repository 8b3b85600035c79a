import { useMemo, useState } from "react";
import { Link } from "wouter";
import { useMutation, useQuery } from "urql";
import {
  DeviceDetailDocument,
  OtaProgressChangedDocument,
  ResumeDeviceDocument,
  SetDeviceTagsDocument,
  SuspendDeviceDocument,
  type ProgressFieldsFragment,
} from "../../../src/client/generated/graphql.js";
import { DeviceStateBadge } from "../components/device.js";
import { ApiError } from "../components/errors.js";
import { ExecutionTable } from "../components/executions.js";
import { Card, Loading, ProgressCell } from "../components/ui.js";
import { ago, dateTime, words } from "../format.js";
import { useCoalescedSubscription } from "../live.js";
import { routes } from "../routes.js";

export function DevicePage({ product, device }: { product: string; device: string }) {
  const [result, reexecute] = useQuery({ query: DeviceDetailDocument, variables: { productName: product, deviceName: device } });
  const one = useMemo(() => new Set([device]), [device]);
  const { latest, error: liveError } = useCoalescedSubscription(
    OtaProgressChangedDocument,
    { productName: product, deviceName: device },
    (d): [[string, ProgressFieldsFragment]] => [[d.otaProgressChanged.deviceName, d.otaProgressChanged]],
    one,
  );
  const d = result.data?.device;
  if (result.fetching && !d) return <Loading />;
  if (result.error) return <ApiError error={result.error} />;
  if (!d) return <p className="alert alert-error">No device {device} in {product}.</p>;
  const progress = latest.get(device) ?? d.otaProgress;
  return (
    <>
      <div className="page-head">
        <div>
          <div className="crumbs">
            <Link href={routes.devices(product)}>Devices of {product}</Link>
          </div>
          <h1>
            <span className="mono">{d.deviceName}</span> <DeviceStateBadge suspended={d.suspended} online={d.online} />
          </h1>
          <p className="muted meta">
            <span>
              firmware <strong data-testid="device-version">{d.firmwareVersion ?? "not reported"}</strong>
            </span>
            <span>last status {ago(d.lastStatusAt)}</span>
            <span>registered {dateTime(d.createdAt)}</span>
          </p>
        </div>
        <SuspendButton product={product} device={device} suspended={d.suspended} onDone={() => reexecute({ requestPolicy: "network-only" })} />
      </div>
      <ApiError error={liveError} />
      <div className="grid-2">
        <Card title="OTA progress">
          {progress ? (
            <div className="progress-detail" data-testid="device-progress">
              <ProgressCell state={progress.state} progress={progress.progress} />
              <dl className="kv">
                <dt>version</dt>
                <dd>{progress.version}</dd>
                <dt>state</dt>
                <dd>{words(progress.state)}</dd>
                {progress.failureReason && (
                  <>
                    <dt>failure</dt>
                    <dd className="tone-text-bad">{words(progress.failureReason)}</dd>
                  </>
                )}
                <dt>message</dt>
                <dd>{progress.desc || "—"}</dd>
                <dt>received</dt>
                <dd>{dateTime(progress.receivedAt)}</dd>
              </dl>
            </div>
          ) : (
            <p className="muted">No OTA report yet.</p>
          )}
        </Card>
        <Card title="Tags">
          <TagsEditor product={product} device={device} tags={d.tags} tagsVersion={d.tagsVersion} />
        </Card>
      </div>
      <Card title="Last status (update_status)">
        {d.status ? <pre className="json">{JSON.stringify(d.status, null, 2)}</pre> : <p className="muted">No status reported yet.</p>}
      </Card>
      <Card title="Executions across rollouts (latest 20)">
        <ExecutionTable rows={d.executions} productName={product} by="rollout" />
      </Card>
    </>
  );
}

function SuspendButton({ product, device, suspended, onDone }: { product: string; device: string; suspended: boolean; onDone: () => void }) {
  const [suspend, doSuspend] = useMutation(SuspendDeviceDocument);
  const [resume, doResume] = useMutation(ResumeDeviceDocument);
  const vars = { productName: product, deviceName: device };
  const busy = suspend.fetching || resume.fetching;
  return (
    <div className="actions">
      {suspended ? (
        <button type="button" className="btn btn-primary" disabled={busy} onClick={async () => (await doResume(vars), onDone())}>
          Resume device
        </button>
      ) : (
        <button type="button" className="btn btn-danger-outline" disabled={busy} onClick={async () => (await doSuspend(vars), onDone())}>
          Suspend device
        </button>
      )}
      <ApiError error={suspend.error ?? resume.error} />
    </div>
  );
}

function TagsEditor({ product, device, tags, tagsVersion }: { product: string; device: string; tags: readonly string[]; tagsVersion: number }) {
  const [editing, setEditing] = useState(false);
  const [state, setTags] = useMutation(SetDeviceTagsDocument);
  if (!editing) {
    return (
      <div>
        <p>
          {tags.length === 0 && <span className="muted">No tags. </span>}
          {tags.map((t) => (
            <span key={t} className="tag">
              {t}
            </span>
          ))}
        </p>
        <p className="muted small">tags version {tagsVersion} (sent to the device as $set_tags)</p>
        <button type="button" className="btn" onClick={() => setEditing(true)}>
          Edit tags
        </button>
      </div>
    );
  }
  return (
    <form
      onSubmit={async (e) => {
        e.preventDefault();
        const value = String(new FormData(e.currentTarget).get("tags") ?? "");
        const r = await setTags({ productName: product, deviceName: device, tags: value.split(/[\s,]+/).filter(Boolean) });
        if (!r.error) setEditing(false);
      }}
    >
      <label htmlFor="tags">Tags (separated by spaces or commas)</label>
      <input id="tags" name="tags" defaultValue={tags.join(", ")} autoFocus className="wide" />
      <div className="btn-row">
        <button type="submit" className="btn btn-primary" disabled={state.fetching}>
          Save tags
        </button>
        <button type="button" className="btn btn-ghost" onClick={() => setEditing(false)}>
          Cancel
        </button>
      </div>
      <ApiError error={state.error} />
    </form>
  );
}

import { useMemo } from "react";
import { Link, useSearchParams } from "wouter";
import { useQuery } from "urql";
import { DeviceListDocument, type DeviceState } from "../../../src/client/generated/graphql.js";
import { DeviceStateBadge } from "../components/device.js";
import { ApiError } from "../components/errors.js";
import { Card, Loading, Pager, ProgressCell } from "../components/ui.js";
import { ago } from "../format.js";
import { useProgressBatches } from "../live.js";
import { useCursorPages } from "../paging.js";
import { routes } from "../routes.js";

const PAGE_SIZE = 50;
const STATES: readonly DeviceState[] = ["ONLINE", "OFFLINE", "SUSPENDED"];

/** Filters live in the URL (?tag=&version=&state=), so a filtered list can be shared and survives a reload. */
function useFilters() {
  const [params, setParams] = useSearchParams();
  const get = (k: string) => params.get(k) || null;
  const filters = { tag: get("tag"), firmwareVersion: get("version"), state: (get("state") as DeviceState | null) ?? null };
  const apply = (form: FormData) => {
    const next = new URLSearchParams();
    for (const k of ["tag", "version", "state"]) {
      const v = String(form.get(k) ?? "").trim();
      if (v) next.set(k, v);
    }
    setParams(next);
  };
  return { filters, apply };
}

export function DevicesPage({ product }: { product: string }) {
  const { filters, apply } = useFilters();
  const pages = useCursorPages();
  const filterKey = JSON.stringify(filters);
  const [result] = useQuery({
    query: DeviceListDocument,
    variables: { productName: product, ...filters, first: PAGE_SIZE, after: pages.after },
    requestPolicy: "cache-and-network",
  });
  // One array per answer: a fresh [] on every render (no data yet) would rebuild onScreen on every render.
  const nodes = useMemo(() => result.data?.devices.nodes ?? [], [result.data]);
  const onScreen = useMemo(() => new Set(nodes.map((d) => d.deviceName)), [nodes]);
  const { latest, error: liveError } = useProgressBatches({ productName: product, tag: filters.tag }, onScreen);
  return (
    <>
      <div className="page-head">
        <h1>Devices · {product}</h1>
      </div>
      <Card>
        <form
          key={filterKey}
          className="filters"
          onSubmit={(e) => {
            e.preventDefault();
            pages.reset();
            apply(new FormData(e.currentTarget));
          }}
        >
          <label>
            Tag <input name="tag" defaultValue={filters.tag ?? ""} placeholder="any" />
          </label>
          <label>
            Firmware version <input name="version" defaultValue={filters.firmwareVersion ?? ""} placeholder="any" />
          </label>
          <label>
            State{" "}
            <select name="state" defaultValue={filters.state ?? ""}>
              <option value="">any</option>
              {STATES.map((s) => (
                <option key={s} value={s}>
                  {s.toLowerCase()}
                </option>
              ))}
            </select>
          </label>
          <button type="submit" className="btn">
            Filter
          </button>
        </form>
        <ApiError error={result.error ?? liveError} />
        {!result.data && result.fetching ? (
          <Loading />
        ) : nodes.length === 0 ? (
          <p className="muted empty">No devices match.</p>
        ) : (
          <div className="table-wrap">
            <table className="table" data-testid="devices">
              <thead>
                <tr>
                  <th>Device</th>
                  <th>State</th>
                  <th>Firmware</th>
                  <th>Tags</th>
                  <th>OTA progress</th>
                  <th>Last status</th>
                </tr>
              </thead>
              <tbody>
                {nodes.map((d) => {
                  const p = latest.get(d.deviceName) ?? d.otaProgress;
                  return (
                    <tr key={d.deviceName}>
                      <td>
                        <Link href={routes.device(product, d.deviceName)} className="mono">
                          {d.deviceName}
                        </Link>
                      </td>
                      <td>
                        <DeviceStateBadge suspended={d.suspended} online={d.online} />
                      </td>
                      <td>{d.firmwareVersion ?? <span className="muted">not reported</span>}</td>
                      <td>
                        {d.tags.map((t) => (
                          <span key={t} className="tag">
                            {t}
                          </span>
                        ))}
                      </td>
                      <td>
                        <ProgressCell state={p?.state} progress={p?.progress} />
                        {p && <span className="small muted"> {p.version}</span>}
                      </td>
                      <td className="muted">{ago(d.lastStatusAt)}</td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </div>
        )}
        <Pager pages={pages} rows={nodes.length} pageInfo={result.data?.devices.pageInfo} />
      </Card>
    </>
  );
}

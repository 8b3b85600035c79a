import { useState } from "react";
import { Link } from "wouter";
import { useQuery } from "urql";
import { RolloutsDocument, type RolloutFieldsFragment, type RolloutState } from "../../../src/client/generated/graphql.js";
import { ApiError } from "../components/errors.js";
import { isActive, RolloutBar, targetText } from "../components/rollout.js";
import { Badge, Card, Loading, Pager, StateFilter } from "../components/ui.js";
import { ago } from "../format.js";
import { useCursorPages } from "../paging.js";
import { useRolloutPushes } from "../rollout.live.js";
import { routes } from "../routes.js";

const PAGE_SIZE = 20;
const STATES: readonly RolloutState[] = ["RUNNING", "PAUSED", "SCHEDULED", "COMPLETED", "ABORTED", "CANCELED"];

function RolloutRow({ rollout: listed }: { rollout: RolloutFieldsFragment }) {
  // Kept live while active; a page holds at most 20, well within a connection's subscriptions.
  const rollout = useRolloutPushes(listed.id, isActive(listed.state)).pushed ?? listed;
  return (
    <tr>
      <td>
        <Link href={routes.rollout(rollout.id)} className="strong">
          {rollout.name || rollout.id.slice(0, 8)}
        </Link>
        <div className="small muted">{targetText(rollout.target)}</div>
      </td>
      <td>{rollout.firmware.version}</td>
      <td>
        <Badge state={rollout.state} />
      </td>
      <td className="bar-cell">
        <RolloutBar counts={rollout.counts} />
      </td>
      <td className="muted">{ago(rollout.createdAt)}</td>
    </tr>
  );
}

export function RolloutTable({ rollouts }: { rollouts: readonly RolloutFieldsFragment[] }) {
  if (rollouts.length === 0) return <p className="muted empty">No rollouts.</p>;
  return (
    <div className="table-wrap">
      <table className="table" data-testid="rollouts">
        <thead>
          <tr>
            <th>Rollout</th>
            <th>Firmware</th>
            <th>State</th>
            <th style={{ width: "40%" }}>Progress</th>
            <th>Created</th>
          </tr>
        </thead>
        <tbody>
          {rollouts.map((r) => (
            <RolloutRow key={r.id} rollout={r} />
          ))}
        </tbody>
      </table>
    </div>
  );
}

export function RolloutsPage({ product }: { product: string }) {
  const [state, setState] = useState<RolloutState | "">("");
  const pages = useCursorPages();
  const [result] = useQuery({
    query: RolloutsDocument,
    variables: { productName: product, states: state ? [state] : null, first: PAGE_SIZE, after: pages.after },
    requestPolicy: "cache-and-network",
  });
  const page = result.data?.rollouts;
  return (
    <>
      <div className="page-head">
        <h1>Rollouts · {product}</h1>
        <Link href={routes.newRollout(product)} className="btn btn-primary">
          New rollout
        </Link>
      </div>
      <Card
        actions={<StateFilter states={STATES} value={state} onChange={(s) => (setState(s), pages.reset())} />}
      >
        <ApiError error={result.error} />
        {!page && result.fetching ? <Loading /> : page && <RolloutTable rollouts={page.nodes} />}
        {page && (
          <Pager pages={pages} rows={page.nodes.length} pageInfo={page.pageInfo} />
        )}
      </Card>
    </>
  );
}

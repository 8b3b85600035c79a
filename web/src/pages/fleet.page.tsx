import { Link, Redirect, useLocation } from "wouter";
import { useQuery } from "urql";
import { FleetDocument, ProductsDocument } from "../../../src/client/generated/graphql.js";
import { ApiError } from "../components/errors.js";
import { Card, Loading, Stat } from "../components/ui.js";
import { VersionsChart } from "../components/versions.chart.js";
import { num } from "../format.js";
import { useInterval } from "../live.js";
import { routes } from "../routes.js";
import { RolloutTable } from "./rollouts.page.js";

/** Counts change slowly and nothing pushes them: read again this often (the active rollouts' bars are live). */
const FLEET_REFRESH_MS = 10_000;
const HOME_CARDS = 24;

function FleetSummary({ product, compact }: { product: string; compact?: boolean }) {
  const [, navigate] = useLocation();
  const [result, reexecute] = useQuery({ query: FleetDocument, variables: { productName: product } });
  useInterval(() => reexecute({ requestPolicy: "network-only" }), FLEET_REFRESH_MS);
  const fleet = result.data?.fleet;
  if (result.error) return <ApiError error={result.error} />;
  if (!fleet) return <Loading />;
  const notReported = fleet.versions.find((v) => v.firmwareVersion === null)?.devices ?? 0;
  const stats = (
    <div className="stats">
      <Stat label="devices" value={num(fleet.devices)} testId="fleet-devices" />
      <Stat label="online" value={fleet.online === null ? "unknown" : num(fleet.online)} testId="fleet-online" tone="good" />
      <Stat label="suspended" value={num(fleet.suspended)} testId="fleet-suspended" tone={fleet.suspended ? "warn" : undefined} />
      <Stat label="versions" value={num(fleet.versions.filter((v) => v.firmwareVersion !== null).length)} />
      <Stat label="version not reported" value={num(notReported)} />
      <Stat label="active rollouts" value={num(fleet.activeRollouts.length)} tone={fleet.activeRollouts.length ? "busy" : undefined} />
    </div>
  );
  if (compact) {
    return (
      <Card title={<Link href={routes.fleet(product)}>{product}</Link>}>
        {stats}
        <VersionsChart versions={fleet.versions.slice(0, 5)} />
      </Card>
    );
  }
  const byVersion = (version: string | null) => navigate(`${routes.devices(product)}${version ? `?version=${encodeURIComponent(version)}` : ""}`);
  return (
    <>
      <Card>{stats}</Card>
      <div className="grid-2 fleet-grid">
        <Card title="Devices by firmware version">
          {fleet.versions.length === 0 ? <p className="muted empty">No devices.</p> : <VersionsChart versions={fleet.versions} onPick={byVersion} />}
        </Card>
        <Card
          title="Active rollouts"
          actions={
            <Link href={routes.newRollout(product)} className="btn btn-primary">
              New rollout
            </Link>
          }
        >
          <RolloutTable rollouts={fleet.activeRollouts} />
        </Card>
      </div>
    </>
  );
}

export function FleetPage({ product }: { product: string }) {
  return (
    <>
      <div className="page-head">
        <h1>Fleet · {product}</h1>
        <div className="btn-row">
          <Link href={routes.devices(product)} className="btn">
            Devices
          </Link>
          <Link href={routes.rollouts(product)} className="btn">
            Rollouts
          </Link>
        </div>
      </div>
      <FleetSummary product={product} />
    </>
  );
}

/** Every product this token may see; one product goes straight to its fleet. */
export function HomePage() {
  const [result] = useQuery({ query: ProductsDocument, variables: {} });
  if (result.error) return <ApiError error={result.error} />;
  const products = result.data?.products;
  if (!products) return <Loading />;
  if (products.length === 1) return <Redirect to={routes.fleet(products[0]!)} replace />;
  return (
    <>
      <div className="page-head">
        <h1>Products</h1>
      </div>
      {products.length === 0 && <p className="muted">No product has registered devices yet (or this token may see none).</p>}
      <div className="grid-3">
        {products.slice(0, HOME_CARDS).map((p) => (
          <FleetSummary key={p} product={p} compact />
        ))}
      </div>
      {products.length > HOME_CARDS && (
        <Card title="More products">
          <p>
            {products.slice(HOME_CARDS).map((p) => (
              <Link key={p} href={routes.fleet(p)} className="tag">
                {p}
              </Link>
            ))}
          </p>
        </Card>
      )}
    </>
  );
}

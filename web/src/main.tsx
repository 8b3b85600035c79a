import { lazy, StrictMode, Suspense } from "react";
import { createRoot } from "react-dom/client";
import { Redirect, Route, Switch, useLocation } from "wouter";
import { Authenticated } from "./auth.js";
import { ErrorBoundary } from "./components/errors.js";
import { Layout } from "./layout.js";
import { DevicePage } from "./pages/device.page.js";
import { DevicesPage } from "./pages/devices.page.js";
import { Loading } from "./components/ui.js";
import { NewRolloutPage } from "./pages/new-rollout.page.js";
import { RolloutsPage } from "./pages/rollouts.page.js";
import { SignInPage } from "./pages/sign-in.page.js";
import "./styles.css";

// Chart.js (about 150 kB) loads with the fleet and home pages, on their first visit. The rollout page is a chunk of its
// own too, but it holds only its own code (about 10 kB, no library of its own): splitting it saves the first load little.
const FleetPage = lazy(() => import("./pages/fleet.page.js").then((m) => ({ default: m.FleetPage })));
const HomePage = lazy(() => import("./pages/fleet.page.js").then((m) => ({ default: m.HomePage })));
const RolloutPage = lazy(() => import("./pages/rollout.page.js").then((m) => ({ default: m.RolloutPage })));

/** Names are `[A-Za-z0-9_.:-]` (the API's rule), so route parameters need no decoding beyond wouter's. */
function Routes() {
  const [location] = useLocation();
  return (
    // A render error on one page is forgotten on the next.
    <ErrorBoundary key={location}>
      <Suspense fallback={<Loading />}>
      <Switch>
        <Route path="/" component={HomePage} />
        <Route path="/products/:product">{(p) => <FleetPage product={p.product} />}</Route>
        <Route path="/products/:product/devices">{(p) => <DevicesPage product={p.product} />}</Route>
        <Route path="/products/:product/devices/:device">
          {(p) => <DevicePage key={`${p.product}/${p.device}`} product={p.product} device={p.device} />}
        </Route>
        <Route path="/products/:product/rollouts">{(p) => <RolloutsPage product={p.product} />}</Route>
        <Route path="/products/:product/rollouts/new">{(p) => <NewRolloutPage product={p.product} />}</Route>
        <Route path="/rollouts/:id">{(p) => <RolloutPage key={p.id} id={p.id} />}</Route>
        <Route>
          <Redirect to="/" />
        </Route>
      </Switch>
      </Suspense>
    </ErrorBoundary>
  );
}

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <ErrorBoundary>
      <Authenticated signIn={(onToken) => <SignInPage onToken={onToken} />}>
        <Layout>
          <Routes />
        </Layout>
      </Authenticated>
    </ErrorBoundary>
  </StrictMode>,
);

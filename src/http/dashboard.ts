import { existsSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import express, { Router, type NextFunction, type Request, type Response } from "express";

/** Where `npm run build:web` writes the dashboard: web/dist at the repository root (the server runs its sources through tsx). */
export const DASHBOARD_DIST = fileURLToPath(new URL("../../web/dist", import.meta.url));

/**
 * Paths of the API (GraphQL, health, REST compatibility, firmware uploads and
 * downloads, EMQX's HTTP authentication) and of the built assets: never
 * answered with the page, so an unknown one keeps its JSON 404.
 */
const RESERVED_PREFIXES = ["/graphql", "/healthz", "/readyz", "/metrics", "/ota", "/devices", "/firmware", "/emqx", "/assets"];

const isReserved = (path: string) => RESERVED_PREFIXES.some((p) => path === p || path.startsWith(`${p}/`));

/**
 * A browser navigating to one of the app's pages: a GET or HEAD outside the
 * API that asks for text/html by name (fetches, scripts and curl's `*\/*` do
 * not), or `/` itself.
 */
function isPageRequest(req: Request): boolean {
  if (req.method !== "GET" && req.method !== "HEAD") return false;
  if (req.path === "/") return true;
  return !isReserved(req.path) && (req.headers.accept ?? "").includes("text/html");
}

const NOT_BUILT = `<!doctype html><meta charset="utf-8"><title>iothub-ota</title>
<p>The dashboard is not built yet: run <code>npm run build:web</code> (<code>npm start</code> does it), then reload.</p>
<p>The API is at <code>/graphql</code>.</p>`;

/** The built files: hashed assets cached for a year, index.html for every page of the single-page app, never cached. */
function builtDashboard(dist: string, index: string): Router {
  const router = Router();
  router.use("/assets", express.static(join(dist, "assets"), { immutable: true, maxAge: "365d", index: false }));
  router.use(express.static(dist, { index: false }));
  router.use((req: Request, res: Response, next: NextFunction) => {
    if (!isPageRequest(req)) return next();
    res.setHeader("cache-control", "no-cache");
    res.sendFile(index, (err) => err && next(err));
  });
  return router;
}

/**
 * The web dashboard at `/`, served from `dist` (web/dist). Mount it after the
 * API's routes and before the 404 handler. Until `dist` holds a build, `/`
 * answers how to make one (checked again on each request to `/`, so a build
 * made while the server runs is served without a restart).
 */
export function dashboard(dist: string = DASHBOARD_DIST) {
  const index = join(dist, "index.html");
  let built: Router | null = null;
  return (req: Request, res: Response, next: NextFunction) => {
    if (!built && existsSync(index)) built = builtDashboard(dist, index);
    if (built) return built(req, res, next);
    if (isPageRequest(req) && req.path === "/") return void res.status(503).type("html").send(NOT_BUILT);
    next();
  };
}

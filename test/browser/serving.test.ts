import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import express from "express";
import { beforeAll, describe, expect, it } from "vitest";
import { dashboard } from "../../src/http/dashboard.js";
import { startApp, type TestApp } from "../helpers/app.js";
import { onTeardown, tempDir } from "../helpers/teardown.js";

const HTML = { accept: "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8" };

describe("the server serves the dashboard beside its API", () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startApp();
  });

  it("answers / and the app's pages with index.html, and its assets cached for good", async () => {
    for (const path of ["/", "/products/acme/devices", "/rollouts/some-id"]) {
      const res = await fetch(`${t.httpUrl}${path}`, { headers: HTML });
      expect(res.status, path).toBe(200);
      expect(res.headers.get("content-type")).toContain("text/html");
      expect(res.headers.get("cache-control")).toBe("no-cache");
      const html = await res.text();
      expect(html).toContain('<div id="root">');
      const asset = html.match(/src="(\/assets\/[^"]+\.js)"/)?.[1];
      const script = await fetch(`${t.httpUrl}${asset}`);
      expect(script.status).toBe(200);
      expect(script.headers.get("cache-control")).toContain("immutable");
    }
  });

  it("keeps the API's JSON 404 for unknown API paths and for requests that do not ask for a page", async () => {
    for (const [path, headers] of [
      ["/ota/acme", HTML],
      ["/devices/acme/x/y", HTML],
      ["/firmware/nosuch", HTML],
      ["/firmware/download/nosuch/more", HTML],
      ["/emqx/nosuch", HTML],
      ["/assets/missing.js", HTML],
      ["/products/acme", { accept: "application/json" }],
    ] as const) {
      const res = await fetch(`${t.httpUrl}${path}`, { headers });
      expect(res.status, path).toBe(404);
      expect(await res.json()).toEqual({ errors: [{ message: "no such route", extensions: { code: "NOT_FOUND" } }] });
    }
    expect((await fetch(`${t.httpUrl}/healthz`, { headers: HTML })).headers.get("content-type")).toContain("json");
  });

  it("says how to build the dashboard when there is no build, and serves it once there is one", async () => {
    const dist = tempDir("no-dist");
    const app = express().use(dashboard(dist)).use((_req, res) => void res.status(404).json({ notFound: true }));
    const server = createServer(app).listen(0, "127.0.0.1");
    onTeardown(() => new Promise((r) => server.close(r)));
    await new Promise((r) => server.once("listening", r));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const res = await fetch(`${url}/`, { headers: HTML });
    expect(res.status).toBe(503);
    expect(await res.text()).toContain("npm run build:web");
    expect((await fetch(`${url}/products/acme`, { headers: HTML })).status).toBe(404);

    const { mkdir, writeFile } = await import("node:fs/promises");
    await mkdir(dist, { recursive: true });
    await writeFile(`${dist}/index.html`, "<!doctype html><p>built");
    expect(await (await fetch(`${url}/products/acme`, { headers: HTML })).text()).toContain("built");
  });
});

#!/usr/bin/env node
// Runs the compiled server (dist/, `npm run build`). In a clone whose sources
// are newer than the build (or never built), runs them through tsx instead,
// which only a development install has.
import { existsSync, readdirSync, statSync } from "node:fs";

const root = new URL("../", import.meta.url);
const built = new URL("dist/main.js", root);

/** The newest modification time under a folder, in ms. */
function newest(dir) {
  let latest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) latest = Math.max(latest, statSync(`${entry.parentPath}/${entry.name}`).mtimeMs);
  }
  return latest;
}

const sources = new URL("src/", root);
const fresh = existsSync(built) && (!existsSync(sources) || statSync(built).mtimeMs >= newest(sources));
if (fresh) {
  await import(built.href);
} else {
  let register;
  try {
    ({ register } = await import("tsx/esm/api"));
  } catch {
    process.stderr.write("iothub-ota: dist/ is missing or older than src/: run `npm run build` (tsx, to run the sources, is not installed)\n");
    process.exit(2);
  }
  register();
  await import(new URL("src/main.ts", root).href);
}

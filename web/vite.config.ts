import { fileURLToPath } from "node:url";
import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

const root = fileURLToPath(new URL(".", import.meta.url));

/** The dashboard: sources in web/, built into web/dist, served by the server at `/`. */
export default defineConfig({
  root,
  base: "/",
  plugins: [react()],
  build: {
    outDir: fileURLToPath(new URL("./dist", import.meta.url)),
    emptyOutDir: true,
    // Chart.js is most of the bundle; one chunk per library family keeps the first paint's script small and cacheable.
    chunkSizeWarningLimit: 400,
  },
  server: {
    // `npx vite --config web/vite.config.ts` against a server on :4000 (npm start).
    proxy: { "/graphql": { target: "http://127.0.0.1:4000", ws: true } },
  },
});

import { defineConfig } from "vitest/config";

export default defineConfig({
  resolve: {
    // One copy of graphql for type-graphql, Apollo and the tests ("another module or realm").
    alias: { graphql: "graphql/index.js" },
  },
  test: {
    include: ["test/**/*.test.ts"],
    setupFiles: ["test/helpers/setup.ts"],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // A random order every run (the seed is printed): tests must not lean on each other's leftovers.
    sequence: { shuffle: true },
    pool: "forks",
    maxWorkers: 2,
  },
});

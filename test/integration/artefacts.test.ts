import { readFile } from "node:fs/promises";
import { generate, loadCodegenConfig } from "@graphql-codegen/cli";
import { describe, expect, it } from "vitest";
import { printSchemaFile } from "../../src/http/schema.js";

const root = new URL("../../", import.meta.url);

describe("generated artefacts", () => {
  it("schema.graphql matches the type-graphql classes (npm run schema)", async () => {
    expect(await readFile(new URL("schema.graphql", root), "utf8")).toBe(await printSchemaFile());
  });

  it("the typed documents match schema.graphql and the operations (npm run codegen)", async () => {
    const { config } = await loadCodegenConfig({ configFilePath: new URL("codegen.yml", root).pathname });
    const outputs = (await generate({ ...config, cwd: root.pathname, silent: true }, false)) as {
      filename: string;
      content: string;
    }[];
    expect(outputs.length).toBeGreaterThan(0);
    for (const { filename, content } of outputs) {
      expect(await readFile(new URL(filename, root), "utf8"), `${filename} is stale: run npm run codegen`).toBe(content);
    }
  });

  it("the committed migrations match the drizzle schema", async () => {
    const { generateDrizzleJson, generateMigration } = await import("drizzle-kit/api");
    const schema = await import("../../src/storage/schema.js");
    const journal = JSON.parse(await readFile(new URL("drizzle/meta/_journal.json", root), "utf8")) as {
      entries: { idx: number }[];
    };
    const last = String(journal.entries.at(-1)!.idx).padStart(4, "0");
    const snapshot = JSON.parse(await readFile(new URL(`drizzle/meta/${last}_snapshot.json`, root), "utf8"));
    const pending = await generateMigration(snapshot, generateDrizzleJson(schema as Record<string, unknown>));
    expect(pending, "schema.ts changed without a migration: run npm run db:generate").toEqual([]);
  });
});

// Writes schema.graphql from the type-graphql classes (`npm run schema`).
import { writeFile } from "node:fs/promises";
import { printSchemaFile } from "../src/http/schema.js";

await writeFile(new URL("../schema.graphql", import.meta.url), await printSchemaFile());

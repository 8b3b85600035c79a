// `npm run bench [-- <benchmark> --flags]`: benchmarks of a running server on
// loopback, each printing a JSON line and a table. Never part of `npm test`.
import "reflect-metadata";
import { Command } from "commander";
import { ingestBench } from "./ingest.js";
import { report } from "./lib.js";

const int = (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new Error(`expected a positive integer, got ${v}`);
  return n;
};

const program = new Command("bench");
program
  .command("ingest")
  .description("device reports through the broker into the server, vs a bare subscriber and the seed design")
  .option("--devices <n>", "publishing devices", int, 20)
  .option("--reports <n>", "reports per device", int, 500)
  .option("--brokers <list>", "mosquitto,embedded", "mosquitto,embedded")
  .option("--subscribers <n>", "graphql-ws subscribers that must receive every report (0: stored only)", (v: string) => Number(v), 1)
  .option("--no-references", "skip the bare-subscriber and seed-design runs")
  .option("--profile <dir>", "write the server's CPU profile (.cpuprofile) into this folder")
  .action(async (o: { devices: number; reports: number; subscribers: number; brokers: string; references: boolean; profile?: string }) => {
    const brokers = o.brokers.split(",") as ("mosquitto" | "embedded")[];
    const nodeArgs = o.profile ? ["--cpu-prof", `--cpu-prof-dir=${o.profile}`] : [];
    const rows = await ingestBench({ ...o, brokers, noReferences: !o.references, nodeArgs });
    report("ingest", rows, { devices: o.devices, reports: o.reports, subscribers: o.subscribers });
  });

await program.parseAsync();

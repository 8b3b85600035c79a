// `npm run bench [-- <benchmark> --flags]`: benchmarks of a running server on
// loopback, each printing a JSON line and a table. Never part of `npm test`.
import "reflect-metadata";
import { Command } from "commander";
import { ingestBench } from "./ingest.js";
import { queriesBench, type QueriesOptions } from "./queries.js";
import { subscriptionsBench, type SubscriptionsOptions } from "./subscriptions.js";
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
  .action(async (o: { devices: number; reports: number; subscribers: number; brokers: string; references: boolean }) => {
    const brokers = o.brokers.split(",") as ("mosquitto" | "embedded")[];
    const rows = await ingestBench({ ...o, brokers, noReferences: !o.references });
    report("ingest", rows, { devices: o.devices, reports: o.reports, subscribers: o.subscribers });
  });

program
  .command("queries")
  .description("otaProgress, otaProgresses and the REST read at fixed concurrency (autocannon)")
  .option("--devices <n>", "devices in the otaProgresses query", int, 1000)
  .option("--connections <n>", "concurrent connections", int, 10)
  .option("--seconds <n>", "seconds per query", int, 10)
  .action(async (o: QueriesOptions) => report("queries", await queriesBench(o), { ...o }));

program
  .command("subscriptions")
  .description("graphql-ws subscribers on one or two instances: fan-out latency and memory per subscriber")
  .option("--subscribers <n>", "concurrent subscribers", int, 1000)
  .option("--instances <n>", "server instances sharing Redis and one Mosquitto (1 or 2)", int, 1)
  .option("--reports <n>", "reports fanned out, one at a time", int, 20)
  .action(async (o: SubscriptionsOptions) => report("subscriptions", await subscriptionsBench(o), { ...o }));

await program.parseAsync();

// `npm run bench [-- <benchmark> --flags]`: benchmarks of a running server on
// loopback, each printing a JSON line and a table. Never part of `npm test`.
import "reflect-metadata";
import { Command } from "commander";
import { fleetBench, type FleetOptions } from "./fleet.js";
import { ingestBench } from "./ingest.js";
import { queriesBench, type QueriesOptions } from "./queries.js";
import { simulatorBench, type SimulatorOptions } from "./simulator.js";
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

program
  .command("fleet")
  .description("sendOta to a tag held by N registered devices, and listing them all with devices(tag)")
  .option("--devices <n>", "registered devices with the tag", int, 100_000)
  .option("--page-size <n>", "devices per page", int, 1000)
  .action(async (o: FleetOptions) => report("fleet", await fleetBench(o), { ...o }));

program
  .command("simulator")
  .description("simulated devices in one process: connection setup rate and memory per device")
  .option("--devices <n>", "devices against a Mosquitto of its own", int, 10_000)
  .option("--embedded-devices <n>", "devices against the embedded broker (scrypt on first connect)", int, 500)
  .action(async (o: SimulatorOptions) => report("simulator", await simulatorBench(o), { ...o }));

program
  .command("all", { isDefault: true })
  .description("every benchmark with its defaults (what BENCHMARKS.md records)")
  .action(async () => {
    report("ingest", await ingestBench({ devices: 20, reports: 1000, subscribers: 1, brokers: ["mosquitto", "embedded"] }));
    report("queries", await queriesBench({ devices: 1000, connections: 1, seconds: 10 }));
    report("queries", await queriesBench({ devices: 1000, connections: 10, seconds: 10 }));
    for (const [subscribers, instances] of [[1000, 1], [10_000, 1], [10_000, 2]] as const) {
      report("subscriptions", await subscriptionsBench({ subscribers, instances, reports: 10 }));
    }
    report("fleet", await fleetBench({ devices: 100_000, pageSize: 1000 }));
    report("simulator", await simulatorBench({ devices: 10_000, embeddedDevices: 500 }));
  });

await program.parseAsync();

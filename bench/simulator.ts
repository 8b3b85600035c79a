import { spawn } from "node:child_process";
import { rm, writeFile } from "node:fs/promises";
import { registerDevices, type FleetSummary } from "../src/sim/sim.fleet.js";
import { BIN } from "../test/helpers/processes.js";
import { OwnMosquitto, startServer, TOKEN, uniq } from "./lib.js";

export interface SimulatorOptions {
  devices: number;
  embeddedDevices: number;
}

/** Runs `iothub-ota simulate` as a user would and returns its JSON summary. */
async function simulate(args: string[]): Promise<FleetSummary> {
  const child = spawn(process.execPath, [BIN, "simulate", ...args, "--exit-after-ms", "3000"], { stdio: ["ignore", "pipe", "ignore"] });
  let out = "";
  child.stdout.on("data", (d) => (out += d));
  await new Promise((resolve) => child.on("exit", resolve));
  return JSON.parse(out.trim().split("\n").at(-1) as string) as FleetSummary;
}

const row = (broker: string, s: FleetSummary) => ({
  broker,
  devices: s.devices,
  connected: s.connected,
  "connect s": s.connectSeconds,
  "connections/s": s.connectionsPerSecond,
  "KB/device": s.kbPerDevice,
  errors: s.errors,
});

/**
 * How many simulated devices one process holds, how fast they connect, and
 * what each costs: against a Mosquitto of its own (no authentication, so
 * the simulator is what is measured) and against the embedded broker (which
 * checks every secret with scrypt on first connect).
 */
export async function simulatorBench(o: SimulatorOptions): Promise<Record<string, unknown>[]> {
  const rows: Record<string, unknown>[] = [];
  const mosquitto = await OwnMosquitto.start();
  try {
    const file = `/tmp/iothub-ota-sim-${uniq("creds")}.json`;
    const productName = uniq("sim");
    await writeFile(file, JSON.stringify(Array.from({ length: o.devices }, (_, i) => ({ productName, deviceName: `dev-${i}`, secret: "x" }))));
    rows.push(row("mosquitto", await simulate(["--credentials", file, "-n", String(o.devices), "--mqtt", mosquitto.url, "--concurrency", "200"])));
    await rm(file, { force: true });
  } finally {
    await mosquitto.stop();
  }
  const b = await startServer();
  try {
    const file = `/tmp/iothub-ota-sim-${uniq("creds")}.json`;
    await writeFile(file, JSON.stringify(await registerDevices(b.graphqlUrl, TOKEN, uniq("sim"), o.embeddedDevices, [])));
    rows.push(row("embedded (first connect)", await simulate(["--credentials", file, "-n", String(o.embeddedDevices), "--mqtt", b.mqttUrl])));
    rows.push(row("embedded (reconnect)", await simulate(["--credentials", file, "-n", String(o.embeddedDevices), "--mqtt", b.mqttUrl])));
    await rm(file, { force: true });
  } finally {
    await b.stop();
  }
  return rows;
}

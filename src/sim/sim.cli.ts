import { checkName } from "../protocol/names.js";
import { checkRates, seededRandom, type FaultRates } from "./faults.js";
import { FirmwareServer } from "./firmware.server.js";
import { Fleet, readCredentials, registerDevices, writeCredentials, type FleetSummary } from "./sim.fleet.js";

export interface SimulateOptions {
  api: string;
  token?: string;
  mqtt: string;
  product: string;
  devices: string;
  tags: string;
  credentials?: string;
  saveCredentials?: string;
  initialVersion: string;
  step: string;
  paceMs: string;
  installMs: string;
  offlineMs: string;
  concurrency: string;
  seed: string;
  insecure?: boolean;
  exitAfterMs?: string;
  faults: Partial<Record<keyof FaultRates, string>>;
}

function int(name: string, value: string, min: number, max: number): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`--${name} must be an integer ${min}..${max}, got ${value}`);
  return n;
}

/** The state counts on one line; redrawn in place on a terminal. */
function statusLine(s: FleetSummary): string {
  const failed = s.states.failed_download + s.states.failed_md5 + s.states.failed_install;
  return (
    `connected ${s.connected}/${s.devices} | idle ${s.states.idle} downloading ${s.states.downloading} ` +
    `installing ${s.states.installing} succeeded ${s.states.succeeded} failed ${failed} rolled back ${s.states.rolled_back} | ` +
    `reports ${s.reportsSent} errors ${s.errors}`
  );
}

/**
 * `iothub-ota simulate`: a fleet of simulated devices that behave as IotHub
 * firmware. Runs until Ctrl-C (or --exit-after-ms), then prints a JSON summary.
 */
export async function simulate(o: SimulateOptions): Promise<void> {
  const count = int("devices", o.devices, 1, 100_000);
  const tags = o.tags === "" ? [] : o.tags.split(",").map((t) => t.trim());
  for (const tag of tags) if (!checkName("tag", tag).ok) throw new Error(`--tags: invalid tag ${tag}`);
  if (!checkName("productName", o.product).ok) throw new Error(`--product: invalid product name ${o.product}`);

  let credentials;
  if (o.credentials) {
    credentials = (await readCredentials(o.credentials)).slice(0, count);
  } else {
    if (!o.token) throw new Error("--token (or IOTHUB_OTA_TOKEN) is needed to register devices; or give --credentials");
    process.stderr.write(`registering ${count} devices of ${o.product} through ${o.api} ...\n`);
    credentials = await registerDevices(o.api, o.token, o.product, count, tags);
  }
  if (o.saveCredentials) await writeCredentials(o.saveCredentials, credentials);

  const fleet = new Fleet(credentials, {
    mqttUrl: o.mqtt,
    initialVersion: o.initialVersion,
    connectConcurrency: int("concurrency", o.concurrency, 1, 10_000),
    behaviour: {
      step: int("step", o.step, 1, 100),
      paceMs: int("pace-ms", o.paceMs, 0, 600_000),
      installMs: int("install-ms", o.installMs, 0, 600_000),
      offlineMs: int("offline-ms", o.offlineMs, 0, 600_000),
      faults: checkRates(o.faults),
      random: seededRandom(int("seed", o.seed, 0, 2 ** 31)),
      rejectUnauthorized: !o.insecure,
    },
  });

  const tty = process.stderr.isTTY;
  const draw = () => process.stderr.write(tty ? `\r\x1b[2K${statusLine(fleet.summary())}` : `${statusLine(fleet.summary())}\n`);
  const timer = setInterval(draw, tty ? 500 : 5000);
  const seconds = await fleet.connectAll();
  process.stderr.write(`${tty ? "\n" : ""}connected ${count} devices in ${seconds.toFixed(1)} s\n`);

  await new Promise<void>((resolve) => {
    process.once("SIGINT", resolve);
    process.once("SIGTERM", resolve);
    if (o.exitAfterMs) setTimeout(resolve, int("exit-after-ms", o.exitAfterMs, 0, 2 ** 31));
  });
  clearInterval(timer);
  draw();
  const summary = fleet.summary();
  await fleet.stop();
  process.stdout.write(`${tty ? "\n" : ""}${JSON.stringify(summary)}\n`);
}

/** `iothub-ota firmware-server`: serves a generated file and prints its URL, size and md5. */
export async function firmwareServer(o: { size: string; port: string; host: string }): Promise<void> {
  const server = new FirmwareServer(int("size", o.size, 1, 512 * 1024 * 1024), o.host, int("port", o.port, 0, 65535));
  await server.start();
  process.stdout.write(`${JSON.stringify(server.file)}\n`);
  await new Promise((resolve) => {
    process.once("SIGINT", resolve);
    process.once("SIGTERM", resolve);
  });
  await server.stop();
}

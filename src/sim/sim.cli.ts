import { localAddresses } from "../config/config.js";
import { checkName } from "../protocol/names.js";
import { checkRates, seededRandom, type FaultRates } from "./faults.js";
import { FirmwareServer } from "./firmware.server.js";
import { Fleet, deleteDevices, readCredentials, registerDevices, writeCredentials, type FleetSummary } from "./sim.fleet.js";

/** How long the fleet waits for an answer to its `$tags` requests before saying the broker may not be this server's. */
const TAGS_ANSWER_MS = 5000;

export interface SimulateOptions {
  /** Default: the server of PORT on this machine. */
  api?: string;
  token?: string;
  /** Default: this machine's MQTT_PORT (or MQTTS_PORT with --tls, or when MQTT_PORT is 0). */
  mqtt?: string;
  tls?: boolean;
  /** Delete the devices this run registered when it ends. */
  cleanup?: boolean;
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
 * firmware. Runs until Ctrl-C (or until --exit-after-ms from its start,
 * registering and connecting included), then prints a JSON summary.
 */
export async function simulate(o: SimulateOptions): Promise<void> {
  // --exit-after-ms bounds the whole run, registering and connecting included: what a script or a demo that uses it expects.
  const startedAt = performance.now();
  // Everything the flags say is checked before anything is registered.
  const count = int("devices", o.devices, 1, 100_000);
  const tags = o.tags === "" ? [] : o.tags.split(",").map((t) => t.trim());
  for (const tag of tags) if (!checkName("tag", tag).ok) throw new Error(`--tags: invalid tag ${tag}`);
  if (!checkName("productName", o.product).ok) throw new Error(`--product: invalid product name ${o.product}`);
  const faults = checkRates(o.faults);
  const behaviour = {
    step: int("step", o.step, 1, 100),
    paceMs: int("pace-ms", o.paceMs, 0, 600_000),
    installMs: int("install-ms", o.installMs, 0, 600_000),
    offlineMs: int("offline-ms", o.offlineMs, 0, 600_000),
    faults,
    random: seededRandom(int("seed", o.seed, 0, 2 ** 31)),
    rejectUnauthorized: !o.insecure,
  };
  const connectConcurrency = int("concurrency", o.concurrency, 1, 10_000);
  const exitAfterMs = o.exitAfterMs === undefined ? undefined : int("exit-after-ms", o.exitAfterMs, 0, 2 ** 31);
  const local = localAddresses();
  const api = o.api ?? local.api;
  const mqttUrl = o.mqtt ?? (o.tls ? local.mqtts : local.mqtt);
  if (o.cleanup && o.credentials) throw new Error("--cleanup deletes the devices this run registers: not with --credentials");

  let credentials;
  if (o.credentials) {
    credentials = (await readCredentials(o.credentials)).slice(0, count);
  } else {
    if (!o.token) throw new Error("--token (or IOTHUB_OTA_TOKEN) is needed to register devices; or give --credentials");
    process.stderr.write(`registering ${count} devices of ${o.product} through ${api} ...\n`);
    credentials = await registerDevices(api, o.token, o.product, count, tags);
  }
  if (o.saveCredentials) await writeCredentials(o.saveCredentials, credentials);
  const cleanup = async () => {
    if (!o.cleanup || !o.token) return;
    const deleted = await deleteDevices(api, o.token, credentials);
    process.stderr.write(`deleted the ${deleted} devices this run registered\n`);
  };

  const fleet = new Fleet(credentials, { mqttUrl, initialVersion: o.initialVersion, connectConcurrency, behaviour });
  const tty = process.stderr.isTTY;
  const draw = () => process.stderr.write(tty ? `\r\x1b[2K${statusLine(fleet.summary())}` : `${statusLine(fleet.summary())}\n`);
  const timer = setInterval(draw, tty ? 500 : 5000);
  const seconds = await fleet.connectAll();
  const connected = fleet.summary().connected;
  process.stderr.write(`${tty ? "\n" : ""}connected ${connected}/${credentials.length} devices to ${mqttUrl} in ${seconds.toFixed(1)} s\n`);
  for (const [reason, n] of Object.entries(fleet.summary().connectFailures)) process.stderr.write(`  ${n} not connected: ${reason}\n`);
  if (connected === 0) {
    clearInterval(timer);
    await fleet.stop();
    await cleanup();
    throw new Error(`no device could connect to ${mqttUrl}`);
  }
  // Checked while the run goes on, so that it does not delay the end; a run that ends first cannot tell.
  const ended = new AbortController();
  const tagsChecked = fleet.tagsAnswered(TAGS_ANSWER_MS, ended.signal).then((answered) => {
    if (answered || ended.signal.aborted) return;
    process.stderr.write(
      `${tty ? "\r\x1b[2K" : ""}warning: ${mqttUrl} did not answer the devices' $tags requests within ${TAGS_ANSWER_MS / 1000} s: ` +
        `is it this server's broker? (the server's MQTT_PORT, or --mqtt)\n`,
    );
  });

  await new Promise<void>((resolve) => {
    process.once("SIGINT", resolve);
    process.once("SIGTERM", resolve);
    if (exitAfterMs !== undefined) setTimeout(resolve, Math.max(0, startedAt + exitAfterMs - performance.now()));
  });
  ended.abort();
  await tagsChecked;
  clearInterval(timer);
  draw();
  const summary = fleet.summary();
  await fleet.stop();
  await cleanup();
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

import { createHash } from "node:crypto";
import mqtt from "mqtt";
import pg from "pg";
import type { RolloutFirmwareInput } from "../../src/client/generated/graphql.js";
import { DevicesWithExecutionsDocument } from "../../src/client/generated/graphql.js";
import { buildCommandTopic, parseCommandTopic } from "../../src/protocol/topics.js";
import { registerDevices } from "../../src/sim/sim.fleet.js";
import type { DeviceCredentials } from "../../src/sim/sim.device.js";
import { gqlOk } from "./app.js";
import type { Api } from "./rollout.js";
import { TestDevice } from "./device.js";
import { firmware } from "./fixtures.js";
import { uniq } from "./services.js";
import { eventually, sleep } from "./wait.js";

/**
 * Devices that answer `$ota_upgrade` as IotHub firmware does (PROTOCOL.md),
 * without downloading anything, and remember every command they received:
 * what rollout tests count when they ask "was this device notified twice?".
 * Unlike the simulator they can subscribe to their own command topic
 * themselves, which an external broker (no auto-subscription) needs.
 */

/** Where the API is: an in-process app or a server process. */

export interface UpgradeCommand {
  requestId: string;
  version: string;
  topic: string;
}

export interface ResponderBehaviour {
  /** The version the device runs at first, reported (`firmware_ver`) on connect. */
  initialVersion: string;
  /** How long the "download" takes, between the progress 0 and 100 reports. */
  downloadMs: number;
  /** Called as each `$ota_upgrade` arrives, before the device answers it. */
  onUpgrade?: (device: RespondingDevice, command: UpgradeCommand) => void;
  /** A device slow to start (a slow link): its first report waits for this promise, when one is given. */
  answerWhen?: (device: RespondingDevice) => Promise<void> | undefined;
}

export class RespondingDevice {
  /** Every `$ota_upgrade` received, repeats included, in arrival order. */
  readonly upgrades: UpgradeCommand[] = [];
  /** What went wrong while answering (a publish failed, a malformed command): a test expects none. */
  readonly errors: unknown[] = [];
  firmwareVersion: string;
  #upgrading = false;

  private constructor(
    readonly device: TestDevice,
    private readonly behaviour: ResponderBehaviour,
  ) {
    this.firmwareVersion = behaviour.initialVersion;
    device.client.on("message", (topic, payload) => this.#onMessage(topic, payload));
  }

  get deviceName(): string {
    return this.device.deviceName;
  }

  /**
   * Connects with a persistent session, subscribes to `cmd/<product>/<device>/+/+/+/#`
   * when `subscribe` (an external broker), and reports its version, as firmware does on every connect.
   */
  static async connect(url: string, credentials: DeviceCredentials, behaviour: ResponderBehaviour, subscribe: boolean): Promise<RespondingDevice> {
    const { productName, deviceName, secret } = credentials;
    const device = await TestDevice.connect(url, productName, deviceName, subscribe ? "" : secret);
    const responder = new RespondingDevice(device, behaviour);
    if (subscribe) {
      const granted = await device.subscribeGranted([`cmd/${productName}/${deviceName}/+/+/+/#`]);
      if (granted[0] !== 1) throw new Error(`command subscription of ${deviceName} granted ${JSON.stringify(granted)}, not QoS 1`);
    }
    await device.reportStatus({ firmware_ver: responder.firmwareVersion });
    return responder;
  }

  #onMessage(topic: string, payload: Buffer): void {
    const parsed = parseCommandTopic(topic);
    if (!parsed.ok || parsed.value.command !== "$ota_upgrade") return;
    let body: { version?: unknown; type?: unknown };
    try {
      body = JSON.parse(payload.toString("utf8")) as typeof body;
    } catch (err) {
      this.errors.push(err);
      return;
    }
    const command = { requestId: parsed.value.requestId, version: String(body.version), topic };
    this.upgrades.push(command);
    this.behaviour.onUpgrade?.(this, command);
    // As firmware does: a command for the version it runs, or one while upgrading, is left alone.
    if (this.#upgrading || command.version === this.firmwareVersion) return;
    this.#upgrading = true;
    this.#upgrade(command.version, String(body.type)).then(
      () => (this.#upgrading = false),
      (err: unknown) => {
        this.#upgrading = false;
        this.errors.push(err);
      },
    );
  }

  async #upgrade(version: string, type: string): Promise<void> {
    await this.behaviour.answerWhen?.(this);
    await this.device.reportProgress({ version, type, progress: 0, desc: "download" });
    await sleep(this.behaviour.downloadMs);
    await this.device.reportProgress({ version, type, progress: 100, desc: "download" });
    this.firmwareVersion = version;
    await this.device.reportStatus({ firmware_ver: version });
  }
}

export interface RespondingFleetOptions {
  /** Where the devices connect. */
  mqttUrl: string;
  count: number;
  /** An external broker: the devices subscribe to their command topic themselves. */
  subscribe: boolean;
  behaviour: ResponderBehaviour;
  productName?: string;
  tags?: string[];
}

/** Registers `count` devices through the API, connects them, and waits until the server knows each one's version. */
export async function respondingFleet(api: Api, o: RespondingFleetOptions) {
  const productName = o.productName ?? uniq("rd");
  const credentials = await registerDevices(`${api.httpUrl}/graphql`, api.token, productName, o.count, o.tags ?? ["beta"]);
  const devices = await Promise.all(credentials.map((c) => RespondingDevice.connect(o.mqttUrl, c, o.behaviour, o.subscribe)));
  await eventually(async () => {
    const page = await gqlOk(api, DevicesWithExecutionsDocument, { productName, first: 1000 });
    const unknown = page.devices.nodes.filter((d) => d.firmwareVersion !== o.behaviour.initialVersion).length;
    if (page.devices.nodes.length !== o.count || unknown > 0) throw new Error(`${unknown} of ${o.count} versions not reported yet`);
  }, 20_000);
  return { productName, devices };
}

export interface StoredExecution {
  deviceName: string;
  state: string;
  /** Set while QUEUED: a scheduler claimed it under this requestId and had not recorded the broker's confirmation. */
  dispatchRequestId: string | null;
  /** When it was last claimed; kept when a claim is released. */
  dispatchedAt: Date | null;
  /** The compare-and-set token: every write moves it on. */
  seq: number;
  attempts: { requestId: string }[];
}

/**
 * The executions of a rollout as stored in PostgreSQL: the claims in flight
 * (`dispatchRequestId`) are not visible through the API, which shows them
 * QUEUED. `afterCrash`: read only once no other client session is left on
 * the database, so that a COMMIT a killed server had sent has landed by then
 * or never will.
 */
export async function storedExecutions(databaseUrl: string, rolloutId: string, o: { afterCrash: boolean } = { afterCrash: true }): Promise<StoredExecution[]> {
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    if (o.afterCrash) {
      await eventually(async () => {
        const { rows } = await client.query<{ n: number }>(
          "select count(*)::int as n from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid() and backend_type = 'client backend'",
        );
        if ((rows[0]?.n ?? 0) > 0) throw new Error(`${rows[0]?.n} sessions of the killed server still open`);
      });
    }
    const { rows } = await client.query<{
      device_name: string;
      state: string;
      dispatch_request_id: string | null;
      dispatched_at: Date | null;
      seq: number;
      attempts: { requestId: string }[];
    }>("select device_name, state, dispatch_request_id, dispatched_at, seq, attempts from rollout_executions where rollout_id = $1 order by device_name", [rolloutId]);
    return rows.map((r) => ({
      deviceName: r.device_name,
      state: r.state,
      dispatchRequestId: r.dispatch_request_id,
      dispatchedAt: r.dispatched_at,
      seq: r.seq,
      attempts: r.attempts,
    }));
  } finally {
    await client.end();
  }
}

/**
 * Leaves in PostgreSQL what a server that died between recording a claim and
 * recording the broker's confirmation leaves: the QUEUED execution claimed
 * under `requestId` a minute ago (so already stale), with its
 * compare-and-set token moved on as any write moves it. For tests that stop
 * the server first; the execution must be QUEUED and unclaimed.
 */
export async function plantStaleClaim(databaseUrl: string, rolloutId: string, deviceName: string, requestId: string): Promise<void> {
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    const { rowCount } = await client.query(
      `update rollout_executions set dispatch_request_id = $3, dispatched_at = now() - interval '1 minute', seq = seq + 1
        where rollout_id = $1 and device_name = $2 and state = 'QUEUED' and dispatch_request_id is null`,
      [rolloutId, deviceName, requestId],
    );
    if (rowCount !== 1) throw new Error(`no QUEUED, unclaimed execution of ${deviceName} in rollout ${rolloutId}`);
  } finally {
    await client.end();
  }
}

/** Publishes a rollout's `$ota_upgrade` to one device as a server would (QoS 1): what a dead server may have sent before dying. */
export async function publishUpgrade(brokerUrl: string, productName: string, deviceName: string, requestId: string, fw: RolloutFirmwareInput) {
  const topic = buildCommandTopic({
    target: { productName, deviceName },
    command: "$ota_upgrade",
    encoding: "plain",
    requestId,
    expiresAt: Math.floor(Date.now() / 1000) + 3600,
  });
  const client = await mqtt.connectAsync(brokerUrl, { clientId: uniq("dead-server"), reconnectPeriod: 0 });
  try {
    const { url, version, size, md5, type, sha256 } = fw;
    await client.publishAsync(topic, JSON.stringify({ url, version, size, md5, type, sha256 }), { qos: 1 });
  } finally {
    await client.endAsync();
  }
}

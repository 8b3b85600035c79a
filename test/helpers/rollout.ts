import { createHash } from "node:crypto";
import type { CreateRolloutInput, RolloutExecutionsQuery, RolloutFieldsFragment, RolloutFirmwareInput } from "../../src/client/generated/graphql.js";
import { CreateRolloutDocument, DevicesWithExecutionsDocument, RolloutDocument, RolloutExecutionsDocument } from "../../src/client/generated/graphql.js";
import { NO_FAULTS, seededRandom, type FaultRates } from "../../src/sim/faults.js";
import { FirmwareServer } from "../../src/sim/firmware.server.js";
import { Fleet, registerDevices } from "../../src/sim/sim.fleet.js";
import { gqlOk, type TestApp } from "./app.js";

/** Where the API is: an in-process app or a server process. */
export type Api = Pick<TestApp, "httpUrl" | "token">;
import { uniq } from "./services.js";
import { onTeardown } from "./teardown.js";
import { eventually } from "./wait.js";

/** A firmware file served over HTTP for simulated devices, with its digests. */
export async function firmwareFile(size = 16 * 1024) {
  const server = new FirmwareServer(size);
  await server.start();
  onTeardown(() => server.stop());
  return server;
}

export interface SimFleetOptions {
  count: number;
  tags?: string[];
  faults?: Partial<FaultRates>;
  initialVersion?: string;
  installMs?: number;
  seed?: number;
  productName?: string;
}

/** Registers and connects simulated IotHub devices (the project's simulator) against the app. */
export async function simFleet(t: TestApp, o: SimFleetOptions) {
  const productName = o.productName ?? uniq("ro");
  const tags = o.tags ?? ["beta"];
  const credentials = await registerDevices(`${t.httpUrl}/graphql`, t.token, productName, o.count, tags);
  const behaviour = {
    step: 50,
    paceMs: 0,
    installMs: o.installMs ?? 20,
    offlineMs: 50,
    faults: { ...NO_FAULTS, ...o.faults },
    random: seededRandom(o.seed ?? 11),
    rejectUnauthorized: true,
  };
  const fleet = new Fleet(credentials, { mqttUrl: t.mqttUrl, initialVersion: o.initialVersion ?? "1.0", connectConcurrency: 20, behaviour });
  onTeardown(() => fleet.stop());
  await fleet.connectAll();
  // Each device asked for its tags and reported its version on connect.
  await eventually(() => {
    if (!fleet.devices.every((d) => d.tagsVersion === 1)) throw new Error(`tags not applied yet: ${JSON.stringify(fleet.summary())}`);
  }, 20_000);
  await eventually(async () => {
    const page = await gqlOk(t, DevicesWithExecutionsDocument, { productName, first: 1000 });
    if (page.devices.nodes.some((d) => d.firmwareVersion === null)) throw new Error("versions not reported yet");
  }, 20_000);
  return { productName, fleet, credentials, behaviour };
}

export const sha256Of = (text: string) => createHash("sha256").update(text).digest("hex");

/** A rollout input for a firmware file (served, or only described: `{file: {url, size, md5}}`). */
export function rolloutInput(
  productName: string,
  fw: Pick<FirmwareServer, "file">,
  extra: Partial<Omit<CreateRolloutInput, "productName" | "firmware">> & { version?: string } = {},
): CreateRolloutInput & { firmware: RolloutFirmwareInput } {
  const { version = "2.0", ...rest } = extra;
  return {
    productName,
    target: { tag: "beta" },
    firmware: { ...fw.file, version, type: "firmware", sha256: sha256Of(fw.file.url) },
    ...rest,
  };
}

export async function createRollout(t: Api, input: CreateRolloutInput): Promise<RolloutFieldsFragment> {
  return (await gqlOk(t, CreateRolloutDocument, { input })).createRollout;
}

export async function rolloutOf(t: Api, id: string): Promise<RolloutFieldsFragment> {
  const { rollout } = await gqlOk(t, RolloutDocument, { id });
  if (!rollout) throw new Error(`rollout ${id} not found`);
  return rollout;
}

/** Waits until the rollout is in one of `states`; returns it. */
export async function rolloutIn(t: Api, id: string, states: string[], ms = 60_000): Promise<RolloutFieldsFragment> {
  let last: RolloutFieldsFragment | undefined;
  await eventually(async () => {
    last = await rolloutOf(t, id);
    if (!states.includes(last.state)) throw new Error(`rollout is ${last.state} (${JSON.stringify(last.counts)}), waiting for ${states.join("|")}`);
  }, ms);
  return last as RolloutFieldsFragment;
}

/** Every execution of a rollout, all pages. */
export async function executionsOf(t: Api, id: string) {
  const all: RolloutExecutionsQuery["rolloutExecutions"]["nodes"] = [];
  let after: string | null = null;
  for (;;) {
    const { rolloutExecutions: page }: RolloutExecutionsQuery = await gqlOk(t, RolloutExecutionsDocument, { id, first: 1000, after });
    all.push(...page.nodes);
    if (!page.pageInfo.hasNextPage) return all;
    after = page.pageInfo.endCursor ?? null;
  }
}

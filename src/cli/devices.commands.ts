import type { Command } from "commander";
import { z } from "zod";
import {
  DeviceDetailDocument,
  DeviceListDocument,
  DeleteDeviceDocument,
  RegisterDeviceDocument,
  ResumeDeviceDocument,
  SetDeviceTagsDocument,
  SuspendDeviceDocument,
  type DeviceListQuery,
  type DeviceFieldsFragment,
  type DeviceState,
} from "../client/generated/graphql.js";
import { pagesOf, type ApiClient } from "./api.client.js";
import { clientCommand, commandGroup, flag, parseFlags } from "./cli.command.js";
import { ApiError } from "./cli.errors.js";
import { fields, json, print, progressText, table } from "./cli.output.js";
import { waveNumber } from "./rollout.view.js";

const product = z.object({ product: flag.required });

type Listed = DeviceListQuery["devices"]["nodes"][number];

/** suspended, online, offline; unknown where the server's broker is external. */
const stateOf = (d: { suspended: boolean; online?: boolean | null }) =>
  d.suspended ? "suspended" : d.online === true ? "online" : d.online === false ? "offline" : "unknown";

const otaCell = (p: Listed["otaProgress"]) => (p ? progressText(p) : null);

/**
 * The device as a key/value block, for people. `state` is what is known of
 * it: a mutation's answer says whether it is suspended, not whether it is
 * connected, so without `state` a device not suspended has no state line.
 */
function deviceBlock(d: DeviceFieldsFragment, state: string | null = d.suspended ? "suspended" : null): string {
  return fields([
    ["device", `${d.productName}/${d.deviceName}`],
    ["tags", d.tags.join(",")],
    ["tags version", d.tagsVersion],
    ["firmware", d.firmwareVersion],
    ...(state === null ? [] : [["state", state] as [string, string]]),
    ["last status", d.lastStatusAt],
    ["registered", d.createdAt],
  ]);
}

export function registerDeviceCommands(program: Command): void {
  const devices = commandGroup(program, "devices", "devices of a product: list, show, register, tag, suspend, resume, delete", "iothub-ota devices list --product demo --tag beta");

  const list = clientCommand(
    devices,
    "list",
    "list a product's devices by name, with their firmware and latest OTA progress",
    "iothub-ota devices list --product demo --tag beta --state online --all",
    async ({ api, json: asJson }, _args, o) => {
      const f = parseFlags(
        product.extend({
          tag: z.string().optional(),
          firmware: z.string().optional(),
          state: z.enum(["online", "offline", "suspended"], { error: "--state must be online, offline or suspended" }).optional(),
          first: flag.int(1, 1000).optional(),
          after: z.string().optional(),
          all: z.boolean().optional(),
        }),
        o,
      );
      const { nodes, pageInfo } = await pagesOf<Listed>(
        async (after) =>
          (
            await api.request(DeviceListDocument, {
              productName: f.product,
              tag: f.tag ?? null,
              firmwareVersion: f.firmware ?? null,
              state: f.state === undefined ? null : (f.state.toUpperCase() as DeviceState),
              first: f.first ?? (f.all ? 1000 : 50),
              after,
            })
          ).devices,
        f,
      );
      if (asJson) return json({ devices: nodes, pageInfo });
      print(
        table(
          ["DEVICE", "TAGS", "FIRMWARE", "STATE", "OTA", "LAST STATUS"],
          nodes.map((d) => [d.deviceName, d.tags.join(","), d.firmwareVersion, stateOf(d), otaCell(d.otaProgress), d.lastStatusAt]),
        ),
      );
      if (pageInfo.hasNextPage) process.stderr.write(`more: --after ${pageInfo.endCursor} (or --all)\n`);
    },
  );
  list
    .option("--product <name>", "the product")
    .option("--tag <tag>", "only devices with this tag")
    .option("--firmware <version>", "only devices that reported this firmware version")
    .option("--state <state>", "only devices online (connected now), offline or suspended")
    .option("--first <n>", "page size, 1..1000 (default 50; 1000 with --all)")
    .option("--after <cursor>", "the page after this cursor")
    .option("--all", "every page");

  clientCommand(
    devices,
    "show <device>",
    "show a device: its tags, firmware, latest OTA progress and executions across rollouts",
    "iothub-ota devices show dev-1 --product demo",
    async ({ api, json: asJson }, [deviceName], o) => {
      const { product: productName } = parseFlags(product, o);
      const { device } = await api.request(DeviceDetailDocument, { productName, deviceName: deviceName as string });
      if (!device) throw new ApiError([{ code: "DEVICE_NOT_FOUND", message: `no device ${productName}/${deviceName}` }]);
      if (asJson) return json(device);
      const p = device.otaProgress;
      print(deviceBlock(device, stateOf(device)));
      print(fields([["ota", p ? `${progressText(p)} at ${p.receivedAt}` : null]]));
      if (device.executions.length > 0) {
        print(`\n${table(["ROLLOUT", "WAVE", "STATE", "FAILURE", "SKIPPED", "FROM", "LAST EVENT"], device.executions.map((e) => [e.rolloutId, waveNumber(e.wave), e.state, e.failureClass, e.skipReason, e.fromVersion, e.lastEventAt]))}`);
      }
    },
  ).option("--product <name>", "the product");

  clientCommand(
    devices,
    "register [device]",
    "register a device (a generated name when omitted) and print its MQTT secret, shown once",
    "iothub-ota devices register dev-1 --product demo --tags beta,eu",
    async ({ api, json: asJson }, [deviceName], o) => {
      const f = parseFlags(product.extend({ tags: flag.list.optional() }), o);
      const { registerDevice: r } = await api.request(RegisterDeviceDocument, { input: { productName: f.product, deviceName: deviceName ?? null, tags: f.tags ?? null } });
      if (asJson) return json(r);
      // Its secret is new: it cannot have connected yet.
      print(deviceBlock(r.device, r.device.suspended ? "suspended" : "offline (not connected yet)"));
      print(fields([["secret", `${r.secret}  (the MQTT password; shown once)`]]));
    },
  )
    .option("--product <name>", "the product")
    .option("--tags <a,b>", "its tags");

  clientCommand(
    devices,
    "tag <device>",
    "replace a device's tags (sends it $set_tags)",
    'iothub-ota devices tag dev-1 --product demo --tags beta,eu    # --tags "" removes every tag',
    async ({ api, json: asJson }, [deviceName], o) => {
      const f = parseFlags(product.extend({ tags: z.string({ error: 'is required (--tags "" removes every tag)' }).pipe(flag.list) }), o);
      const { setDeviceTags: d } = await api.request(SetDeviceTagsDocument, { productName: f.product, deviceName: deviceName as string, tags: f.tags });
      if (asJson) return json(d);
      print(deviceBlock(d));
    },
  )
    .option("--product <name>", "the product")
    .option("--tags <a,b>", "the new tags");

  type Target = { productName: string; deviceName: string };
  const actions: [string, string, (api: ApiClient, t: Target) => Promise<{ suspended: boolean }>][] = [
    ["suspend", "disconnect a device and refuse its connections until resumed", async (api, t) => (await api.request(SuspendDeviceDocument, t)).suspendDevice],
    ["resume", "let a suspended device connect again", async (api, t) => (await api.request(ResumeDeviceDocument, t)).resumeDevice],
  ];
  for (const [verb, description, act] of actions) {
    clientCommand(devices, `${verb} <device>`, description, `iothub-ota devices ${verb} dev-1 --product demo`, async ({ api, json: asJson }, [deviceName], o) => {
      const { product: productName } = parseFlags(product, o);
      const { suspended } = await act(api, { productName, deviceName: deviceName as string });
      if (asJson) return json({ productName, deviceName, suspended });
      print(`${productName}/${deviceName} ${suspended ? "suspended" : "resumed"}`);
    }).option("--product <name>", "the product");
  }

  clientCommand(
    devices,
    "delete <device>",
    "delete a device, its progress and every session of it",
    "iothub-ota devices delete dev-1 --product demo",
    async ({ api, json: asJson }, [deviceName], o) => {
      const { product: productName } = parseFlags(product, o);
      const { deleteDevice: deleted } = await api.request(DeleteDeviceDocument, { productName, deviceName: deviceName as string });
      if (!deleted) throw new ApiError([{ code: "DEVICE_NOT_FOUND", message: `no device ${productName}/${deviceName}` }]);
      if (asJson) return json({ productName, deviceName, deleted });
      print(`${productName}/${deviceName} deleted`);
    },
  ).option("--product <name>", "the product");
}

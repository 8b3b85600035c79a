import type { Command } from "commander";
import { z } from "zod";
import { SendOtaDocument, type SendOtaInput } from "../client/generated/graphql.js";
import { clientCommand, commandGroup, flag, parseFlags } from "./cli.command.js";
import { UsageError } from "./cli.errors.js";
import { fields, json, print } from "./cli.output.js";
import { firmwareFlags, firmwareOf, firmwareOptions, missingFirmware } from "./firmware.flags.js";

const sendFlags = firmwareFlags
  .extend({
    product: flag.required,
    device: z.string().min(1).optional(),
    tag: z.string().min(1).optional(),
    ttl: flag.seconds.optional(),
    idempotencyKey: z.string().optional(),
  })
  .refine((f) => (f.device === undefined) !== (f.tag === undefined), "give exactly one of --device and --tag");

const HOSTED = "--version, --url, --size and --md5";

/** The firmware of a send: an uploaded artifact's id, or every field of a file hosted elsewhere. */
function firmwareInput(f: z.infer<typeof sendFlags>): Pick<SendOtaInput, "firmware" | "firmwareId"> {
  const chosen = firmwareOf(f, HOSTED);
  if (chosen === null) throw new UsageError(`give --firmware-id <id> (an uploaded artifact) or ${HOSTED} (a file hosted elsewhere)`);
  if ("firmwareId" in chosen) return { firmwareId: chosen.firmwareId, firmware: null };
  const missing = missingFirmware(chosen.firmware, ["version", "url", "size", "md5"]);
  if (missing.length > 0) throw new UsageError(`missing ${missing.join(", ")} (or give --firmware-id <id>, an uploaded artifact)`);
  return { firmwareId: null, firmware: { type: "firmware", ...chosen.firmware } as NonNullable<SendOtaInput["firmware"]> };
}

export function registerOtaCommands(program: Command): void {
  const ota = commandGroup(program, "ota", "one-off upgrades: send $ota_upgrade to a device or a tag", "iothub-ota ota send --product demo --device dev-1 --firmware-id \"$id\"    # id: firmware upload --quiet");
  const send = clientCommand(
    ota,
    "send",
    "send $ota_upgrade (QoS 1) to one device or to every device with a tag; prints the requestId",
    "iothub-ota ota send --product demo --device dev-1 --firmware-id \"$id\" --ttl 1h    # id: firmware upload --quiet, firmware list\n" +
      "iothub-ota ota send --product demo --tag beta --version 1.1 --url https://fw.example/demo-1.1.bin \\\n    --size 524288 --md5 0123456789abcdef0123456789abcdef --ttl 1h",
    async ({ api, json: asJson }, _args, o) => {
      const f = parseFlags(sendFlags, o);
      const { sendOta: sent } = await api.request(SendOtaDocument, {
        input: { productName: f.product, deviceName: f.device ?? null, tag: f.tag ?? null, ...firmwareInput(f), ttlSeconds: f.ttl ?? null, idempotencyKey: f.idempotencyKey ?? null },
      });
      if (sent.warning) process.stderr.write(`warning: ${sent.warning}\n`);
      if (asJson) return json(sent);
      print(
        fields([
          ["requestId", sent.requestId],
          ["topic", sent.topic],
          ["targeted", sent.targeted],
          ["expires", sent.expiresAt === null ? null : new Date(sent.expiresAt * 1000).toISOString()],
        ]),
      );
    },
  );
  send
    .option("--product <name>", "the product")
    .option("--device <name>", "send to this device")
    .option("--tag <tag>", "send to every device with this tag");
  firmwareOptions(send, { sha256: false })
    .option("--ttl <duration>", "devices ignore the command after this: 3600, 90s, 30m, 12h")
    .option("--idempotency-key <key>", "retrying with the same key never sends twice");
}

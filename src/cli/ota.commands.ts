import type { Command } from "commander";
import { z } from "zod";
import { SendOtaDocument } from "../client/generated/graphql.js";
import { clientCommand, commandGroup, flag, parseFlags } from "./cli.command.js";
import { fields, json, print } from "./cli.output.js";
import { firmwareFlags, firmwareOf, firmwareOptions } from "./firmware.flags.js";

const sendFlags = firmwareFlags
  .extend({
    product: flag.required,
    device: z.string().min(1).optional(),
    tag: z.string().min(1).optional(),
    ttl: flag.seconds.optional(),
    idempotencyKey: z.string().optional(),
  })
  .refine((f) => (f.device === undefined) !== (f.tag === undefined), "give exactly one of --device and --tag")
  .superRefine((f, ctx) => {
    for (const k of ["version", "url", "size", "md5"] as const) if (f[k] === undefined) ctx.addIssue({ code: "custom", path: [k], message: "is required" });
  });

export function registerOtaCommands(program: Command): void {
  const ota = commandGroup(program, "ota", "one-off upgrades: send $ota_upgrade to a device or a tag", "iothub-ota ota send --product demo --device dev-1 --version 1.1 --url https://fw.example/demo-1.1.bin --size 524288 --md5 <32 hex>");
  const send = clientCommand(
    ota,
    "send",
    "send $ota_upgrade (QoS 1) to one device or to every device with a tag; prints the requestId",
    "iothub-ota ota send --product demo --tag beta --version 1.1 --url https://fw.example/demo-1.1.bin \\\n    --size 524288 --md5 0123456789abcdef0123456789abcdef --ttl 1h",
    async ({ api, json: asJson }, _args, o) => {
      const f = parseFlags(sendFlags, o);
      const firmware = { type: "firmware", ...firmwareOf(f) } as { type: string; version: string; url: string; size: number; md5: string };
      const { sendOta: sent } = await api.request(SendOtaDocument, {
        input: { productName: f.product, deviceName: f.device ?? null, tag: f.tag ?? null, firmware, ttlSeconds: f.ttl ?? null, idempotencyKey: f.idempotencyKey ?? null },
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

import type { Command } from "commander";
import { z } from "zod";
import { flag } from "./cli.command.js";

/** The firmware flags of `ota send` and `rollout create|preview`; the server checks the values (BAD_USER_INPUT). */
export const firmwareFlags = z.object({
  version: z.string().min(1, "must not be empty").optional(),
  url: z.string().url("must be the http(s) URL devices download").optional(),
  size: flag.int(1, Number.MAX_SAFE_INTEGER).optional(),
  md5: z.string().regex(/^[0-9a-fA-F]{32}$/, "must be 32 hex characters").optional(),
  sha256: z.string().regex(/^[0-9a-fA-F]{64}$/, "must be 64 hex characters").optional(),
  type: z.string().min(1, "must not be empty").optional(),
});
export type FirmwareFlags = z.infer<typeof firmwareFlags>;

export function firmwareOptions(c: Command, { sha256 }: { sha256: boolean }): Command {
  c.option("--version <v>", "firmware version")
    .option("--url <url>", "http(s) URL the devices download")
    .option("--size <bytes>", "size in bytes")
    .option("--md5 <hex>", "md5 of the file, 32 hex characters");
  if (sha256) c.option("--sha256 <hex>", "sha256 of the file, 64 hex characters");
  return c.option("--type <type>", 'firmware type (default "firmware")');
}

/** The firmware of the flags, defined fields only (so they can override an --input file's). */
export function firmwareOf(f: FirmwareFlags): Partial<Required<FirmwareFlags>> {
  return Object.fromEntries(Object.entries(f).filter(([k, v]) => v !== undefined && k in firmwareFlags.shape));
}
